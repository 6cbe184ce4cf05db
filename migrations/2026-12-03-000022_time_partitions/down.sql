-- Back to one unpartitioned cost_records with the per-tenant request id as its unique
-- index. Fails if a (tenant_id, id) was stored at two instants.
DROP TRIGGER trg_cost_records_fold ON cost_records;
DROP TRIGGER trg_cost_records_claim ON cost_records;
DROP FUNCTION costdb_claim_request_keys();
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

CREATE TRIGGER trg_cost_records_fold
    AFTER INSERT ON cost_records
    REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION costdb_fold_cost_records();
