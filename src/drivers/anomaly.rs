//! `CostAnomalyDriver`: the anomaly detector's data access. This part is its read half:
//! active budgets, finding an open anomaly, and the race-free upsert of one.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Double, Int4, Jsonb, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{
    ids, AnomalyType, CostAnomaly, CostBudget, DerivedCause, EntityType, Severity,
};
use crate::schema::{cost_anomalies as ca, cost_budgets};
use crate::validate;

/// Which anomaly: its type and the entity it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyKey {
    /// The rule that found it.
    pub anomaly_type: AnomalyType,
    /// What kind of entity.
    pub entity_type: EntityType,
    /// Which one (`None` for the tenant as a whole; at most 128 characters).
    pub entity_id: Option<String>,
}

/// An anomaly to record, for [`CostAnomalyDriver::upsert_anomaly`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyInput {
    /// Which anomaly.
    pub key: AnomalyKey,
    /// How serious.
    pub severity: Severity,
    /// The observed value, an amount in cents.
    pub current_value_cents: f64,
    /// The expected value, an amount in cents (kept from the first detection of the day).
    pub expected_value_cents: f64,
    /// Deviation from the expected value in percent (finite).
    pub deviation_pct: f64,
    /// The threshold crossed, in percent (finite, not negative; kept from the first
    /// detection of the day).
    pub threshold_pct: f64,
    /// For people.
    pub message: String,
    /// Consecutive days in breach (at least 1).
    pub breach_count: i32,
    /// The derived cause, when one was found.
    pub derived_cause: Option<DerivedCause>,
    /// Anything else (a JSON object).
    pub metadata: Option<serde_json::Value>,
    /// The caller's "now": the anomaly's day is this instant's UTC day.
    pub detected_at: DateTime<Utc>,
}

impl AnomalyInput {
    fn validate(&self) -> Result<()> {
        validate::optional("entity_id", self.key.entity_id.as_deref(), 128)?;
        validate::amount("current_value_cents", self.current_value_cents)?;
        validate::amount("expected_value_cents", self.expected_value_cents)?;
        validate::finite("deviation_pct", self.deviation_pct)?;
        validate::finite("threshold_pct", self.threshold_pct)?;
        if self.threshold_pct < 0.0 {
            return Err(Error::invalid("threshold_pct", "must not be negative"));
        }
        validate::text("message", &self.message)?;
        if self.breach_count < 1 {
            return Err(Error::invalid("breach_count", "must be at least 1"));
        }
        if let Some(m) = &self.metadata {
            if !m.is_object() {
                return Err(Error::invalid("metadata", "must be a JSON object"));
            }
            crate::drivers::provenance::json_text("metadata", m)?;
        }
        validate::instant("detected_at", self.detected_at)
    }
}

/// Inserts the anomaly, or, when the tenant already has an open one with the same key on
/// the same UTC day, updates its observation (value, deviation, severity, message, breach
/// count, cause, metadata), keeping its id, expected value, threshold and detection
/// instant. The unique index `uq_cost_anomalies_open_per_day` decides, so concurrent
/// detectors leave one row.
const UPSERT: &str = "\
INSERT INTO cost_anomalies AS a (id, tenant_id, anomaly_type, severity, entity_type, entity_id, \
    current_value_cents, expected_value_cents, deviation_pct, threshold_pct, message, \
    breach_count, derived_cause, metadata, detected_at) \
VALUES ($1, $2, $3, $4, $5, $6, $7 + 0, $8 + 0, $9 + 0, $10 + 0, $11, $12, $13, $14, $15) \
ON CONFLICT (tenant_id, anomaly_type, entity_type, entity_id, \
             date_bin('1 day', detected_at, '2000-01-01 00:00:00+00')) \
    WHERE NOT resolved AND NOT (anomaly_type = 'BUDGET_WARNING' AND metadata ? 'run_id') \
DO UPDATE SET current_value_cents = EXCLUDED.current_value_cents, \
    deviation_pct = EXCLUDED.deviation_pct, severity = EXCLUDED.severity, \
    message = EXCLUDED.message, breach_count = EXCLUDED.breach_count, \
    derived_cause = EXCLUDED.derived_cause, metadata = EXCLUDED.metadata \
RETURNING a.*";

/// Data access of the cost-anomaly detector. Writes refuse to run outside the caller's
/// transaction and never commit.
pub struct CostAnomalyDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> CostAnomalyDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        CostAnomalyDriver { conn }
    }

    /// The tenant's active budgets, by type and entity.
    pub fn fetch_active_budgets(&mut self, tenant_id: &str) -> Result<Vec<CostBudget>> {
        validate::required("tenant_id", tenant_id, 64)?;
        use cost_budgets::dsl as b;
        Ok(b::cost_budgets
            .filter(b::tenant_id.eq(tenant_id))
            .filter(b::is_active.eq(true))
            .order((b::budget_type, b::entity_id.asc().nulls_first(), b::id))
            .select(CostBudget::as_select())
            .load(self.conn)?)
    }

    /// The tenant's open anomaly with this key detected at or after `since`, the newest if
    /// there are several.
    pub fn find_existing_anomaly(
        &mut self,
        tenant_id: &str,
        key: &AnomalyKey,
        since: DateTime<Utc>,
    ) -> Result<Option<CostAnomaly>> {
        validate::required("tenant_id", tenant_id, 64)?;
        validate::optional("entity_id", key.entity_id.as_deref(), 128)?;
        validate::instant("since", since)?;
        let mut q = ca::table
            .filter(ca::tenant_id.eq(tenant_id))
            .filter(ca::anomaly_type.eq(key.anomaly_type))
            .filter(ca::entity_type.eq(key.entity_type))
            .filter(ca::detected_at.ge(since))
            .filter(ca::resolved.eq(false))
            .order((ca::detected_at.desc(), ca::id.desc()))
            .select(CostAnomaly::as_select())
            .into_boxed();
        q = match &key.entity_id {
            Some(id) => q.filter(ca::entity_id.eq(id.clone())),
            None => q.filter(ca::entity_id.is_null()),
        };
        Ok(q.first(self.conn).optional()?)
    }

    /// Records the anomaly: one open row per tenant, key and UTC day of `detected_at`
    /// (see [`AnomalyInput`]). Returns the whole stored row.
    pub fn upsert_anomaly(&mut self, tenant_id: &str, input: &AnomalyInput) -> Result<CostAnomaly> {
        validate::required("tenant_id", tenant_id, 64)?;
        input.validate()?;
        require_transaction(self.conn)?;
        Ok(diesel::sql_query(UPSERT)
            .bind::<Text, _>(ids::cost_anomaly_id())
            .bind::<Text, _>(tenant_id)
            .bind::<Text, _>(input.key.anomaly_type)
            .bind::<Text, _>(input.severity)
            .bind::<Text, _>(input.key.entity_type)
            .bind::<Nullable<Text>, _>(input.key.entity_id.as_deref())
            .bind::<Double, _>(input.current_value_cents)
            .bind::<Double, _>(input.expected_value_cents)
            .bind::<Double, _>(input.deviation_pct)
            .bind::<Double, _>(input.threshold_pct)
            .bind::<Text, _>(&input.message)
            .bind::<Int4, _>(input.breach_count)
            .bind::<Nullable<Text>, _>(input.derived_cause)
            .bind::<Nullable<Jsonb>, _>(input.metadata.as_ref())
            .bind::<Timestamptz, _>(input.detected_at)
            .get_result(self.conn)?)
    }
}
