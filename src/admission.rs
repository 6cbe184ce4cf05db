//! Budget admission: reserve before an LLM call, settle or release after, never over a
//! hard limit.
//!
//! Each active budget has two counters per window, `daily` for a UTC day and `monthly` for
//! a UTC month, holding exact decimal sums of spend and of outstanding reservations. A
//! [`AdmissionDriver::reserve`] decides in one statement: it locks every counter of the
//! request's budgets in one fixed order (budget id, period, window), checks that each hard
//! limit still has room for the estimate, and only then adds the estimate to all of them
//! and stores the reservation: all scopes or none, and never read-then-write. A new day or
//! month is a new counter row, never a reset in place.
//!
//! The gate borrows the caller's connection and transaction like every driver. Make one
//! reservation (or settlement) per transaction and commit it before the LLM call: the
//! counters stay locked until the transaction ends. In `REPEATABLE READ` or `SERIALIZABLE`
//! transactions a concurrent reservation of the same budget fails with a serialization
//! error, which the caller retries; the default `READ COMMITTED` waits instead.
//!
//! Counters count what goes through the gate; [`AdmissionDriver::reconcile`] compares them with
//! the cost records of each budget's scope and shows spend that bypassed it.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Date, Double, Int4, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::db::require_transaction;
use crate::drivers::cost_write::{BulkMode, CostColumns, CostWriteDriver};
use crate::error::{Error, Result};
use crate::models::{ids, BudgetPeriod, BudgetType, CostInput, CostRecord, ReservationStatus};
use crate::prepared::{Param, PlannedPerCall, Prepared};
use crate::schema::budget_reservations;
use crate::sql_fns::numeric_float8;
use crate::types::{limits, TenantId};
use crate::validate;

mod service;
pub use service::{AdmissionConfig, AdmissionService, AdmissionStats};

/// What a request asks of its budgets, for [`AdmissionDriver::reserve`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReserveInput {
    /// The call's idempotency key (at most 64 characters): one reservation, and later one
    /// cost record, per tenant and request.
    pub request_id: String,
    /// The feature tag the call is made for; its feature budget applies (at most 128).
    pub feature_tag: Option<String>,
    /// The end user the call is made for; their user budget applies (at most 64).
    pub user_id: Option<String>,
    /// What the call is expected to cost, in cents.
    pub estimated_cents: f64,
    /// When the reservation may be reclaimed if it was neither settled nor released.
    pub expires_at: DateTime<Utc>,
    /// The caller's now: its UTC day and month pick the counters.
    pub now: DateTime<Utc>,
}

impl ReserveInput {
    /// Refuses bad input before any SQL, naming the field.
    pub(crate) fn validate(&self) -> Result<()> {
        validate::required("request_id", &self.request_id, limits::COST_ID)?;
        validate::optional("feature_tag", self.feature_tag.as_deref(), limits::TAG)?;
        validate::optional("user_id", self.user_id.as_deref(), limits::COST_ID)?;
        validate::amount("estimated_cents", self.estimated_cents)?;
        validate::instant("now", self.now)?;
        validate::instant("expires_at", self.expires_at)?;
        if self.expires_at <= self.now {
            return Err(Error::invalid("expires_at", "must be after `now`"));
        }
        Ok(())
    }
}

/// How one locked reservation is closed (see `close.sql`).
pub(crate) struct Close {
    tenant_id: String,
    id: String,
    status: ReservationStatus,
    /// Give its estimate back.
    release: bool,
    /// Spend added to the counters of `day` and its month.
    charge: f64,
    day: NaiveDate,
    actual_cents: Option<f64>,
    record_id: Option<String>,
    /// The reservation's budgets and day: whose counters the release changes.
    budget_ids: Vec<String>,
    held_day: NaiveDate,
}

/// How a held reservation is released.
fn released(held: &Reservation) -> Close {
    Close {
        tenant_id: held.tenant_id.clone(),
        id: held.id.clone(),
        status: ReservationStatus::Released,
        release: true,
        charge: 0.0,
        day: held.day,
        actual_cents: None,
        record_id: None,
        budget_ids: held.budget_ids.clone(),
        held_day: held.day,
    }
}

/// A budget counter's key, in its order: tenant, budget, period, window start.
pub(crate) type CounterKey = (String, String, BudgetPeriod, NaiveDate);

impl Close {
    /// The counters it changes.
    pub(crate) fn counters(&self) -> Vec<CounterKey> {
        let mut windows = Vec::new();
        if self.release {
            windows.push(self.held_day);
        }
        if self.charge != 0.0 {
            windows.push(self.day);
        }
        let mut keys = Vec::new();
        for budget in &self.budget_ids {
            for day in &windows {
                let key = |period, start| (self.tenant_id.clone(), budget.clone(), period, start);
                keys.push(key(BudgetPeriod::Daily, *day));
                keys.push(key(BudgetPeriod::Monthly, month_of(*day)));
            }
        }
        keys
    }
}

/// Refuses an actual cost that is bad input or does not belong to `reservation`.
pub(crate) fn check_settlement(reservation: &Reservation, actual: &CostInput) -> Result<()> {
    actual.validate()?;
    let matches = |field: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(field, "differs from the reservation's"))
        }
    };
    matches("tenant_id", actual.tenant_id == reservation.tenant_id)?;
    matches(
        "request_id",
        actual
            .request_id
            .as_ref()
            .is_none_or(|r| *r == reservation.request_id),
    )?;
    matches("feature_tag", actual.feature_tag == reservation.feature_tag)?;
    matches("user_id", actual.user_id == reservation.user_id)
}

/// A held reservation: the estimate counted against every budget it names.
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct Reservation {
    /// `rsv_` + 16 hex.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Owning tenant.
    #[diesel(sql_type = Text)]
    pub tenant_id: String,
    /// The request it admits.
    #[diesel(sql_type = Text)]
    pub request_id: String,
    /// The feature tag it was made for.
    #[diesel(sql_type = Nullable<Text>)]
    pub feature_tag: Option<String>,
    /// The user it was made for.
    #[diesel(sql_type = Nullable<Text>)]
    pub user_id: Option<String>,
    /// The estimate held, in cents, as stored: an exact decimal of the input's first 15
    /// significant digits (`0.1 + 0.2` is held as `0.3`).
    #[diesel(sql_type = Double)]
    pub estimated_cents: f64,
    /// The budgets charged, in key order (empty when no budget applied).
    #[diesel(sql_type = Array<Text>)]
    pub budget_ids: Vec<String>,
    /// The UTC day whose daily counters hold the estimate.
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    /// The first day of the UTC month whose monthly counters hold it.
    #[diesel(sql_type = Date)]
    pub month: NaiveDate,
    /// Where it stands.
    #[diesel(sql_type = Text)]
    pub status: ReservationStatus,
    /// When it may be reclaimed.
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// One budget counter as a reservation found it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetUse {
    /// The budget.
    pub budget_id: String,
    /// Its scope's kind.
    pub budget_type: BudgetType,
    /// The feature tag or user of a feature or user budget.
    pub entity_id: Option<String>,
    /// The window.
    pub period: BudgetPeriod,
    /// The UTC day, or the first day of the UTC month.
    pub window_start: NaiveDate,
    /// The limit of this period, in cents.
    pub limit_cents: i32,
    /// Whether the limit is enforced.
    pub hard_limit: bool,
    /// The warning threshold, in percent of the limit.
    pub warn_threshold_pct: i32,
    /// Spend settled in this window before the request, in cents.
    pub spent_cents: f64,
    /// Other reservations outstanding in this window before the request, in cents.
    pub reserved_cents: f64,
}

/// The verdict of [`AdmissionDriver::reserve`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Admission {
    /// The estimate is held against every applicable budget.
    Admitted {
        /// The reservation to settle or release.
        reservation: Reservation,
        /// Counters this request brought to or past their warning threshold (soft budgets
        /// also past their limit), as they stood before it.
        warnings: Vec<BudgetUse>,
    },
    /// A hard limit has no room for the estimate: nothing was reserved anywhere.
    Refused {
        /// The first full budget counter, in key order.
        budget: BudgetUse,
    },
}

/// What [`AdmissionDriver::settle`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settlement {
    /// The request's cost record (the earlier one when it was already billed).
    pub cost: CostRecord,
    /// Whether the actual cost was added to the counters (false: the request was billed
    /// before, or the reservation was already settled).
    pub charged: bool,
    /// Whether the estimate was given back here (false when the reservation had expired,
    /// been released, or been settled already).
    pub released: bool,
}

/// One counter beside the cost records of its budget's scope and window.
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct ReconcileLine {
    /// The budget.
    #[diesel(sql_type = Text)]
    pub budget_id: String,
    /// Its scope's kind.
    #[diesel(sql_type = Text)]
    pub budget_type: BudgetType,
    /// The feature tag or user of a feature or user budget.
    #[diesel(sql_type = Nullable<Text>)]
    pub entity_id: Option<String>,
    /// The window.
    #[diesel(sql_type = Text)]
    pub period: BudgetPeriod,
    /// The UTC day, or the first day of the UTC month.
    #[diesel(sql_type = Date)]
    pub window_start: NaiveDate,
    /// Spend the counter holds (0 when the window has no counter).
    #[diesel(sql_type = Double)]
    pub counted_cents: f64,
    /// Reservations the counter still holds.
    #[diesel(sql_type = Double)]
    pub reserved_cents: f64,
    /// The sum of the scope's cost records in the window.
    #[diesel(sql_type = Double)]
    pub recorded_cents: f64,
    /// `counted - recorded`, computed exactly: negative when spend bypassed the gate.
    #[diesel(sql_type = Double)]
    pub difference_cents: f64,
}

impl ReconcileLine {
    /// Whether the counter equals the records exactly.
    pub fn matches(&self) -> bool {
        self.difference_cents == 0.0
    }
}

/// Reservations of many requests decided in one statement (see the file).
const RESERVE: &str = include_str!("admission/reserve_batch.sql");
/// A whole batch in one statement, for the common case (see the file).
const ADMIT: &str = include_str!("admission/admit_batch.sql");
/// What [`ADMIT`] raises, writing nothing, when its batch needs the full path.
const FULL_PATH: &str = "costdb: admit batch needs the full path";
/// Creates the missing counters of some budgets for a day and a month.
const ENSURE_WINDOW: &str = include_str!("admission/ensure_window.sql");
/// Closes locked reservations and applies their deltas to the counters.
const CLOSE: &str = include_str!("admission/close.sql");
/// Expires held reservations past their expiry and gives their estimates back.
const RECLAIM: &str = include_str!("admission/reclaim.sql");
/// Every active budget of a tenant beside the exact sums of its records.
const RECONCILE: &str = include_str!("admission/reconcile.sql");

/// A reservation as the table holds it (the estimate read as `float8`).
#[derive(Queryable, Selectable)]
#[diesel(table_name = budget_reservations, check_for_backend(diesel::pg::Pg))]
struct ReservationRow {
    id: String,
    tenant_id: String,
    request_id: String,
    feature_tag: Option<String>,
    user_id: Option<String>,
    #[diesel(select_expression = numeric_float8(budget_reservations::estimated_cents))]
    #[diesel(select_expression_type = numeric_float8<budget_reservations::estimated_cents>)]
    estimated_cents: f64,
    budget_ids: Vec<Option<String>>,
    day: NaiveDate,
    month: NaiveDate,
    status: ReservationStatus,
    expires_at: DateTime<Utc>,
}

impl From<ReservationRow> for Reservation {
    fn from(r: ReservationRow) -> Self {
        Reservation {
            id: r.id,
            tenant_id: r.tenant_id,
            request_id: r.request_id,
            feature_tag: r.feature_tag,
            user_id: r.user_id,
            estimated_cents: r.estimated_cents,
            budget_ids: r.budget_ids.into_iter().flatten().collect(),
            day: r.day,
            month: r.month,
            status: r.status,
            expires_at: r.expires_at,
        }
    }
}

#[derive(QueryableByName)]
struct VerdictRow {
    /// The request's place in its batch, from 1.
    #[diesel(sql_type = Int4)]
    n: i32,
    #[diesel(sql_type = Bool)]
    ready: bool,
    #[diesel(sql_type = Bool)]
    repeated: bool,
    #[diesel(sql_type = Bool)]
    fits: bool,
    #[diesel(sql_type = Bool)]
    held: bool,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    held_budget_ids: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<Double>)]
    held_estimate: Option<f64>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    held_expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    budget_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    budget_type: Option<BudgetType>,
    #[diesel(sql_type = Nullable<Text>)]
    entity_id: Option<String>,
    #[diesel(sql_type = Nullable<Bool>)]
    hard: Option<bool>,
    #[diesel(sql_type = Nullable<Int4>)]
    warn_pct: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    period: Option<BudgetPeriod>,
    #[diesel(sql_type = Nullable<Date>)]
    window_start: Option<NaiveDate>,
    #[diesel(sql_type = Nullable<Int4>)]
    limit_cents: Option<i32>,
    #[diesel(sql_type = Nullable<Double>)]
    spent_cents: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    reserved_cents: Option<f64>,
    /// This hard limit has no room for the estimate (exactly, in `numeric`).
    #[diesel(sql_type = Nullable<Bool>)]
    full: Option<bool>,
    /// The estimate brings this counter to its warning threshold.
    #[diesel(sql_type = Nullable<Bool>)]
    warns: Option<bool>,
}

impl VerdictRow {
    /// The counter of a row that has one and a limit for its period.
    fn budget_use(&self) -> Option<BudgetUse> {
        Some(BudgetUse {
            budget_id: self.budget_id.clone()?,
            budget_type: self.budget_type?,
            entity_id: self.entity_id.clone(),
            period: self.period?,
            window_start: self.window_start?,
            limit_cents: self.limit_cents?,
            hard_limit: self.hard?,
            warn_threshold_pct: self.warn_pct?,
            spent_cents: self.spent_cents?,
            reserved_cents: self.reserved_cents?,
        })
    }
}

/// Reservation requests as the batch functions take them: one array per column, element i
/// of each the request i.
struct RequestColumns<'a> {
    tenants: Vec<&'a str>,
    tags: Vec<Option<&'a str>>,
    users: Vec<Option<&'a str>>,
    days: Vec<NaiveDate>,
    estimates: Vec<f64>,
    ids: Vec<&'a str>,
    requests: Vec<&'a str>,
    expires: Vec<Option<DateTime<Utc>>>,
}

impl<'a> RequestColumns<'a> {
    /// The columns of `requests`: tenant, input and the reservation id it would get.
    fn new(requests: impl Iterator<Item = (&'a TenantId, &'a ReserveInput, &'a str)>) -> Self {
        let mut c = RequestColumns {
            tenants: Vec::new(),
            tags: Vec::new(),
            users: Vec::new(),
            days: Vec::new(),
            estimates: Vec::new(),
            ids: Vec::new(),
            requests: Vec::new(),
            expires: Vec::new(),
        };
        for (tenant, input, id) in requests {
            c.tenants.push(tenant.as_str());
            c.tags.push(input.feature_tag.as_deref());
            c.users.push(input.user_id.as_deref());
            c.days.push(input.now.date_naive());
            // `-0` is held as `0`.
            c.estimates.push(input.estimated_cents + 0.0);
            c.ids.push(id);
            c.requests.push(input.request_id.as_str());
            c.expires.push(Some(input.expires_at));
        }
        c
    }

    /// The first eight parameters of either batch function.
    fn params(&self) -> [Param<'_>; 8] {
        [
            Param::Strs(&self.tenants),
            Param::OptTexts(&self.tags),
            Param::OptTexts(&self.users),
            Param::Days(&self.days),
            Param::Floats(&self.estimates),
            Param::Strs(&self.ids),
            Param::Strs(&self.requests),
            Param::OptInstants(&self.expires),
        ]
    }
}

/// A row of [`ADMIT`]: a verdict row of a reservation (`n` from 1), or a settlement's
/// (`n` from -1 down) with its record's instant.
#[derive(QueryableByName)]
struct AdmitRow {
    #[diesel(embed)]
    verdict: VerdictRow,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    created_at: Option<DateTime<Utc>>,
}

/// What one statement answered for a whole batch: each reservation's verdict (`None` when
/// a budget changed under it and it must be decided again), and each settlement (every
/// one charged and released).
pub(crate) struct Admitted {
    pub(crate) reserved: Vec<Option<Result<Admission>>>,
    pub(crate) settled: Vec<Settlement>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The UTC month `at` falls in, as its first day.
fn month_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a first day")
}

/// Budget admission over the caller's connection and transaction (see the
/// [module docs](self)).
pub struct AdmissionDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> AdmissionDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        AdmissionDriver { conn }
    }

    /// Reserves `estimated_cents` against every active budget of the tenant that applies
    /// to the request (the tenant's, its feature tag's, its user's), all or none.
    ///
    /// A hard budget refuses when its spend plus outstanding reservations plus the
    /// estimate would pass a limit of the day or month of `now`; a soft budget admits and
    /// reports the crossing in `warnings`. With no applicable budget the request is
    /// admitted with an empty `budget_ids`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for bad input; [`Error::Conflict`] when the tenant already
    /// has a reservation for `request_id` that is no longer held. A repeated request whose
    /// reservation is held gets that reservation back, charged once.
    pub fn reserve(&mut self, tenant_id: &TenantId, input: &ReserveInput) -> Result<Admission> {
        input.validate()?;
        require_transaction(self.conn)?;
        self.reserve_batch(&[(tenant_id, input)], &[])?
            .pop()
            .expect("one answer per request")
    }

    /// Decides `requests` (validated, inside the caller's transaction) in order, each as
    /// [`reserve`](Self::reserve) would one after the other, with one statement for all of
    /// them in the common case. It first locks, in key order, their counters and those of
    /// `lock` (what the caller changes next in the same transaction). The outer error is
    /// the batch's; each request has its own.
    pub(crate) fn reserve_batch(
        &mut self,
        requests: &[(&TenantId, &ReserveInput)],
        lock: &[CounterKey],
    ) -> Result<Vec<Result<Admission>>> {
        let held_ids: Vec<String> = requests.iter().map(|_| ids::reservation_id()).collect();
        let mut answers: Vec<Option<Result<Admission>>> = requests.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        if pending.is_empty() && !lock.is_empty() {
            // Nothing to decide: only the locks.
            self.decide(requests, &held_ids, &pending, lock)?;
        }
        // A budget made active while the batch ran leaves its requests undecided: they
        // are decided again.
        for _ in 0..3 {
            if pending.is_empty() {
                break;
            }
            let rows = self.decide(requests, &held_ids, &pending, lock)?;
            let mut again = Vec::new();
            for (k, &i) in pending.iter().enumerate() {
                let mine: Vec<&VerdictRow> =
                    rows.iter().filter(|r| r.n as usize == k + 1).collect();
                let (tenant_id, input) = requests[i];
                match self.verdict(tenant_id, input, &held_ids[i], &mine) {
                    Some(answer) => answers[i] = Some(answer),
                    None => again.push(i),
                }
            }
            pending = again;
        }
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(Error::Conflict(
                        "the budget counters kept changing while reserving; retry".into(),
                    ))
                })
            })
            .collect())
    }

    /// Reservations, settlements and releases (all checked) in one statement, which
    /// commits on its own when the connection is not in a transaction: the common case of
    /// a batch, where every closed reservation is held and named once, and every
    /// settlement's cost record is new and on its reservation's day. The reservations are
    /// decided as [`reserve`](Self::reserve) decides them. `None`, having written nothing,
    /// when the batch needs the full path (one of those fails). The releases, when it
    /// answers, all released.
    pub(crate) fn admit_batch(
        &mut self,
        requests: &[(&TenantId, &ReserveInput)],
        settlements: &[(&Reservation, &CostInput)],
        releases: &[&Reservation],
    ) -> Result<Option<Admitted>> {
        let held_ids: Vec<String> = requests.iter().map(|_| ids::reservation_id()).collect();
        let record_ids: Vec<String> = settlements.iter().map(|_| ids::cost_record_id()).collect();
        let columns = RequestColumns::new(
            requests
                .iter()
                .zip(&held_ids)
                .map(|(&(tenant, input), id)| (tenant, input, id.as_str())),
        );
        // The settlements' records, under their reservations' request ids.
        let costs: Vec<CostInput> = settlements
            .iter()
            .map(|(reservation, actual)| CostInput {
                request_id: Some(reservation.request_id.clone()),
                ..(*actual).clone()
            })
            .collect();
        let records = CostColumns::new(record_ids.iter().map(String::as_str).zip(&costs));
        let s_ids: Vec<&str> = settlements.iter().map(|s| s.0.id.as_str()).collect();
        let r_ids: Vec<&str> = releases.iter().map(|r| r.id.as_str()).collect();
        let r_tenants: Vec<&str> = releases.iter().map(|r| r.tenant_id.as_str()).collect();
        let mut params = columns.params().to_vec();
        params.push(Param::Strs(&s_ids));
        params.extend(records.params());
        params.extend([Param::Strs(&r_ids), Param::Strs(&r_tenants)]);
        let rows: Vec<AdmitRow> = match (Prepared {
            sql: ADMIT,
            params: &params,
        }
        .load(self.conn))
        {
            Ok(rows) => rows,
            Err(diesel::result::Error::DatabaseError(_, info)) if info.message() == FULL_PATH => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let mut reserved = Vec::with_capacity(requests.len());
        for (k, (tenant_id, input)) in requests.iter().enumerate() {
            let mine: Vec<&VerdictRow> = rows
                .iter()
                .map(|r| &r.verdict)
                .filter(|r| r.n as usize == k + 1)
                .collect();
            reserved.push(self.verdict(tenant_id, input, &held_ids[k], &mine));
        }
        let mut settled = Vec::with_capacity(settlements.len());
        for (k, (cost, id)) in costs.into_iter().zip(record_ids).enumerate() {
            let created_at = rows
                .iter()
                .find(|r| r.verdict.n == -(k as i32 + 1))
                .and_then(|r| r.created_at)
                .ok_or_else(|| Error::Conflict(format!("cost record {id} was not returned")))?;
            settled.push(Settlement {
                cost: cost.into_record(id, created_at),
                charged: true,
                released: true,
            });
        }
        Ok(Some(Admitted { reserved, settled }))
    }

    /// The verdict rows of the requests `pending` (their 1-based place in it as `n`).
    fn decide(
        &mut self,
        requests: &[(&TenantId, &ReserveInput)],
        ids: &[String],
        pending: &[usize],
        lock: &[CounterKey],
    ) -> Result<Vec<VerdictRow>> {
        let lock_tenants: Vec<&str> = lock.iter().map(|k| k.0.as_str()).collect();
        let lock_budgets: Vec<&str> = lock.iter().map(|k| k.1.as_str()).collect();
        let lock_periods: Vec<&str> = lock.iter().map(|k| k.2.as_str()).collect();
        let lock_starts: Vec<NaiveDate> = lock.iter().map(|k| k.3).collect();
        let columns = RequestColumns::new(pending.iter().map(|&i| {
            let (tenant, input) = requests[i];
            (tenant, input, ids[i].as_str())
        }));
        let mut params = columns.params().to_vec();
        params.extend([
            Param::Strs(&lock_tenants),
            Param::Strs(&lock_budgets),
            Param::Strs(&lock_periods),
            Param::Days(&lock_starts),
        ]);
        Ok(Prepared {
            sql: RESERVE,
            params: &params,
        }
        .load(self.conn)?)
    }

    /// One request's answer from its verdict rows; `None` when it must be decided again.
    fn verdict(
        &mut self,
        tenant_id: &TenantId,
        input: &ReserveInput,
        id: &str,
        rows: &[&VerdictRow],
    ) -> Option<Result<Admission>> {
        let verdict = rows.first().expect("the verdict row is always there");
        if verdict.repeated || (verdict.ready && verdict.fits && !verdict.held) {
            return Some(self.repeated(tenant_id, &input.request_id));
        }
        if !verdict.ready {
            return None;
        }
        let flagged = |flag: fn(&VerdictRow) -> Option<bool>| {
            rows.iter()
                .filter(move |r| flag(r) == Some(true))
                .filter_map(|r| r.budget_use())
        };
        if !verdict.fits {
            return Some(
                flagged(|r| r.full)
                    .next()
                    .map(|budget| Admission::Refused { budget })
                    .ok_or_else(|| Error::Conflict("a refusal without a full budget".into())),
            );
        }
        let day = input.now.date_naive();
        let reservation = Reservation {
            id: id.to_owned(),
            tenant_id: tenant_id.into(),
            request_id: input.request_id.clone(),
            feature_tag: input.feature_tag.clone(),
            user_id: input.user_id.clone(),
            estimated_cents: verdict.held_estimate.unwrap_or(input.estimated_cents),
            budget_ids: verdict.held_budget_ids.clone().unwrap_or_default(),
            day,
            month: month_of(day),
            status: ReservationStatus::Held,
            expires_at: verdict.held_expires_at.unwrap_or(input.expires_at),
        };
        Some(Ok(Admission::Admitted {
            reservation,
            warnings: flagged(|r| r.warns).collect(),
        }))
    }

    /// Creates the missing counters of the tenant's `budgets` for `day` and its month, in
    /// key order, so concurrent creators wait for each other instead of deadlocking.
    fn ensure_window(&mut self, tenant_id: &str, budgets: &[String], day: NaiveDate) -> Result<()> {
        Prepared {
            sql: ENSURE_WINDOW,
            params: &[
                Param::Text(tenant_id),
                Param::Texts(budgets),
                Param::Day(day),
                Param::Day(month_of(day)),
            ],
        }
        .execute(self.conn)?;
        Ok(())
    }

    /// The held reservation of a request reserved before, or a conflict.
    fn repeated(&mut self, tenant_id: &str, request_id: &str) -> Result<Admission> {
        let reservation: Reservation = budget_reservations::table
            .filter(budget_reservations::tenant_id.eq(tenant_id))
            .filter(budget_reservations::request_id.eq(request_id))
            .select(ReservationRow::as_select())
            .get_result(self.conn)?
            .into();
        match reservation.status {
            ReservationStatus::Held => Ok(Admission::Admitted {
                reservation,
                warnings: Vec::new(),
            }),
            status => Err(Error::Conflict(format!(
                "request {request_id:?} was reserved before and is {status}"
            ))),
        }
    }

    /// The tenant's reservation `id`, in whatever state it is.
    pub fn fetch_reservation(
        &mut self,
        tenant_id: &TenantId,
        id: &str,
    ) -> Result<Option<Reservation>> {
        validate::required("id", id, limits::COST_ID)?;
        Ok(budget_reservations::table
            .filter(budget_reservations::tenant_id.eq(tenant_id))
            .filter(budget_reservations::id.eq(id))
            .select(ReservationRow::as_select())
            .get_result(self.conn)
            .optional()?
            .map(Reservation::from))
    }

    /// Records the call's actual cost under the reservation's request id (idempotent),
    /// gives the estimate back and adds the actual cost to the spend of the budgets
    /// reserved, in the windows of the cost record's instant.
    ///
    /// `actual`'s tenant must be the reservation's, its request id the reservation's or
    /// `None`, and its feature tag and user the reserved ones. The actual cost may exceed
    /// the estimate: the call was made, so it is counted, and later reservations see it.
    /// A request already billed is not charged again; a reservation already settled is
    /// left as it is. A reservation that expired or was released is still billed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for bad input or an `actual` that does not match the
    /// reservation; [`Error::NotFound`] when the tenant has no such reservation.
    pub fn settle(&mut self, reservation: &Reservation, actual: &CostInput) -> Result<Settlement> {
        check_settlement(reservation, actual)?;
        require_transaction(self.conn)?;
        let held = self.lock(reservation)?;
        let cost = CostInput {
            request_id: Some(held.request_id.clone()),
            ..actual.clone()
        };
        let (record, inserted) = cost.insert_once(self.conn)?;
        let (settlement, close) = self.settled(&held, record, inserted)?;
        self.close(close.as_slice())?;
        Ok(settlement)
    }

    /// Settles `settlements` (checked, inside the caller's transaction) as
    /// [`settle`](Self::settle) would one after the other, locking their reservations and
    /// writing their cost records with one statement each, but leaves their closes (which
    /// change the counters) to the caller, who runs them with [`Self::close`] once it
    /// holds every counter lock it needs. The outer error is the batch's; each settlement
    /// has its own.
    pub(crate) fn prepare_settlements(
        &mut self,
        settlements: &[(&Reservation, &CostInput)],
    ) -> Result<(Vec<Result<Settlement>>, Vec<Close>)> {
        use crate::schema::cost_records;
        let keys = |of: fn(&Reservation) -> &str| {
            let mut keys: Vec<&str> = settlements.iter().map(|(r, _)| of(r)).collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let (tenants, ids) = (keys(|r| &r.tenant_id), keys(|r| &r.id));
        let locked: Vec<Reservation> = budget_reservations::table
            .filter(budget_reservations::tenant_id.eq_any(&tenants))
            .filter(budget_reservations::id.eq_any(&ids))
            .select(ReservationRow::as_select())
            .order((budget_reservations::tenant_id, budget_reservations::id))
            .for_update()
            .load(self.conn)?
            .into_iter()
            .map(Reservation::from)
            .collect();
        let held: Vec<Option<&Reservation>> = settlements
            .iter()
            .map(|(r, _)| {
                locked
                    .iter()
                    .find(|l| l.id == r.id && l.tenant_id == r.tenant_id)
            })
            .collect();
        let costs: Vec<CostInput> = settlements
            .iter()
            .zip(&held)
            .filter_map(|((_, actual), held)| {
                held.map(|h| CostInput {
                    request_id: Some(h.request_id.clone()),
                    ..(*actual).clone()
                })
            })
            .collect();
        let record_ids = costs.iter().map(|_| ids::cost_record_id()).collect();
        let recorded = CostWriteDriver::new(self.conn).insert_with_ids(
            &costs,
            record_ids,
            BulkMode::Insert,
        )?;
        let wanted: Vec<&str> = recorded.iter().map(|r| r.id.as_str()).collect();
        let instants: Vec<DateTime<Utc>> = recorded.iter().map(|r| r.created_at).collect();
        let records: Vec<CostRecord> = cost_records::table
            .filter(cost_records::tenant_id.eq_any(&tenants))
            .filter(cost_records::id.eq_any(&wanted))
            .filter(cost_records::created_at.eq_any(&instants))
            .select(CostRecord::as_select())
            .load(self.conn)?;
        let mut recorded = recorded.into_iter();
        let mut out = Vec::with_capacity(settlements.len());
        // A reservation settled twice in one batch: the second finds it settled.
        let mut closed: Vec<String> = Vec::new();
        let mut closes = Vec::new();
        for ((reservation, _), held) in settlements.iter().zip(held) {
            let Some(held) = held else {
                out.push(Err(Error::NotFound {
                    entity: "budget reservation",
                    id: reservation.id.clone(),
                }));
                continue;
            };
            let row = recorded.next().expect("one record per settlement");
            let record = records
                .iter()
                .find(|r| r.id == row.id)
                .cloned()
                .ok_or_else(|| Error::Conflict(format!("cost record {} vanished", row.id)))?;
            let mut held = held.clone();
            if closed.contains(&held.id) {
                held.status = ReservationStatus::Settled;
            }
            closed.push(held.id.clone());
            match self.settled(&held, record, row.inserted) {
                Ok((settlement, close)) => {
                    closes.extend(close);
                    out.push(Ok(settlement));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        Ok((out, closes))
    }

    /// The rest of a settlement once its reservation is locked and its cost record
    /// stored (`inserted`: by this settlement): its answer, and how to close it.
    fn settled(
        &mut self,
        held: &Reservation,
        record: CostRecord,
        inserted: bool,
    ) -> Result<(Settlement, Option<Close>)> {
        if held.status == ReservationStatus::Settled {
            let settlement = Settlement {
                cost: record,
                charged: false,
                released: false,
            };
            return Ok((settlement, None));
        }
        let day = record.created_at.date_naive();
        if inserted && (day != held.day || month_of(day) != held.month) {
            self.ensure_window(&held.tenant_id, &held.budget_ids, day)?;
        }
        let release = held.status == ReservationStatus::Held;
        let close = Close {
            tenant_id: held.tenant_id.clone(),
            id: held.id.clone(),
            status: ReservationStatus::Settled,
            release,
            charge: if inserted { record.cost_cents } else { 0.0 },
            day,
            actual_cents: Some(record.cost_cents),
            record_id: Some(record.id.clone()),
            budget_ids: held.budget_ids.clone(),
            held_day: held.day,
        };
        let settlement = Settlement {
            cost: record,
            charged: inserted,
            released: release,
        };
        Ok((settlement, Some(close)))
    }

    /// Locks `reservation` and says how to release it: `None` when it is no longer held.
    pub(crate) fn prepare_release(&mut self, reservation: &Reservation) -> Result<Option<Close>> {
        let held = self.lock(reservation)?;
        Ok((held.status == ReservationStatus::Held).then(|| released(&held)))
    }

    /// Gives a held reservation's estimate back (the call failed or was not made).
    /// Returns false, changing nothing, when it was no longer held.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the tenant has no such reservation.
    pub fn release(&mut self, reservation: &Reservation) -> Result<bool> {
        require_transaction(self.conn)?;
        let held = self.lock(reservation)?;
        if held.status != ReservationStatus::Held {
            return Ok(false);
        }
        self.close(&[released(&held)])?;
        Ok(true)
    }

    /// Expires up to `limit` held reservations whose `expires_at` is at or before `now`
    /// and gives their estimates back; returns how many. Reservations a settler holds
    /// locked are skipped (they are being closed). Call it until it returns 0.
    ///
    /// It finds the tenants with expired holds first, then expires each tenant's (in
    /// tenant order) with a statement that names the tenant: a statement that locks rows
    /// reaches one partition, or one shard.
    pub fn reclaim_expired(&mut self, now: DateTime<Utc>, limit: i64) -> Result<usize> {
        validate::instant("now", now)?;
        if limit < 1 {
            return Err(Error::invalid("limit", "must be at least 1"));
        }
        require_transaction(self.conn)?;
        let tenants: Vec<String> = budget_reservations::table
            .filter(budget_reservations::status.eq(ReservationStatus::Held))
            .filter(budget_reservations::expires_at.le(now))
            .select(budget_reservations::tenant_id)
            .distinct()
            .order(budget_reservations::tenant_id)
            .limit(limit)
            .load(self.conn)?;
        let mut gone = 0;
        for tenant in &tenants {
            if gone >= limit {
                break;
            }
            let params = [
                Param::Text(tenant),
                Param::Instant(&now),
                Param::Int(limit - gone),
            ];
            let expired: Count = Prepared {
                sql: RECLAIM,
                params: &params,
            }
            .get_result(self.conn)?;
            gone += expired.n;
        }
        Ok(gone as usize)
    }

    /// Every active budget of the tenant with its daily counter of `day` and monthly
    /// counter of that month, beside the exact sums of the cost records of the budget's
    /// scope in those windows: a line that does not [`match`](ReconcileLine::matches)
    /// shows spend that bypassed the gate (or a counter that went wrong).
    pub fn reconcile(
        &mut self,
        tenant_id: &TenantId,
        day: NaiveDate,
    ) -> Result<Vec<ReconcileLine>> {
        Ok(Prepared {
            sql: RECONCILE,
            params: &[
                Param::Text(tenant_id),
                Param::Day(day),
                Param::Day(month_of(day)),
            ],
        }
        .load(self.conn)?)
    }

    /// Locks the reservation row for the rest of the transaction and reads it as it is.
    fn lock(&mut self, reservation: &Reservation) -> Result<Reservation> {
        validate::required("tenant_id", &reservation.tenant_id, limits::TENANT_ID)?;
        validate::required("id", &reservation.id, limits::COST_ID)?;
        PlannedPerCall(
            budget_reservations::table
                .filter(budget_reservations::tenant_id.eq(&reservation.tenant_id))
                .filter(budget_reservations::id.eq(&reservation.id))
                .select(ReservationRow::as_select())
                .for_update(),
        )
        .get_result::<ReservationRow>(self.conn)
        .optional()?
        .map(Reservation::from)
        .ok_or_else(|| Error::NotFound {
            entity: "budget reservation",
            id: reservation.id.clone(),
        })
    }

    /// Closes locked reservations and applies their deltas to the counters: one
    /// statement per tenant, in tenant order (the counters' key order), so each reaches
    /// one partition, or one shard.
    pub(crate) fn close(&mut self, closes: &[Close]) -> Result<()> {
        let mut by_tenant: Vec<&Close> = closes.iter().collect();
        by_tenant.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        for mine in by_tenant.chunk_by(|a, b| a.tenant_id == b.tenant_id) {
            let tenants: Vec<&str> = mine.iter().map(|c| c.tenant_id.as_str()).collect();
            let ids: Vec<&str> = mine.iter().map(|c| c.id.as_str()).collect();
            let statuses: Vec<&str> = mine.iter().map(|c| c.status.as_str()).collect();
            let releases: Vec<bool> = mine.iter().map(|c| c.release).collect();
            let charges: Vec<f64> = mine.iter().map(|c| c.charge).collect();
            let days: Vec<NaiveDate> = mine.iter().map(|c| c.day).collect();
            let months: Vec<NaiveDate> = mine.iter().map(|c| month_of(c.day)).collect();
            let actual: Vec<Option<f64>> = mine.iter().map(|c| c.actual_cents).collect();
            let records: Vec<Option<&str>> = mine.iter().map(|c| c.record_id.as_deref()).collect();
            PlannedPerCall(Prepared {
                sql: CLOSE,
                params: &[
                    Param::Strs(&tenants),
                    Param::Strs(&ids),
                    Param::Strs(&statuses),
                    Param::Flags(&releases),
                    Param::Floats(&charges),
                    Param::Days(&days),
                    Param::Days(&months),
                    Param::OptFloats(&actual),
                    Param::OptTexts(&records),
                ],
            })
            .execute(self.conn)?;
        }
        Ok(())
    }
}
