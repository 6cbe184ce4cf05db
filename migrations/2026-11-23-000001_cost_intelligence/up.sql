-- Cost intelligence: per-call cost records, anomalies, budgets, feature tags and the
-- state of the anomaly detector (breach history, drift tracking). Shapes follow the
-- original's migrations 046/047/048, with the deliberate changes listed in the README.

CREATE TABLE cost_records (
    id            varchar(64)      PRIMARY KEY,
    tenant_id     varchar(64)      NOT NULL,
    user_id       varchar(64),
    feature_tag   varchar(128),
    request_id    varchar(64),
    workflow_id   varchar(64),
    skill_id      varchar(64),
    model         varchar(64)      NOT NULL,
    input_tokens  integer          NOT NULL DEFAULT 0,
    output_tokens integer          NOT NULL DEFAULT 0,
    cost_cents    double precision NOT NULL,
    created_at    timestamptz      NOT NULL DEFAULT now(),
    is_retry      boolean          NOT NULL DEFAULT false
);
CREATE INDEX ix_cost_records_tenant_id      ON cost_records (tenant_id);
CREATE INDEX ix_cost_records_user_id        ON cost_records (user_id);
CREATE INDEX ix_cost_records_feature_tag    ON cost_records (feature_tag);
CREATE INDEX ix_cost_records_tenant_created ON cost_records (tenant_id, created_at);
CREATE INDEX ix_cost_records_tenant_feature ON cost_records (tenant_id, feature_tag);
CREATE INDEX ix_cost_records_tenant_user    ON cost_records (tenant_id, user_id);
-- Idempotent ingestion: a request id is billed at most once per tenant.
CREATE UNIQUE INDEX uq_cost_records_tenant_request
    ON cost_records (tenant_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE cost_anomalies (
    id                   varchar(64)      PRIMARY KEY,
    tenant_id            varchar(64)      NOT NULL,
    anomaly_type         varchar(32)      NOT NULL,
    severity             varchar(16)      NOT NULL,
    entity_type          varchar(32)      NOT NULL,
    entity_id            varchar(128),
    current_value_cents  double precision NOT NULL,
    expected_value_cents double precision NOT NULL,
    deviation_pct        double precision NOT NULL,
    threshold_pct        double precision NOT NULL DEFAULT 200,
    message              text             NOT NULL,
    incident_id          varchar(64),
    action_taken         varchar(64),
    resolved             boolean          NOT NULL DEFAULT false,
    resolved_at          timestamptz,
    metadata             jsonb,
    detected_at          timestamptz      NOT NULL DEFAULT now(),
    snapshot_id          varchar(64),
    baseline_id          varchar(64),
    derived_cause        varchar(32),
    breach_count         integer          DEFAULT 1
);
CREATE INDEX ix_cost_anomalies_tenant_id       ON cost_anomalies (tenant_id);
CREATE INDEX ix_cost_anomalies_tenant_detected ON cost_anomalies (tenant_id, detected_at);
CREATE INDEX ix_cost_anomalies_type            ON cost_anomalies (anomaly_type);
CREATE INDEX ix_cost_anomalies_severity        ON cost_anomalies (severity);
CREATE INDEX ix_cost_anomalies_incident        ON cost_anomalies (incident_id);
CREATE INDEX ix_cost_anomalies_snapshot        ON cost_anomalies (snapshot_id);

CREATE TABLE cost_budgets (
    id                  varchar(64) PRIMARY KEY,
    tenant_id           varchar(64) NOT NULL,
    budget_type         varchar(32) NOT NULL,
    entity_id           varchar(128),
    daily_limit_cents   integer,
    monthly_limit_cents integer,
    warn_threshold_pct  integer     NOT NULL DEFAULT 80,
    hard_limit_enabled  boolean     NOT NULL DEFAULT false,
    is_active           boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- NULLS NOT DISTINCT: a tenant-level budget (entity_id NULL) cannot be duplicated.
    CONSTRAINT uq_cost_budgets_tenant_type_entity
        UNIQUE NULLS NOT DISTINCT (tenant_id, budget_type, entity_id)
);
CREATE INDEX ix_cost_budgets_tenant_id ON cost_budgets (tenant_id);

CREATE TABLE feature_tags (
    id           varchar(64)  PRIMARY KEY,
    tenant_id    varchar(64)  NOT NULL,
    tag          varchar(128) NOT NULL,
    display_name varchar(256) NOT NULL,
    description  text,
    budget_cents integer,
    is_active    boolean      NOT NULL DEFAULT true,
    created_at   timestamptz  NOT NULL DEFAULT now(),
    updated_at   timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT uq_feature_tags_tenant_tag UNIQUE (tenant_id, tag)
);
CREATE INDEX ix_feature_tags_tenant_id ON feature_tags (tenant_id);
CREATE INDEX ix_feature_tags_tag       ON feature_tags (tag);

CREATE TABLE cost_breach_history (
    id                   varchar(32)      PRIMARY KEY,
    tenant_id            varchar(64)      NOT NULL,
    entity_type          varchar(32)      NOT NULL,
    entity_id            varchar(128),
    breach_type          varchar(32)      NOT NULL,
    breach_date          date             NOT NULL,
    deviation_pct        double precision NOT NULL,
    current_value_cents  double precision NOT NULL,
    baseline_value_cents double precision NOT NULL,
    created_at           timestamptz      DEFAULT now(),
    CONSTRAINT uq_breach_per_entity_day
        UNIQUE NULLS NOT DISTINCT (tenant_id, entity_type, entity_id, breach_type, breach_date)
);
CREATE INDEX ix_cost_breach_history_tenant_id ON cost_breach_history (tenant_id);
CREATE INDEX ix_breach_history_lookup
    ON cost_breach_history (tenant_id, entity_type, entity_id, breach_type, breach_date);

CREATE TABLE cost_drift_tracking (
    id                    varchar(32)      PRIMARY KEY,
    tenant_id             varchar(64)      NOT NULL,
    entity_type           varchar(32)      NOT NULL,
    entity_id             varchar(128),
    rolling_7d_avg_cents  double precision NOT NULL,
    baseline_7d_avg_cents double precision NOT NULL,
    drift_pct             double precision NOT NULL,
    drift_days_count      integer          NOT NULL DEFAULT 1,
    first_drift_date      date             NOT NULL,
    last_check_date       date             NOT NULL,
    is_active             boolean          NOT NULL DEFAULT true,
    created_at            timestamptz      DEFAULT now(),
    updated_at            timestamptz      DEFAULT now(),
    CONSTRAINT uq_drift_tracker_per_entity
        UNIQUE NULLS NOT DISTINCT (tenant_id, entity_type, entity_id)
);
CREATE INDEX ix_cost_drift_tracking_tenant_id ON cost_drift_tracking (tenant_id);
