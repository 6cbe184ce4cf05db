-- The batch reservation no longer looks up its requests in the reservations before
-- storing them: the request key's own check does it (ON CONFLICT DO NOTHING), and when it
-- finds a repeat, nothing is charged, what was stored is taken back, and the requests go
-- one by one as before. The separate lookup, a join, was free to read all the tenant's
-- reservations through the tenant alone, which a plan made while the table was small did,
-- while it held the tenant's counter locks: each reservation then read every earlier one.
-- Same contract as before (migration tenant_led_keys).
--
-- The held reservations' expiry index without the tenant goes: reclaim finds the tenants
-- with expired holds through the one that leads with the tenant (it holds only the
-- reservations still held, a few), and every reservation stored paid for both.
DROP INDEX ix_budget_reservations_held_expiry;
CREATE OR REPLACE FUNCTION costdb_reserve_tenant(
    one_tenant text,
    tenants text[], tags text[], users text[], days date[], estimates float8[],
    ids text[], requests text[], expires timestamptz[],
    lock_tenants text[], lock_budgets text[], lock_periods text[], lock_starts date[])
RETURNS TABLE (
    n int, ready bool, repeated bool, fits bool, held bool, held_budget_ids text[],
    held_estimate float8, held_expires_at timestamptz, budget_id text, budget_type text,
    entity_id text, hard bool, warn_pct int, period text, window_start date,
    limit_cents int, spent_cents float8, reserved_cents float8, "full" bool, warns bool)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    decided bigint;
    want_tenants text[];
    want_budgets text[];
    want_periods text[];
    want_starts date[];
BEGIN
    -- The counters of the budgets that apply to each request, once for the batch.
    SELECT array_agg(k.tenant_id), array_agg(k.id), array_agg(k.period),
           array_agg(k.window_start)
    INTO want_tenants, want_budgets, want_periods, want_starts
    FROM (SELECT DISTINCT b.tenant_id, b.id, p.period, p.window_start
          FROM unnest(tenants, tags, users, days) AS r(tenant, tag, usr, day)
          JOIN cost_budgets b
            ON b.tenant_id = one_tenant AND r.tenant = one_tenant AND b.is_active
           AND ((b.budget_type = 'tenant' AND b.entity_id IS NULL)
             OR (b.budget_type = 'feature' AND b.entity_id = r.tag)
             OR (b.budget_type = 'user' AND b.entity_id = r.usr))
          CROSS JOIN LATERAL (VALUES ('daily', r.day),
                                     ('monthly', date_trunc('month', r.day)::date))
               AS p(period, window_start)) k;

    -- The missing ones are created, in key order.
    INSERT INTO budget_counters (tenant_id, budget_id, period, window_start)
    SELECT * FROM unnest(want_tenants, want_budgets, want_periods, want_starts)
    ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING;

    -- They and the ones the caller names are locked, in key order.
    PERFORM 1
    FROM budget_counters c
    JOIN (SELECT * FROM unnest(want_tenants, want_budgets, want_periods, want_starts)
          UNION
          SELECT * FROM unnest(lock_tenants, lock_budgets, lock_periods, lock_starts)
                        AS l(tenant_id, id, period, window_start)
          WHERE l.tenant_id = one_tenant)
         AS k(tenant_id, id, period, window_start)
      ON (c.tenant_id, c.budget_id, c.period, c.window_start)
       = (k.tenant_id, k.id, k.period, k.window_start)
    WHERE c.tenant_id = one_tenant
    ORDER BY c.tenant_id, c.budget_id, c.period, c.window_start
    FOR UPDATE OF c;

    -- The common case in one pass: when every request is new and distinct, every counter
    -- exists and each request fits with all the ones before it admitted, the running sum
    -- of the estimates on each counter decides them all at once, with one insert of the
    -- reservations and one update per counter. Otherwise (a refusal, a repeat, a budget
    -- that changed meanwhile) nothing is written here and the loop below decides the
    -- requests one by one.
    RETURN QUERY
    WITH r AS (
        SELECT *
        FROM unnest(tenants, tags, users, days, estimates, ids, requests, expires)
             WITH ORDINALITY AS r(tenant, tag, usr, day, estimate, id, request, expires, n)
        WHERE r.tenant = one_tenant
    ),
    want AS (
        SELECT r.n, b.tenant_id, b.id AS budget_id, b.budget_type, b.entity_id,
               b.hard_limit_enabled AS hard, b.warn_threshold_pct AS warn_pct, p.period,
               p.window_start, p.limit_cents
        FROM r
        JOIN cost_budgets b
          ON b.tenant_id = one_tenant AND b.is_active
         AND ((b.budget_type = 'tenant' AND b.entity_id IS NULL)
           OR (b.budget_type = 'feature' AND b.entity_id = r.tag)
           OR (b.budget_type = 'user' AND b.entity_id = r.usr))
        CROSS JOIN LATERAL (VALUES ('daily', r.day, b.daily_limit_cents),
                                   ('monthly', date_trunc('month', r.day)::date,
                                    b.monthly_limit_cents))
             AS p(period, window_start, limit_cents)
    ),
    run AS (
        SELECT w.*, c.spent_cents AS spent, c.reserved_cents AS base,
               r.estimate::numeric AS own,
               sum(r.estimate::numeric) OVER (PARTITION BY w.tenant_id, w.budget_id, w.period,
                                                           w.window_start
                                              ORDER BY w.n) AS upto
        FROM want w
        JOIN r ON r.n = w.n
        LEFT JOIN budget_counters c
               ON (c.tenant_id, c.budget_id, c.period, c.window_start)
                = (w.tenant_id, w.budget_id, w.period, w.window_start)
              AND c.tenant_id = one_tenant
    ),
    ok AS (
        SELECT NOT EXISTS (SELECT 1 FROM run WHERE spent IS NULL)
           AND NOT EXISTS (SELECT 1 FROM run
                           WHERE limit_cents IS NOT NULL AND hard
                             AND spent + base + upto > limit_cents)
           AND (SELECT count(DISTINCT (tenant, request)) FROM r) = (SELECT count(*) FROM r)
           AS go
    ),
    held AS (
        INSERT INTO budget_reservations (id, tenant_id, request_id, feature_tag, user_id,
                                         estimated_cents, budget_ids, day, month, expires_at)
        SELECT r.id, r.tenant, r.request, r.tag, r.usr, r.estimate::numeric,
               ARRAY(SELECT DISTINCT w.budget_id::text FROM want w WHERE w.n = r.n ORDER BY 1),
               r.day, date_trunc('month', r.day)::date, r.expires
        FROM r
        WHERE (SELECT go FROM ok)
        ORDER BY r.n
        -- A request the tenant made before is not stored again: the request key finds
        -- it as it takes the new one, in one probe.
        ON CONFLICT (tenant_id, request_id) DO NOTHING
        RETURNING id, budget_ids, estimated_cents, expires_at
    ),
    all_new AS (
        SELECT (SELECT count(*) FROM held) = (SELECT count(*) FROM r) AS yes
    ),
    charged AS (
        UPDATE budget_counters c
        SET reserved_cents = c.reserved_cents + t.total, updated_at = now()
        FROM (SELECT tenant_id, budget_id, period, window_start, sum(own) AS total
              FROM run GROUP BY 1, 2, 3, 4) t
        WHERE (c.tenant_id, c.budget_id, c.period, c.window_start)
            = (t.tenant_id, t.budget_id, t.period, t.window_start)
          AND c.tenant_id = one_tenant
          AND (SELECT go FROM ok) AND (SELECT yes FROM all_new)
        RETURNING 1
    )
    SELECT r.n::int, true, false, true, true, h.budget_ids, h.estimated_cents::float8,
           h.expires_at, w.budget_id::text, w.budget_type::text, w.entity_id::text, w.hard,
           w.warn_pct, w.period, w.window_start, w.limit_cents, w.spent::float8,
           (w.base + w.upto - w.own)::float8, false,
           w.limit_cents IS NOT NULL
             AND (w.spent + w.base + w.upto) * 100 >= w.limit_cents::numeric * w.warn_pct
    FROM r
    JOIN held h ON h.id = r.id
    LEFT JOIN run w ON w.n = r.n
    WHERE (SELECT yes FROM all_new)
    ORDER BY r.n, w.budget_id, w.period, w.window_start;
    GET DIAGNOSTICS decided = ROW_COUNT;
    IF decided > 0 THEN
        RETURN;
    END IF;
    -- A repeated request stopped the common case after the others were stored, and
    -- before any was charged: they are taken back and decided one by one below.
    DELETE FROM budget_reservations b
    WHERE b.tenant_id = one_tenant AND b.id = ANY (ids) AND b.status = 'held';

    -- Each request as one reservation:
    --   want     the counters of the budgets that apply, with their limits;
    --   present  whether all of them exist;
    --   locked   locks them in key order and reads them as they are now (the batch holds
    --            them already), but only when all exist;
    --   verdict  admits when every counter exists, the request is new and every hard
    --            limit has room for the estimate;
    --   held     only then stores the reservation;
    --   charged  and adds the estimate to every counter.
    -- Its rows are the counters as they were before, beside the verdict (one row of NULLs
    -- when no budget applies).
    FOR i IN 1 .. coalesce(array_length(requests, 1), 0) LOOP
        CONTINUE WHEN tenants[i] IS DISTINCT FROM one_tenant;
        RETURN QUERY
        WITH want AS (
            SELECT b.tenant_id, b.id AS budget_id, b.budget_type, b.entity_id,
                   b.hard_limit_enabled AS hard, b.warn_threshold_pct AS warn_pct, p.period,
                   p.window_start, p.limit_cents
            FROM cost_budgets b
            CROSS JOIN LATERAL (VALUES ('daily', days[i]::date, b.daily_limit_cents),
                                       ('monthly', date_trunc('month', days[i])::date,
                                        b.monthly_limit_cents))
                 AS p(period, window_start, limit_cents)
            WHERE b.tenant_id = one_tenant AND b.is_active
              AND ((b.budget_type = 'tenant' AND b.entity_id IS NULL)
                OR (b.budget_type = 'feature' AND b.entity_id = tags[i])
                OR (b.budget_type = 'user' AND b.entity_id = users[i]))
        ),
        present AS (
            SELECT count(*) = (SELECT count(*) FROM want) AS all_there
            FROM budget_counters c JOIN want w USING (tenant_id, budget_id, period, window_start)
            WHERE c.tenant_id = one_tenant
        ),
        locked AS (
            SELECT c.tenant_id, c.budget_id, c.period, c.window_start, c.spent_cents,
                   c.reserved_cents
            FROM budget_counters c JOIN want w USING (tenant_id, budget_id, period, window_start)
            WHERE c.tenant_id = one_tenant AND (SELECT all_there FROM present)
            ORDER BY c.tenant_id, c.budget_id, c.period, c.window_start
            FOR UPDATE OF c
        ),
        verdict AS (
            SELECT (SELECT count(*) FROM want) = (SELECT count(*) FROM locked) AS ready,
                   EXISTS (SELECT 1 FROM budget_reservations
                           WHERE tenant_id = one_tenant AND request_id = requests[i]) AS repeated,
                   coalesce((SELECT bool_and(w.limit_cents IS NULL OR NOT w.hard
                                    OR l.spent_cents + l.reserved_cents + estimates[i]::numeric
                                       <= w.limit_cents)
                             FROM want w
                             JOIN locked l USING (tenant_id, budget_id, period, window_start)),
                            true) AS fits
        ),
        held AS (
            INSERT INTO budget_reservations (id, tenant_id, request_id, feature_tag, user_id,
                                             estimated_cents, budget_ids, day, month, expires_at)
            SELECT ids[i], tenants[i], requests[i], tags[i], users[i], estimates[i]::numeric,
                   ARRAY(SELECT DISTINCT budget_id::text FROM want ORDER BY 1), days[i],
                   date_trunc('month', days[i])::date, expires[i]
            FROM verdict WHERE ready AND fits AND NOT repeated
            ON CONFLICT (tenant_id, request_id) DO NOTHING
            RETURNING id, budget_ids, estimated_cents, expires_at
        ),
        charged AS (
            UPDATE budget_counters c
            SET reserved_cents = c.reserved_cents + estimates[i]::numeric, updated_at = now()
            FROM locked l
            WHERE (c.tenant_id, c.budget_id, c.period, c.window_start)
                = (l.tenant_id, l.budget_id, l.period, l.window_start)
              AND c.tenant_id = one_tenant
              AND EXISTS (SELECT 1 FROM held)
            RETURNING 1
        )
        SELECT i, v.ready, v.repeated, v.fits, EXISTS (SELECT 1 FROM held) AS held,
               (SELECT budget_ids FROM held) AS held_budget_ids,
               (SELECT estimated_cents::float8 FROM held) AS held_estimate,
               (SELECT expires_at FROM held) AS held_expires_at,
               w.budget_id::text, w.budget_type::text, w.entity_id::text, w.hard, w.warn_pct,
               w.period, w.window_start, w.limit_cents,
               l.spent_cents::float8 AS spent_cents, l.reserved_cents::float8 AS reserved_cents,
               w.limit_cents IS NOT NULL AND w.hard
                 AND l.spent_cents + l.reserved_cents + estimates[i]::numeric > w.limit_cents AS full,
               w.limit_cents IS NOT NULL
                 AND (l.spent_cents + l.reserved_cents + estimates[i]::numeric) * 100
                     >= w.limit_cents::numeric * w.warn_pct AS warns
        FROM verdict v
        LEFT JOIN (want w JOIN locked l USING (tenant_id, budget_id, period, window_start)) ON true
        ORDER BY w.budget_id, w.period, w.window_start;
    END LOOP;
END
$$;

-- The service's one-statement batch finds each reservation it closes by one lookup of its
-- (tenant_id, id), and updates it where it found it: as joins with `id = ANY (…)`, its
-- statements could read all the tenant's reservations through the tenant alone, under a
-- plan the worker's session kept from before its last re-planning. Same contract as
-- before (migration tenant_led_keys).
CREATE OR REPLACE FUNCTION costdb_admit_batch(
    tenants text[], tags text[], users text[], days date[], estimates float8[],
    ids text[], requests text[], expires timestamptz[],
    s_ids text[],
    s_records text[], s_tenants text[], s_users text[], s_tags text[], s_requests text[],
    s_workflows text[], s_skills text[], s_models text[], s_input int4[], s_output int4[],
    s_cents float8[], s_retries bool[], s_created timestamptz[],
    r_ids text[], r_tenants text[])
RETURNS TABLE (
    n int, ready bool, repeated bool, fits bool, held bool, held_budget_ids text[],
    held_estimate float8, held_expires_at timestamptz, budget_id text, budget_type text,
    entity_id text, hard bool, warn_pct int, period text, window_start date,
    limit_cents int, spent_cents float8, reserved_cents float8, "full" bool, warns bool,
    created_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    settles int := coalesce(cardinality(s_ids), 0);
    closes int := settles + coalesce(cardinality(r_ids), 0);
    -- The tenants of the closes, in key order: every statement below names one of them.
    close_tenants text[] := ARRAY(SELECT DISTINCT x FROM unnest(s_tenants || r_tenants) AS x
                                  ORDER BY 1);
    one text;
    locked int := 0;
    n_locked int;
    done bigint;
    lock_tenants text[] := '{}';
    lock_budgets text[] := '{}';
    lock_periods text[] := '{}';
    lock_starts date[] := '{}';
BEGIN
    -- The reservations to close: each named once, found for its tenant and request, held,
    -- and (for a settlement) its record on the reservation's day. Locked in key order, one
    -- tenant at a time; with them, the keys of the counters their closes will change.
    FOREACH one IN ARRAY close_tenants LOOP
        -- One lookup of each reservation by (tenant_id, id), in id order.
        SELECT count(*) INTO n_locked
        FROM (SELECT *
              FROM (SELECT * FROM unnest(s_ids, s_tenants, s_requests,
                                         array_fill(true, ARRAY[settles]), s_created)
                    UNION ALL
                    SELECT k.id, k.tenant, NULL, false, NULL
                    FROM unnest(r_ids, r_tenants) AS k(id, tenant))
                   AS k(id, tenant, request, settles, created)
              WHERE k.tenant = one
              ORDER BY k.id) k
        CROSS JOIN LATERAL (
            SELECT 1
            FROM budget_reservations b
            WHERE b.tenant_id = one AND b.id = k.id
              AND b.status = 'held'
              AND (NOT k.settles
                   OR (b.request_id = k.request
                       AND (coalesce(k.created, now()) AT TIME ZONE 'UTC')::date = b.day))
            OFFSET 0
            FOR UPDATE OF b) l;
        locked := locked + n_locked;
        SELECT lock_tenants || coalesce(array_agg(k.tenant_id), '{}'),
               lock_budgets || coalesce(array_agg(k.id), '{}'),
               lock_periods || coalesce(array_agg(k.period), '{}'),
               lock_starts || coalesce(array_agg(k.window_start), '{}')
        INTO lock_tenants, lock_budgets, lock_periods, lock_starts
        FROM (SELECT DISTINCT one, u.budget_id, p.period, p.window_start
              FROM unnest(s_ids || r_ids, s_tenants || r_tenants) AS c(id, tenant)
              CROSS JOIN LATERAL (
                  SELECT b.budget_ids, b.day, b.month
                  FROM budget_reservations b
                  WHERE b.tenant_id = one AND b.id = c.id
                  OFFSET 0) b
              CROSS JOIN unnest(b.budget_ids) AS u(budget_id)
              CROSS JOIN LATERAL (VALUES ('daily', b.day), ('monthly', b.month))
                   AS p(period, window_start)
              WHERE c.tenant = one)
             AS k(tenant_id, id, period, window_start);
    END LOOP;
    IF locked <> closes
       OR (SELECT count(DISTINCT id) FROM unnest(s_ids || r_ids) AS k(id)) <> closes THEN
        RAISE EXCEPTION 'costdb: admit batch needs the full path';
    END IF;

    -- The counters the closes will change are locked by costdb_reserve_batch together with
    -- the requests' own, in key order; then the requests are decided as it decides them.
    IF coalesce(cardinality(requests), 0) > 0 OR cardinality(lock_budgets) > 0 THEN
        RETURN QUERY
        SELECT v.*, NULL::timestamptz
        FROM costdb_reserve_batch(tenants, tags, users, days, estimates, ids, requests,
                                  expires, lock_tenants, lock_budgets, lock_periods,
                                  lock_starts) v;
    END IF;

    -- The settlements' cost records, every one of them new.
    IF settles > 0 THEN
        RETURN QUERY
        WITH s AS (
            SELECT *
            FROM unnest(s_records, s_tenants, s_users, s_tags, s_requests, s_workflows,
                        s_skills, s_models, s_input, s_output, s_cents, s_retries, s_created)
                 WITH ORDINALITY AS s(id, tenant_id, user_id, feature_tag, request_id,
                                      workflow_id, skill_id, model, input_tokens,
                                      output_tokens, cost_cents, is_retry, created_at, n)
        ),
        stored AS (
            INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id,
                                      workflow_id, skill_id, model, input_tokens,
                                      output_tokens, cost_cents, is_retry, created_at)
            SELECT id, tenant_id, user_id, feature_tag, request_id, workflow_id, skill_id,
                   model, input_tokens, output_tokens, cost_cents + 0, is_retry,
                   coalesce(created_at, now())
            FROM s
            ORDER BY n
            ON CONFLICT DO NOTHING
            RETURNING id, created_at
        )
        SELECT -s.n::int, true, false, true, false, NULL::text[], NULL::float8,
               NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::bool, NULL::int,
               NULL::text, NULL::date, NULL::int, NULL::float8, NULL::float8, NULL::bool,
               NULL::bool, t.created_at
        FROM s JOIN stored t ON t.id = s.id
        ORDER BY s.n;
        GET DIAGNOSTICS done = ROW_COUNT;
        IF done <> settles THEN
            RAISE EXCEPTION 'costdb: admit batch needs the full path';
        END IF;
    END IF;

    -- The closes: estimates given back on the reservations' windows, actual costs added
    -- to the same windows (each record falls on its reservation's day), reservations closed.
    FOREACH one IN ARRAY close_tenants LOOP
        WITH c AS (
            SELECT k.id, k.tenant, 'settled' AS status, k.cents
            FROM unnest(s_ids, s_tenants, s_cents) AS k(id, tenant, cents)
            UNION ALL
            SELECT k.id, k.tenant, 'released', NULL
            FROM unnest(r_ids, r_tenants) AS k(id, tenant)
        ),
        mine AS (
            SELECT c.*, b.row_id, b.budget_ids, b.day, b.month, b.estimated_cents
            FROM c
            CROSS JOIN LATERAL (
                SELECT b.ctid AS row_id, b.budget_ids, b.day, b.month, b.estimated_cents
                FROM budget_reservations b
                WHERE b.tenant_id = one AND b.id = c.id
                OFFSET 0) b
            WHERE c.tenant = one
        ),
        deltas AS (
            SELECT one AS tenant_id, u.budget_id, p.period, p.window_start,
                   -sum(b.estimated_cents) AS reserved,
                   coalesce(sum((b.cents + 0)::numeric), 0) AS spent
            FROM mine b
            CROSS JOIN unnest(b.budget_ids) AS u(budget_id)
            CROSS JOIN LATERAL (VALUES ('daily', b.day), ('monthly', b.month))
                 AS p(period, window_start)
            GROUP BY 1, 2, 3, 4
        ),
        counted AS (
            UPDATE budget_counters k
            SET reserved_cents = k.reserved_cents + d.reserved,
                spent_cents = k.spent_cents + d.spent, updated_at = now()
            FROM deltas d
            WHERE (k.tenant_id, k.budget_id, k.period, k.window_start)
                = (d.tenant_id, d.budget_id, d.period, d.window_start)
              AND k.tenant_id = one AND k.budget_id = ANY (lock_budgets)
        )
        UPDATE budget_reservations b
        SET status = c.status, closed_at = now(), actual_cents = c.cents + 0,
            cost_record_id = s.record
        FROM mine c
        LEFT JOIN unnest(s_ids, s_records) AS s(id, record) ON s.id = c.id
        -- Where the lookup above found it (locked, so it has not moved).
        WHERE b.ctid = c.row_id AND b.tenant_id = one AND b.id = c.id;
    END LOOP;
END
$$;
