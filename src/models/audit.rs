//! Coordination audit records.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
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

/// A coordination decision to append, for
/// [`AuditDriver::insert_audit_record`](crate::drivers::AuditDriver::insert_audit_record).
#[derive(Debug, Clone, PartialEq, Eq, Insertable, Serialize, Deserialize)]
#[diesel(table_name = coordination_audit_records)]
pub struct NewCoordinationAuditRecord {
    /// The record's id, chosen by the caller (a second record with it is refused).
    pub audit_id: Uuid,
    /// Envelope decided on (at most 100 characters).
    pub envelope_id: String,
    /// Its class: a closed set, so the table's CHECK can never fail.
    pub envelope_class: EnvelopeClass,
    /// The decision.
    pub decision: AuditDecision,
    /// Why (free text).
    pub reason: String,
    /// When the decision was taken.
    pub decision_timestamp: DateTime<Utc>,
    /// The envelope it conflicted with (for `REJECTED`; at most 100).
    pub conflicting_envelope_id: Option<String>,
    /// The envelope that pre-empted it (for `PREEMPTED`; at most 100).
    pub preempting_envelope_id: Option<String>,
    /// Envelopes active at the time, not negative.
    pub active_envelopes_count: i32,
    /// Tenant (at most 100).
    pub tenant_id: Option<String>,
}
