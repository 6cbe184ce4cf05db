//! `PatternDetectionDriver` and `PredictionDriver`: the worker runs behind failure and
//! cost patterns, pattern feedback, and advisory predictions.
//!
//! Every list is bounded (`limit` from 1 to [`MAX_LIMIT`]) and ordered newest first with
//! the id as tie-break, so pages are stable; the original scanned whole histories in no
//! particular order. `tenant_id: None` reads every tenant (for operators); with a tenant,
//! each query is served by an index that leads with `tenant_id`. Each query is also
//! available as a `*_query` function, for [`db::explain`](crate::db::explain) or for
//! composing.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{
    NewPatternFeedback, NewPredictionEvent, PatternFeedback, PatternSeverity, PatternType,
    PredictionEvent, PredictionType, SubjectType, WorkerRun, WorkerStatus,
};
use crate::schema::{pattern_feedback as pf, prediction_events as pe, worker_runs as wr};
use crate::types::limits;
use crate::validate;

/// The largest `limit` a list takes.
pub const MAX_LIMIT: i64 = 1_000;

fn limit(limit: i64) -> Result<i64> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("{limit} is outside 1..={MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

fn tenant(tenant_id: Option<&str>) -> Result<()> {
    validate::optional("tenant_id", tenant_id, limits::PATTERN_TENANT_ID)
}

/// A query over worker runs.
pub type RunsQuery =
    wr::BoxedQuery<'static, Pg, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<WorkerRun, Pg>>>;
/// A query over pattern feedback.
pub type FeedbackQuery =
    pf::BoxedQuery<'static, Pg, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<PatternFeedback, Pg>>>;
/// A query over predictions.
pub type PredictionsQuery =
    pe::BoxedQuery<'static, Pg, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<PredictionEvent, Pg>>>;

/// Runs of `status` (of one worker, when given) created at or after `since`, newest first
/// (runs without a creation instant last), at most `limit`.
fn runs(
    tenant_id: Option<&str>,
    status: WorkerStatus,
    since: Option<DateTime<Utc>>,
    worker_id: Option<&str>,
    limit_to: i64,
) -> Result<RunsQuery> {
    tenant(tenant_id)?;
    validate::optional_instant("since", since)?;
    validate::optional("worker_id", worker_id, limits::WORKER_ID)?;
    let mut q = wr::table
        .filter(wr::status.eq(status))
        .select(WorkerRun::as_select())
        .order((wr::created_at.desc().nulls_last(), wr::id.desc()))
        .limit(limit(limit_to)?)
        .into_boxed();
    if let Some(t) = tenant_id {
        q = q.filter(wr::tenant_id.eq(t.to_owned()));
    }
    if let Some(since) = since {
        q = q.filter(wr::created_at.ge(since));
    }
    if let Some(w) = worker_id {
        q = q.filter(wr::worker_id.eq(w.to_owned()));
    }
    Ok(q)
}

/// Completed runs that cost something, as [`runs`].
fn costly_runs(
    tenant_id: Option<&str>,
    since: Option<DateTime<Utc>>,
    worker_id: Option<&str>,
    limit: i64,
) -> Result<RunsQuery> {
    Ok(
        runs(tenant_id, WorkerStatus::Completed, since, worker_id, limit)?
            .filter(wr::cost_cents.gt(0)),
    )
}

/// A feedback row to insert, for [`PatternDetectionDriver::insert_feedback`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackInput {
    /// What was observed.
    pub pattern_type: PatternType,
    /// How serious (the original's default is `info`).
    pub severity: PatternSeverity,
    /// What happened, for people.
    pub description: String,
    /// A stable signature of the pattern (at most 255 characters).
    pub signature: Option<String>,
    /// Ids of the worker runs that show the pattern.
    pub provenance: Vec<String>,
    /// How often it occurred (at least 1).
    pub occurrence_count: i32,
    /// The window it was observed in, in minutes (positive).
    pub time_window_minutes: Option<i32>,
    /// The threshold that was crossed (at most 100).
    pub threshold_used: Option<String>,
    /// Anything else; `None` is SQL `NULL`.
    pub metadata: Option<serde_json::Value>,
    /// When it was detected; `None` for the transaction's `now()`.
    pub detected_at: Option<DateTime<Utc>>,
}

/// Reads worker runs for pattern detection and writes pattern feedback. Writes refuse to
/// run outside the caller's transaction and never commit.
pub struct PatternDetectionDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> PatternDetectionDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        PatternDetectionDriver { conn }
    }

    /// [`fetch_failed_runs_with_error`](Self::fetch_failed_runs_with_error) as a query.
    pub fn failed_runs_with_error_query(
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<RunsQuery> {
        Ok(
            runs(tenant_id, WorkerStatus::Failed, Some(since), None, limit)?
                .filter(wr::error.is_not_null()),
        )
    }

    /// Failed runs with an error text, created at or after `since`, newest first (the
    /// prediction driver's `fetch_failed_runs` also takes those without one).
    #[doc(alias = "fetch_failed_runs")]
    pub fn fetch_failed_runs_with_error(
        &mut self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<WorkerRun>> {
        Ok(Self::failed_runs_with_error_query(tenant_id, since, limit)?.load(self.conn)?)
    }

    /// [`fetch_completed_runs_with_costs`](Self::fetch_completed_runs_with_costs) as a query.
    pub fn completed_runs_with_costs_query(
        tenant_id: Option<&str>,
        limit: i64,
    ) -> Result<RunsQuery> {
        costly_runs(tenant_id, None, None, limit)
    }

    /// Completed runs that cost something, newest first.
    pub fn fetch_completed_runs_with_costs(
        &mut self,
        tenant_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<WorkerRun>> {
        Ok(Self::completed_runs_with_costs_query(tenant_id, limit)?.load(self.conn)?)
    }

    /// Records an observed pattern (unacknowledged) and returns it as stored.
    pub fn insert_feedback(
        &mut self,
        tenant_id: &str,
        input: &FeedbackInput,
    ) -> Result<PatternFeedback> {
        validate::required("tenant_id", tenant_id, limits::PATTERN_TENANT_ID)?;
        validate::required("description", &input.description, usize::MAX)?;
        validate::optional(
            "signature",
            input.signature.as_deref(),
            limits::PATTERN_TEXT,
        )?;
        for run in &input.provenance {
            validate::required("provenance", run, limits::PROVENANCE_RUN_ID)?;
        }
        if input.occurrence_count < 1 {
            return Err(Error::invalid("occurrence_count", "must be at least 1"));
        }
        if let Some(minutes) = input.time_window_minutes {
            if minutes < 1 {
                return Err(Error::invalid("time_window_minutes", "must be positive"));
            }
        }
        validate::optional(
            "threshold_used",
            input.threshold_used.as_deref(),
            limits::THRESHOLD_USED,
        )?;
        if let Some(m) = &input.metadata {
            validate::json("metadata", m)?;
        }
        validate::optional_instant("detected_at", input.detected_at)?;
        require_transaction(self.conn)?;
        Ok(diesel::insert_into(pf::table)
            .values(NewPatternFeedback {
                tenant_id: tenant_id.into(),
                pattern_type: input.pattern_type,
                severity: Some(input.severity),
                description: input.description.clone(),
                signature: input.signature.clone(),
                provenance: Some(serde_json::json!(input.provenance)),
                occurrence_count: Some(input.occurrence_count),
                time_window_minutes: input.time_window_minutes,
                threshold_used: input.threshold_used.clone(),
                metadata: input.metadata.clone(),
                detected_at: input.detected_at,
                created_at: None,
            })
            .returning(PatternFeedback::as_returning())
            .get_result(self.conn)?)
    }

    /// [`fetch_feedback_records`](Self::fetch_feedback_records) as a query.
    pub fn feedback_query(
        tenant_id: Option<&str>,
        pattern_type: Option<PatternType>,
        acknowledged: Option<bool>,
        limit_to: i64,
    ) -> Result<FeedbackQuery> {
        tenant(tenant_id)?;
        let mut q = pf::table
            .select(PatternFeedback::as_select())
            .order((pf::detected_at.desc(), pf::id.desc()))
            .limit(limit(limit_to)?)
            .into_boxed();
        if let Some(t) = tenant_id {
            q = q.filter(pf::tenant_id.eq(t.to_owned()));
        }
        if let Some(kind) = pattern_type {
            q = q.filter(pf::pattern_type.eq(kind));
        }
        if let Some(ack) = acknowledged {
            q = q.filter(pf::acknowledged.eq(ack));
        }
        Ok(q)
    }

    /// Feedback rows, newest detection first; `acknowledged: Some(false)` lists the open
    /// ones.
    pub fn fetch_feedback_records(
        &mut self,
        tenant_id: Option<&str>,
        acknowledged: Option<bool>,
        limit: i64,
    ) -> Result<Vec<PatternFeedback>> {
        Ok(Self::feedback_query(tenant_id, None, acknowledged, limit)?.load(self.conn)?)
    }
}

/// An advisory prediction to insert, for [`PredictionDriver::insert_prediction`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionInput {
    /// What is predicted.
    pub prediction_type: PredictionType,
    /// What it is about.
    pub subject_type: SubjectType,
    /// Which one (at most 255 characters).
    pub subject_id: String,
    /// Confidence in `[0, 1]`.
    pub confidence_score: f64,
    /// The prediction: a JSON object.
    pub prediction_value: serde_json::Value,
    /// What led to it: JSON objects.
    pub contributing_factors: Vec<serde_json::Value>,
    /// When it stops being valid (the original's `valid_until`).
    pub expires_at: DateTime<Utc>,
    /// When it was made; `None` for the transaction's `now()`. Must be before `expires_at`.
    pub created_at: Option<DateTime<Utc>>,
    /// Free text.
    pub notes: Option<String>,
}

/// Which predictions a list, count or summary covers; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PredictionFilter {
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Kind.
    pub prediction_type: Option<PredictionType>,
    /// Subject kind.
    pub subject_type: Option<SubjectType>,
    /// Subject id.
    pub subject_id: Option<String>,
    /// Only those still valid at this instant (`expires_at` after it).
    pub valid_at: Option<DateTime<Utc>>,
}

/// Runs per worker since an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable)]
pub struct WorkerRunTotal {
    /// The worker.
    pub worker_id: String,
    /// Its runs, any status.
    pub runs: i64,
}

/// Predictions of one type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionSummary {
    /// The type.
    pub prediction_type: PredictionType,
    /// How many.
    pub predictions: i64,
    /// Their mean confidence.
    pub avg_confidence: f64,
}

/// Reads what predictions are made from, and reads and writes advisory predictions.
pub struct PredictionDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> PredictionDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        PredictionDriver { conn }
    }

    /// Failure patterns, newest detection first.
    pub fn fetch_failure_patterns(
        &mut self,
        tenant_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PatternFeedback>> {
        Ok(PatternDetectionDriver::feedback_query(
            tenant_id,
            Some(PatternType::FailurePattern),
            None,
            limit,
        )?
        .load(self.conn)?)
    }

    /// [`fetch_failed_runs`](Self::fetch_failed_runs) as a query.
    pub fn failed_runs_query(
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        worker_id: Option<&str>,
        limit: i64,
    ) -> Result<RunsQuery> {
        runs(
            tenant_id,
            WorkerStatus::Failed,
            Some(since),
            worker_id,
            limit,
        )
    }

    /// Failed runs (with or without error text) since `since`, newest first.
    pub fn fetch_failed_runs(
        &mut self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        worker_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<WorkerRun>> {
        Ok(Self::failed_runs_query(tenant_id, since, worker_id, limit)?.load(self.conn)?)
    }

    /// Runs of every status per worker since `since`, by worker id.
    pub fn fetch_run_totals(
        &mut self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<Vec<WorkerRunTotal>> {
        tenant(tenant_id)?;
        validate::instant("since", since)?;
        let mut q = wr::table
            .filter(wr::created_at.ge(since))
            .group_by(wr::worker_id)
            .select((wr::worker_id, diesel::dsl::count_star()))
            .order(wr::worker_id)
            .into_boxed();
        if let Some(t) = tenant_id {
            q = q.filter(wr::tenant_id.eq(t.to_owned()));
        }
        Ok(q.load(self.conn)?)
    }

    /// [`fetch_cost_runs`](Self::fetch_cost_runs) as a query.
    pub fn cost_runs_query(
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        worker_id: Option<&str>,
        limit: i64,
    ) -> Result<RunsQuery> {
        costly_runs(tenant_id, Some(since), worker_id, limit)
    }

    /// Completed runs that cost something since `since`, newest first.
    pub fn fetch_cost_runs(
        &mut self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        worker_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<WorkerRun>> {
        Ok(Self::cost_runs_query(tenant_id, since, worker_id, limit)?.load(self.conn)?)
    }

    /// [`fetch_predictions`](Self::fetch_predictions) as a query.
    pub fn predictions_query(
        filter: &PredictionFilter,
        limit_to: i64,
        offset: i64,
    ) -> Result<PredictionsQuery> {
        validate::non_negative("offset", offset)?;
        Ok(filtered(filter)?
            .select(PredictionEvent::as_select())
            .order((pe::created_at.desc(), pe::id.desc()))
            .limit(limit(limit_to)?)
            .offset(offset))
    }

    /// Predictions matching `filter`, newest first, `limit` after skipping `offset`.
    pub fn fetch_predictions(
        &mut self,
        filter: &PredictionFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<PredictionEvent>> {
        Ok(Self::predictions_query(filter, limit, offset)?.load(self.conn)?)
    }

    /// How many predictions match `filter`.
    #[doc(alias = "count_predictions")]
    pub fn fetch_prediction_count(&mut self, filter: &PredictionFilter) -> Result<i64> {
        Ok(filtered(filter)?.count().get_result(self.conn)?)
    }

    /// The tenant's prediction `id`, or `None` (also when it belongs to another tenant;
    /// the original looked it up without a tenant).
    pub fn fetch_prediction_by_id(
        &mut self,
        tenant_id: &str,
        id: Uuid,
    ) -> Result<Option<PredictionEvent>> {
        validate::required("tenant_id", tenant_id, limits::PATTERN_TENANT_ID)?;
        Ok(pe::table
            .filter(pe::tenant_id.eq(tenant_id))
            .filter(pe::id.eq(id))
            .select(PredictionEvent::as_select())
            .first(self.conn)
            .optional()?)
    }

    /// Count and mean confidence per prediction type over `filter`, computed in SQL (the
    /// original loaded every row), by type.
    pub fn fetch_prediction_stats(
        &mut self,
        filter: &PredictionFilter,
    ) -> Result<Vec<PredictionSummary>> {
        tenant(filter.tenant_id.as_deref())?;
        validate::optional(
            "subject_id",
            filter.subject_id.as_deref(),
            limits::PATTERN_TEXT,
        )?;
        validate::optional_instant("valid_at", filter.valid_at)?;
        use crate::schema::prediction_events::dsl as pe;
        use diesel::dsl::{avg, count_star};
        let mut q = pe::prediction_events
            .group_by(pe::prediction_type)
            .select((pe::prediction_type, count_star(), avg(pe::confidence_score)))
            .order(pe::prediction_type)
            .into_boxed();
        if let Some(tenant_id) = &filter.tenant_id {
            q = q.filter(pe::tenant_id.eq(tenant_id.clone()));
        }
        if let Some(prediction_type) = filter.prediction_type {
            q = q.filter(pe::prediction_type.eq(prediction_type));
        }
        if let Some(subject_type) = filter.subject_type {
            q = q.filter(pe::subject_type.eq(subject_type));
        }
        if let Some(subject_id) = &filter.subject_id {
            q = q.filter(pe::subject_id.eq(subject_id.clone()));
        }
        if let Some(valid_at) = filter.valid_at {
            q = q.filter(pe::expires_at.gt(valid_at));
        }
        let rows: Vec<(PredictionType, i64, Option<f64>)> = q.load(self.conn)?;
        Ok(rows
            .into_iter()
            .map(|(prediction_type, predictions, avg)| PredictionSummary {
                prediction_type,
                predictions,
                avg_confidence: avg.unwrap_or(0.0),
            })
            .collect())
    }

    /// Records an advisory prediction (`is_advisory` is always true) and returns it.
    pub fn insert_prediction(
        &mut self,
        tenant_id: &str,
        input: &PredictionInput,
    ) -> Result<PredictionEvent> {
        validate::required("tenant_id", tenant_id, limits::PATTERN_TENANT_ID)?;
        validate::required("subject_id", &input.subject_id, limits::PATTERN_TEXT)?;
        if !(0.0..=1.0).contains(&input.confidence_score) {
            return Err(Error::invalid(
                "confidence_score",
                format!("{} is outside 0..=1", input.confidence_score),
            ));
        }
        if !input.prediction_value.is_object() {
            return Err(Error::invalid("prediction_value", "must be a JSON object"));
        }
        validate::json("prediction_value", &input.prediction_value)?;
        for factor in &input.contributing_factors {
            if !factor.is_object() {
                return Err(Error::invalid(
                    "contributing_factors",
                    "each factor must be a JSON object",
                ));
            }
            validate::json("contributing_factors", factor)?;
        }
        validate::instant("expires_at", input.expires_at)?;
        validate::optional_instant("created_at", input.created_at)?;
        if input.created_at.is_some_and(|c| c >= input.expires_at) {
            return Err(Error::invalid(
                "expires_at",
                "must be after created_at: a prediction is valid for a while",
            ));
        }
        validate::optional_text("notes", input.notes.as_deref())?;
        require_transaction(self.conn)?;
        Ok(diesel::insert_into(pe::table)
            .values(NewPredictionEvent {
                tenant_id: tenant_id.into(),
                prediction_type: input.prediction_type,
                subject_type: input.subject_type,
                subject_id: input.subject_id.clone(),
                confidence_score: input.confidence_score + 0.0,
                prediction_value: input.prediction_value.clone(),
                contributing_factors: Some(serde_json::Value::Array(
                    input.contributing_factors.clone(),
                )),
                expires_at: input.expires_at,
                created_at: input.created_at,
                notes: input.notes.clone(),
            })
            .returning(PredictionEvent::as_returning())
            .get_result(self.conn)?)
    }
}

/// The predictions `filter` selects.
fn filtered(filter: &PredictionFilter) -> Result<pe::BoxedQuery<'static, Pg>> {
    tenant(filter.tenant_id.as_deref())?;
    validate::optional(
        "subject_id",
        filter.subject_id.as_deref(),
        limits::PATTERN_TEXT,
    )?;
    validate::optional_instant("valid_at", filter.valid_at)?;
    let mut q = pe::table.into_boxed();
    if let Some(t) = &filter.tenant_id {
        q = q.filter(pe::tenant_id.eq(t.clone()));
    }
    if let Some(kind) = filter.prediction_type {
        q = q.filter(pe::prediction_type.eq(kind));
    }
    if let Some(kind) = filter.subject_type {
        q = q.filter(pe::subject_type.eq(kind));
    }
    if let Some(id) = &filter.subject_id {
        q = q.filter(pe::subject_id.eq(id.clone()));
    }
    if let Some(at) = filter.valid_at {
        q = q.filter(pe::expires_at.gt(at));
    }
    Ok(q)
}
