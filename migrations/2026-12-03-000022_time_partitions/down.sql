-- Back to one unpartitioned cost_records with the per-tenant request id as its unique
-- index. Fails if a (tenant_id, id) was stored at two instants.
DROP TRIGGER trg_cost_records_fold ON cost_records;
ALTER TABLE cost_records RENAME TO cost_records_partitioned;
ALTER TABLE cost_records_partitioned RENAME CONSTRAINT cost_records_pkey TO cost_records_partitioned_pkey;
ALTER INDEX ix_cost_records_tenant_created RENAME TO cost_records_partitioned_tenant_created;

CREATE TABLE cost_records (
    id            varchar(64)      NOT NULL,
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
    is_retry      boolean          NOT NULL DEFAULT false,
    CONSTRAINT cost_records_pkey PRIMARY KEY (tenant_id, id)
);
INSERT INTO cost_records SELECT * FROM cost_records_partitioned;
DROP TABLE cost_records_partitioned;
CREATE UNIQUE INDEX uq_cost_records_tenant_request ON cost_records (tenant_id, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX ix_cost_records_tenant_created ON cost_records (tenant_id, created_at);

DROP FUNCTION costdb_drop_detached_cost_partition(text);
DROP FUNCTION costdb_detached_cost_partitions();
DROP FUNCTION costdb_detach_cost_partition(text);
DROP FUNCTION costdb_create_cost_partitions(date, date);
DROP FUNCTION costdb_create_cost_partition(date);
DROP FUNCTION costdb_cost_partitions();
DROP TABLE cost_request_keys;
DROP TABLE cost_record_retention;

CREATE OR REPLACE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := coalesce(
        nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
        (1 + pg_backend_pid() % 63)::smallint);
BEGIN
    IF this_slot NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'costdb.rollup_slot is % but must be 1 to 63 (0 holds the past days'' folded rows)',
            this_slot USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO cost_rollup_hourly AS r
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT n.tenant_id, date_bin('1 hour', n.created_at, '2000-01-01 00:00:00+00'), n.model,
           coalesce(n.feature_tag, ''), this_slot, count(*), count(*) FILTER (WHERE n.is_retry),
           sum(n.input_tokens), sum(n.output_tokens), sum(n.cost_cents)
    FROM new_records n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, bucket_hour, model, feature_tag, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents;

    INSERT INTO cost_rollup_daily AS r
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT n.tenant_id, (n.created_at AT TIME ZONE 'UTC')::date, coalesce(n.feature_tag, ''),
           coalesce(n.user_id, ''), this_slot, count(*), count(*) FILTER (WHERE n.is_retry),
           sum(n.input_tokens), sum(n.output_tokens), sum(n.cost_cents)
    FROM new_records n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, feature_tag, user_id, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents;
    RETURN NULL;
END
$$;

CREATE TRIGGER trg_cost_records_fold
    AFTER INSERT ON cost_records
    REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION costdb_fold_cost_records();
