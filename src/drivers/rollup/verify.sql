-- Every key of the two rollups whose sums differ from those of the records it stands for:
-- records of tenant $1 (every tenant when NULL) from instant $2 to $3 (unbounded when
-- NULL), both whole UTC days. Counts and tokens must be equal; cents may differ by the
-- rounding of summing in another order (1e-9 relative).
WITH rolled_hours AS (
    SELECT tenant_id, bucket_hour, model, feature_tag, sum(requests) AS requests,
           sum(retries) AS retries, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(cost_cents) AS cost_cents
    FROM cost_rollup_hourly_live
    WHERE ($1::text IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR bucket_hour >= $2)
      AND ($3::timestamptz IS NULL OR bucket_hour < $3)
    GROUP BY 1, 2, 3, 4
), recorded_hours AS (
    SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00') AS bucket_hour,
           model, coalesce(feature_tag, '') AS feature_tag, count(*) AS requests,
           count(*) FILTER (WHERE is_retry) AS retries, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(cost_cents) AS cost_cents
    FROM cost_records
    WHERE ($1::text IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR created_at >= $2)
      AND ($3::timestamptz IS NULL OR created_at < $3)
    GROUP BY 1, 2, 3, 4
), rolled_days AS (
    SELECT tenant_id, day, feature_tag, user_id, sum(requests) AS requests,
           sum(retries) AS retries, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(cost_cents) AS cost_cents
    FROM cost_rollup_daily_live
    WHERE ($1::text IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR day >= ($2 AT TIME ZONE 'UTC')::date)
      AND ($3::timestamptz IS NULL OR day < ($3 AT TIME ZONE 'UTC')::date)
    GROUP BY 1, 2, 3, 4
), recorded_days AS (
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
           coalesce(feature_tag, '') AS feature_tag, coalesce(user_id, '') AS user_id,
           count(*) AS requests, count(*) FILTER (WHERE is_retry) AS retries,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cost_cents) AS cost_cents
    FROM cost_records
    WHERE ($1::text IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR created_at >= $2)
      AND ($3::timestamptz IS NULL OR created_at < $3)
    GROUP BY 1, 2, 3, 4
), pairs AS (
    SELECT 'hourly' AS rollup, tenant_id, bucket_hour AS bucket, model, feature_tag,
           '' AS user_id,
           o.requests AS o_requests, o.retries AS o_retries, o.input_tokens AS o_input,
           o.output_tokens AS o_output, o.cost_cents AS o_cents,
           r.requests AS r_requests, r.retries AS r_retries, r.input_tokens AS r_input,
           r.output_tokens AS r_output, r.cost_cents AS r_cents
    FROM rolled_hours o
    FULL JOIN recorded_hours r USING (tenant_id, bucket_hour, model, feature_tag)
    UNION ALL
    SELECT 'daily', tenant_id, day::timestamp AT TIME ZONE 'UTC', NULL, feature_tag, user_id,
           o.requests AS o_requests, o.retries AS o_retries, o.input_tokens AS o_input,
           o.output_tokens AS o_output, o.cost_cents AS o_cents,
           r.requests AS r_requests, r.retries AS r_retries, r.input_tokens AS r_input,
           r.output_tokens AS r_output, r.cost_cents AS r_cents
    FROM rolled_days o
    FULL JOIN recorded_days r USING (tenant_id, day, feature_tag, user_id)
)
SELECT rollup, tenant_id::text AS tenant_id, bucket, model::text AS model,
       nullif(feature_tag, '')::text AS feature_tag, nullif(user_id, '')::text AS user_id,
       coalesce(o_requests, 0)::int8 AS rolled_requests,
       coalesce(o_retries, 0)::int8 AS rolled_retries,
       coalesce(o_input, 0)::int8 AS rolled_input_tokens,
       coalesce(o_output, 0)::int8 AS rolled_output_tokens,
       coalesce(o_cents, 0)::float8 AS rolled_cost_cents,
       coalesce(r_requests, 0)::int8 AS recorded_requests,
       coalesce(r_retries, 0)::int8 AS recorded_retries,
       coalesce(r_input, 0)::int8 AS recorded_input_tokens,
       coalesce(r_output, 0)::int8 AS recorded_output_tokens,
       coalesce(r_cents, 0)::float8 AS recorded_cost_cents
FROM pairs
WHERE o_requests IS DISTINCT FROM r_requests
   OR o_retries IS DISTINCT FROM r_retries
   OR o_input IS DISTINCT FROM r_input
   OR o_output IS DISTINCT FROM r_output
   OR abs(o_cents - r_cents) > 1e-9 * greatest(abs(o_cents), abs(r_cents))
ORDER BY rollup DESC, tenant_id, bucket, model, feature_tag, user_id
