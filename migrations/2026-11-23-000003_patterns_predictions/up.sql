-- Failure-pattern feedback and advisory predictions. Every instant is timestamptz here
-- (the original used timestamp without time zone), and the NOT NULL columns the
-- original filled in Python have server defaults.

CREATE TABLE pattern_feedback (
    id                  uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           varchar(255) NOT NULL,
    pattern_type        varchar(50)  NOT NULL,
    severity            varchar(20)  NOT NULL DEFAULT 'info',
    description         text         NOT NULL,
    signature           varchar(255),
    provenance          jsonb        NOT NULL DEFAULT '[]'::jsonb,
    occurrence_count    integer      NOT NULL DEFAULT 1,
    time_window_minutes integer,
    threshold_used      varchar(100),
    metadata            jsonb,
    detected_at         timestamptz  NOT NULL DEFAULT now(),
    created_at          timestamptz  NOT NULL DEFAULT now(),
    acknowledged        boolean      NOT NULL DEFAULT false,
    acknowledged_at     timestamptz,
    acknowledged_by     varchar(255)
);
CREATE INDEX ix_pattern_feedback_tenant_id    ON pattern_feedback (tenant_id);
CREATE INDEX ix_pattern_feedback_pattern_type ON pattern_feedback (pattern_type);
CREATE INDEX ix_pattern_feedback_signature    ON pattern_feedback (signature);
CREATE INDEX ix_pattern_feedback_tenant_type  ON pattern_feedback (tenant_id, pattern_type);
CREATE INDEX ix_pattern_feedback_detected_at  ON pattern_feedback (detected_at);
CREATE INDEX ix_pattern_feedback_tenant_detected ON pattern_feedback (tenant_id, detected_at);
CREATE INDEX ix_pattern_feedback_unacknowledged
    ON pattern_feedback (tenant_id, acknowledged) WHERE acknowledged = false;

CREATE TABLE prediction_events (
    id                   uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            varchar(255)     NOT NULL,
    prediction_type      varchar(50)      NOT NULL,
    subject_type         varchar(50)      NOT NULL,
    subject_id           varchar(255)     NOT NULL,
    confidence_score     double precision NOT NULL,
    prediction_value     jsonb            NOT NULL,
    contributing_factors jsonb            NOT NULL DEFAULT '[]'::jsonb,
    expires_at           timestamptz      NOT NULL,
    created_at           timestamptz      NOT NULL DEFAULT now(),
    is_advisory          boolean          NOT NULL DEFAULT true,
    notes                text,
    CONSTRAINT chk_prediction_confidence_range CHECK (confidence_score >= 0 AND confidence_score <= 1),
    CONSTRAINT chk_prediction_advisory CHECK (is_advisory = true)
);
CREATE INDEX ix_prediction_events_tenant_id       ON prediction_events (tenant_id);
CREATE INDEX ix_prediction_events_prediction_type ON prediction_events (prediction_type);
CREATE INDEX ix_prediction_events_tenant_type     ON prediction_events (tenant_id, prediction_type);
CREATE INDEX ix_prediction_events_subject         ON prediction_events (subject_type, subject_id);
CREATE INDEX ix_prediction_events_created_at      ON prediction_events (created_at);
CREATE INDEX ix_prediction_events_valid           ON prediction_events (tenant_id, expires_at);
CREATE INDEX ix_prediction_events_expires_at      ON prediction_events (expires_at);
