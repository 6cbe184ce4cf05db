-- One cost record, every column bound ($13 NULL: the transaction's now()); a request id
-- the tenant already recorded inserts nothing. Returns the stored instant.
INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                          skill_id, model, input_tokens, output_tokens, cost_cents, is_retry,
                          created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::float8 + 0, $12,
        coalesce($13::timestamptz, now()))
ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
RETURNING created_at
