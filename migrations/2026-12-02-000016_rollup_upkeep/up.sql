-- The upkeep of the rollups, as functions of the schema beside the trigger that keeps them
-- (one place holds every statement that writes a rollup). The library calls them through
-- Diesel's DSL.

-- Recomputes the rollups of the records of `tenant` (every tenant when NULL) from
-- `from_at` to `to_at` (unbounded when NULL), both UTC midnights. Inserts of cost records
-- wait until the caller's transaction ends (a SHARE lock), so none falls between the
-- removal of the old sums and the new ones. Returns how many rows each rollup gained.
CREATE FUNCTION costdb_rebuild_rollups(
    tenant text, from_at timestamptz, to_at timestamptz,
    OUT hourly_rows bigint, OUT daily_rows bigint)
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE cost_records IN SHARE MODE;

    DELETE FROM cost_rollup_hourly
    WHERE (tenant IS NULL OR tenant_id = tenant)
      AND (from_at IS NULL OR bucket_hour >= from_at)
      AND (to_at IS NULL OR bucket_hour < to_at);
    DELETE FROM cost_rollup_daily
    WHERE (tenant IS NULL OR tenant_id = tenant)
      AND (from_at IS NULL OR day >= (from_at AT TIME ZONE 'UTC')::date)
      AND (to_at IS NULL OR day < (to_at AT TIME ZONE 'UTC')::date);

    INSERT INTO cost_rollup_hourly
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT r.tenant_id, date_bin('1 hour', r.created_at, '2000-01-01 00:00:00+00'), r.model,
           coalesce(r.feature_tag, ''), 0, count(*), count(*) FILTER (WHERE r.is_retry),
           sum(r.input_tokens), sum(r.output_tokens), sum(r.cost_cents)
    FROM cost_records r
    WHERE (tenant IS NULL OR r.tenant_id = tenant)
      AND (from_at IS NULL OR r.created_at >= from_at)
      AND (to_at IS NULL OR r.created_at < to_at)
    GROUP BY 1, 2, 3, 4;
    GET DIAGNOSTICS hourly_rows = ROW_COUNT;

    INSERT INTO cost_rollup_daily
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT r.tenant_id, (r.created_at AT TIME ZONE 'UTC')::date, coalesce(r.feature_tag, ''),
           coalesce(r.user_id, ''), 0, count(*), count(*) FILTER (WHERE r.is_retry),
           sum(r.input_tokens), sum(r.output_tokens), sum(r.cost_cents)
    FROM cost_records r
    WHERE (tenant IS NULL OR r.tenant_id = tenant)
      AND (from_at IS NULL OR r.created_at >= from_at)
      AND (to_at IS NULL OR r.created_at < to_at)
    GROUP BY 1, 2, 3, 4;
    GET DIAGNOSTICS daily_rows = ROW_COUNT;
END
$$;

-- Folds the slots of every rollup row of a UTC day before `before` into slot 0: the slots
-- spread concurrent writers of a hot key while its day is current; once the day is past,
-- one row per key is all readers need. Moves whole rows in one statement, so every
-- snapshot sees the same sums before and after. Returns the rows removed and the rows
-- they were folded into.
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
