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
use crate::drivers::cost_write::{CostInput, CostWriteDriver};
use crate::drivers::prepared::{Param, Prepared};
use crate::error::{Error, Result};
use crate::models::{BudgetPeriod, BudgetType, CostRecord, ReservationStatus};
use crate::types::limits;
use crate::validate;

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

/// The budgets that apply to a request: `$1` tenant, `$2` feature tag, `$3` user.
macro_rules! applicable_budgets {
    () => {
        "b.tenant_id = $1 AND b.is_active \
         AND ((b.budget_type = 'tenant' AND b.entity_id IS NULL) \
           OR (b.budget_type = 'feature' AND b.entity_id = $2) \
           OR (b.budget_type = 'user' AND b.entity_id = $3))"
    };
}

/// Creates the missing counters of the applicable budgets for day `$4` and month `$5`,
/// in key order (concurrent creators wait for each other instead of deadlocking).
const ENSURE_COUNTERS: &str = concat!(
    "INSERT INTO budget_counters (budget_id, period, window_start) \
     SELECT b.id, p.period, p.window_start \
     FROM cost_budgets b \
     CROSS JOIN (VALUES ('daily', $4::date), ('monthly', $5::date)) AS p(period, window_start) \
     WHERE ",
    applicable_budgets!(),
    " ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING"
);

/// The reservation, decided in one statement. `want` lists the counters of the applicable
/// budgets with their limits; `locked` locks them in key order and reads them as they are
/// now, but only when `present` saw all of them, so a transaction that must create a
/// counter first holds no counter lock while it does; `verdict` admits when every counter exists, the request is new and every hard limit
/// has room for the estimate `$6`; only then `held` stores reservation `$7` for request `$8`
/// expiring at `$9`, and `charged` adds the estimate to every counter. The rows are the
/// counters as they were before, beside the verdict (one row of NULLs when no budget
/// applies).
const RESERVE: &str = concat!(
    "WITH want AS ( \
         SELECT b.id AS budget_id, b.budget_type, b.entity_id, b.hard_limit_enabled AS hard, \
                b.warn_threshold_pct AS warn_pct, p.period, p.window_start, p.limit_cents \
         FROM cost_budgets b \
         CROSS JOIN LATERAL (VALUES ('daily', $4::date, b.daily_limit_cents), \
                                    ('monthly', $5::date, b.monthly_limit_cents)) \
              AS p(period, window_start, limit_cents) \
         WHERE ",
    applicable_budgets!(),
    "), \
     present AS ( \
         SELECT count(*) = (SELECT count(*) FROM want) AS all_there \
         FROM budget_counters c JOIN want w USING (budget_id, period, window_start) \
     ), \
     locked AS ( \
         SELECT c.budget_id, c.period, c.window_start, c.spent_cents, c.reserved_cents \
         FROM budget_counters c JOIN want w USING (budget_id, period, window_start) \
         WHERE (SELECT all_there FROM present) \
         ORDER BY c.budget_id, c.period, c.window_start \
         FOR UPDATE OF c \
     ), \
     verdict AS ( \
         SELECT (SELECT count(*) FROM want) = (SELECT count(*) FROM locked) AS ready, \
                EXISTS (SELECT 1 FROM budget_reservations \
                        WHERE tenant_id = $1 AND request_id = $8) AS repeated, \
                coalesce((SELECT bool_and(w.limit_cents IS NULL OR NOT w.hard \
                                 OR l.spent_cents + l.reserved_cents + $6::numeric <= w.limit_cents) \
                          FROM want w JOIN locked l USING (budget_id, period, window_start)), \
                         true) AS fits \
     ), \
     held AS ( \
         INSERT INTO budget_reservations (id, tenant_id, request_id, feature_tag, user_id, \
                                          estimated_cents, budget_ids, day, month, expires_at) \
         SELECT $7, $1, $8, $2, $3, $6::numeric, \
                ARRAY(SELECT DISTINCT budget_id::text FROM want ORDER BY 1), $4, $5, $9 \
         FROM verdict WHERE ready AND fits AND NOT repeated \
         ON CONFLICT (tenant_id, request_id) DO NOTHING \
         RETURNING id, budget_ids, estimated_cents, expires_at \
     ), \
     charged AS ( \
         UPDATE budget_counters c \
         SET reserved_cents = c.reserved_cents + $6::numeric, updated_at = now() \
         FROM locked l \
         WHERE (c.budget_id, c.period, c.window_start) = (l.budget_id, l.period, l.window_start) \
           AND EXISTS (SELECT 1 FROM held) \
         RETURNING 1 \
     ) \
     SELECT v.ready, v.repeated, v.fits, EXISTS (SELECT 1 FROM held) AS held, \
            (SELECT budget_ids FROM held) AS held_budget_ids, \
            (SELECT estimated_cents::float8 FROM held) AS held_estimate, \
            (SELECT expires_at FROM held) AS held_expires_at, \
            w.budget_id::text, w.budget_type::text, w.entity_id::text, w.hard, w.warn_pct, \
            w.period, w.window_start, w.limit_cents, \
            l.spent_cents::float8 AS spent_cents, l.reserved_cents::float8 AS reserved_cents, \
            w.limit_cents IS NOT NULL AND w.hard \
              AND l.spent_cents + l.reserved_cents + $6::numeric > w.limit_cents AS full, \
            w.limit_cents IS NOT NULL \
              AND (l.spent_cents + l.reserved_cents + $6::numeric) * 100 \
                  >= w.limit_cents::numeric * w.warn_pct AS warns \
     FROM verdict v \
     LEFT JOIN (want w JOIN locked l USING (budget_id, period, window_start)) ON true \
     ORDER BY w.budget_id, w.period, w.window_start"
);

/// A reservation by tenant `$1` and `$key` `$2`, with `$lock` after.
macro_rules! reservation_by {
    ($key:literal, $lock:literal) => {
        concat!(
            "SELECT id, tenant_id, request_id, feature_tag, user_id, \
                    estimated_cents::float8 AS estimated_cents, budget_ids, day, month, status, \
                    expires_at \
             FROM budget_reservations WHERE tenant_id = $1 AND ",
            $key,
            " = $2",
            $lock
        )
    };
}

const FETCH_RESERVATION: &str = reservation_by!("id", "");
/// Locks the reservation that is about to close for the rest of the transaction.
const LOCK_RESERVATION: &str = reservation_by!("id", " FOR UPDATE");
const RESERVATION_OF_REQUEST: &str = reservation_by!("request_id", "");

/// Creates the missing counters of budgets `$1` for day `$2` and month `$3`, in key order
/// (a settlement after midnight charges the new day).
const ENSURE_WINDOW: &str = "\
INSERT INTO budget_counters (budget_id, period, window_start) \
SELECT b.budget_id, p.period, p.window_start \
FROM unnest($1::text[]) AS b(budget_id) \
CROSS JOIN (VALUES ('daily', $2::date), ('monthly', $3::date)) AS p(period, window_start) \
WHERE EXISTS (SELECT 1 FROM cost_budgets WHERE id = b.budget_id) \
ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING";

/// Adds `deltas`' (budget, period, window, reserved, spent) to their counters, locked in
/// key order first: the tail of every statement that changes counters after a
/// reservation.
macro_rules! apply_deltas {
    () => {
        "locked AS ( \
             SELECT c.budget_id, c.period, c.window_start \
             FROM budget_counters c JOIN deltas USING (budget_id, period, window_start) \
             ORDER BY 1, 2, 3 \
             FOR UPDATE OF c \
         ), \
         counted AS ( \
             UPDATE budget_counters c \
             SET reserved_cents = c.reserved_cents + d.reserved, \
                 spent_cents = c.spent_cents + d.spent, updated_at = now() \
             FROM locked l JOIN deltas d USING (budget_id, period, window_start) \
             WHERE (c.budget_id, c.period, c.window_start) \
                 = (l.budget_id, l.period, l.window_start) \
             RETURNING 1 \
         ) "
    };
}

/// Closes reservation `$1` (already locked by the caller) with status `$2`: gives its
/// estimate back when `$3` (it was still held), adds `$4` cents of spend to the counters of
/// day `$5` and month `$6`, and records actual cost `$7` and cost record `$8`. Counters are
/// locked in key order before they change.
const CLOSE: &str = concat!(
    "\
WITH r AS ( \
    SELECT budget_ids, day, month, estimated_cents FROM budget_reservations WHERE id = $1 \
), \
deltas AS ( \
    SELECT b.budget_id, d.period, d.window_start, \
           sum(d.reserved) AS reserved, sum(d.spent) AS spent \
    FROM r CROSS JOIN unnest(r.budget_ids) AS b(budget_id) \
    CROSS JOIN LATERAL (VALUES \
        ('daily', r.day, CASE WHEN $3 THEN -r.estimated_cents ELSE 0 END, 0::numeric), \
        ('monthly', r.month, CASE WHEN $3 THEN -r.estimated_cents ELSE 0 END, 0::numeric), \
        ('daily', $5::date, 0::numeric, $4::float8::numeric), \
        ('monthly', $6::date, 0::numeric, $4::float8::numeric)) \
        AS d(period, window_start, reserved, spent) \
    GROUP BY 1, 2, 3 \
    HAVING sum(d.reserved) <> 0 OR sum(d.spent) <> 0 \
), \
",
    apply_deltas!(),
    "\
UPDATE budget_reservations \
SET status = $2, closed_at = now(), actual_cents = $7, cost_record_id = $8 \
WHERE id = $1 \
RETURNING (SELECT count(*) FROM counted) AS n"
);

/// Expires up to `$2` held reservations whose expiry is at or before `$1` (skipping any a
/// settler holds) and gives their estimates back, counters locked in key order.
const RECLAIM: &str = concat!(
    "\
WITH gone AS ( \
    UPDATE budget_reservations r SET status = 'expired', closed_at = now() \
    FROM (SELECT id FROM budget_reservations \
          WHERE status = 'held' AND expires_at <= $1 \
          ORDER BY expires_at, id LIMIT $2 \
          FOR UPDATE SKIP LOCKED) e \
    WHERE r.id = e.id \
    RETURNING r.budget_ids, r.day, r.month, r.estimated_cents \
), \
deltas AS ( \
    SELECT b.budget_id, d.period, d.window_start, \
           -sum(g.estimated_cents) AS reserved, 0::numeric AS spent \
    FROM gone g CROSS JOIN unnest(g.budget_ids) AS b(budget_id) \
    CROSS JOIN LATERAL (VALUES ('daily', g.day), ('monthly', g.month)) AS d(period, window_start) \
    GROUP BY 1, 2, 3 \
), ",
    apply_deltas!(),
    "\
SELECT count(*) AS n FROM gone"
);

/// Every active budget of tenant `$1`, its daily counter of day `$2` and monthly counter
/// of month `$3` (zero where none exists), beside the exact sum of its scope's cost records
/// in each window.
const RECONCILE: &str = "\
SELECT b.id::text AS budget_id, b.budget_type::text AS budget_type, \
       b.entity_id::text AS entity_id, w.period, w.window_start, \
       coalesce(c.spent_cents, 0)::float8 AS counted_cents, \
       coalesce(c.reserved_cents, 0)::float8 AS reserved_cents, \
       coalesce(s.recorded, 0)::float8 AS recorded_cents, \
       (coalesce(c.spent_cents, 0) - coalesce(s.recorded, 0))::float8 AS difference_cents \
FROM cost_budgets b \
CROSS JOIN (VALUES ('daily', $2::date, $2::date + 1), \
                   ('monthly', $3::date, ($3::date + interval '1 month')::date)) \
     AS w(period, window_start, window_end) \
LEFT JOIN budget_counters c \
       ON c.budget_id = b.id AND c.period = w.period AND c.window_start = w.window_start \
CROSS JOIN LATERAL ( \
    SELECT sum(r.cost_cents::numeric) AS recorded \
    FROM cost_records r \
    WHERE r.tenant_id = b.tenant_id \
      AND r.created_at >= w.window_start::timestamp AT TIME ZONE 'UTC' \
      AND r.created_at < w.window_end::timestamp AT TIME ZONE 'UTC' \
      AND (b.budget_type = 'tenant' \
           OR (b.budget_type = 'feature' AND r.feature_tag = b.entity_id) \
           OR (b.budget_type = 'user' AND r.user_id = b.entity_id)) \
) s \
WHERE b.tenant_id = $1 AND b.is_active \
ORDER BY b.budget_type, b.entity_id NULLS FIRST, b.id, w.period";

#[derive(QueryableByName)]
struct VerdictRow {
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
    pub fn reserve(&mut self, tenant_id: &str, input: &ReserveInput) -> Result<Admission> {
        validate::required("tenant_id", tenant_id, limits::TENANT_ID)?;
        validate::required("request_id", &input.request_id, limits::COST_ID)?;
        validate::optional("feature_tag", input.feature_tag.as_deref(), limits::TAG)?;
        validate::optional("user_id", input.user_id.as_deref(), limits::COST_ID)?;
        validate::amount("estimated_cents", input.estimated_cents)?;
        validate::instant("now", input.now)?;
        validate::instant("expires_at", input.expires_at)?;
        if input.expires_at <= input.now {
            return Err(Error::invalid("expires_at", "must be after `now`"));
        }
        require_transaction(self.conn)?;
        let day = input.now.date_naive();
        let id = format!("rsv_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        // The first attempt finds every counter in the common case; a new day, month or
        // budget creates its counters and decides again.
        for attempt in 0..3 {
            let params = [
                Param::Text(tenant_id),
                Param::OptText(input.feature_tag.as_deref()),
                Param::OptText(input.user_id.as_deref()),
                Param::Day(day),
                Param::Day(month_of(day)),
                Param::Float(input.estimated_cents + 0.0),
                Param::Text(&id),
                Param::Text(&input.request_id),
                Param::Instant(&input.expires_at),
            ];
            let rows: Vec<VerdictRow> = Prepared {
                sql: RESERVE,
                params: &params,
            }
            .load(self.conn)?;
            let verdict = rows.first().expect("the verdict row is always there");
            if verdict.repeated || (verdict.ready && verdict.fits && !verdict.held) {
                return self.repeated(tenant_id, &input.request_id);
            }
            if !verdict.ready {
                if attempt < 2 {
                    diesel::sql_query(ENSURE_COUNTERS)
                        .bind::<Text, _>(tenant_id)
                        .bind::<Nullable<Text>, _>(input.feature_tag.as_deref())
                        .bind::<Nullable<Text>, _>(input.user_id.as_deref())
                        .bind::<Date, _>(day)
                        .bind::<Date, _>(month_of(day))
                        .execute(self.conn)?;
                }
                continue;
            }
            let flagged = |flag: fn(&VerdictRow) -> Option<bool>| {
                rows.iter()
                    .filter(move |r| flag(r) == Some(true))
                    .filter_map(VerdictRow::budget_use)
            };
            if !verdict.fits {
                let budget = flagged(|r| r.full)
                    .next()
                    .ok_or_else(|| Error::Conflict("a refusal without a full budget".into()))?;
                return Ok(Admission::Refused { budget });
            }
            let reservation = Reservation {
                id,
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
            return Ok(Admission::Admitted {
                reservation,
                warnings: flagged(|r| r.warns).collect(),
            });
        }
        Err(Error::Conflict(
            "the budget counters kept changing while reserving; retry".into(),
        ))
    }

    /// The held reservation of a request reserved before, or a conflict.
    fn repeated(&mut self, tenant_id: &str, request_id: &str) -> Result<Admission> {
        let reservation: Reservation = diesel::sql_query(RESERVATION_OF_REQUEST)
            .bind::<Text, _>(tenant_id)
            .bind::<Text, _>(request_id)
            .get_result(self.conn)?;
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
    pub fn fetch_reservation(&mut self, tenant_id: &str, id: &str) -> Result<Option<Reservation>> {
        validate::required("tenant_id", tenant_id, limits::TENANT_ID)?;
        validate::required("id", id, limits::COST_ID)?;
        Ok(diesel::sql_query(FETCH_RESERVATION)
            .bind::<Text, _>(tenant_id)
            .bind::<Text, _>(id)
            .get_result(self.conn)
            .optional()?)
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
        matches("user_id", actual.user_id == reservation.user_id)?;
        require_transaction(self.conn)?;
        let held = self.lock(reservation)?;
        let cost = CostInput {
            request_id: Some(held.request_id.clone()),
            ..actual.clone()
        };
        let (record, inserted) = CostWriteDriver::new(self.conn).insert_one(&cost)?;
        if held.status == ReservationStatus::Settled {
            return Ok(Settlement {
                cost: record,
                charged: false,
                released: false,
            });
        }
        let day = record.created_at.date_naive();
        if inserted && (day != held.day || month_of(day) != held.month) {
            let params = [
                Param::Texts(&held.budget_ids),
                Param::Day(day),
                Param::Day(month_of(day)),
            ];
            Prepared {
                sql: ENSURE_WINDOW,
                params: &params,
            }
            .execute(self.conn)?;
        }
        let release = held.status == ReservationStatus::Held;
        let charge = if inserted { record.cost_cents } else { 0.0 };
        self.close(
            &held,
            ReservationStatus::Settled,
            release,
            charge,
            day,
            Some(&record),
        )?;
        Ok(Settlement {
            cost: record,
            charged: inserted,
            released: release,
        })
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
        self.close(
            &held,
            ReservationStatus::Released,
            true,
            0.0,
            held.day,
            None,
        )?;
        Ok(true)
    }

    /// Expires up to `limit` held reservations whose `expires_at` is at or before `now`
    /// and gives their estimates back; returns how many. Reservations a settler holds
    /// locked are skipped (they are being closed). Call it until it returns 0.
    pub fn reclaim_expired(&mut self, now: DateTime<Utc>, limit: i64) -> Result<usize> {
        validate::instant("now", now)?;
        if limit < 1 {
            return Err(Error::invalid("limit", "must be at least 1"));
        }
        require_transaction(self.conn)?;
        let params = [Param::Instant(&now), Param::Int(limit)];
        let gone: Count = Prepared {
            sql: RECLAIM,
            params: &params,
        }
        .get_result(self.conn)?;
        Ok(gone.n as usize)
    }

    /// Every active budget of the tenant with its daily counter of `day` and monthly
    /// counter of that month, beside the exact sums of the cost records of the budget's
    /// scope in those windows: a line that does not [`match`](ReconcileLine::matches)
    /// shows spend that bypassed the gate (or a counter that went wrong).
    pub fn reconcile(&mut self, tenant_id: &str, day: NaiveDate) -> Result<Vec<ReconcileLine>> {
        validate::required("tenant_id", tenant_id, limits::TENANT_ID)?;
        Ok(diesel::sql_query(RECONCILE)
            .bind::<Text, _>(tenant_id)
            .bind::<Date, _>(day)
            .bind::<Date, _>(month_of(day))
            .load(self.conn)?)
    }

    /// Locks the reservation row for the rest of the transaction and reads it as it is.
    fn lock(&mut self, reservation: &Reservation) -> Result<Reservation> {
        validate::required("tenant_id", &reservation.tenant_id, limits::TENANT_ID)?;
        validate::required("id", &reservation.id, limits::COST_ID)?;
        let params = [
            Param::Text(&reservation.tenant_id),
            Param::Text(&reservation.id),
        ];
        Prepared {
            sql: LOCK_RESERVATION,
            params: &params,
        }
        .get_result(self.conn)
        .optional()?
        .ok_or_else(|| Error::NotFound {
            entity: "budget reservation",
            id: reservation.id.clone(),
        })
    }

    /// Runs [`CLOSE`] for a locked reservation.
    fn close(
        &mut self,
        held: &Reservation,
        status: ReservationStatus,
        release: bool,
        charge: f64,
        day: NaiveDate,
        record: Option<&CostRecord>,
    ) -> Result<()> {
        let params = [
            Param::Text(&held.id),
            Param::Text(status.as_str()),
            Param::Flag(release),
            Param::Float(charge),
            Param::Day(day),
            Param::Day(month_of(day)),
            Param::OptFloat(record.map(|r| r.cost_cents)),
            Param::OptText(record.map(|r| r.id.as_str())),
        ];
        Prepared {
            sql: CLOSE,
            params: &params,
        }
        .execute(self.conn)?;
        Ok(())
    }
}
