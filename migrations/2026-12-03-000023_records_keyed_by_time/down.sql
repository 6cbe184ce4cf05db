ALTER FUNCTION costdb_drop_detached_cost_partition(text) RESET ALL;

-- Back to the key by (tenant_id, id, created_at) and the index for a tenant's windows.
ALTER TABLE cost_records DROP CONSTRAINT cost_records_pkey;
ALTER TABLE cost_records ADD CONSTRAINT cost_records_pkey PRIMARY KEY (tenant_id, id, created_at);
CREATE INDEX ix_cost_records_tenant_created ON cost_records (tenant_id, created_at);
