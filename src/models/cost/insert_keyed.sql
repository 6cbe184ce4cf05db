-- One cost record with a request id, every column bound ($13 NULL: the transaction's
-- now()). The id is claimed first in cost_request_keys; when the tenant already holds it
-- nothing is inserted (a racing claim waits for the other transaction's outcome). The
-- record and its sums, as a row of cost_rollup_deltas, follow from the claim in the same
-- statement, which tells the table's trigger so ('recorded'): it leaves keys and rollups
-- alone. Returns the stored instant.
WITH claimed AS (
    INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
    VALUES ($2, $5, $1, coalesce($13::timestamptz, now()))
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, request_id, record_id, created_at
), stored AS (
    INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                              skill_id, model, input_tokens, output_tokens, cost_cents,
                              is_retry, created_at)
    SELECT record_id, tenant_id, $3, $4, request_id, $6, $7, $8, $9, $10, $11::float8 + 0,
           $12, created_at
    FROM claimed
    RETURNING tenant_id, created_at, id, model, feature_tag, user_id, is_retry,
              input_tokens, output_tokens, cost_cents
), delta AS (
    INSERT INTO cost_rollup_deltas (tenant_id, created_at, record_id, model, feature_tag,
                                    user_id, is_retry, input_tokens, output_tokens,
                                    cost_cents)
    SELECT tenant_id, created_at, id, model, feature_tag, user_id, is_retry, input_tokens,
           output_tokens, cost_cents
    FROM stored
    RETURNING created_at, set_config('costdb.rollups', 'recorded', true)
)
SELECT created_at FROM delta
