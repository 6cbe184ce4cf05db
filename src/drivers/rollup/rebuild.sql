-- Sums the records of tenant $1 (every tenant when NULL) from instant $2 to $3 (unbounded
-- when NULL), both whole UTC days, into the two rollups (slot 0), whose rows of that range
-- the caller has deleted; returns how many rows each gained.
WITH hourly AS (
    INSERT INTO cost_rollup_hourly
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00'), model,
           coalesce(feature_tag, ''), 0, count(*), count(*) FILTER (WHERE is_retry),
           sum(input_tokens), sum(output_tokens), sum(cost_cents)
    FROM cost_records
    WHERE ($1::text IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR created_at >= $2)
      AND ($3::timestamptz IS NULL OR created_at < $3)
    GROUP BY 1, 2, 3, 4
    RETURNING 1
), daily AS (
    INSERT INTO cost_rollup_daily
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, coalesce(feature_tag, ''),
           coalesce(user_id, ''), 0, count(*), count(*) FILTER (WHERE is_retry),
           sum(input_tokens), sum(output_tokens), sum(cost_cents)
    FROM cost_records
    WHERE ($1::text IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR created_at >= $2)
      AND ($3::timestamptz IS NULL OR created_at < $3)
    GROUP BY 1, 2, 3, 4
    RETURNING 1
)
SELECT (SELECT count(*) FROM hourly) AS hourly_rows, (SELECT count(*) FROM daily) AS daily_rows
