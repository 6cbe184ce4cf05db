//! Cost intelligence rows: cost records (their input, insert shape and single insert),
//! anomalies, budgets, feature tags and drift tracking.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::enums::{AnomalyType, BudgetType, DerivedCause, EntityType, Severity};
use super::ids;
use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::prepared::{Param, Prepared};
use crate::schema::{
    cost_anomalies, cost_budgets, cost_drift_tracking, cost_records, cost_request_keys,
    feature_tags,
};
use crate::types::limits;
use crate::validate;

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

/// One record with a request id, unless the tenant already claimed it.
const INSERT_KEYED: &str = include_str!("cost/insert_keyed.sql");
/// One record without a request id.
const INSERT_UNKEYED: &str = include_str!("cost/insert_unkeyed.sql");

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
}

/// One LLM call's cost, as `CostWriteDriver::insert_cost_record` and
/// `CostWriteDriver::record_costs` record it.
///
/// A record with a `request_id` is recorded at most once per tenant: recording it again
/// returns the first record's id and adds nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostInput {
    /// Owning tenant (at most 64 characters).
    pub tenant_id: String,
    /// End user (at most 64).
    pub user_id: Option<String>,
    /// Feature tag (at most 128).
    pub feature_tag: Option<String>,
    /// Idempotency key (at most 64): unique per tenant.
    pub request_id: Option<String>,
    /// Workflow (at most 64).
    pub workflow_id: Option<String>,
    /// Skill (at most 64).
    pub skill_id: Option<String>,
    /// Model name (required, at most 64).
    pub model: String,
    /// Prompt tokens, not negative.
    pub input_tokens: i32,
    /// Completion tokens, not negative.
    pub output_tokens: i32,
    /// Cost in cents: finite, not negative, at most [`MAX_AMOUNT_CENTS`](crate::MAX_AMOUNT_CENTS),
    /// fractions kept (`-0.0` is stored as `0`).
    pub cost_cents: f64,
    /// Whether the call was a retry.
    pub is_retry: bool,
    /// When the call happened; `None` for the transaction's `now()`.
    pub created_at: Option<DateTime<Utc>>,
}

impl CostInput {
    /// This input as the row that stores it, with the id `id`; `default_at` stands in for
    /// a missing `created_at`, and `-0` cents become `0`. Call [`CostInput::validate`]
    /// first: the row is written as it is.
    pub fn as_new_record<'a>(
        &'a self,
        id: &'a str,
        default_at: DateTime<Utc>,
    ) -> NewCostRecord<'a> {
        NewCostRecord {
            id,
            tenant_id: &self.tenant_id,
            user_id: self.user_id.as_deref(),
            feature_tag: self.feature_tag.as_deref(),
            request_id: self.request_id.as_deref(),
            workflow_id: self.workflow_id.as_deref(),
            skill_id: self.skill_id.as_deref(),
            model: &self.model,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_cents: self.cost_cents + 0.0,
            is_retry: self.is_retry,
            created_at: self.created_at.unwrap_or(default_at),
        }
    }

    /// The record this input was stored as, under `id` at `created_at` (`-0` cents as `0`).
    pub(crate) fn into_record(self, id: String, created_at: DateTime<Utc>) -> CostRecord {
        CostRecord {
            id,
            tenant_id: self.tenant_id,
            user_id: self.user_id,
            feature_tag: self.feature_tag,
            request_id: self.request_id,
            workflow_id: self.workflow_id,
            skill_id: self.skill_id,
            model: self.model,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_cents: self.cost_cents + 0.0,
            created_at,
            is_retry: self.is_retry,
        }
    }

    /// Refuses the input, naming the field, when it cannot be stored as it is.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput).
    pub fn validate(&self) -> Result<()> {
        validate::required("tenant_id", &self.tenant_id, limits::TENANT_ID)?;
        validate::optional("user_id", self.user_id.as_deref(), limits::COST_ID)?;
        validate::optional("feature_tag", self.feature_tag.as_deref(), limits::TAG)?;
        validate::optional("request_id", self.request_id.as_deref(), limits::COST_ID)?;
        validate::optional("workflow_id", self.workflow_id.as_deref(), limits::COST_ID)?;
        validate::optional("skill_id", self.skill_id.as_deref(), limits::COST_ID)?;
        validate::required("model", &self.model, limits::COST_ID)?;
        validate::non_negative("input_tokens", self.input_tokens.into())?;
        validate::non_negative("output_tokens", self.output_tokens.into())?;
        validate::amount("cost_cents", self.cost_cents)?;
        validate::optional_instant("created_at", self.created_at)
    }

    /// Stores this input under a new id unless the tenant already recorded its request
    /// id, and returns the stored row with whether this call inserted it. Validates first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the field; [`Error::NoTransaction`](crate::Error::NoTransaction) outside a
    /// transaction.
    pub(crate) fn insert_once(&self, conn: &mut PgConnection) -> Result<(CostRecord, bool)> {
        self.validate()?;
        require_transaction(conn)?;
        let id = ids::cost_record_id();
        let inserted = Prepared {
            sql: if self.request_id.is_some() {
                INSERT_KEYED
            } else {
                INSERT_UNKEYED
            },
            params: &[
                Param::Text(&id),
                Param::Text(&self.tenant_id),
                Param::OptText(self.user_id.as_deref()),
                Param::OptText(self.feature_tag.as_deref()),
                Param::OptText(self.request_id.as_deref()),
                Param::OptText(self.workflow_id.as_deref()),
                Param::OptText(self.skill_id.as_deref()),
                Param::Text(&self.model),
                Param::Int4(self.input_tokens),
                Param::Int4(self.output_tokens),
                Param::Float(self.cost_cents),
                Param::Flag(self.is_retry),
                Param::OptInstant(self.created_at.as_ref()),
            ],
        }
        .get_result::<Stored>(conn)
        .optional()?
        .map(|row| row.created_at);
        match inserted {
            Some(created_at) => Ok((self.clone().into_record(id, created_at), true)),
            None => Ok((self.claimed_record(conn)?, false)),
        }
    }

    /// The stored record that holds this input's request id: the key gives its instant,
    /// so one partition is read. [`Error::Conflict`] while the record's day is detached
    /// and its key not yet deleted.
    fn claimed_record(&self, conn: &mut PgConnection) -> Result<CostRecord> {
        use cost_request_keys as k;
        cost_records::table
            .inner_join(
                k::table.on(k::tenant_id
                    .eq(cost_records::tenant_id)
                    .and(k::record_id.eq(cost_records::id))
                    .and(k::created_at.eq(cost_records::created_at))),
            )
            .filter(k::tenant_id.eq(&self.tenant_id))
            .filter(k::request_id.nullable().eq(&self.request_id))
            .select(CostRecord::as_select())
            .first(conn)
            .optional()?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "request {:?} was recorded on a day that retention is retiring",
                    self.request_id.as_deref().unwrap_or_default()
                ))
            })
    }
}
