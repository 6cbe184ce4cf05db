-- Inserts the rows of the arrays (one per column) in array order; a request id the tenant
-- already recorded is skipped. Returns the ids inserted.
INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                          skill_id, model, input_tokens, output_tokens, cost_cents, is_retry,
                          created_at)
SELECT id, tenant_id, user_id, feature_tag, request_id, workflow_id, skill_id,
       model, input_tokens, output_tokens, cost_cents + 0, is_retry, coalesce(created_at, now())
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::int4[], $10::int4[], $11::float8[], $12::bool[],
            $13::timestamptz[])
     WITH ORDINALITY AS t(id, tenant_id, user_id, feature_tag, request_id, workflow_id,
                          skill_id, model, input_tokens, output_tokens, cost_cents, is_retry,
                          created_at, n)
ORDER BY n
ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
RETURNING id
