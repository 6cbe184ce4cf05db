-- costdb_reserve_batch keeps one plan per session for each of its statements. A plan made
-- while budget_reservations was still small scanned it whole, and went on scanning it as
-- it grew. Every statement of the function finds its rows by key, so it never scans.
ALTER FUNCTION costdb_reserve_batch(text[], text[], text[], date[], float8[], text[], text[],
    timestamptz[], text[], text[], date[])
    SET enable_seqscan = off;

-- A whole batch of the admission service in one statement, for the common case: every
-- settled or released reservation is held and closed once, and each settlement's cost
-- record is new and falls on its reservation's UTC day. Anything else raises
-- 'costdb: admit batch needs the full path' and the statement writes nothing; the service
-- then runs the batch statement by statement.
--
-- Its plans are made once per session, maybe while the tables are nearly empty; a scan
-- planned then would go on reading a whole table as it grows. So every table is reached
-- through an index condition (`= ANY (array)`), and scans are off inside the function.
--
-- In order: the reservations to close are locked (id order); costdb_reserve_batch locks
-- the counters of the requests (created when missing) and of the closes (key order) and
-- decides the requests; the cost records are written (their rollups with them); the
-- closes move the counters and close the reservations. Rows: costdb_reserve_batch's
-- verdict rows (n from 1), then one row per settlement (n from -1 down) carrying its
-- record's created_at.
CREATE FUNCTION costdb_admit_batch(
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
    locked int;
    done bigint;
    lock_budgets text[];
    lock_periods text[];
    lock_starts date[];
BEGIN
    -- The reservations to close: each named once, found for its tenant and request, held,
    -- and (for a settlement) its record on the reservation's day. Locked in id order.
    SELECT count(*) INTO locked
    FROM (SELECT 1
          FROM budget_reservations b
          JOIN (SELECT * FROM unnest(s_ids, s_tenants, s_requests,
                                     array_fill(true, ARRAY[settles]), s_created)
                UNION ALL
                SELECT k.id, k.tenant, NULL, false, NULL
                FROM unnest(r_ids, r_tenants) AS k(id, tenant))
               AS k(id, tenant, request, settles, created)
            ON b.id = k.id AND b.tenant_id = k.tenant
          WHERE b.id = ANY (s_ids || r_ids)
            AND b.status = 'held'
            AND (NOT k.settles
                 OR (b.request_id = k.request
                     AND (coalesce(k.created, now()) AT TIME ZONE 'UTC')::date = b.day))
          ORDER BY b.id
          FOR UPDATE OF b) l;
    IF locked <> closes
       OR (SELECT count(DISTINCT id) FROM unnest(s_ids || r_ids) AS k(id)) <> closes THEN
        RAISE EXCEPTION 'costdb: admit batch needs the full path';
    END IF;

    -- The counters the closes will change, locked by costdb_reserve_batch together with
    -- the requests' own, in key order; then the requests, decided as it decides them.
    SELECT coalesce(array_agg(k.id), '{}'), coalesce(array_agg(k.period), '{}'),
           coalesce(array_agg(k.window_start), '{}')
    INTO lock_budgets, lock_periods, lock_starts
    FROM (SELECT DISTINCT u.budget_id, p.period, p.window_start
          FROM budget_reservations b
          CROSS JOIN unnest(b.budget_ids) AS u(budget_id)
          CROSS JOIN LATERAL (VALUES ('daily', b.day), ('monthly', b.month))
               AS p(period, window_start)
          WHERE b.id = ANY (s_ids || r_ids))
         AS k(id, period, window_start);
    IF coalesce(cardinality(requests), 0) > 0 OR cardinality(lock_budgets) > 0 THEN
        RETURN QUERY
        SELECT v.*, NULL::timestamptz
        FROM costdb_reserve_batch(tenants, tags, users, days, estimates, ids, requests,
                                  expires, lock_budgets, lock_periods, lock_starts) v;
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
    IF closes > 0 THEN
        WITH c AS (
            SELECT k.id, 'settled' AS status, k.cents
            FROM unnest(s_ids, s_cents) AS k(id, cents)
            UNION ALL
            SELECT k.id, 'released', NULL FROM unnest(r_ids) AS k(id)
        ),
        deltas AS (
            SELECT u.budget_id, p.period, p.window_start,
                   -sum(b.estimated_cents) AS reserved,
                   coalesce(sum((c.cents + 0)::numeric), 0) AS spent
            FROM c
            JOIN budget_reservations b ON b.id = c.id AND b.id = ANY (s_ids || r_ids)
            CROSS JOIN unnest(b.budget_ids) AS u(budget_id)
            CROSS JOIN LATERAL (VALUES ('daily', b.day), ('monthly', b.month))
                 AS p(period, window_start)
            GROUP BY 1, 2, 3
        ),
        counted AS (
            UPDATE budget_counters k
            SET reserved_cents = k.reserved_cents + d.reserved,
                spent_cents = k.spent_cents + d.spent, updated_at = now()
            FROM deltas d
            WHERE (k.budget_id, k.period, k.window_start)
                = (d.budget_id, d.period, d.window_start)
              AND k.budget_id = ANY (lock_budgets)
        )
        UPDATE budget_reservations b
        SET status = c.status, closed_at = now(), actual_cents = c.cents + 0,
            cost_record_id = s.record
        FROM c
        LEFT JOIN unnest(s_ids, s_records) AS s(id, record) ON s.id = c.id
        WHERE b.id = c.id AND b.id = ANY (s_ids || r_ids);
    END IF;
END
$$;
