//! Types every layer shares: time windows, budget scopes, entity keys, tenant sets, the
//! advisory lock ids of the singleton jobs, and the column limits of the schema, defined once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::{BudgetType, EntityType};
use crate::validate;

/// A half-open window `[from, to)` of instants; `from` must be before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    /// First instant included.
    pub from: DateTime<Utc>,
    /// First instant excluded.
    pub to: DateTime<Utc>,
}

impl TimeWindow {
    /// `[from, to)`; an empty or reversed window, or one PostgreSQL cannot store, is
    /// [`Error::InvalidInput`].
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self> {
        validate::instant("window.from", from)?;
        validate::instant("window.to", to)?;
        if from >= to {
            return Err(Error::invalid(
                "window",
                format!("`from` ({from}) must be before `to` ({to})"),
            ));
        }
        Ok(TimeWindow { from, to })
    }
}

/// Who a budget applies to; the feature tag or user id travels with its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetScope {
    /// The whole tenant.
    Tenant,
    /// One feature tag.
    Feature(String),
    /// One end user.
    User(String),
}

impl BudgetScope {
    pub(crate) fn parts(&self) -> (BudgetType, Option<&str>) {
        match self {
            BudgetScope::Tenant => (BudgetType::Tenant, None),
            BudgetScope::Feature(tag) => (BudgetType::Feature, Some(tag)),
            BudgetScope::User(user) => (BudgetType::User, Some(user)),
        }
    }
}

/// Which tenants a set-based read covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tenants<'a> {
    /// Every tenant.
    All,
    /// One tenant.
    One(&'a str),
}

impl Tenants<'_> {
    /// Refuses an empty or too long tenant id.
    pub(crate) fn validate(self) -> Result<()> {
        match self {
            Tenants::All => Ok(()),
            Tenants::One(t) => validate::required("tenant_id", t, limits::TENANT_ID),
        }
    }
}

/// Whose breach or drift: an entity of a tenant (`entity_id: None` for the tenant as a
/// whole; `Some("")`, as the original system wrote it, means the same).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EntityKey {
    /// What kind of entity.
    pub entity_type: EntityType,
    /// Which one (at most 128 characters).
    pub entity_id: Option<String>,
}

impl EntityKey {
    /// The entity id as stored: `None` for the tenant as a whole, also for `Some("")`.
    pub fn id(&self) -> Option<&str> {
        self.entity_id.as_deref().filter(|id| !id.is_empty())
    }
}

/// The advisory lock ids of the singleton jobs (`LeaderGuard` and `costdb leader`).
pub mod locks {
    /// The daily canary run.
    pub const LOCK_CANARY_RUNNER: i64 = 7001;
    /// The CostSim alert-queue worker.
    pub const LOCK_ALERT_WORKER: i64 = 7002;
    /// The provenance archiver.
    pub const LOCK_PROVENANCE_ARCHIVER: i64 = 7003;
    /// The baseline backfill.
    pub const LOCK_BASELINE_BACKFILL: i64 = 7004;
    /// `costdb upkeep` (not in the original): reclaiming reservations, retrying and purging
    /// alerts.
    pub const LOCK_UPKEEP: i64 = 7005;

    /// The singleton jobs' locks and their names.
    pub const KNOWN_LOCKS: [(i64, &str); 5] = [
        (LOCK_CANARY_RUNNER, "canary runner"),
        (LOCK_ALERT_WORKER, "alert worker"),
        (LOCK_PROVENANCE_ARCHIVER, "provenance archiver"),
        (LOCK_BASELINE_BACKFILL, "baseline backfill"),
        (LOCK_UPKEEP, "upkeep"),
    ];
}

/// The `varchar` sizes of the migrations, in characters, defined once: every check of a
/// text's length uses these, and a test compares them with the migrated schema.
pub mod limits {
    /// `tenant_id` of the cost tables (`cost_records`, `cost_budgets`, `cost_anomalies`, …).
    pub const TENANT_ID: usize = 64;
    /// `worker_runs.tenant_id` and `worker_runs.id`.
    pub const WORKER_RUN_ID: usize = 36;
    /// `tenant_id` of `pattern_feedback` and `prediction_events`.
    pub const PATTERN_TENANT_ID: usize = 255;
    /// `coordination_audit_records.tenant_id` and its envelope ids.
    pub const AUDIT_ID: usize = 100;
    /// User, request, workflow and skill ids and the model name of `cost_records`; the
    /// ids of `cost_anomalies` and `cost_budgets`.
    pub const COST_ID: usize = 64;
    /// Feature tags (`cost_records.feature_tag`, `feature_tags.tag`) and entity ids.
    pub const TAG: usize = 128;
    /// `feature_tags.display_name`.
    pub const DISPLAY_NAME: usize = 256;
    /// Ids of the breach history and the drift trackers (`bh_`/`dt_` + 16 hex).
    pub const DETECTOR_ROW_ID: usize = 32;
    /// `pattern_feedback.signature` and `prediction_events.subject_id`.
    pub const PATTERN_TEXT: usize = 255;
    /// `worker_runs.worker_id`.
    pub const WORKER_ID: usize = 100;
    /// One run id in `pattern_feedback.provenance` (a jsonb array; bounded here, not by
    /// the column).
    pub const PROVENANCE_RUN_ID: usize = 255;
    /// `pattern_feedback.threshold_used`.
    pub const THRESHOLD_USED: usize = 100;
    /// A holder's name in `leader_terms.holder` (text; bounded here, not by the column).
    pub const HOLDER: usize = 256;
}
