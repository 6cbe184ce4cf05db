-- Tables other services own and this crate only reads. Only the columns the drivers
-- read are created; on a database of the original's shape they already exist and
-- carry more columns.

CREATE TABLE runs (
    id            varchar     PRIMARY KEY,
    tenant_id     text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    input_tokens  integer,
    output_tokens integer
);
CREATE INDEX ix_runs_tenant_created ON runs (tenant_id, created_at);

CREATE TABLE aos_traces (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    trace_id   varchar(64) NOT NULL,
    tenant_id  varchar(64) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ix_aos_traces_trace_id ON aos_traces (trace_id);
CREATE INDEX ix_aos_traces_tenant_created ON aos_traces (tenant_id, created_at);
