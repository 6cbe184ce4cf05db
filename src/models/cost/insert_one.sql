-- One cost record, every column bound ($13 NULL: the transaction's now()). Its request id,
-- if any, is claimed first in cost_request_keys; when the tenant already holds it the
-- record is not inserted (a racing claim waits for the other transaction's outcome). A
-- claim tells the table's trigger that this statement's keys are claimed. The record's
-- sums go to cost_rollup_deltas in the same statement, which tells the trigger to leave
-- the rollups alone. Returns the stored instant.
WITH claimed AS (
    INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
    SELECT $2, $5::text, $1, coalesce($13::timestamptz, now())
    WHERE $5::text IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING record_id, set_config('costdb.request_keys', 'claimed', true)
), stored AS (
    INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                              skill_id, model, input_tokens, output_tokens, cost_cents,
                              is_retry, created_at)
    SELECT $1, $2, $3, $4, $5::text, $6, $7, $8, $9, $10, $11::float8 + 0, $12,
           coalesce($13::timestamptz, now())
    WHERE $5::text IS NULL OR EXISTS (SELECT FROM claimed)
    RETURNING *
), delta AS (
    INSERT INTO cost_rollup_deltas (tenant_id, created_at, record_id, model, feature_tag,
                                    user_id, is_retry, input_tokens, output_tokens,
                                    cost_cents)
    SELECT tenant_id, created_at, id, model, feature_tag, user_id, is_retry, input_tokens,
           output_tokens, cost_cents
    FROM stored
    RETURNING set_config('costdb.rollups', 'deltas', true)
)
SELECT stored.created_at FROM stored, delta
