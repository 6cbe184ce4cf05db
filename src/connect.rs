//! Connecting within a deadline shorter than libpq's own floor.
//!
//! libpq's `connect_timeout` counts whole seconds and never less than 2, and its connect
//! blocks the calling thread. [`connect_within`] hands the connect to a small, fixed set
//! of connector threads shared by the whole process and waits for the answer only until
//! the caller's deadline. A connect that outlives its caller finishes on its thread
//! (bounded by libpq's `connect_timeout`) and its connection is closed at once; a job
//! whose caller has already given up is skipped. No thread and no connection is left
//! behind per attempt.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel::pg::PgConnection;
use diesel::ConnectionError;

use crate::db;
use crate::error::{Error, Result};

/// The most connector threads the process ever runs.
pub const MAX_CONNECTORS: usize = 4;

/// The name of each connector thread (as `/proc/<pid>/task/*/comm` shows it).
pub const CONNECTOR_THREAD: &str = "costdb-connect";

struct Job {
    url: String,
    deadline: Instant,
    reply: SyncSender<Result<PgConnection>>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
}

#[derive(Default)]
struct Connectors {
    state: Mutex<State>,
    ready: Condvar,
}

fn connectors() -> &'static Connectors {
    static CONNECTORS: OnceLock<Connectors> = OnceLock::new();
    CONNECTORS.get_or_init(Connectors::default)
}

impl Connectors {
    fn submit(&'static self, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.jobs.push_back(job);
        if state.idle == 0 && state.threads < MAX_CONNECTORS {
            let spawned = std::thread::Builder::new()
                .name(CONNECTOR_THREAD.into())
                .spawn(move || self.work());
            if spawned.is_ok() {
                state.threads += 1;
            }
        } else {
            self.ready.notify_one();
        }
    }

    fn work(&self) {
        loop {
            let job = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = state.jobs.pop_front() {
                        break job;
                    }
                    state.idle += 1;
                    state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                    state.idle -= 1;
                }
            };
            if Instant::now() >= job.deadline {
                continue; // its caller has given up already
            }
            // When the caller has gone, `send` fails and the connection drops: closed.
            let _ = job.reply.send(db::connect(&job.url));
        }
    }
}

/// Opens one UTC session to `database_url`, waiting at most `timeout` for it.
///
/// The URL gets libpq's `connect_timeout` (whole seconds, at least 2) unless it has one,
/// so a connect abandoned at the deadline still ends soon on its connector thread.
///
/// # Errors
/// [`Error::InvalidInput`] for a zero timeout; [`Error::Connection`] when the server does
/// not complete the connection in time, or refuses it.
pub fn connect_within(database_url: &str, timeout: Duration) -> Result<PgConnection> {
    if timeout.is_zero() {
        return Err(Error::invalid("timeout", "must be positive"));
    }
    let deadline = Instant::now() + timeout;
    let (reply, answer) = mpsc::sync_channel(1);
    connectors().submit(Job {
        url: with_connect_timeout(database_url, timeout),
        deadline,
        reply,
    });
    match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
            Err(Error::Connection(ConnectionError::BadConnection(format!(
                "no connection within {} ms",
                timeout.as_millis()
            ))))
        }
    }
}

/// `url` with libpq's `connect_timeout` (whole seconds, at least 2) unless it has one.
fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout") {
        return url.to_owned();
    }
    let secs = timeout.as_secs_f64().ceil().max(2.0) as u64;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}connect_timeout={secs}")
    } else {
        format!("{url} connect_timeout={secs}")
    }
}
