//! `WorkerWriteDriver`: worker runs, their cost records and budget advisories.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{
    ids, AnomalyType, CostAnomaly, CostInput, CostRecord, EntityType, NewCostAnomaly, Severity,
    WorkerRun, WorkerStatus,
};
use crate::prepared::{Param, Prepared};
use crate::schema::{cost_anomalies, worker_runs};
use crate::types::{limits, RunId, TenantId};
use crate::validate;

/// What a worker reports about a run. `None` leaves a column as it is (on insert: its
/// default); for nullable columns `Some(None)` clears it.
///
/// Unlike the original, nothing is wiped because a key is missing, and `0` stays `0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerRunData {
    /// The task; used only when the run is created (default `""`).
    pub task: Option<String>,
    /// New state (insert default `queued`). `running` stamps `started_at` once; a terminal
    /// state stamps `completed_at` once.
    pub status: Option<WorkerStatus>,
    /// Outcome.
    pub success: Option<Option<bool>>,
    /// Error text.
    pub error: Option<Option<String>>,
    /// Artifacts, stored as JSON text in `output_json`.
    pub artifacts: Option<Option<serde_json::Value>>,
    /// Replay token, stored as JSON text in `replay_token_json`.
    pub replay_token: Option<Option<serde_json::Value>>,
    /// Tokens used (`total_tokens`), not negative.
    pub total_tokens_used: Option<Option<i32>>,
    /// Wall time in milliseconds, not negative.
    pub total_latency_ms: Option<Option<i32>>,
    /// Number of policy violations (insert default 0).
    pub policy_violations: Option<i32>,
    /// Number of recoveries (insert default 0).
    pub recoveries: Option<i32>,
    /// Cost in whole cents, not negative.
    pub cost_cents: Option<i32>,
}

/// The budget a cost advisory was raised against, kept in the anomaly's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSnapshot {
    /// Budget id.
    pub budget_id: String,
    /// Its daily limit in cents.
    pub daily_limit_cents: Option<i32>,
    /// Its warning threshold in percent.
    pub warn_threshold_pct: i32,
    /// Whether it is a hard limit.
    pub hard_limit_enabled: bool,
}

/// The LLM cost of one worker run, for [`WorkerWriteDriver::insert_cost_record`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCost {
    /// Model name (at most 64 characters).
    pub model: String,
    /// Prompt tokens, not negative.
    pub input_tokens: i32,
    /// Completion tokens, not negative.
    pub output_tokens: i32,
    /// Cost in cents, as [`CostInput::cost_cents`].
    pub cost_cents: f64,
}

/// A tenant's daily spend that crossed its warning threshold, for
/// [`WorkerWriteDriver::insert_cost_advisory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostAdvisory {
    /// The tenant's spend today, in cents, not negative.
    pub daily_spend_cents: i64,
    /// The threshold it crossed, in cents, as an amount (finite, `0..=MAX_AMOUNT_CENTS`).
    pub warn_threshold_cents: f64,
    /// The budget the threshold belongs to.
    pub budget: BudgetSnapshot,
}

/// Write-side persistence for the worker API: runs, their costs and budget advisories.
///
/// Borrows the caller's connection; writes refuse to run outside a transaction and never
/// commit. Every method is scoped by tenant.
#[doc(alias = "WorkerWriteService")]
pub struct WorkerWriteDriver<'c> {
    conn: &'c mut PgConnection,
}

/// One statement: insert, or update a run of the same tenant that is not finished. The
/// pairs ($6,$7), ($8,$9)… are "set this column?" and its value.
const UPSERT: &str = include_str!("worker_write/upsert_run.sql");

fn json_text(field: &'static str, v: &Option<Option<serde_json::Value>>) -> Result<Option<String>> {
    match v {
        Some(Some(value)) => serde_json::to_string(value)
            .map(Some)
            .map_err(|e| Error::invalid(field, e.to_string())),
        _ => Ok(None),
    }
}

impl WorkerRunData {
    fn validate(&self) -> Result<()> {
        validate::optional_text("task", self.task.as_deref())?;
        validate::optional_text("error", self.error.as_ref().and_then(|e| e.as_deref()))?;
        let counts = [
            ("total_tokens_used", self.total_tokens_used.flatten()),
            ("total_latency_ms", self.total_latency_ms.flatten()),
            ("policy_violations", self.policy_violations),
            ("recoveries", self.recoveries),
            ("cost_cents", self.cost_cents),
        ];
        for (field, value) in counts {
            if let Some(v) = value {
                validate::non_negative(field, v.into())?;
            }
        }
        Ok(())
    }
}

impl<'c> WorkerWriteDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        WorkerWriteDriver { conn }
    }

    /// Creates the run, or applies `data` to it, in one statement.
    ///
    /// Run ids are the tenant's own: the same id under another tenant is another run. A
    /// finished run (completed, failed, crashed) is [`Error::FinishedRun`], and nothing
    /// changes.
    pub fn upsert_worker_run(
        &mut self,
        tenant_id: &TenantId,
        run_id: &RunId,
        data: &WorkerRunData,
    ) -> Result<WorkerRun> {
        // `worker_runs.tenant_id` is narrower than the cost tables'.
        validate::required("tenant_id", tenant_id, limits::WORKER_RUN_ID)?;
        data.validate()?;
        let output = json_text("artifacts", &data.artifacts)?;
        let replay = json_text("replay_token", &data.replay_token)?;
        require_transaction(self.conn)?;
        let task = data.task.clone().unwrap_or_default();
        let input_json = serde_json::json!({ "task": task }).to_string();
        let error = data.error.clone().flatten();
        let row = Prepared {
            sql: UPSERT,
            params: &[
                Param::Text(run_id),
                Param::Text(tenant_id),
                Param::Text(&task),
                Param::Text(&input_json),
                Param::OptText(data.status.map(WorkerStatus::as_str)),
                Param::Flag(data.success.is_some()),
                Param::OptFlag(data.success.flatten()),
                Param::Flag(data.error.is_some()),
                Param::OptText(error.as_deref()),
                Param::Flag(data.artifacts.is_some()),
                Param::OptText(output.as_deref()),
                Param::Flag(data.replay_token.is_some()),
                Param::OptText(replay.as_deref()),
                Param::Flag(data.total_tokens_used.is_some()),
                Param::OptInt4(data.total_tokens_used.flatten()),
                Param::Flag(data.total_latency_ms.is_some()),
                Param::OptInt4(data.total_latency_ms.flatten()),
                Param::OptInt4(data.policy_violations),
                Param::OptInt4(data.recoveries),
                Param::OptInt4(data.cost_cents),
            ],
        }
        .get_result::<WorkerRun>(self.conn)
        .optional()?;
        if let Some(run) = row {
            return Ok(run);
        }
        // The conflict row was left alone: it is finished.
        let status: WorkerStatus = worker_runs::table
            .find((tenant_id, run_id))
            .select(worker_runs::status)
            .first(self.conn)?;
        Err(Error::FinishedRun {
            run_id: run_id.into(),
            status: status.to_string(),
        })
    }

    /// Records the LLM cost of a run: `request_id` is the run id, so a run is billed once;
    /// recording it again returns the first record.
    pub fn insert_cost_record(
        &mut self,
        tenant_id: &TenantId,
        run_id: &RunId,
        cost: &RunCost,
    ) -> Result<CostRecord> {
        let cost = CostInput {
            tenant_id: tenant_id.into(),
            request_id: Some(run_id.into()),
            workflow_id: Some("business-builder".into()),
            skill_id: Some("llm_invoke".into()),
            model: cost.model.clone(),
            input_tokens: cost.input_tokens,
            output_tokens: cost.output_tokens,
            cost_cents: cost.cost_cents,
            ..CostInput::default()
        };
        Ok(cost.insert_once(self.conn)?.0)
    }

    /// Records a `BUDGET_WARNING` (MEDIUM, entity = the tenant) for a run whose tenant's
    /// daily spend crossed the warning threshold; the budget snapshot goes into the
    /// metadata.
    ///
    /// A run gets one advisory: calling this again for the run, also concurrently, returns
    /// the first one and adds nothing (a unique index decides).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] also when the deviation from the threshold would not be a
    /// finite number (a threshold so close to zero that the percentage overflows).
    pub fn insert_cost_advisory(
        &mut self,
        tenant_id: &TenantId,
        run_id: &RunId,
        advisory: &CostAdvisory,
    ) -> Result<CostAnomaly> {
        let budget = &advisory.budget;
        validate::non_negative("daily_spend_cents", advisory.daily_spend_cents)?;
        validate::amount("warn_threshold_cents", advisory.warn_threshold_cents)?;
        validate::required("budget.budget_id", &budget.budget_id, limits::COST_ID)?;
        validate::percent("budget.warn_threshold_pct", budget.warn_threshold_pct)?;
        let spend = advisory.daily_spend_cents as f64;
        let threshold = advisory.warn_threshold_cents + 0.0;
        let deviation_pct = if threshold > 0.0 {
            (spend - threshold) / threshold * 100.0
        } else {
            0.0
        };
        validate::finite("warn_threshold_cents", deviation_pct)?;
        require_transaction(self.conn)?;
        let message = format!(
            "Daily spend ({}¢) exceeds {}% warning threshold ({}¢)",
            advisory.daily_spend_cents, budget.warn_threshold_pct, threshold as i64
        );
        let inserted = diesel::insert_into(cost_anomalies::table)
            .values(NewCostAnomaly {
                id: ids::cost_anomaly_id(),
                tenant_id: tenant_id.into(),
                anomaly_type: AnomalyType::BudgetWarning,
                severity: Severity::Medium,
                entity_type: EntityType::Tenant,
                entity_id: Some(tenant_id.into()),
                current_value_cents: spend,
                expected_value_cents: threshold,
                deviation_pct,
                threshold_pct: budget.warn_threshold_pct.into(),
                message,
                metadata: Some(serde_json::json!({
                    "run_id": run_id,
                    "budget_snapshot": budget,
                })),
                detected_at: None,
                derived_cause: None,
                breach_count: Some(1),
            })
            .on_conflict_do_nothing()
            .returning(CostAnomaly::as_returning())
            .get_result(self.conn)
            .optional()?;
        match inserted {
            Some(row) => Ok(row),
            None => Ok(cost_anomalies::table
                .filter(cost_anomalies::tenant_id.eq(tenant_id))
                .filter(cost_anomalies::anomaly_type.eq(AnomalyType::BudgetWarning))
                .filter(
                    cost_anomalies::metadata
                        .retrieve_as_text("run_id")
                        .eq(run_id),
                )
                .select(CostAnomaly::as_select())
                .first(self.conn)?),
        }
    }

    /// Deletes the tenant's run; [`Error::NotFound`] if the tenant has no such run.
    pub fn delete_worker_run(&mut self, tenant_id: &TenantId, run_id: &RunId) -> Result<()> {
        // `worker_runs.tenant_id` is narrower than the cost tables'.
        validate::required("tenant_id", tenant_id, limits::WORKER_RUN_ID)?;
        require_transaction(self.conn)?;
        let deleted = diesel::delete(
            worker_runs::table
                .filter(worker_runs::id.eq(run_id))
                .filter(worker_runs::tenant_id.eq(tenant_id)),
        )
        .execute(self.conn)?;
        if deleted == 0 {
            return Err(Error::NotFound {
                entity: "worker run",
                id: run_id.into(),
            });
        }
        Ok(())
    }

    /// The tenant's run, or `None` (also when the id belongs to another tenant).
    #[doc(alias = "get_worker_run")]
    pub fn fetch_worker_run(
        &mut self,
        tenant_id: &TenantId,
        run_id: &RunId,
    ) -> Result<Option<WorkerRun>> {
        // `worker_runs.tenant_id` is narrower than the cost tables'.
        validate::required("tenant_id", tenant_id, limits::WORKER_RUN_ID)?;
        Ok(worker_runs::table
            .filter(worker_runs::id.eq(run_id))
            .filter(worker_runs::tenant_id.eq(tenant_id))
            .select(WorkerRun::as_select())
            .first(self.conn)
            .optional()?)
    }
}
