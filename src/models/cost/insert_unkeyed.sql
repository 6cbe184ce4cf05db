-- One cost record without a request id, every column bound ($5 NULL; $13 NULL: the
-- transaction's now()), and its sums as a row of cost_rollup_deltas in the same statement,
-- which tells the table's trigger so ('recorded'): it leaves the rollups alone. Returns
-- the stored instant.
WITH stored AS (
    INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                              skill_id, model, input_tokens, output_tokens, cost_cents,
                              is_retry, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::float8 + 0, $12,
            coalesce($13::timestamptz, now()))
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
