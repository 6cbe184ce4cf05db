-- The fold and the compaction as the migrations cost_rollups and rollup_upkeep made them.
DROP FUNCTION costdb_compact_rollups(date);
CREATE FUNCTION costdb_compact_rollups(before date, OUT removed bigint, OUT folded bigint)
LANGUAGE sql AS $$
WITH hourly AS (
    DELETE FROM cost_rollup_hourly
    WHERE slot <> 0 AND bucket_hour < before::timestamp AT TIME ZONE 'UTC'
    RETURNING *
), hourly_folded AS (
    INSERT INTO cost_rollup_hourly AS r
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT tenant_id, bucket_hour, model, feature_tag, 0, sum(requests), sum(retries),
           sum(input_tokens), sum(output_tokens), sum(cost_cents)
    FROM hourly
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, bucket_hour, model, feature_tag, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents
    RETURNING 1
), daily AS (
    DELETE FROM cost_rollup_daily WHERE slot <> 0 AND day < before RETURNING *
), daily_folded AS (
    INSERT INTO cost_rollup_daily AS r
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT tenant_id, day, feature_tag, user_id, 0, sum(requests), sum(retries),
           sum(input_tokens), sum(output_tokens), sum(cost_cents)
    FROM daily
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, feature_tag, user_id, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents
    RETURNING 1
)
SELECT (SELECT count(*) FROM hourly) + (SELECT count(*) FROM daily),
       (SELECT count(*) FROM hourly_folded) + (SELECT count(*) FROM daily_folded)
$$;

CREATE OR REPLACE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := coalesce(
        nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
        (pg_backend_pid() % 64)::smallint);
BEGIN
    INSERT INTO cost_rollup_hourly AS r
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT n.tenant_id, date_bin('1 hour', n.created_at, '2000-01-01 00:00:00+00'), n.model,
           coalesce(n.feature_tag, ''), this_slot, count(*), count(*) FILTER (WHERE n.is_retry),
           sum(n.input_tokens), sum(n.output_tokens), sum(n.cost_cents)
    FROM new_records n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, bucket_hour, model, feature_tag, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents;

    INSERT INTO cost_rollup_daily AS r
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT n.tenant_id, (n.created_at AT TIME ZONE 'UTC')::date, coalesce(n.feature_tag, ''),
           coalesce(n.user_id, ''), this_slot, count(*), count(*) FILTER (WHERE n.is_retry),
           sum(n.input_tokens), sum(n.output_tokens), sum(n.cost_cents)
    FROM new_records n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, feature_tag, user_id, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents;
    RETURN NULL;
END
$$;
