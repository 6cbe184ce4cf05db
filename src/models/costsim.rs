//! CostSim V2 provenance, the alert outbox and circuit-breaker incidents.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::enums::{AlertStatus, AlertType, IncidentSeverity, ProvenanceSource, VariantSlug};
use crate::schema::{costsim_alert_queue, costsim_cb_incidents, costsim_provenance};

/// One V1/V2 cost simulation (`costsim_provenance`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = costsim_provenance, check_for_backend(diesel::pg::Pg))]
pub struct Provenance {
    /// Sequence id.
    pub id: i64,
    /// Run simulated.
    pub run_id: Option<String>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Variant.
    pub variant_slug: Option<VariantSlug>,
    /// Origin.
    pub source: Option<ProvenanceSource>,
    /// Model version.
    pub model_version: Option<String>,
    /// Adapter version.
    pub adapter_version: Option<String>,
    /// Commit of the simulator.
    pub commit_sha: Option<String>,
    /// Canonical SHA-256 hash of the input (hex), as the original computed it.
    pub input_hash: Option<String>,
    /// Hash of the output.
    pub output_hash: Option<String>,
    /// V1 cost.
    pub v1_cost: Option<f64>,
    /// V2 cost.
    pub v2_cost: Option<f64>,
    /// `v2_cost - v1_cost` when both are known.
    pub cost_delta: Option<f64>,
    /// Full payload.
    pub payload: Option<serde_json::Value>,
    /// Runtime in milliseconds.
    pub runtime_ms: Option<i32>,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
}

/// A provenance record to insert.
#[derive(Debug, Clone, PartialEq, Default, Insertable)]
#[diesel(table_name = costsim_provenance)]
pub struct NewProvenance {
    /// Run simulated.
    pub run_id: Option<String>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Variant.
    pub variant_slug: Option<VariantSlug>,
    /// Origin.
    pub source: Option<ProvenanceSource>,
    /// Model version.
    pub model_version: Option<String>,
    /// Adapter version.
    pub adapter_version: Option<String>,
    /// Commit.
    pub commit_sha: Option<String>,
    /// Input hash.
    pub input_hash: Option<String>,
    /// Output hash.
    pub output_hash: Option<String>,
    /// V1 cost.
    pub v1_cost: Option<f64>,
    /// V2 cost.
    pub v2_cost: Option<f64>,
    /// Delta.
    pub cost_delta: Option<f64>,
    /// Payload.
    pub payload: Option<serde_json::Value>,
    /// Runtime in milliseconds.
    pub runtime_ms: Option<i32>,
    /// Creation instant; `None` for `now()`.
    pub created_at: Option<DateTime<Utc>>,
}

/// An alert waiting in, or done with, the Alertmanager outbox (`costsim_alert_queue`).
#[derive(
    Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Identifiable, Serialize,
)]
#[diesel(table_name = costsim_alert_queue, check_for_backend(diesel::pg::Pg))]
pub struct QueuedAlert {
    /// Sequence id.
    pub id: i64,
    /// Alertmanager alert objects (JSON array).
    pub payload: serde_json::Value,
    /// What the alert announces.
    pub alert_type: Option<AlertType>,
    /// Circuit breaker.
    pub circuit_breaker_name: Option<String>,
    /// Incident.
    pub incident_id: Option<String>,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Last attempt.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Not to be sent before.
    pub next_attempt_at: DateTime<Utc>,
    /// Last delivery error.
    pub last_error: Option<String>,
    /// Delivery state.
    pub status: AlertStatus,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub sent_at: Option<DateTime<Utc>>,
    /// The current claim's token while a worker holds a delivery lease on it.
    pub claim_token: Option<uuid::Uuid>,
    /// The anomaly's tenant, for a [`AlertType::CostAnomaly`] alert.
    pub tenant_id: Option<String>,
    /// The anomaly it announces, for a [`AlertType::CostAnomaly`] alert (queued once).
    pub anomaly_id: Option<String>,
}

/// A circuit-breaker trip (`costsim_cb_incidents`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = costsim_cb_incidents, check_for_backend(diesel::pg::Pg))]
pub struct CbIncident {
    /// First 12 characters of a UUID.
    pub id: String,
    /// Circuit breaker.
    pub circuit_breaker_name: String,
    /// When it tripped (column `"timestamp"`).
    pub timestamp: DateTime<Utc>,
    /// Why.
    pub reason: String,
    /// Severity.
    pub severity: IncidentSeverity,
    /// Drift score.
    pub drift_score: Option<f64>,
    /// Samples behind the score.
    pub sample_count: Option<i32>,
    /// Details as JSON text.
    pub details_json: Option<String>,
    /// Whether it was resolved.
    pub resolved: bool,
    /// When.
    pub resolved_at: Option<DateTime<Utc>>,
    /// By whom.
    pub resolved_by: Option<String>,
    /// Notes.
    pub resolution_notes: Option<String>,
    /// Whether the alert went out.
    pub alert_sent: bool,
    /// When.
    pub alert_sent_at: Option<DateTime<Utc>>,
    /// Alertmanager's answer.
    pub alert_response: Option<String>,
}
