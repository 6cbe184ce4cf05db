//! Coordination audit records.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use super::enums::{AuditDecision, EnvelopeClass};
use crate::schema::coordination_audit_records;

/// One coordination decision, append-only (`coordination_audit_records`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = coordination_audit_records, primary_key(audit_id), check_for_backend(diesel::pg::Pg))]
pub struct CoordinationAuditRecord {
    /// Caller-chosen UUID.
    pub audit_id: Uuid,
    /// Envelope decided on.
    pub envelope_id: String,
    /// Its class.
    pub envelope_class: EnvelopeClass,
    /// The decision.
    pub decision: AuditDecision,
    /// Why.
    pub reason: String,
    /// When the decision was taken.
    pub decision_timestamp: DateTime<Utc>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// Envelope it conflicted with (REJECTED).
    pub conflicting_envelope_id: Option<String>,
    /// Envelope that pre-empted it (PREEMPTED).
    pub preempting_envelope_id: Option<String>,
    /// Envelopes active at the time.
    pub active_envelopes_count: i32,
    /// Tenant.
    pub tenant_id: Option<String>,
}

/// An audit record to insert.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = coordination_audit_records)]
pub struct NewCoordinationAuditRecord {
    /// Caller-chosen UUID.
    pub audit_id: Uuid,
    /// Envelope.
    pub envelope_id: String,
    /// Class.
    pub envelope_class: EnvelopeClass,
    /// Decision.
    pub decision: AuditDecision,
    /// Why.
    pub reason: String,
    /// Decision instant.
    pub decision_timestamp: DateTime<Utc>,
    /// Conflicting envelope.
    pub conflicting_envelope_id: Option<String>,
    /// Pre-empting envelope.
    pub preempting_envelope_id: Option<String>,
    /// Active envelopes.
    pub active_envelopes_count: i32,
    /// Tenant.
    pub tenant_id: Option<String>,
}
