//! `CostRecorder`: durable group commit for services that record each LLM call as it
//! finishes and have no transaction of their own.
//!
//! Callers block in [`CostRecorder::record`] until the record is committed; one flusher
//! thread with its own connection writes whatever is queued as one statement that
//! commits on its own (one `INSERT … SELECT FROM unnest(…)` with the idempotency of
//! [`CostWriteDriver::record_costs`](crate::drivers::CostWriteDriver::record_costs): one round trip
//! per batch), so many callers share one commit and one flush to disk. Ids and instants
//! are fixed when a record is queued (a cost without `created_at` takes this process's
//! clock then): a batch whose outcome is unknown (the connection was lost while the
//! statement ran) is retried with the same keys and lands at most once. Nothing is dropped: when the server
//! stays unreachable past the deadline, every waiting caller gets
//! [`Error::NotRecorded`].
//!
//! ```no_run
//! use costdb::models::CostInput;
//! use costdb::recorder::{CostRecorder, RecorderConfig};
//!
//! # fn main() -> costdb::Result<()> {
//! let recorder = CostRecorder::start("postgres://postgres@127.0.0.1/costdb", RecorderConfig::default())?;
//! let recorded = recorder.record(CostInput {
//!     tenant_id: "acme".into(),
//!     request_id: Some("req-9".into()),
//!     model: "gpt-4o-mini".into(),
//!     cost_cents: 0.4,
//!     ..Default::default()
//! })?;
//! assert!(recorded.id.starts_with("cr_"));
//! recorder.shutdown();
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sql_fns::set_config;
use chrono::Utc;
use diesel::prelude::*;
use serde::Serialize;

use crate::batching::Queue;
use crate::db::{self, alive, lost, must_retry, PgPool, PooledConn};
use crate::drivers::cost_write::{BulkMode, CostWriteDriver, RecordedCost, BULK_CHUNK};
use crate::error::{Error, Result};
use crate::models::ids;
use crate::models::CostInput;

/// How a [`CostRecorder`] batches and how long it keeps trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// The most records one statement writes (1 to [`BULK_CHUNK`]).
    pub max_batch: usize,
    /// How long the flusher waits for a partial batch to fill once its first record is
    /// queued (zero: write at once what is queued; batches form while a commit runs).
    pub max_wait: Duration,
    /// The most records queued and not yet being written; `record` waits beyond it.
    pub capacity: usize,
    /// How long a batch is retried while the server is unreachable before its callers
    /// get [`Error::NotRecorded`].
    pub retry_deadline: Duration,
    /// Flusher threads, each with its own connection (default 1). More let one batch be
    /// written while another waits for its flush to disk, at the price of smaller batches;
    /// on a 2-core machine one was as fast as two and wrote half as many commits.
    pub flushers: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            max_batch: 1_000,
            max_wait: Duration::ZERO,
            capacity: 10_000,
            retry_deadline: Duration::from_secs(30),
            flushers: 1,
        }
    }
}

/// Counters a service can export.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RecorderStats {
    /// Transactions committed.
    pub batches: u64,
    /// Records committed.
    pub rows: u64,
    /// Records waiting to be written now.
    pub queue_depth: usize,
    /// Records in the batch being written now.
    pub in_flight: usize,
    /// Attempts repeated after a lost connection or an unknown commit outcome.
    pub retries: u64,
}

impl RecorderStats {
    /// Records per committed transaction.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.rows as f64 / self.batches as f64
        }
    }
}

/// Where the flusher's connection comes from.
enum Source {
    Url(String),
    Pool(PgPool),
}

enum Conn {
    Own(PgConnection),
    Pooled(PooledConn),
}

impl std::ops::Deref for Conn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            Conn::Own(c) => c,
            Conn::Pooled(c) => c,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Conn::Own(c) => c,
            Conn::Pooled(c) => c,
        }
    }
}

impl Source {
    fn connect(&self) -> Result<Conn> {
        let mut conn = match self {
            Source::Url(url) => Conn::Own(db::connect(url)?),
            Source::Pool(pool) => Conn::Pooled(pool.get()?),
        };
        diesel::select(set_config("application_name", "costdb-recorder", false))
            .execute(&mut *conn)?;
        Ok(conn)
    }
}

/// A record waiting for its batch: its id is fixed when it is queued.
struct Pending {
    id: String,
    cost: CostInput,
}

struct Shared {
    config: RecorderConfig,
    queue: Queue<Pending, RecordedCost>,
    batches: AtomicU64,
    rows: AtomicU64,
    retries: AtomicU64,
}

/// Shuts the recorder down when the last handle goes.
struct Handle {
    shared: Arc<Shared>,
    flushers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        close(&self.shared, &self.flushers);
    }
}

fn close(shared: &Shared, flushers: &Mutex<Vec<JoinHandle<()>>>) {
    shared.queue.close();
    let handles = std::mem::take(&mut *flushers.lock().unwrap_or_else(|e| e.into_inner()));
    for handle in handles {
        let _ = handle.join();
    }
}

/// Durable group commit of cost records (see the [module docs](self)).
///
/// `Send + Sync + Clone`: clones share one queue and one flusher; dropping the last one
/// shuts it down as [`CostRecorder::shutdown`] does.
#[derive(Clone)]
pub struct CostRecorder {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for CostRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostRecorder")
            .field("config", &self.handle.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl CostRecorder {
    /// Starts a recorder whose flusher connects to `database_url`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero batch size or capacity; a connection error when
    /// the server cannot be reached now.
    pub fn start(database_url: &str, config: RecorderConfig) -> Result<Self> {
        Self::spawn(Source::Url(database_url.into()), config)
    }

    /// Starts a recorder whose flusher borrows one connection of `pool` (and another when
    /// that one breaks).
    pub fn from_pool(pool: PgPool, config: RecorderConfig) -> Result<Self> {
        Self::spawn(Source::Pool(pool), config)
    }

    fn spawn(source: Source, config: RecorderConfig) -> Result<Self> {
        if config.max_batch == 0 {
            return Err(Error::invalid("max_batch", "must be at least 1"));
        }
        if config.max_batch > BULK_CHUNK {
            return Err(Error::invalid(
                "max_batch",
                format!("a batch is one statement of at most {BULK_CHUNK} rows"),
            ));
        }
        if config.capacity == 0 {
            return Err(Error::invalid("capacity", "must be at least 1"));
        }
        if config.flushers == 0 {
            return Err(Error::invalid("flushers", "must be at least 1"));
        }
        let conns = (0..config.flushers)
            .map(|_| source.connect())
            .collect::<Result<Vec<_>>>()?;
        let source = Arc::new(source);
        let shared = Arc::new(Shared {
            queue: Queue::new(config.capacity, |p: &Pending| p.id.clone(), abandoned),
            config,
            batches: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            flushers: Mutex::new(Vec::new()),
        });
        for conn in conns {
            let flusher = Flusher {
                shared: shared.clone(),
                source: source.clone(),
                conn: Some(conn),
            };
            let thread = std::thread::Builder::new()
                .name("costdb-recorder".into())
                .spawn(move || flusher.run())
                .map_err(|source| Error::Thread {
                    what: "the recorder's flusher",
                    source,
                })?;
            handle
                .flushers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(thread);
        }
        Ok(CostRecorder { handle })
    }

    /// Records one cost and returns its id once the transaction holding it has
    /// committed. Waits while the queue is full.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] at once, queueing nothing; [`Error::Closed`] after
    /// shutdown; [`Error::NotRecorded`] when the batch could not be committed.
    pub fn record(&self, cost: CostInput) -> Result<RecordedCost> {
        self.enqueue(cost, true)
    }

    /// [`Self::record`], but returns [`Error::Busy`] instead of waiting for room.
    pub fn try_record(&self, cost: CostInput) -> Result<RecordedCost> {
        self.enqueue(cost, false)
    }

    fn enqueue(&self, mut cost: CostInput, wait: bool) -> Result<RecordedCost> {
        cost.validate()?;
        // The instant is fixed with the id: a retry after an unknown commit outcome must
        // meet the first attempt's row, whose key is (tenant, id, instant).
        cost.created_at.get_or_insert_with(Utc::now);
        let pending = Pending {
            id: ids::cost_record_id(),
            cost,
        };
        self.handle.shared.queue.submit(pending, wait)
    }

    /// The counters so far.
    pub fn stats(&self) -> RecorderStats {
        let shared = &self.handle.shared;
        RecorderStats {
            batches: shared.batches.load(Ordering::Relaxed),
            rows: shared.rows.load(Ordering::Relaxed),
            queue_depth: shared.queue.depth(),
            in_flight: shared.queue.in_flight(),
            retries: shared.retries.load(Ordering::Relaxed),
        }
    }

    /// Stops taking records, writes everything queued, and waits for it. Later calls to
    /// `record` return [`Error::Closed`]. Dropping the last handle does the same.
    pub fn shutdown(&self) {
        close(&self.handle.shared, &self.handle.flushers);
    }
}

/// What a caller whose record was never answered gets: the writer stopped (only a bug can
/// make it), so the record may or may not be stored.
fn abandoned(id: String) -> Error {
    Error::NotRecorded {
        id,
        outcome_unknown: true,
        reason: "the recorder's writer thread stopped".into(),
    }
}

/// A batch being written, as the columns the write needs (the records move here from the
/// queue, never copied).
struct Columns {
    ids: Vec<String>,
    costs: Vec<CostInput>,
}

/// The flusher thread: takes batches off the queue and commits them.
struct Flusher {
    shared: Arc<Shared>,
    source: Arc<Source>,
    conn: Option<Conn>,
}

/// How one attempt at a batch ended.
enum Attempt {
    Committed(Vec<RecordedCost>),
    /// The batch certainly did not commit: no connection, or the server asked for a retry
    /// (serialization failure, deadlock).
    NotCommitted(Error),
    /// The statement was sent and no answer came: it may have committed.
    Unknown(Error),
    /// The server refused the batch itself; retrying would fail again.
    Refused(Error),
}

impl Flusher {
    fn run(mut self) {
        let shared = self.shared.clone();
        let queue = &shared.queue;
        let _guard = queue.worker_guard();
        let config = &shared.config;
        while let Some(batch) = queue.take(config.max_batch, config.max_wait) {
            let (ids, costs) = batch.jobs.into_iter().map(|p| (p.id, p.cost)).unzip();
            let outcome = self.write(&Columns { ids, costs });
            batch.answers.answer(outcome);
        }
    }

    /// Commits `batch`, retrying until the deadline; one result per record.
    fn write(&mut self, batch: &Columns) -> Vec<Result<RecordedCost>> {
        let deadline = Instant::now() + self.shared.config.retry_deadline;
        let mut unknown = false;
        let mut pause = Duration::from_millis(20);
        let failure = loop {
            let error = match self.attempt(batch, unknown) {
                Attempt::Committed(recorded) => {
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .rows
                        .fetch_add(batch.ids.len() as u64, Ordering::Relaxed);
                    return recorded.into_iter().map(Ok).collect();
                }
                Attempt::Refused(e) => break e,
                Attempt::NotCommitted(e) => e,
                Attempt::Unknown(e) => {
                    unknown = true;
                    e
                }
            };
            if Instant::now() + pause > deadline {
                break error;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
        };
        let reason = crate::error::report(&failure);
        batch
            .ids
            .iter()
            .map(|id| {
                Err(Error::NotRecorded {
                    id: id.clone(),
                    outcome_unknown: unknown,
                    reason: reason.clone(),
                })
            })
            .collect()
    }

    /// One statement, committed on its own: a batch of at most [`BULK_CHUNK`] rows is one
    /// `INSERT`, so it is atomic without a transaction and costs one round trip.
    fn attempt(&mut self, batch: &Columns, retry: bool) -> Attempt {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match self.source.connect() {
                Ok(conn) => conn,
                Err(e) => return Attempt::NotCommitted(e),
            },
        };
        let mode = if retry {
            BulkMode::Retry
        } else {
            BulkMode::Insert
        };
        match CostWriteDriver::new(&mut conn).insert_with_ids(&batch.costs, batch.ids.clone(), mode)
        {
            Ok(recorded) => {
                self.conn = Some(conn);
                Attempt::Committed(recorded)
            }
            // The server rolled the statement back and asks for it again.
            Err(e) if must_retry(&e) => {
                self.conn = Some(conn);
                Attempt::NotCommitted(e)
            }
            // The connection went away while the statement ran: it may have committed.
            // The connection is dropped; the next attempt opens a new one.
            Err(e) if lost(&e) || !alive(&mut conn) => Attempt::Unknown(e),
            Err(e) => {
                self.conn = Some(conn);
                Attempt::Refused(e)
            }
        }
    }
}
