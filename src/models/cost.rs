//! Cost intelligence rows: cost records, anomalies, budgets, feature tags, breach history
//! and drift tracking.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::enums::{AnomalyType, BudgetType, DerivedCause, EntityType, Severity};
use crate::schema::{
    cost_anomalies, cost_budgets, cost_drift_tracking, cost_records, feature_tags,
};

/// One LLM call's cost (`cost_records`), append-only.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = cost_records, check_for_backend(diesel::pg::Pg))]
pub struct CostRecord {
    /// `cr_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// End user the call was made for.
    pub user_id: Option<String>,
    /// Feature tag the spend is attributed to.
    pub feature_tag: Option<String>,
    /// Caller's request id; unique per tenant when present (idempotent ingestion).
    pub request_id: Option<String>,
    /// Workflow that made the call.
    pub workflow_id: Option<String>,
    /// Skill that made the call.
    pub skill_id: Option<String>,
    /// LLM model name.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: i32,
    /// Completion tokens.
    pub output_tokens: i32,
    /// Cost in (fractional) cents.
    pub cost_cents: f64,
    /// When the call was recorded.
    pub created_at: DateTime<Utc>,
    /// Whether the call was a retry.
    pub is_retry: bool,
}

/// A cost record as it is inserted, every column given: the one insert shape of
/// `cost_records`, used by the bulk (`COPY`) path and the benchmarks' baselines. Build it
/// from a validated input with `CostInput::as_new_record`.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = cost_records, treat_none_as_default_value = false)]
pub struct NewCostRecord<'a> {
    /// `cr_` + 16 hex, see [`super::ids::cost_record_id`].
    pub id: &'a str,
    /// Owning tenant.
    pub tenant_id: &'a str,
    /// End user.
    pub user_id: Option<&'a str>,
    /// Feature tag.
    pub feature_tag: Option<&'a str>,
    /// Caller's request id.
    pub request_id: Option<&'a str>,
    /// Workflow id.
    pub workflow_id: Option<&'a str>,
    /// Skill id.
    pub skill_id: Option<&'a str>,
    /// Model name.
    pub model: &'a str,
    /// Prompt tokens.
    pub input_tokens: i32,
    /// Completion tokens.
    pub output_tokens: i32,
    /// Cost in cents.
    pub cost_cents: f64,
    /// Whether the call was a retry.
    pub is_retry: bool,
    /// Recording instant.
    pub created_at: DateTime<Utc>,
}

/// A detected cost anomaly or budget advisory (`cost_anomalies`).
#[derive(
    Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Identifiable, Serialize,
)]
#[diesel(table_name = cost_anomalies, check_for_backend(diesel::pg::Pg))]
pub struct CostAnomaly {
    /// `ca_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Kind of anomaly.
    pub anomaly_type: AnomalyType,
    /// Severity.
    pub severity: Severity,
    /// What it is about.
    pub entity_type: EntityType,
    /// Which one (user id, feature tag, model, tenant id).
    pub entity_id: Option<String>,
    /// Observed value in cents.
    pub current_value_cents: f64,
    /// Expected value (baseline or limit) in cents.
    pub expected_value_cents: f64,
    /// Deviation in percent.
    pub deviation_pct: f64,
    /// Threshold that applied, in percent.
    pub threshold_pct: f64,
    /// Human-readable summary.
    pub message: String,
    /// Linked incident.
    pub incident_id: Option<String>,
    /// Action taken.
    pub action_taken: Option<String>,
    /// Whether it was resolved.
    pub resolved: bool,
    /// When it was resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Free-form details.
    pub metadata: Option<serde_json::Value>,
    /// Detection instant.
    pub detected_at: DateTime<Utc>,
    /// Cost snapshot it was computed from.
    pub snapshot_id: Option<String>,
    /// Baseline it was computed against.
    pub baseline_id: Option<String>,
    /// Derived cause.
    pub derived_cause: Option<DerivedCause>,
    /// Consecutive breaches (or drift days).
    pub breach_count: Option<i32>,
}

/// An anomaly to insert.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = cost_anomalies)]
pub struct NewCostAnomaly {
    /// `ca_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Kind of anomaly.
    pub anomaly_type: AnomalyType,
    /// Severity.
    pub severity: Severity,
    /// What it is about.
    pub entity_type: EntityType,
    /// Which one.
    pub entity_id: Option<String>,
    /// Observed value in cents.
    pub current_value_cents: f64,
    /// Expected value in cents.
    pub expected_value_cents: f64,
    /// Deviation in percent.
    pub deviation_pct: f64,
    /// Threshold in percent.
    pub threshold_pct: f64,
    /// Summary.
    pub message: String,
    /// Details.
    pub metadata: Option<serde_json::Value>,
    /// Detection instant; `None` for `now()`.
    pub detected_at: Option<DateTime<Utc>>,
    /// Derived cause.
    pub derived_cause: Option<DerivedCause>,
    /// Consecutive breaches.
    pub breach_count: Option<i32>,
}

/// A spend limit for a tenant, feature or user (`cost_budgets`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = cost_budgets, check_for_backend(diesel::pg::Pg))]
pub struct CostBudget {
    /// `cb_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Scope.
    pub budget_type: BudgetType,
    /// Feature tag or user id; `None` for a tenant budget.
    pub entity_id: Option<String>,
    /// Daily limit in cents.
    pub daily_limit_cents: Option<i32>,
    /// Monthly limit in cents.
    pub monthly_limit_cents: Option<i32>,
    /// Warning threshold, percent of the limit.
    pub warn_threshold_pct: i32,
    /// Whether spend above the limit is refused.
    pub hard_limit_enabled: bool,
    /// Whether the budget is checked.
    pub is_active: bool,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A budget to insert.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = cost_budgets)]
pub struct NewCostBudget {
    /// `cb_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Scope.
    pub budget_type: BudgetType,
    /// Feature tag or user id; `None` for a tenant budget.
    pub entity_id: Option<String>,
    /// Daily limit in cents.
    pub daily_limit_cents: Option<i32>,
    /// Monthly limit in cents.
    pub monthly_limit_cents: Option<i32>,
    /// Warning threshold in percent.
    pub warn_threshold_pct: i32,
    /// Hard limit.
    pub hard_limit_enabled: bool,
}

/// A feature namespace used for cost attribution (`feature_tags`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = feature_tags, check_for_backend(diesel::pg::Pg))]
pub struct FeatureTag {
    /// `ft_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The tag, e.g. `customer_support.chat`; unique per tenant.
    pub tag: String,
    /// Display name.
    pub display_name: String,
    /// Description.
    pub description: Option<String>,
    /// Budget in cents.
    pub budget_cents: Option<i32>,
    /// Whether the tag is in use.
    pub is_active: bool,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A feature tag to insert.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = feature_tags)]
pub struct NewFeatureTag {
    /// `ft_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The tag.
    pub tag: String,
    /// Display name.
    pub display_name: String,
    /// Description.
    pub description: Option<String>,
    /// Budget in cents.
    pub budget_cents: Option<i32>,
}

/// State of the sustained-drift detector for one entity (`cost_drift_tracking`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = cost_drift_tracking, check_for_backend(diesel::pg::Pg))]
pub struct DriftTracking {
    /// `dt_` + 16 hex.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// What drifts.
    pub entity_type: EntityType,
    /// Which one.
    pub entity_id: Option<String>,
    /// Rolling 7-day average in cents.
    pub rolling_7d_avg_cents: f64,
    /// Baseline average in cents.
    pub baseline_7d_avg_cents: f64,
    /// Drift in percent.
    pub drift_pct: f64,
    /// Consecutive drift days.
    pub drift_days_count: i32,
    /// First day of the current episode.
    pub first_drift_date: NaiveDate,
    /// Last day checked.
    pub last_check_date: NaiveDate,
    /// Whether an episode is under way.
    pub is_active: bool,
    /// Creation instant.
    pub created_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: Option<DateTime<Utc>>,
}
