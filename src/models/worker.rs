//! Worker runs.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::enums::WorkerStatus;
use crate::schema::worker_runs;

/// One execution of a worker for a tenant (`worker_runs`).
#[derive(
    Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Identifiable, Serialize,
)]
#[diesel(table_name = worker_runs, check_for_backend(diesel::pg::Pg))]
pub struct WorkerRun {
    /// Hyphenated UUID chosen by the caller.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Worker that ran (`business-builder`).
    pub worker_id: String,
    /// API key used.
    pub api_key_id: Option<String>,
    /// User who started it.
    pub user_id: Option<String>,
    /// The task text.
    pub task: String,
    /// Input as JSON text.
    pub input_json: Option<String>,
    /// Life-cycle state.
    pub status: WorkerStatus,
    /// Outcome.
    pub success: Option<bool>,
    /// Error text.
    pub error: Option<String>,
    /// Artifacts as JSON text.
    pub output_json: Option<String>,
    /// Replay token as JSON text.
    pub replay_token_json: Option<String>,
    /// Tokens used.
    pub total_tokens: Option<i32>,
    /// Wall time in milliseconds.
    pub total_latency_ms: Option<i32>,
    /// Stages completed.
    pub stages_completed: Option<i32>,
    /// Number of recoveries.
    pub recoveries: i32,
    /// Number of policy violations.
    pub policy_violations: i32,
    /// Cost in whole cents.
    pub cost_cents: Option<i32>,
    /// Creation instant.
    pub created_at: Option<DateTime<Utc>>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// Run this one retries.
    pub parent_run_id: Option<String>,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// Whether it is a retry.
    pub is_retry: bool,
    /// Whether it is synthetic test data.
    pub is_synthetic: bool,
    /// Synthetic scenario.
    pub synthetic_scenario_id: Option<String>,
}

/// A worker run to insert; unset columns take their server defaults.
#[derive(Debug, Clone, PartialEq, Default, Insertable)]
#[diesel(table_name = worker_runs)]
pub struct NewWorkerRun {
    /// Run id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Worker id; `None` for `business-builder`.
    pub worker_id: Option<String>,
    /// Task text.
    pub task: String,
    /// Input as JSON text.
    pub input_json: Option<String>,
    /// State; `None` for `queued`.
    pub status: Option<WorkerStatus>,
    /// Outcome.
    pub success: Option<bool>,
    /// Error text.
    pub error: Option<String>,
    /// Artifacts as JSON text.
    pub output_json: Option<String>,
    /// Replay token as JSON text.
    pub replay_token_json: Option<String>,
    /// Tokens used.
    pub total_tokens: Option<i32>,
    /// Wall time in milliseconds.
    pub total_latency_ms: Option<i32>,
    /// Recoveries; `None` for 0.
    pub recoveries: Option<i32>,
    /// Policy violations; `None` for 0.
    pub policy_violations: Option<i32>,
    /// Cost in whole cents.
    pub cost_cents: Option<i32>,
    /// Creation instant; `None` for `now()`.
    pub created_at: Option<DateTime<Utc>>,
    /// Start instant.
    pub started_at: Option<DateTime<Utc>>,
    /// Finish instant.
    pub completed_at: Option<DateTime<Utc>>,
    /// Run this one retries.
    pub parent_run_id: Option<String>,
}
