//! `AuditDriver`: the append-only log of coordination decisions.

use diesel::prelude::*;
use serde::Serialize;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{CoordinationAuditRecord, NewCoordinationAuditRecord};
use crate::schema::coordination_audit_records;
use crate::types::limits;
use crate::validate;

/// What [`AuditDriver::insert_audit_record`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AuditOutcome {
    /// The record was written (in the caller's transaction).
    Recorded(CoordinationAuditRecord),
    /// Replay mode (`emit_traces` false): nothing was written. The original reported this
    /// as a success indistinguishable from a write.
    Replayed,
}

/// Writes coordination audit records in the caller's transaction: flush only, never a
/// commit or rollback (the original committed, or rolled back, the caller's whole session).
pub struct AuditDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> AuditDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        AuditDriver { conn }
    }

    /// Appends `record`; with `emit_traces` false (replay) writes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] before any SQL; [`Error::Conflict`] when a record with the
    /// same `audit_id` exists. Neither disturbs the caller's transaction: its other work
    /// stays, and it can go on.
    #[doc(alias = "persist_audit_record")]
    pub fn insert_audit_record(
        &mut self,
        record: &NewCoordinationAuditRecord,
        emit_traces: bool,
    ) -> Result<AuditOutcome> {
        validate::required("envelope_id", &record.envelope_id, limits::AUDIT_ID)?;
        validate::text("reason", &record.reason)?;
        validate::instant("decision_timestamp", record.decision_timestamp)?;
        validate::optional(
            "conflicting_envelope_id",
            record.conflicting_envelope_id.as_deref(),
            limits::AUDIT_ID,
        )?;
        validate::optional(
            "preempting_envelope_id",
            record.preempting_envelope_id.as_deref(),
            limits::AUDIT_ID,
        )?;
        validate::non_negative(
            "active_envelopes_count",
            record.active_envelopes_count.into(),
        )?;
        validate::optional("tenant_id", record.tenant_id.as_deref(), limits::AUDIT_ID)?;
        if !emit_traces {
            return Ok(AuditOutcome::Replayed);
        }
        require_transaction(self.conn)?;
        diesel::insert_into(coordination_audit_records::table)
            .values(record)
            .on_conflict(coordination_audit_records::audit_id)
            .do_nothing()
            .returning(CoordinationAuditRecord::as_returning())
            .get_result(self.conn)
            .optional()?
            .map(AuditOutcome::Recorded)
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "audit record {} already exists (the log is append-only)",
                    record.audit_id
                ))
            })
    }
}
