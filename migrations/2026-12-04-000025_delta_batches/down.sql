-- Back to migration 24: the delta batches are folded first, so no sum is lost.
SELECT costdb_fold_rollup_deltas();
DROP VIEW cost_rollup_hourly_live, cost_rollup_daily_live;
DROP TABLE cost_rollup_delta_batches;

-- Slot -1 marks the deltas: no rollup row has it.
CREATE VIEW cost_rollup_hourly_live AS
    SELECT tenant_id, bucket_hour, model, feature_tag, slot,
           requests, retries, input_tokens, output_tokens, cost_cents
    FROM cost_rollup_hourly
    UNION ALL
    SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00'), model,
           coalesce(feature_tag, '')::varchar(128), -1::smallint, 1::bigint,
           is_retry::int::bigint, input_tokens::bigint, output_tokens::bigint, cost_cents
    FROM cost_rollup_deltas;

CREATE VIEW cost_rollup_daily_live AS
    SELECT tenant_id, day, feature_tag, user_id, slot,
           requests, retries, input_tokens, output_tokens, cost_cents
    FROM cost_rollup_daily
    UNION ALL
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date,
           coalesce(feature_tag, '')::varchar(128), coalesce(user_id, '')::varchar(64),
           -1::smallint, 1::bigint, is_retry::int::bigint, input_tokens::bigint,
           output_tokens::bigint, cost_cents
    FROM cost_rollup_deltas;

-- Moves every delta this snapshot sees into slot 0 of both rollups (the upkeep's slot, as
-- for past days' slots), one row per key, keys locked in key order, hourly rollup first,
-- as every fold does. One statement: any snapshot sees each record once, as a delta or
-- in a rollup. Returns the deltas moved.
CREATE OR REPLACE FUNCTION costdb_fold_rollup_deltas(OUT moved bigint)
LANGUAGE sql AS $$
    WITH taken AS (
        DELETE FROM cost_rollup_deltas RETURNING *
    ), hourly AS (
        INSERT INTO cost_rollup_hourly AS r
            (tenant_id, bucket_hour, model, feature_tag, slot,
             requests, retries, input_tokens, output_tokens, cost_cents)
        SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00'), model,
               coalesce(feature_tag, ''), 0, count(*), count(*) FILTER (WHERE is_retry),
               sum(input_tokens), sum(output_tokens), sum(cost_cents)
        FROM taken
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
        INSERT INTO cost_rollup_daily AS r
            (tenant_id, day, feature_tag, user_id, slot,
             requests, retries, input_tokens, output_tokens, cost_cents)
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, coalesce(feature_tag, ''),
               coalesce(user_id, ''), 0, count(*), count(*) FILTER (WHERE is_retry),
               sum(input_tokens), sum(output_tokens), sum(cost_cents)
        FROM taken
        -- After the hourly rollup's keys (the one-time filter runs that insert first).
        WHERE (SELECT count(*) FROM hourly) >= 0
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
    SELECT count(*) FROM taken WHERE (SELECT count(*) FROM daily) >= 0
$$;

-- The fold: as in migration 22, and it leaves a statement that wrote its sums as deltas
-- (it says so in `costdb.rollups`) to them.
CREATE OR REPLACE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := coalesce(
        nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
        (1 + pg_backend_pid() % 63)::smallint);
BEGIN
    IF this_slot NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'costdb.rollup_slot is % but must be 1 to 63 (0 holds the past days'' folded rows)',
            this_slot USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF current_setting('costdb.request_keys', true) = 'claimed' THEN
        PERFORM set_config('costdb.request_keys', '', true);
    ELSIF TG_NARGS = 0 OR TG_ARGV[0] = 'claim only' THEN
        INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
        SELECT n.tenant_id, n.request_id, n.id, n.created_at
        FROM new_records n
        WHERE n.request_id IS NOT NULL
        ORDER BY n.tenant_id, n.request_id;
    END IF;
    IF TG_NARGS > 0 AND TG_ARGV[0] = 'claim only' THEN
        RETURN NULL;
    END IF;
    IF current_setting('costdb.rollups', true) = 'deltas' THEN
        PERFORM set_config('costdb.rollups', '', true);
        RETURN NULL;
    END IF;

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

-- Rebuilding a range removes its deltas too: the records' new sums hold them.
CREATE OR REPLACE FUNCTION costdb_rebuild_rollups(
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
    DELETE FROM cost_rollup_deltas
    WHERE (tenant IS NULL OR tenant_id = tenant)
      AND (from_at IS NULL OR created_at >= from_at)
      AND (to_at IS NULL OR created_at < to_at);

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
