-- Spend, requests and tokens of tenant $1 in [$2, $3), per bucket of width $4 (see
-- cost_metrics.sql).
SELECT date_bin($4, created_at, '2000-01-01 00:00:00+00') AS bucket,
       coalesce(sum(cost_cents), 0)::float8 AS spend_cents,
       count(*) AS requests,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens
FROM cost_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY 1 ORDER BY 1
