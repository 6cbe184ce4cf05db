-- A statement of many records but fewer than `costdb.fold_from` (5,000) no longer
-- upserts every key it touches in both rollups: it appends its records as deltas, like a
-- single record (migration 24). With three or more records a tenant on average (a
-- `record_costs` of up to a chunk, the admission service's busy batches) it writes one row
-- per tenant to `cost_rollup_delta_batches`, the records' columns as arrays; with fewer
-- (the recorder's commits, one call of each of many tenants) one narrow row a record to
-- `cost_rollup_deltas`. Larger statements still fold as they land, so one load never
-- leaves readers a backlog of its size. Server time measured for 1,000 records of 100
-- tenants: the fold 3.4 ms, a row a record 5.3 ms, a row a tenant 1.0 ms; for 14 records
-- of 14 tenants: a row a tenant 0.22 ms, a row a record 0.08 ms.

-- Element i of every array is one record. Text without its length limit: the records'
-- own columns checked it.
CREATE TABLE cost_rollup_delta_batches (
    tenant_id     varchar(64)        NOT NULL,
    id            bigserial          NOT NULL,
    created_at    timestamptz[]      NOT NULL,
    model         text[]             NOT NULL,
    feature_tag   text[]             NOT NULL,
    user_id       text[]             NOT NULL,
    is_retry      boolean[]          NOT NULL,
    input_tokens  integer[]          NOT NULL,
    output_tokens integer[]          NOT NULL,
    cost_cents    double precision[] NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

DROP VIEW cost_rollup_hourly_live, cost_rollup_daily_live;

-- Each rollup and both kinds of deltas, one row per delta record (slot -1: no rollup row
-- has it). The arrays are unnested in the select list, in step: no tuple store per row.
CREATE VIEW cost_rollup_hourly_live AS
    SELECT tenant_id, bucket_hour, model, feature_tag, slot,
           requests, retries, input_tokens, output_tokens, cost_cents
    FROM cost_rollup_hourly
    UNION ALL
    SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00'), model,
           coalesce(feature_tag, '')::varchar(128), -1::smallint, 1::bigint,
           is_retry::int::bigint, input_tokens::bigint, output_tokens::bigint, cost_cents
    FROM cost_rollup_deltas
    UNION ALL
    SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00'),
           model::varchar(64), coalesce(feature_tag, '')::varchar(128), -1::smallint,
           1::bigint, is_retry::int::bigint, input_tokens::bigint, output_tokens::bigint,
           cost_cents
    FROM (SELECT tenant_id, unnest(created_at) AS created_at, unnest(model) AS model,
                 unnest(feature_tag) AS feature_tag, unnest(is_retry) AS is_retry,
                 unnest(input_tokens) AS input_tokens, unnest(output_tokens) AS output_tokens,
                 unnest(cost_cents) AS cost_cents
          FROM cost_rollup_delta_batches) b;

CREATE VIEW cost_rollup_daily_live AS
    SELECT tenant_id, day, feature_tag, user_id, slot,
           requests, retries, input_tokens, output_tokens, cost_cents
    FROM cost_rollup_daily
    UNION ALL
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date,
           coalesce(feature_tag, '')::varchar(128), coalesce(user_id, '')::varchar(64),
           -1::smallint, 1::bigint, is_retry::int::bigint, input_tokens::bigint,
           output_tokens::bigint, cost_cents
    FROM cost_rollup_deltas
    UNION ALL
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date,
           coalesce(feature_tag, '')::varchar(128), coalesce(user_id, '')::varchar(64),
           -1::smallint, 1::bigint, is_retry::int::bigint, input_tokens::bigint,
           output_tokens::bigint, cost_cents
    FROM (SELECT tenant_id, unnest(created_at) AS created_at,
                 unnest(feature_tag) AS feature_tag, unnest(user_id) AS user_id,
                 unnest(is_retry) AS is_retry, unnest(input_tokens) AS input_tokens,
                 unnest(output_tokens) AS output_tokens, unnest(cost_cents) AS cost_cents
          FROM cost_rollup_delta_batches) b;

-- Moves every delta this snapshot sees, of both kinds, into slot 0 of both rollups, as
-- migration 24's did; returns the records moved.
CREATE OR REPLACE FUNCTION costdb_fold_rollup_deltas(OUT moved bigint)
LANGUAGE sql AS $$
    WITH single AS (
        DELETE FROM cost_rollup_deltas RETURNING *
    ), batches AS (
        DELETE FROM cost_rollup_delta_batches RETURNING *
    ), taken AS (
        SELECT tenant_id, created_at, model, feature_tag, user_id, is_retry, input_tokens,
               output_tokens, cost_cents
        FROM single
        UNION ALL
        SELECT tenant_id, unnest(created_at), unnest(model), unnest(feature_tag),
               unnest(user_id), unnest(is_retry), unnest(input_tokens),
               unnest(output_tokens), unnest(cost_cents)
        FROM batches
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

-- The fold of migration 24, and a statement of fewer than `costdb.fold_from` records
-- (5,000 unless the session says otherwise; 1 folds every statement but costdb's own of
-- one record, as before) appends its records as deltas: a row a tenant when it has three
-- or more records a tenant, else a row a record.
CREATE OR REPLACE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := coalesce(
        nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
        (1 + pg_backend_pid() % 63)::smallint);
    -- From this many records a statement folds as it lands.
    fold_from bigint := coalesce(nullif(current_setting('costdb.fold_from', true), '')::bigint,
                                 5000);
    records bigint;
    tenants bigint;
BEGIN
    IF this_slot NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'costdb.rollup_slot is % but must be 1 to 63 (0 holds the past days'' folded rows)',
            this_slot USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF fold_from < 1 THEN
        RAISE EXCEPTION 'costdb.fold_from is % but must be 1 or more', fold_from
            USING ERRCODE = 'invalid_parameter_value';
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
    SELECT count(*) INTO records FROM new_records;
    IF records < fold_from THEN
        -- Tenants are counted only here: a statement that folds needs no sort for them.
        SELECT count(DISTINCT n.tenant_id) INTO tenants FROM new_records n;
        IF records < 3 * tenants THEN
            -- Few records a tenant: a narrow row each is cheapest to write and to read.
            INSERT INTO cost_rollup_deltas (tenant_id, created_at, record_id, model,
                                            feature_tag, user_id, is_retry, input_tokens,
                                            output_tokens, cost_cents)
            SELECT n.tenant_id, n.created_at, n.id, n.model, n.feature_tag, n.user_id,
                   n.is_retry, n.input_tokens, n.output_tokens, n.cost_cents
            FROM new_records n;
        ELSE
            INSERT INTO cost_rollup_delta_batches
                (tenant_id, created_at, model, feature_tag, user_id, is_retry, input_tokens,
                 output_tokens, cost_cents)
            SELECT n.tenant_id, array_agg(n.created_at), array_agg(n.model),
                   array_agg(n.feature_tag), array_agg(n.user_id), array_agg(n.is_retry),
                   array_agg(n.input_tokens), array_agg(n.output_tokens),
                   array_agg(n.cost_cents)
            FROM new_records n
            GROUP BY n.tenant_id;
        END IF;
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

-- Rebuilding folds every delta first (the share lock keeps new ones out), then
-- recomputes the range as migration 16 did.
CREATE OR REPLACE FUNCTION costdb_rebuild_rollups(
    tenant text, from_at timestamptz, to_at timestamptz,
    OUT hourly_rows bigint, OUT daily_rows bigint)
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE cost_records IN SHARE MODE;
    PERFORM costdb_fold_rollup_deltas();

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
