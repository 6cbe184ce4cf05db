//! AuditDriver against a real PostgreSQL: every field, replay mode, duplicates that leave
//! the caller's work intact, and bad input.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::assert_invalid;
use costdb::drivers::AuditOutcome;
use costdb::models::CostInput;
use costdb::models::{
    AuditDecision, CoordinationAuditRecord, EnvelopeClass, NewCoordinationAuditRecord,
};
use costdb::schema::coordination_audit_records as a;
use costdb::{drivers::AuditDriver, drivers::CostWriteDriver, Error};
use diesel::prelude::*;
use uuid::Uuid;

fn decision(tenant: &str) -> NewCoordinationAuditRecord {
    NewCoordinationAuditRecord {
        audit_id: Uuid::new_v4(),
        envelope_id: "env-42".into(),
        envelope_class: EnvelopeClass::Cost,
        decision: AuditDecision::Preempted,
        reason: "a safety envelope took precedence".into(),
        decision_timestamp: Utc.with_ymd_and_hms(2026, 6, 1, 8, 30, 0).unwrap()
            + Duration::microseconds(123_456),
        conflicting_envelope_id: None,
        preempting_envelope_id: Some("env-7".into()),
        active_envelopes_count: 3,
        tenant_id: Some(tenant.into()),
    }
}

fn stored(conn: &mut PgConnection, tenant: &str) -> Vec<CoordinationAuditRecord> {
    a::table
        .filter(a::tenant_id.eq(tenant))
        .select(CoordinationAuditRecord::as_select())
        .load(conn)
        .unwrap()
}

#[test]
fn a_record_keeps_every_field_and_replay_writes_nothing() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let input = decision(&tenant);
    let out = AuditDriver::new(&mut conn)
        .insert_audit_record(&input, true)
        .unwrap();
    let now = common::tx_now(&mut conn);
    let AuditOutcome::Recorded(row) = out else {
        panic!("expected a record, got {out:?}")
    };
    assert_eq!(
        row,
        CoordinationAuditRecord {
            audit_id: input.audit_id,
            envelope_id: "env-42".into(),
            envelope_class: EnvelopeClass::Cost,
            decision: AuditDecision::Preempted,
            reason: input.reason.clone(),
            decision_timestamp: input.decision_timestamp,
            created_at: now,
            conflicting_envelope_id: None,
            preempting_envelope_id: Some("env-7".into()),
            active_envelopes_count: 3,
            tenant_id: Some(tenant.clone()),
        }
    );
    assert_eq!(stored(&mut conn, &tenant), vec![row]);

    let replay = AuditDriver::new(&mut conn)
        .insert_audit_record(&decision(&tenant), false)
        .unwrap();
    assert_eq!(replay, AuditOutcome::Replayed);
    assert_eq!(stored(&mut conn, &tenant).len(), 1);
}

#[test]
fn a_duplicate_is_a_typed_error_and_the_callers_other_work_stays() {
    let tenant = common::tenant().to_string();
    let mut conn = common::conn();
    let input = decision(&tenant);
    let outcome = conn.transaction::<_, Error, _>(|c| {
        let cost = CostWriteDriver::new(c).insert_cost_record(&CostInput {
            tenant_id: tenant.clone(),
            model: "m".into(),
            cost_cents: 1.0,
            ..Default::default()
        })?;
        AuditDriver::new(c).insert_audit_record(&input, true)?;
        let again = AuditDriver::new(c).insert_audit_record(&input, true);
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
        // The transaction is usable after the refusal.
        let other = AuditDriver::new(c).insert_audit_record(&decision(&tenant), true)?;
        Ok((cost, other))
    });
    outcome.unwrap();
    assert_eq!(stored(&mut conn, &tenant).len(), 2);
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_records", &tenant),
        1
    );
}

#[test]
fn bad_input_is_refused_before_sql_and_writes_need_a_transaction() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let ok = decision(&tenant);
    let cases = [
        (
            NewCoordinationAuditRecord {
                envelope_id: String::new(),
                ..ok.clone()
            },
            "envelope_id",
        ),
        (
            NewCoordinationAuditRecord {
                envelope_id: "e".repeat(101),
                ..ok.clone()
            },
            "envelope_id",
        ),
        (
            NewCoordinationAuditRecord {
                reason: "a\0b".into(),
                ..ok.clone()
            },
            "reason",
        ),
        (
            NewCoordinationAuditRecord {
                conflicting_envelope_id: Some("c".repeat(101)),
                ..ok.clone()
            },
            "conflicting_envelope_id",
        ),
        (
            NewCoordinationAuditRecord {
                preempting_envelope_id: Some(String::new()),
                ..ok.clone()
            },
            "preempting_envelope_id",
        ),
        (
            NewCoordinationAuditRecord {
                active_envelopes_count: -1,
                ..ok.clone()
            },
            "active_envelopes_count",
        ),
        (
            NewCoordinationAuditRecord {
                tenant_id: Some("t".repeat(101)),
                ..ok.clone()
            },
            "tenant_id",
        ),
        (
            NewCoordinationAuditRecord {
                decision_timestamp: chrono::DateTime::<Utc>::MIN_UTC,
                ..ok.clone()
            },
            "decision_timestamp",
        ),
    ];
    let mut d = AuditDriver::new(&mut conn);
    for (bad, field) in cases {
        assert_invalid(d.insert_audit_record(&bad, true), field);
    }
    assert!(stored(&mut conn, &tenant).is_empty());
    let mut bare = costdb::db::connect(common::database_url()).unwrap();
    assert!(matches!(
        AuditDriver::new(&mut bare).insert_audit_record(&ok, true),
        Err(Error::NoTransaction)
    ));
    assert!(stored(&mut bare, &tenant).is_empty());
}
