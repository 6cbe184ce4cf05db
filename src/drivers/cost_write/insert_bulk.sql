-- Inserts the rows of the arrays (one per column) in array order and returns the ids
-- inserted. A row that meets a stored one on any unique key is skipped: a request id the
-- tenant already recorded, or (when a batch whose commit outcome was unknown is retried
-- with the ids fixed before its first attempt) an id already stored. The caller tells the
-- two apart.
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
ON CONFLICT DO NOTHING
RETURNING id
