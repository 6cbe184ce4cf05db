-- cost_records' primary key leads with the tenant and the instant: (tenant_id, created_at,
-- id). The one index then answers both the lookups of a record by tenant, instant and id
-- and every window of a tenant's records, so ix_cost_records_tenant_created (which served
-- the windows) goes. Each write pays one index fewer, and a tenant's new records land at
-- the right edge of its range of the key instead of at a random place by id.
--
-- Rebuilds the key of every attached partition (the legacy one too) while holding an
-- ACCESS EXCLUSIVE lock on cost_records: on a large table, apply it in a quiet hour.
ALTER TABLE cost_records DROP CONSTRAINT cost_records_pkey;
ALTER TABLE cost_records ADD CONSTRAINT cost_records_pkey PRIMARY KEY (tenant_id, created_at, id);
DROP INDEX ix_cost_records_tenant_created;

-- Retiring a day deletes the request keys of its records. Left to itself the planner
-- hashes the whole key table for that join (the keys of every retained day), so the
-- work grew with the retention: with 30 days of 100,000 records, 2.2 s against 0.4-0.8 s
-- when each of the day's records probes the key's index. Probing costs what the day
-- holds, whatever the retention.
ALTER FUNCTION costdb_drop_detached_cost_partition(text)
    SET enable_hashjoin = off
    SET enable_mergejoin = off;
