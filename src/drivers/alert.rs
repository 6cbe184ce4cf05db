//! `AlertDriver`: the CostSim alert outbox (`costsim_alert_queue`) and the `alert_sent`
//! flag of circuit-breaker incidents.
//!
//! Alerts are queued in the same transaction as the event that caused them; workers in
//! many processes deliver them. Two ways to deliver:
//!
//! - **Locked**: [`AlertDriver::fetch_pending_alerts`] locks a batch (`FOR UPDATE SKIP
//!   LOCKED`) in the worker's transaction, the worker sends and records each outcome, and
//!   commits. Simple, but the row locks and the transaction stay open during the sends: use
//!   it when sending is fast and local.
//! - **Leased**: [`AlertDriver::claim_alerts`] takes a batch in one short transaction and
//!   pushes its `next_attempt_at` to the end of a lease; the worker commits, sends with no
//!   transaction open, and records each outcome with [`AlertDriver::settle_claim`] in
//!   another short transaction. A worker that vanishes loses nothing: when the lease ends
//!   the alerts are due again. Use it for slow sends (HTTP to Alertmanager).
//!
//! The retry policy is not the driver's: [`next_step`] is the original worker's
//! (exponential backoff capped at 300 s, dead letter after `max_attempts`) for callers
//! that want it.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel::sql_types::Bool;
use serde::Serialize;
use uuid::Uuid;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{AlertStatus, AlertType, CostAnomaly, QueuedAlert};
use crate::prepared::{Param, Prepared};
use crate::schema::{costsim_alert_queue as q, costsim_cb_incidents};
use crate::sql_fns::{coalesce_instant, coalesce_text};
use crate::types::limits;
use crate::validate;

/// The largest batch one fetch or claim takes.
pub const MAX_BATCH: i64 = 1_000;
/// The original queue's attempts before the dead letter.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
/// The original worker's longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::seconds(300);

/// An alert to queue, for [`AlertDriver::insert_alert`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewAlert {
    /// Alertmanager alert objects: a non-empty JSON array.
    pub payload: serde_json::Value,
    /// What the alert announces.
    pub alert_type: AlertType,
    /// The circuit breaker.
    pub circuit_breaker_name: Option<String>,
    /// The incident whose `alert_sent` flag the delivery sets.
    pub incident_id: Option<String>,
    /// Attempts before the dead letter (at least 1; the original's default is 10).
    pub max_attempts: i32,
}

/// The Alertmanager payload of a cost-anomaly alert: one alert object whose labels say
/// what it is about (tenant, anomaly type, entity, severity, cause) and whose annotations
/// carry the message, the amounts in cents, the deviation and the anomaly id. Label and
/// annotation values are strings, as Alertmanager wants them; `startsAt` is the detection
/// instant.
pub fn anomaly_alert_payload(a: &CostAnomaly) -> serde_json::Value {
    serde_json::json!([{
        "labels": {
            "alertname": "CostAnomaly",
            "tenant_id": a.tenant_id,
            "anomaly_type": a.anomaly_type,
            "entity_type": a.entity_type,
            "entity_id": a.entity_id.clone().unwrap_or_default(),
            "severity": a.severity,
            "derived_cause": a.derived_cause.map(|c| c.as_str()).unwrap_or_default(),
        },
        "annotations": {
            "summary": a.message,
            "anomaly_id": a.id,
            "current_value_cents": a.current_value_cents.to_string(),
            "expected_value_cents": a.expected_value_cents.to_string(),
            "deviation_pct": a.deviation_pct.to_string(),
        },
        "startsAt": a.detected_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    }])
}

/// Counts of the queue, from one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Waiting (due or not, leased or not).
    pub pending: i64,
    /// Delivered.
    pub sent: i64,
    /// Dead letters.
    pub failed: i64,
    /// Pending alerts a worker holds a lease on.
    pub claimed: i64,
    /// Creation instant of the oldest pending alert.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// An alert a worker holds a delivery lease on: present it to
/// [`AlertDriver::settle_claim`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClaimedAlert {
    /// The alert as claimed.
    pub alert: QueuedAlert,
    /// The claim's token; an outcome with an older token is refused.
    pub token: Uuid,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Outcome {
    /// Delivered at this instant.
    Sent {
        /// When.
        at: DateTime<Utc>,
    },
    /// Failed; try again at `next_attempt_at`.
    Retry {
        /// When the attempt was made.
        at: DateTime<Utc>,
        /// When to try again.
        next_attempt_at: DateTime<Utc>,
        /// Why it failed; `None` keeps the previous error.
        error: Option<String>,
    },
    /// Failed for good (dead letter).
    Failed {
        /// When the attempt was made.
        at: DateTime<Utc>,
        /// Why it failed; `None` keeps the previous error.
        error: Option<String>,
    },
}

/// What to do after a failed attempt, by the original worker's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NextStep {
    /// Try again then.
    RetryAt(DateTime<Utc>),
    /// Give up: the alert becomes a dead letter.
    DeadLetter,
}

/// The original worker's policy after a failed attempt of an alert that had `attempts`
/// failures before: with `n = attempts + 1`, a dead letter once `n >= max_attempts`,
/// otherwise a retry `min(2^n s, max_backoff)` after `now`. With the defaults the waits
/// after failures 1 to 9 are 2, 4, 8, 16, 32, 64, 128, 256 and 300 s, and the 10th failure
/// is the dead letter.
pub fn next_step(
    attempts: i32,
    max_attempts: i32,
    now: DateTime<Utc>,
    max_backoff: Duration,
) -> NextStep {
    let n = attempts.saturating_add(1);
    if n >= max_attempts {
        return NextStep::DeadLetter;
    }
    let wait = 2i64
        .checked_pow(n.clamp(0, 62) as u32)
        .map_or(max_backoff, Duration::seconds)
        .min(max_backoff);
    NextStep::RetryAt(now + wait)
}

/// The outbox's data access. Every method runs its SQL at once and never commits.
pub struct AlertDriver<'c> {
    conn: &'c mut PgConnection,
}

fn batch(batch_size: i64) -> Result<()> {
    if !(1..=MAX_BATCH).contains(&batch_size) {
        return Err(Error::invalid(
            "batch_size",
            format!("{batch_size} is outside 1..={MAX_BATCH}"),
        ));
    }
    Ok(())
}

fn error_text(error: &Option<String>) -> Result<()> {
    validate::optional_text("error", error.as_deref())
}

/// Takes up to `$2` due alerts at `$1` and leases them until `$1 + $3` (`FOR UPDATE SKIP
/// LOCKED` in an `UPDATE … FROM`, which Diesel's DSL cannot say).
const CLAIM: &str = include_str!("alert/claim.sql");

impl<'c> AlertDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        AlertDriver { conn }
    }

    /// Locks and returns up to `batch_size` (1 to [`MAX_BATCH`]) pending alerts due at
    /// `now`, oldest first (ties by id). Alerts another transaction has locked are skipped,
    /// so concurrent workers never get the same one. The locks last until the caller's
    /// transaction ends: record each outcome with the `update_alert_*` methods, then commit.
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction, where the locks would end at once.
    pub fn fetch_pending_alerts(
        &mut self,
        now: DateTime<Utc>,
        batch_size: i64,
    ) -> Result<Vec<QueuedAlert>> {
        batch(batch_size)?;
        validate::instant("now", now)?;
        require_transaction(self.conn)?;
        Ok(q::table
            .filter(q::status.eq(AlertStatus::Pending))
            .filter(q::next_attempt_at.le(now))
            .order((q::next_attempt_at.asc(), q::id.asc()))
            .limit(batch_size)
            .for_update()
            .skip_locked()
            .select(QueuedAlert::as_select())
            .load(self.conn)?)
    }

    /// Pending, sent, failed and leased counts and the oldest pending alert, in one
    /// statement (one snapshot).
    pub fn fetch_queue_stats(&mut self) -> Result<QueueStats> {
        use diesel::dsl::{count, count_star, min};
        let groups: Vec<(AlertStatus, i64, i64, Option<DateTime<Utc>>)> = q::table
            .group_by(q::status)
            .select((
                q::status,
                count_star(),
                count(q::claim_token),
                min(q::created_at),
            ))
            .load(self.conn)?;
        let mut stats = QueueStats {
            pending: 0,
            sent: 0,
            failed: 0,
            claimed: 0,
            oldest_pending: None,
        };
        for (status, n, claimed, oldest) in groups {
            match status {
                AlertStatus::Pending => {
                    (stats.pending, stats.claimed, stats.oldest_pending) = (n, claimed, oldest)
                }
                AlertStatus::Sent => stats.sent = n,
                AlertStatus::Failed => stats.failed = n,
            }
        }
        Ok(stats)
    }

    /// Marks the alert delivered at `sent_at` (the original lost `sent_at`).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no pending alert `id`.
    pub fn update_alert_sent(&mut self, id: i64, sent_at: DateTime<Utc>) -> Result<()> {
        self.record(id, None, &Outcome::Sent { at: sent_at })
    }

    /// Marks the pending alerts `ids` delivered at `sent_at` in one statement; returns how
    /// many were pending. For a batch the caller fetched and sent.
    pub fn update_alerts_sent(&mut self, ids: &[i64], sent_at: DateTime<Utc>) -> Result<usize> {
        validate::instant("sent_at", sent_at)?;
        require_transaction(self.conn)?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(diesel::update(
            q::table
                .filter(q::id.eq_any(ids))
                .filter(q::status.eq(AlertStatus::Pending)),
        )
        .set((
            q::status.eq(AlertStatus::Sent),
            q::sent_at.eq(sent_at),
            q::claim_token.eq(None::<Uuid>),
        ))
        .execute(self.conn)?)
    }

    /// Counts a failed attempt (attempts + 1, in SQL) and schedules the next one; `None`
    /// for `last_error` keeps the previous error text.
    pub fn update_alert_retry(
        &mut self,
        id: i64,
        last_attempt_at: DateTime<Utc>,
        next_attempt_at: DateTime<Utc>,
        last_error: Option<String>,
    ) -> Result<()> {
        let outcome = Outcome::Retry {
            at: last_attempt_at,
            next_attempt_at,
            error: last_error,
        };
        self.record(id, None, &outcome)
    }

    /// Counts a failed attempt and makes the alert a dead letter (`failed`).
    pub fn update_alert_failed(
        &mut self,
        id: i64,
        last_attempt_at: DateTime<Utc>,
        last_error: Option<String>,
    ) -> Result<()> {
        let outcome = Outcome::Failed {
            at: last_attempt_at,
            error: last_error,
        };
        self.record(id, None, &outcome)
    }

    /// Leases up to `batch_size` due alerts until `now + lease` and returns them, oldest
    /// first. Run it in a short transaction of its own and commit before sending.
    pub fn claim_alerts(
        &mut self,
        now: DateTime<Utc>,
        lease: Duration,
        batch_size: i64,
    ) -> Result<Vec<ClaimedAlert>> {
        batch(batch_size)?;
        validate::instant("now", now)?;
        if lease <= Duration::zero() {
            return Err(Error::invalid("lease", "must be positive"));
        }
        require_transaction(self.conn)?;
        let lease = diesel::pg::data_types::PgInterval::from_microseconds(
            lease.num_microseconds().unwrap_or(i64::MAX),
        );
        let mut claimed: Vec<QueuedAlert> = Prepared {
            sql: CLAIM,
            params: &[
                Param::Instant(&now),
                Param::Int(batch_size),
                Param::Interval(lease),
            ],
        }
        .load(self.conn)?;
        claimed.sort_by_key(|a| a.id);
        Ok(claimed
            .into_iter()
            .map(|alert| ClaimedAlert {
                token: alert.claim_token.expect("a claim sets the token"),
                alert,
            })
            .collect())
    }

    /// Records the outcome of a leased delivery; `false` (and nothing changed) when the
    /// lease was lost: it ended and another worker claimed the alert, or the alert is no
    /// longer pending.
    pub fn settle_claim(&mut self, claim: &ClaimedAlert, outcome: &Outcome) -> Result<bool> {
        match self.record(claim.alert.id, Some(claim.token), outcome) {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Applies `outcome` to the pending alert `id` (holding `token`, when given).
    fn record(&mut self, id: i64, token: Option<Uuid>, outcome: &Outcome) -> Result<()> {
        let (status, at, next, error) = match outcome {
            Outcome::Sent { at } => (AlertStatus::Sent, *at, None, &None),
            Outcome::Retry {
                at,
                next_attempt_at,
                error,
            } => (AlertStatus::Pending, *at, Some(*next_attempt_at), error),
            Outcome::Failed { at, error } => (AlertStatus::Failed, *at, None, error),
        };
        validate::instant("at", at)?;
        validate::optional_instant("next_attempt_at", next)?;
        error_text(error)?;
        require_transaction(self.conn)?;
        // The pending alert, and the claim when one is given.
        let target = q::table
            .filter(q::id.eq(id))
            .filter(q::status.eq(AlertStatus::Pending))
            .filter(
                token
                    .is_none()
                    .into_sql::<Bool>()
                    .or(q::claim_token.eq(token)),
            );
        // An empty or missing error keeps the last one.
        let error = error.as_deref().filter(|e| !e.is_empty());
        let updated = match outcome {
            Outcome::Sent { .. } => diesel::update(target)
                .set((
                    q::status.eq(status),
                    q::sent_at.eq(at),
                    q::claim_token.eq(None::<Uuid>),
                ))
                .execute(self.conn)?,
            Outcome::Retry { .. } | Outcome::Failed { .. } => diesel::update(target)
                .set((
                    q::status.eq(status),
                    q::attempts.eq(q::attempts + 1),
                    q::last_attempt_at.eq(at),
                    q::next_attempt_at.eq(coalesce_instant(next, q::next_attempt_at)),
                    q::last_error.eq(coalesce_text(error, q::last_error)),
                    q::claim_token.eq(None::<Uuid>),
                ))
                .execute(self.conn)?,
        };
        if updated == 0 {
            return Err(Error::NotFound {
                entity: "pending alert",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Sets the incident's `alert_sent` flag and time; `false` when there is no such
    /// incident.
    #[doc(alias = "mark_incident_alert_sent")]
    pub fn update_incident_alert_sent(
        &mut self,
        incident_id: &str,
        sent_at: DateTime<Utc>,
    ) -> Result<bool> {
        validate::required("incident_id", incident_id, usize::MAX)?;
        validate::instant("sent_at", sent_at)?;
        require_transaction(self.conn)?;
        use costsim_cb_incidents::dsl as i;
        let n = diesel::update(i::costsim_cb_incidents.find(incident_id))
            .set((i::alert_sent.eq(true), i::alert_sent_at.eq(sent_at)))
            .execute(self.conn)?;
        Ok(n == 1)
    }

    /// Queues an alert, due at once, and returns it as stored.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty payload, and for [`AlertType::CostAnomaly`],
    /// which only [`AlertDriver::insert_anomaly_alerts`] queues.
    pub fn insert_alert(&mut self, alert: &NewAlert) -> Result<QueuedAlert> {
        if alert.alert_type == AlertType::CostAnomaly {
            return Err(Error::invalid(
                "alert_type",
                "cost anomaly alerts are queued by insert_anomaly_alerts",
            ));
        }
        match &alert.payload {
            serde_json::Value::Array(items) if !items.is_empty() => {}
            _ => {
                return Err(Error::invalid(
                    "payload",
                    "must be a non-empty JSON array of alert objects",
                ))
            }
        }
        validate::json("payload", &alert.payload)?;
        validate::optional(
            "circuit_breaker_name",
            alert.circuit_breaker_name.as_deref(),
            usize::MAX,
        )?;
        validate::optional("incident_id", alert.incident_id.as_deref(), usize::MAX)?;
        if alert.max_attempts < 1 {
            return Err(Error::invalid("max_attempts", "must be at least 1"));
        }
        require_transaction(self.conn)?;
        Ok(diesel::insert_into(q::table)
            .values((
                q::payload.eq(&alert.payload),
                q::alert_type.eq(alert.alert_type),
                q::circuit_breaker_name.eq(&alert.circuit_breaker_name),
                q::incident_id.eq(&alert.incident_id),
                q::max_attempts.eq(alert.max_attempts),
            ))
            .returning(QueuedAlert::as_returning())
            .get_result(self.conn)?)
    }

    /// Queues one [`AlertType::CostAnomaly`] alert per anomaly that has none yet, due at
    /// once, with [`anomaly_alert_payload`], and returns the alerts it queued (in the
    /// anomalies' order). An anomaly is announced at most once, whatever the number of
    /// calls: a detector re-run the same day upserts the same anomalies and queues nothing
    /// new. Queue them in the detector's transaction, so that alerts and anomalies commit
    /// together.
    pub fn insert_anomaly_alerts(
        &mut self,
        anomalies: &[CostAnomaly],
        max_attempts: i32,
    ) -> Result<Vec<QueuedAlert>> {
        if max_attempts < 1 {
            return Err(Error::invalid("max_attempts", "must be at least 1"));
        }
        let payloads = anomalies
            .iter()
            .map(|a| {
                validate::required("tenant_id", &a.tenant_id, limits::TENANT_ID)?;
                validate::required("anomaly_id", &a.id, limits::COST_ID)?;
                let payload = anomaly_alert_payload(a);
                validate::json("payload", &payload)?;
                Ok(payload)
            })
            .collect::<Result<Vec<_>>>()?;
        require_transaction(self.conn)?;
        let mut queued = Vec::new();
        for (a, payload) in anomalies.iter().zip(payloads) {
            let alert = diesel::insert_into(q::table)
                .values((
                    q::payload.eq(payload),
                    q::alert_type.eq(AlertType::CostAnomaly),
                    q::tenant_id.eq(&a.tenant_id),
                    q::anomaly_id.eq(&a.id),
                    q::max_attempts.eq(max_attempts),
                ))
                .on_conflict((q::tenant_id, q::anomaly_id))
                .filter_target(q::anomaly_id.is_not_null())
                .do_nothing()
                .returning(QueuedAlert::as_returning())
                .get_result(self.conn)
                .optional()?;
            queued.extend(alert);
        }
        Ok(queued)
    }

    /// Gives every dead letter that still has attempts left after `max_retries` more
    /// (at least 1) another `max_retries` attempts, due at `now`; returns how many.
    pub fn retry_failed_alerts(&mut self, max_retries: i32, now: DateTime<Utc>) -> Result<usize> {
        if max_retries < 1 {
            return Err(Error::invalid("max_retries", "must be at least 1"));
        }
        validate::instant("now", now)?;
        require_transaction(self.conn)?;
        Ok(diesel::update(
            q::table
                .filter(q::status.eq(AlertStatus::Failed))
                .filter(q::attempts.lt(q::max_attempts + max_retries)),
        )
        .set((
            q::status.eq(AlertStatus::Pending),
            q::max_attempts.eq(q::max_attempts + max_retries),
            q::next_attempt_at.eq(now),
            q::claim_token.eq(None::<Uuid>),
        ))
        .execute(self.conn)?)
    }

    /// Deletes alerts created before `cutoff` whose status is one of `statuses` (not
    /// empty); returns how many.
    pub fn purge_old_alerts(
        &mut self,
        cutoff: DateTime<Utc>,
        statuses: &[AlertStatus],
    ) -> Result<usize> {
        if statuses.is_empty() {
            return Err(Error::invalid("statuses", "name at least one status"));
        }
        validate::instant("cutoff", cutoff)?;
        require_transaction(self.conn)?;
        Ok(diesel::delete(
            q::table
                .filter(q::created_at.lt(cutoff))
                .filter(q::status.eq_any(statuses)),
        )
        .execute(self.conn)?)
    }
}
