-- CostSim V2: provenance log, Alertmanager outbox and circuit-breaker incidents.

CREATE TABLE costsim_provenance (
    id              bigserial        PRIMARY KEY,
    run_id          text,
    tenant_id       text,
    variant_slug    text,
    source          text,
    model_version   text,
    adapter_version text,
    commit_sha      text,
    input_hash      text,
    output_hash     text,
    v1_cost         double precision,
    v2_cost         double precision,
    cost_delta      double precision,
    payload         jsonb,
    runtime_ms      integer,
    created_at      timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX idx_costsim_prov_run             ON costsim_provenance (run_id);
CREATE INDEX idx_costsim_prov_tenant          ON costsim_provenance (tenant_id);
CREATE INDEX idx_costsim_prov_variant         ON costsim_provenance (variant_slug);
CREATE INDEX idx_costsim_prov_input_hash      ON costsim_provenance (input_hash);
CREATE INDEX idx_costsim_prov_source          ON costsim_provenance (source);
CREATE INDEX idx_costsim_prov_created_at      ON costsim_provenance (created_at);
CREATE INDEX idx_costsim_prov_tenant_created  ON costsim_provenance (tenant_id, created_at);
CREATE INDEX idx_costsim_prov_variant_created ON costsim_provenance (variant_slug, created_at);

CREATE TABLE costsim_alert_queue (
    id                   bigserial   PRIMARY KEY,
    payload              jsonb       NOT NULL,
    alert_type           text,
    circuit_breaker_name text,
    incident_id          text,
    attempts             integer     NOT NULL DEFAULT 0,
    max_attempts         integer     NOT NULL DEFAULT 10,
    last_attempt_at      timestamptz,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_error           text,
    status               text        NOT NULL DEFAULT 'pending',
    created_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz
);
CREATE INDEX idx_costsim_alert_queue_next   ON costsim_alert_queue (next_attempt_at);
CREATE INDEX idx_costsim_alert_queue_status ON costsim_alert_queue (status);
CREATE INDEX idx_costsim_alert_queue_pending_ready
    ON costsim_alert_queue (status, next_attempt_at) WHERE status = 'pending';

CREATE TABLE costsim_cb_incidents (
    id                   text             PRIMARY KEY,
    circuit_breaker_name text             NOT NULL,
    "timestamp"          timestamptz      NOT NULL DEFAULT now(),
    reason               text             NOT NULL,
    severity             text             NOT NULL,
    drift_score          double precision,
    sample_count         integer,
    details_json         text,
    resolved             boolean          NOT NULL DEFAULT false,
    resolved_at          timestamptz,
    resolved_by          text,
    resolution_notes     text,
    alert_sent           boolean          NOT NULL DEFAULT false,
    alert_sent_at        timestamptz,
    alert_response       text
);
CREATE INDEX idx_costsim_cb_incidents_cb_name   ON costsim_cb_incidents (circuit_breaker_name);
CREATE INDEX idx_costsim_cb_incidents_timestamp ON costsim_cb_incidents ("timestamp");
CREATE INDEX idx_costsim_cb_incidents_resolved  ON costsim_cb_incidents (resolved);
