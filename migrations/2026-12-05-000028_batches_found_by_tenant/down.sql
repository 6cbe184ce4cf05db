-- Back to migration 27: each batch row numbered, keyed by its tenant and number.
DROP INDEX cost_rollup_delta_batches_tenant_id;
ALTER TABLE cost_rollup_delta_batches ADD COLUMN id bigserial NOT NULL;
ALTER TABLE cost_rollup_delta_batches ADD PRIMARY KEY (tenant_id, id);
