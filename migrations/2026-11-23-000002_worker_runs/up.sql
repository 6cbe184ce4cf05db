-- Worker runs, isolated per tenant. Unlike the original there are no foreign keys to
-- tables this crate does not own (tenants, worker_registry, api_keys, users).

CREATE TABLE worker_runs (
    id                    varchar(36)  PRIMARY KEY,
    tenant_id             varchar(36)  NOT NULL,
    worker_id             varchar(100) NOT NULL DEFAULT 'business-builder',
    api_key_id            varchar(36),
    user_id               varchar(36),
    task                  text         NOT NULL,
    input_json            text,
    status                varchar(50)  NOT NULL DEFAULT 'queued',
    success               boolean,
    error                 text,
    output_json           text,
    replay_token_json     text,
    total_tokens          integer,
    total_latency_ms      integer,
    stages_completed      integer,
    recoveries            integer      NOT NULL DEFAULT 0,
    policy_violations     integer      NOT NULL DEFAULT 0,
    cost_cents            integer,
    created_at            timestamptz  DEFAULT now(),
    started_at            timestamptz,
    completed_at          timestamptz,
    parent_run_id         varchar(36)
        CONSTRAINT worker_runs_parent_run_id_fkey REFERENCES worker_runs (id) ON DELETE SET NULL,
    attempt               integer      NOT NULL DEFAULT 1,
    is_retry              boolean      NOT NULL DEFAULT false,
    is_synthetic          boolean      NOT NULL DEFAULT false,
    synthetic_scenario_id text
);
CREATE INDEX ix_worker_runs_tenant_id      ON worker_runs (tenant_id);
CREATE INDEX ix_worker_runs_worker_id      ON worker_runs (worker_id);
CREATE INDEX ix_worker_runs_status         ON worker_runs (status);
CREATE INDEX ix_worker_runs_created_at     ON worker_runs (created_at);
CREATE INDEX ix_worker_runs_tenant_created ON worker_runs (tenant_id, created_at);
CREATE INDEX ix_worker_runs_parent_run_id  ON worker_runs (parent_run_id);
CREATE INDEX ix_worker_runs_is_retry       ON worker_runs (is_retry);
CREATE INDEX idx_worker_runs_synthetic_scenario
    ON worker_runs (is_synthetic, synthetic_scenario_id) WHERE is_synthetic = true;

-- A finished run (completed, failed, crashed) is the truth: its outcome columns never change.
CREATE FUNCTION prevent_worker_run_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('completed', 'failed', 'crashed') AND (
           NEW.status       IS DISTINCT FROM OLD.status
        OR NEW.success      IS DISTINCT FROM OLD.success
        OR NEW.error        IS DISTINCT FROM OLD.error
        OR NEW.output_json  IS DISTINCT FROM OLD.output_json
        OR NEW.total_tokens IS DISTINCT FROM OLD.total_tokens
        OR NEW.cost_cents   IS DISTINCT FROM OLD.cost_cents
        OR NEW.started_at   IS DISTINCT FROM OLD.started_at
        OR NEW.completed_at IS DISTINCT FROM OLD.completed_at)
    THEN
        RAISE EXCEPTION 'TRUTH_VIOLATION: worker run % is % and cannot be changed', OLD.id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER worker_runs_immutable_guard
    BEFORE UPDATE ON worker_runs
    FOR EACH ROW EXECUTE FUNCTION prevent_worker_run_mutation();
