-- Request keys claimed in byte order, whatever the database's collation.
--
-- costdb's bulk insert (`insert_bulk.sql`) claims its keys in the order the driver sorts
-- them, byte by byte, and splits a large call into statements of 5,000 in that order;
-- the fold trigger claimed a COPY's keys in the database's collation. Where that is not
-- "C" (ICU's or glibc's English: "a1" before "B2", which bytes put after it), a bulk
-- insert and a COPY of the same request ids took their locks in two orders and could
-- deadlock. The trigger now claims in byte order too ("C"): one global order, the
-- driver's, for every statement that claims more than one key.
CREATE OR REPLACE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint;
    -- From this many records a statement folds as it lands.
    fold_from bigint;
    records bigint;
    tenants bigint;
    shape text;
    unset text;
BEGIN
    -- A single record by costdb: its statement claimed its key and wrote its delta.
    IF current_setting('costdb.rollups', true) = 'recorded' THEN
        unset := set_config('costdb.rollups', '', true);
        RETURN NULL;
    END IF;
    IF current_setting('costdb.request_keys', true) = 'claimed' THEN
        unset := set_config('costdb.request_keys', '', true);
    ELSIF TG_NARGS = 0 OR TG_ARGV[0] = 'claim only' THEN
        INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
        SELECT n.tenant_id, n.request_id, n.id, n.created_at
        FROM new_records n
        WHERE n.request_id IS NOT NULL
        ORDER BY n.tenant_id COLLATE "C", n.request_id COLLATE "C";
    END IF;
    IF TG_NARGS > 0 AND TG_ARGV[0] = 'claim only' THEN
        RETURN NULL;
    END IF;
    IF current_setting('costdb.rollups', true) = 'deltas' THEN
        unset := set_config('costdb.rollups', '', true);
        RETURN NULL;
    END IF;
    fold_from := coalesce(nullif(current_setting('costdb.fold_from', true), '')::bigint, 5000);
    IF fold_from < 1 THEN
        RAISE EXCEPTION 'costdb.fold_from is % but must be 1 or more', fold_from
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- costdb's bulk insert says how many records and tenants it was given; any other
    -- statement is counted (tenants only when it will not fold: that needs a sort).
    shape := current_setting('costdb.statement_shape', true);
    IF shape <> '' THEN
        unset := set_config('costdb.statement_shape', '', true);
        records := split_part(shape, ' ', 1)::bigint;
        tenants := split_part(shape, ' ', 2)::bigint;
    ELSE
        SELECT count(*) INTO records FROM new_records;
    END IF;
    IF records < fold_from THEN
        IF tenants IS NULL THEN
            SELECT count(DISTINCT n.tenant_id) INTO tenants FROM new_records n;
        END IF;
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

    this_slot := coalesce(nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
                          (1 + pg_backend_pid() % 63)::smallint);
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
