-- Compaction and writers of past days no longer deadlock.
--
-- `costdb upkeep` folds the slots of past days into slot 0 while writers may still add
-- records to those days. Before, the fold deleted rows in whatever order it read them and
-- could meet a writer holding one row and waiting for another: a deadlock, which aborted
-- the writer's or the fold's transaction. Now writers use slots 1 to 63 only (slot 0 is
-- the fold's alone), and the fold locks the rows it moves in key order, hourly rollup
-- first, as every writer does: no cycle of waits is possible between them.

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

CREATE OR REPLACE FUNCTION costdb_compact_rollups(before date, OUT removed bigint,
                                                  OUT folded bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    WITH locked AS (
        SELECT tenant_id, bucket_hour, model, feature_tag, slot
        FROM cost_rollup_hourly
        WHERE slot <> 0 AND bucket_hour < before::timestamp AT TIME ZONE 'UTC'
        ORDER BY 1, 2, 3, 4, 5
        FOR UPDATE
    ), moved AS (
        DELETE FROM cost_rollup_hourly h USING locked l
        WHERE (h.tenant_id, h.bucket_hour, h.model, h.feature_tag, h.slot)
            = (l.tenant_id, l.bucket_hour, l.model, l.feature_tag, l.slot)
        RETURNING h.*
    ), into_zero AS (
        INSERT INTO cost_rollup_hourly AS r
            (tenant_id, bucket_hour, model, feature_tag, slot,
             requests, retries, input_tokens, output_tokens, cost_cents)
        SELECT tenant_id, bucket_hour, model, feature_tag, 0, sum(requests), sum(retries),
               sum(input_tokens), sum(output_tokens), sum(cost_cents)
        FROM moved
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (tenant_id, bucket_hour, model, feature_tag, slot) DO UPDATE SET
            requests = r.requests + excluded.requests,
            retries = r.retries + excluded.retries,
            input_tokens = r.input_tokens + excluded.input_tokens,
            output_tokens = r.output_tokens + excluded.output_tokens,
            cost_cents = r.cost_cents + excluded.cost_cents
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM into_zero)
    INTO removed, folded;

    WITH locked AS (
        SELECT tenant_id, day, feature_tag, user_id, slot
        FROM cost_rollup_daily
        WHERE slot <> 0 AND day < before
        ORDER BY 1, 2, 3, 4, 5
        FOR UPDATE
    ), moved AS (
        DELETE FROM cost_rollup_daily d USING locked l
        WHERE (d.tenant_id, d.day, d.feature_tag, d.user_id, d.slot)
            = (l.tenant_id, l.day, l.feature_tag, l.user_id, l.slot)
        RETURNING d.*
    ), into_zero AS (
        INSERT INTO cost_rollup_daily AS r
            (tenant_id, day, feature_tag, user_id, slot,
             requests, retries, input_tokens, output_tokens, cost_cents)
        SELECT tenant_id, day, feature_tag, user_id, 0, sum(requests), sum(retries),
               sum(input_tokens), sum(output_tokens), sum(cost_cents)
        FROM moved
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
    SELECT removed + (SELECT count(*) FROM moved), folded + (SELECT count(*) FROM into_zero)
    INTO removed, folded;
END
$$;
