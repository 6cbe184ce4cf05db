-- Append-only audit of optimisation-envelope coordination decisions.

CREATE TABLE coordination_audit_records (
    audit_id                uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    envelope_id             varchar(100) NOT NULL,
    envelope_class          varchar(20)  NOT NULL,
    decision                varchar(20)  NOT NULL,
    reason                  text         NOT NULL,
    decision_timestamp      timestamptz  NOT NULL,
    created_at              timestamptz  NOT NULL DEFAULT now(),
    conflicting_envelope_id varchar(100),
    preempting_envelope_id  varchar(100),
    active_envelopes_count  integer      NOT NULL DEFAULT 0,
    tenant_id               varchar(100),
    CONSTRAINT audit_envelope_class_valid
        CHECK (envelope_class IN ('SAFETY', 'RELIABILITY', 'COST', 'PERFORMANCE')),
    CONSTRAINT audit_decision_valid
        CHECK (decision IN ('APPLIED', 'REJECTED', 'PREEMPTED'))
);
CREATE INDEX ix_coord_audit_envelope_id ON coordination_audit_records (envelope_id);
CREATE INDEX ix_coord_audit_timestamp   ON coordination_audit_records (decision_timestamp);
CREATE INDEX ix_coord_audit_class       ON coordination_audit_records (envelope_class);
CREATE INDEX ix_coord_audit_decision    ON coordination_audit_records (decision);
CREATE INDEX ix_coord_audit_tenant      ON coordination_audit_records (tenant_id);

CREATE FUNCTION prevent_coordination_audit_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'coordination audit records are append-only (audit_id %)', OLD.audit_id
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER coordination_audit_immutable
    BEFORE UPDATE ON coordination_audit_records
    FOR EACH ROW EXECUTE FUNCTION prevent_coordination_audit_mutation();
