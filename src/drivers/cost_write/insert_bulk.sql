-- Inserts the rows of the arrays (one per column) in array order and returns the ids
-- inserted with their instants. The request ids are claimed first in cost_request_keys,
-- in array order (the caller sorts by tenant and request id byte by byte, the order in
-- which the table's trigger claims a COPY's keys: one global order whatever the
-- collation, so concurrent batches wait for each other instead of deadlocking); a row
-- whose key is taken is skipped: a request id the tenant already recorded, or (when a
-- batch whose commit outcome was unknown is retried with the ids fixed before its first
-- attempt) this very record's. A row whose (tenant, id, instant) is stored is skipped
-- too. The caller tells them apart. A claim tells the table's trigger that this
-- statement's keys are claimed, and the statement tells it how many records and tenants
-- it was given.
WITH t AS (
    SELECT id, tenant_id, user_id, feature_tag, request_id, workflow_id, skill_id, model,
           input_tokens, output_tokens, cost_cents, is_retry,
           coalesce(created_at, now()) AS created_at, n
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::int4[], $10::int4[], $11::float8[], $12::bool[],
                $13::timestamptz[])
         WITH ORDINALITY AS t(id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                              skill_id, model, input_tokens, output_tokens, cost_cents,
                              is_retry, created_at, n)
), claimed AS (
    INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
    SELECT tenant_id, request_id, id, created_at
    FROM t
    WHERE request_id IS NOT NULL
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING record_id, set_config('costdb.request_keys', 'claimed', true)
)
INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                          skill_id, model, input_tokens, output_tokens, cost_cents, is_retry,
                          created_at)
SELECT id, tenant_id, user_id, feature_tag, request_id, workflow_id, skill_id,
       model, input_tokens, output_tokens, cost_cents + 0, is_retry, created_at
FROM t
WHERE (request_id IS NULL OR id IN (SELECT record_id FROM claimed))
  -- Tells the table's trigger the statement's shape: records and tenants given.
  AND (SELECT set_config('costdb.statement_shape',
                         count(*) || ' ' || count(DISTINCT tenant_id), true)
       FROM t) <> ''
ORDER BY n
ON CONFLICT DO NOTHING
RETURNING id, created_at
