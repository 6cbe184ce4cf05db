-- Back to the key by (tenant_id, id, created_at), the index for a tenant's windows, and
-- the planner's own choice of join when a retired day's keys are deleted.
ALTER FUNCTION costdb_drop_detached_cost_partition(text) RESET ALL;
ALTER TABLE cost_records DROP CONSTRAINT cost_records_pkey;
ALTER TABLE cost_records ADD CONSTRAINT cost_records_pkey PRIMARY KEY (tenant_id, id, created_at);
CREATE INDEX ix_cost_records_tenant_created ON cost_records (tenant_id, created_at);
