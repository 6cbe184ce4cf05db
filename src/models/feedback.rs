//! Failure-pattern feedback and advisory predictions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use super::enums::{PatternSeverity, PatternType, PredictionType, SubjectType};
use crate::schema::{pattern_feedback, prediction_events};

/// An observed failure or cost pattern (`pattern_feedback`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = pattern_feedback, check_for_backend(diesel::pg::Pg))]
pub struct PatternFeedback {
    /// Database UUID.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: String,
    /// Kind of pattern.
    pub pattern_type: PatternType,
    /// Severity.
    pub severity: PatternSeverity,
    /// Description.
    pub description: String,
    /// De-duplication key.
    pub signature: Option<String>,
    /// Worker run ids the pattern was seen in (JSON array).
    pub provenance: serde_json::Value,
    /// How often it was seen.
    pub occurrence_count: i32,
    /// Observation window in minutes.
    pub time_window_minutes: Option<i32>,
    /// Threshold that applied, as text.
    pub threshold_used: Option<String>,
    /// Free-form details.
    pub metadata: Option<serde_json::Value>,
    /// Detection instant.
    pub detected_at: DateTime<Utc>,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Whether someone acknowledged it.
    pub acknowledged: bool,
    /// When.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// By whom.
    pub acknowledged_by: Option<String>,
}

/// A pattern to insert; `None` columns take their server defaults.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = pattern_feedback)]
pub struct NewPatternFeedback {
    /// Owning tenant.
    pub tenant_id: String,
    /// Kind of pattern.
    pub pattern_type: PatternType,
    /// Severity; `None` for `info`.
    pub severity: Option<PatternSeverity>,
    /// Description.
    pub description: String,
    /// De-duplication key.
    pub signature: Option<String>,
    /// Worker run ids; `None` for `[]`.
    pub provenance: Option<serde_json::Value>,
    /// Occurrences; `None` for 1.
    pub occurrence_count: Option<i32>,
    /// Window in minutes.
    pub time_window_minutes: Option<i32>,
    /// Threshold text.
    pub threshold_used: Option<String>,
    /// Details.
    pub metadata: Option<serde_json::Value>,
    /// Detection instant; `None` for `now()`.
    pub detected_at: Option<DateTime<Utc>>,
    /// Creation instant; `None` for `now()`.
    pub created_at: Option<DateTime<Utc>>,
}

/// An advisory prediction with an expiry (`prediction_events`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = prediction_events, check_for_backend(diesel::pg::Pg))]
pub struct PredictionEvent {
    /// Database UUID.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: String,
    /// Kind of prediction.
    pub prediction_type: PredictionType,
    /// What it is about.
    pub subject_type: SubjectType,
    /// Which one.
    pub subject_id: String,
    /// Confidence in `[0, 1]`.
    pub confidence_score: f64,
    /// The prediction (JSON object).
    pub prediction_value: serde_json::Value,
    /// Factors behind it (JSON array).
    pub contributing_factors: serde_json::Value,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Always true: predictions only advise.
    pub is_advisory: bool,
    /// Notes.
    pub notes: Option<String>,
}

/// A prediction to insert.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = prediction_events)]
pub struct NewPredictionEvent {
    /// Owning tenant.
    pub tenant_id: String,
    /// Kind.
    pub prediction_type: PredictionType,
    /// Subject kind.
    pub subject_type: SubjectType,
    /// Subject id.
    pub subject_id: String,
    /// Confidence in `[0, 1]`.
    pub confidence_score: f64,
    /// The prediction.
    pub prediction_value: serde_json::Value,
    /// Factors; `None` for `[]`.
    pub contributing_factors: Option<serde_json::Value>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Creation instant; `None` for `now()`.
    pub created_at: Option<DateTime<Utc>>,
    /// Notes.
    pub notes: Option<String>,
}
