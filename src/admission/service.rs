//! `AdmissionService`: [`AdmissionDriver`]'s reserve, settle and release for many callers at
//! once, committed in batches on a connection of its own.
//!
//! Callers block until the transaction holding their request has committed. One worker
//! thread takes whatever is queued (up to [`AdmissionConfig::max_batch`]) in arrival order
//! and decides all of it in **one** transaction, so the budget counters a batch touches
//! are locked once and flushed to disk once for all of its requests. Each request is
//! decided exactly as [`AdmissionDriver`] decides it, seeing the requests before it in the
//! batch. Every counter lock of a batch is taken in one statement, in the key order every
//! admission uses, so batches and `AdmissionDriver` callers do not deadlock (one the
//! server reported anyway would roll the batch back and run it again). The requests of a
//! batch were all waiting at once, so any order of them is one they could have arrived
//! in: the reservations first come, first served, then the settlements and releases. A
//! hard limit is never passed.
//!
//! The common batch — every settlement or release closes a held reservation once, each
//! cost record falls on its reservation's day — is one statement (`costdb_admit_batch`)
//! that commits on its own: one round trip. Any other batch makes that statement write
//! nothing, and runs with the driver's statements one by one.
//!
//! Bad input is refused at once, before it is queued. A request the driver refuses (a
//! repeated request whose reservation is closed, an unknown reservation) gets its typed
//! error and the rest of the batch goes on. When a statement fails, the batch is rolled
//! back and its requests run again one transaction each, so only the failing one gets the
//! error. When the connection is lost, the batch is retried on a new one until
//! [`AdmissionConfig::retry_deadline`]: every request is idempotent by its request id, so a
//! batch that had committed unseen reserves and bills nothing twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde::Serialize;

use super::{check_settlement, Admission, AdmissionDriver, Reservation, ReserveInput, Settlement};
use crate::batching::Queue;
use crate::db::{self, alive, lost, must_retry};
use crate::error::{Error, Result};
use crate::models::CostInput;
use crate::prepared::{Param, Prepared};
use crate::sql_fns::set_config;
use crate::types::TenantId;

/// How an [`AdmissionService`] batches and how long it keeps trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// The most requests one transaction decides.
    pub max_batch: usize,
    /// The most requests queued and not yet being decided; `reserve` waits beyond it and
    /// `try_reserve` answers [`Error::Busy`].
    pub capacity: usize,
    /// How long a batch is retried while the server is unreachable before its callers get
    /// [`Error::NotAdmitted`].
    pub retry_deadline: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_batch: 64,
            capacity: 4_096,
            retry_deadline: Duration::from_secs(30),
        }
    }
}

/// Counters a service can export.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct AdmissionStats {
    /// Transactions committed.
    pub batches: u64,
    /// Requests answered from committed transactions.
    pub requests: u64,
    /// Requests waiting now.
    pub queue_depth: usize,
    /// Requests of the batch being decided now.
    pub in_flight: usize,
    /// Batches run again after a lost connection, a serialization failure or a deadlock.
    pub retries: u64,
    /// Committed batches decided by one statement: the common case, where every
    /// settlement or release closes a held reservation once, on its day. The others ran
    /// statement by statement (a settlement on another day than its reservation's, a
    /// request billed before, a reservation closed twice, …).
    pub one_statement: u64,
}

impl AdmissionStats {
    /// Requests per committed transaction.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.requests as f64 / self.batches as f64
        }
    }
}

/// One queued request.
enum Job {
    Reserve(TenantId, ReserveInput),
    Settle(Reservation, CostInput),
    Release(Reservation),
}

/// A request's answer.
enum Answer {
    Reserved(Admission),
    Settled(Settlement),
    Released(bool),
}

impl Job {
    /// The request id it is about.
    fn request_id(&self) -> &str {
        match self {
            Job::Reserve(_, input) => &input.request_id,
            Job::Settle(r, _) | Job::Release(r) => &r.request_id,
        }
    }

    /// Runs the request with the driver inside the caller's transaction.
    fn run(&self, conn: &mut PgConnection) -> Result<Answer> {
        let mut d = AdmissionDriver::new(conn);
        Ok(match self {
            Job::Reserve(tenant, input) => Answer::Reserved(d.reserve(tenant, input)?),
            Job::Settle(reservation, actual) => Answer::Settled(d.settle(reservation, actual)?),
            Job::Release(reservation) => Answer::Released(d.release(reservation)?),
        })
    }
}

struct Shared {
    config: AdmissionConfig,
    queue: Queue<Job, Answer>,
    batches: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    one_statement: AtomicU64,
}

/// What a caller whose request was never decided gets: the worker stopped (only a bug can
/// make it), so the request may or may not have been committed.
fn abandoned(request_id: String) -> Error {
    Error::NotAdmitted {
        request_id,
        outcome_unknown: true,
        reason: "the admission service's worker thread stopped".into(),
    }
}

/// Shuts the service down when the last handle goes.
struct Handle {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        close(&self.shared, &self.worker);
    }
}

fn close(shared: &Shared, worker: &Mutex<Option<JoinHandle<()>>>) {
    shared.queue.close();
    if let Some(handle) = worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = handle.join();
    }
}

/// [`AdmissionDriver`]'s reserve, settle and release for many callers at once, committed in
/// batches on a connection of its own.
///
/// Callers block until the transaction holding their request has committed. One worker
/// thread takes whatever is queued (up to [`AdmissionConfig::max_batch`]) and decides it in
/// one transaction, taking every counter lock it needs in the one key order all admissions
/// use: the reservations in the order they came, then the settlements and releases, each
/// as the driver decides it. The requests of a batch were all waiting at once, so any
/// order of them is one they could have arrived in. A hard limit is never
/// passed, and a request id is reserved and billed once, also when a lost connection
/// makes the worker retry a batch whose commit it never saw.
///
/// Bad input is refused before it is queued; a request the driver refuses gets its own
/// typed error while the rest of the batch goes on.
///
/// `Send + Sync + Clone`: clones share one queue and one worker; dropping the last one
/// shuts it down as [`AdmissionService::shutdown`] does.
#[derive(Clone)]
pub struct AdmissionService {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for AdmissionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionService")
            .field("config", &self.handle.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl AdmissionService {
    /// Starts a service whose worker connects to `database_url`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero batch size or capacity; a connection error when
    /// the server cannot be reached now.
    pub fn start(database_url: &str, config: AdmissionConfig) -> Result<Self> {
        if config.max_batch == 0 {
            return Err(Error::invalid("max_batch", "must be at least 1"));
        }
        if config.capacity == 0 {
            return Err(Error::invalid("capacity", "must be at least 1"));
        }
        let url = database_url.to_owned();
        let conn = connect(&url)?;
        let shared = Arc::new(Shared {
            queue: Queue::new(
                config.capacity,
                |job: &Job| job.request_id().to_owned(),
                abandoned,
            ),
            config,
            batches: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            one_statement: AtomicU64::new(0),
        });
        let worker = Worker {
            shared: shared.clone(),
            url,
            conn: Some(conn),
            replan_at: FIRST_REPLAN,
        };
        let thread = std::thread::Builder::new()
            .name("costdb-admission".into())
            .spawn(move || worker.run())
            .map_err(|source| Error::Thread {
                what: "the admission service's worker",
                source,
            })?;
        Ok(AdmissionService {
            handle: Arc::new(Handle {
                shared,
                worker: Mutex::new(Some(thread)),
            }),
        })
    }

    /// [`AdmissionDriver::reserve`], answered once the batch holding it has committed.
    /// Waits while the queue is full.
    ///
    /// # Errors
    /// As the driver's; [`Error::InvalidInput`] at once, queueing nothing; [`Error::Closed`]
    /// after shutdown; [`Error::NotAdmitted`] when no batch holding it could be committed.
    pub fn reserve(&self, tenant_id: &TenantId, input: &ReserveInput) -> Result<Admission> {
        input.validate()?;
        match self.submit(Job::Reserve(tenant_id.clone(), input.clone()), true)? {
            Answer::Reserved(admission) => Ok(admission),
            _ => unreachable!("a reserve is answered with an admission"),
        }
    }

    /// [`Self::reserve`], but answers [`Error::Busy`] at once when the queue is full.
    pub fn try_reserve(&self, tenant_id: &TenantId, input: &ReserveInput) -> Result<Admission> {
        input.validate()?;
        match self.submit(Job::Reserve(tenant_id.clone(), input.clone()), false)? {
            Answer::Reserved(admission) => Ok(admission),
            _ => unreachable!("a reserve is answered with an admission"),
        }
    }

    /// [`AdmissionDriver::settle`]: the cost record, its rollups and the counters' deltas
    /// committed with the rest of its batch.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub fn settle(&self, reservation: &Reservation, actual: &CostInput) -> Result<Settlement> {
        check_settlement(reservation, actual)?;
        match self.submit(Job::Settle(reservation.clone(), actual.clone()), true)? {
            Answer::Settled(settlement) => Ok(settlement),
            _ => unreachable!("a settle is answered with a settlement"),
        }
    }

    /// [`AdmissionDriver::release`]. After a lost connection whose commit had in fact
    /// released it, the retry finds it no longer held and answers false.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub fn release(&self, reservation: &Reservation) -> Result<bool> {
        match self.submit(Job::Release(reservation.clone()), true)? {
            Answer::Released(released) => Ok(released),
            _ => unreachable!("a release is answered with a flag"),
        }
    }

    fn submit(&self, job: Job, wait: bool) -> Result<Answer> {
        self.handle.shared.queue.submit(job, wait)
    }

    /// The counters so far.
    pub fn stats(&self) -> AdmissionStats {
        let shared = &self.handle.shared;
        AdmissionStats {
            batches: shared.batches.load(Ordering::Relaxed),
            requests: shared.requests.load(Ordering::Relaxed),
            queue_depth: shared.queue.depth(),
            in_flight: shared.queue.in_flight(),
            retries: shared.retries.load(Ordering::Relaxed),
            one_statement: shared.one_statement.load(Ordering::Relaxed),
        }
    }

    /// Stops taking requests, decides everything queued, and waits for it. Later calls
    /// return [`Error::Closed`]. Dropping the last handle does the same.
    pub fn shutdown(&self) {
        close(&self.handle.shared, &self.handle.worker);
    }
}

fn connect(url: &str) -> Result<PgConnection> {
    let mut conn = db::connect(url)?;
    diesel::select(set_config("application_name", "costdb-admission", false)).execute(&mut conn)?;
    // Every statement of the service finds its rows by key. The server keeps one plan per
    // statement and session; one made while a table was still small would scan it whole,
    // and go on doing so as it grows.
    diesel::select(set_config("enable_seqscan", "off", false)).execute(&mut conn)?;
    Ok(conn)
}

/// The whole batch in one statement, committed on its own (the common case): `None`,
/// having written nothing, when it needs the full path. A reservation left undecided (a
/// budget changed under it) has no answer yet.
fn one_statement(
    conn: &mut PgConnection,
    batch: &[Job],
) -> Result<Option<Vec<Option<Result<Answer>>>>> {
    let (mut reserves, mut settles, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    for q in batch {
        match q {
            Job::Reserve(tenant, input) => reserves.push((tenant, input)),
            Job::Settle(reservation, actual) => settles.push((reservation, actual)),
            Job::Release(reservation) => releases.push(reservation),
        }
    }
    let Some(admitted) = AdmissionDriver::new(conn).admit_batch(&reserves, &settles, &releases)?
    else {
        return Ok(None);
    };
    let mut reserved = admitted.reserved.into_iter();
    let mut settled = admitted.settled.into_iter();
    Ok(Some(
        batch
            .iter()
            .map(|q| match q {
                Job::Reserve(..) => reserved
                    .next()
                    .expect("one answer per request")
                    .map(|answer| answer.map(Answer::Reserved)),
                Job::Settle(..) => Some(Ok(Answer::Settled(
                    settled.next().expect("one answer per settlement"),
                ))),
                Job::Release(_) => Some(Ok(Answer::Released(true))),
            })
            .collect(),
    ))
}

/// How one try of a batch ended.
enum Attempt {
    /// Committed: one answer per request.
    Committed(Vec<Result<Answer>>),
    /// Rolled back by the server for a reason that may pass (serialization, deadlock), or
    /// never sent: try the same again.
    NotCommitted(Error),
    /// The connection was lost while the batch ran or committed.
    Unknown(Error),
    /// A statement of one request failed: run the requests one by one.
    Isolate,
}

struct Worker {
    shared: Arc<Shared>,
    url: String,
    conn: Option<PgConnection>,
    /// The batch count at which the session's plans are made again.
    replan_at: u64,
}

/// The first batch count at which the worker's plans are made again; then at every
/// doubling.
const FIRST_REPLAN: u64 = 8;

/// Which tables outgrew their statistics (see [`replan`]).
const STALE_TABLES: &str = include_str!("stale_tables.sql");

/// The tables a batch reads by key, each with the statement that analyzes it.
const ANALYZED: [(&str, &str); 2] = [
    ("budget_reservations", "ANALYZE budget_reservations"),
    ("budget_counters", "ANALYZE budget_counters"),
];

/// Analyzes the tables of [`ANALYZED`] that hold more than twice the pages they held at
/// their last analysis (and at least 16), then has the session plan again.
fn replan(conn: &mut PgConnection) -> Result<()> {
    #[derive(QueryableByName)]
    struct Stale {
        #[diesel(sql_type = diesel::sql_types::Text)]
        relname: String,
    }
    let tables: Vec<&str> = ANALYZED.iter().map(|(table, _)| *table).collect();
    let stale: Vec<Stale> = Prepared {
        sql: STALE_TABLES,
        params: &[Param::Strs(&tables)],
    }
    .load(conn)?;
    for (table, analyze) in ANALYZED {
        if stale.iter().any(|s| s.relname == table) {
            conn.batch_execute(analyze)?;
        }
    }
    conn.batch_execute("DISCARD PLANS")?;
    Ok(())
}

impl Worker {
    fn run(mut self) {
        let shared = self.shared.clone();
        let queue = &shared.queue;
        let _guard = queue.worker_guard();
        while let Some(batch) = queue.take(shared.config.max_batch, Duration::ZERO) {
            self.replan_when_due();
            let answers = self.decide(&batch.jobs);
            batch.answers.answer(answers);
        }
    }

    /// Answers every request of `batch`, retrying until the deadline.
    fn decide(&mut self, batch: &[Job]) -> Vec<Result<Answer>> {
        let deadline = Instant::now() + self.shared.config.retry_deadline;
        let mut unknown = false;
        let mut pause = Duration::from_millis(20);
        let failure = loop {
            let error = match self.attempt(batch) {
                Attempt::Committed(answers) => {
                    self.count(answers.len());
                    return answers;
                }
                Attempt::Isolate => return batch.iter().map(|q| self.alone(q)).collect(),
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
            .iter()
            .map(|q| {
                Err(Error::NotAdmitted {
                    request_id: q.request_id().to_owned(),
                    outcome_unknown: unknown,
                    reason: reason.clone(),
                })
            })
            .collect()
    }

    /// Has the session plan its statements again at batch 8, 16, 32…, first analyzing
    /// the tables a batch reads that have more than doubled since they were last
    /// analyzed (see [`replan`]). The server keeps one plan per statement and session, and a plan made
    /// while the tables were small (a fresh database) may find a tenant's rows through
    /// the tenant alone, and read all of them as they grow, until autovacuum analyzes
    /// the tables. The last plan is never older than half the worker's life. Without the
    /// right to analyze a table, the server skips it with a warning.
    fn replan_when_due(&mut self) {
        let batches = self.shared.batches.load(Ordering::Relaxed);
        if batches < self.replan_at {
            return;
        }
        self.replan_at = batches.saturating_mul(2);
        if let Some(conn) = self.conn.as_mut() {
            // A failure here is the connection's: the batch's own attempt reports it.
            let _ = replan(conn);
        }
    }

    fn count(&self, requests: usize) {
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .requests
            .fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// The connection, opened again if the last one was lost.
    fn conn(&mut self) -> Result<PgConnection> {
        match self.conn.take() {
            Some(conn) => Ok(conn),
            None => connect(&self.url),
        }
    }

    /// Every request of the batch in one transaction: one statement when it can, the
    /// driver's statements one by one when the batch needs them.
    fn attempt(&mut self, batch: &[Job]) -> Attempt {
        let mut conn = match self.conn() {
            Ok(conn) => conn,
            Err(e) => return Attempt::NotCommitted(e),
        };
        match one_statement(&mut conn, batch) {
            Ok(Some(answers)) => {
                self.conn = Some(conn);
                self.shared.one_statement.fetch_add(1, Ordering::Relaxed);
                // The rare reservation left undecided goes again in a transaction of its
                // own, as the driver decides it.
                let answers = answers
                    .into_iter()
                    .zip(batch)
                    .map(|(answer, q)| answer.unwrap_or_else(|| self.alone(q)))
                    .collect();
                return Attempt::Committed(answers);
            }
            // Nothing was written: the full path below decides.
            Ok(None) => {}
            Err(e) if lost(&e) || !alive(&mut conn) => return Attempt::Unknown(e),
            Err(e) if must_retry(&e) => {
                self.conn = Some(conn);
                return Attempt::NotCommitted(e);
            }
            // The full path below finds the request that fails.
            Err(_) => {}
        }
        let outcome = conn.transaction(|c| {
            // First the settlements' and releases' reservations are locked and their cost
            // records written; then one call locks, in the key order every admission
            // uses, the counters of the reservations and those the closes will change,
            // and decides the reservations in the order they came; then the closes move
            // the counters. The requests of a batch were all waiting at once, so this
            // order is one they could have arrived in.
            let mut answers: Vec<Option<Result<Answer>>> = batch.iter().map(|_| None).collect();
            let mut settles = Vec::new();
            let mut reserves = Vec::new();
            let mut closes = Vec::new();
            for (i, q) in batch.iter().enumerate() {
                match q {
                    Job::Settle(reservation, actual) => settles.push((i, (reservation, actual))),
                    Job::Reserve(tenant, input) => reserves.push((i, (tenant, input))),
                    Job::Release(reservation) => {
                        let release = AdmissionDriver::new(c).prepare_release(reservation);
                        answers[i] = Some(release.map(|close| {
                            let released = close.is_some();
                            closes.extend(close);
                            Answer::Released(released)
                        }));
                    }
                }
            }
            if !settles.is_empty() {
                let (at, settlements): (Vec<usize>, Vec<_>) = settles.into_iter().unzip();
                let (settled, more) = AdmissionDriver::new(c).prepare_settlements(&settlements)?;
                closes.extend(more);
                for (i, answer) in at.into_iter().zip(settled) {
                    answers[i] = Some(answer.map(Answer::Settled));
                }
            }
            let mut lock: Vec<_> = closes.iter().flat_map(|c| c.counters()).collect();
            lock.sort();
            lock.dedup();
            if !reserves.is_empty() || !lock.is_empty() {
                let (at, requests): (Vec<usize>, Vec<_>) = reserves.into_iter().unzip();
                let decided = AdmissionDriver::new(c).reserve_batch(&requests, &lock)?;
                for (i, answer) in at.into_iter().zip(decided) {
                    answers[i] = Some(answer.map(Answer::Reserved));
                }
            }
            AdmissionDriver::new(c).close(&closes)?;
            answers
                .into_iter()
                .map(|answer| match answer.expect("every request is answered") {
                    // A statement failed: the transaction is aborted.
                    Err(e @ Error::Database(_)) => Err(e),
                    answer => Ok(answer),
                })
                .collect::<Result<Vec<_>>>()
        });
        match outcome {
            Ok(answers) => {
                self.conn = Some(conn);
                Attempt::Committed(answers)
            }
            Err(e) if lost(&e) || !alive(&mut conn) => Attempt::Unknown(e),
            Err(e) if must_retry(&e) => {
                self.conn = Some(conn);
                Attempt::NotCommitted(e)
            }
            Err(_) => {
                self.conn = Some(conn);
                Attempt::Isolate
            }
        }
    }

    /// One request in a transaction of its own, retried like a batch.
    fn alone(&mut self, job: &Job) -> Result<Answer> {
        let deadline = Instant::now() + self.shared.config.retry_deadline;
        loop {
            let mut conn = self.conn()?;
            let outcome = conn.transaction(|c| job.run(c));
            let retry = match &outcome {
                Err(e) if lost(e) || !alive(&mut conn) => true,
                Err(e) if must_retry(e) => {
                    self.conn = Some(conn);
                    true
                }
                _ => {
                    self.conn = Some(conn);
                    false
                }
            };
            if !retry || Instant::now() >= deadline {
                if outcome.is_ok() {
                    self.count(1);
                }
                return outcome;
            }
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
