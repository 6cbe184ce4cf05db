-- Closes the reservations of the arrays (element i of each: tenant $1's reservation $2,
-- already locked by the caller, gets status $3; its estimate is given back when $4; $5
-- cents of spend go to the counters of day $6 and month $7; actual cost $8 and cost record
-- $9 are recorded). The driver sends one tenant's closes at a time.
-- The deltas of all of them are summed per counter, and the counters are locked in key
-- order before they change. Returns how many counters changed. The counters and the
-- reservations' update are reached through `tenant_id = ANY ($1)`, and each reservation
-- is read by one lookup of its (tenant_id, id) and updated where that lookup found it, so
-- only the tenants' partitions (or shards) are read, and of them only these rows, however
-- stale the statistics. Run planned for each call (the caller sees to it): a plan kept
-- from when the tables were small would read them whole.
WITH c AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::float8[],
                         $6::date[], $7::date[], $8::float8[], $9::text[])
         AS c(tenant_id, id, status, release, charge, day, month, actual, record_id)
),
r AS (
    -- One index lookup per close (OFFSET 0 keeps it a lookup, whatever the statistics
    -- say of the table's size).
    SELECT c.*, b.row_id, b.budget_ids, b.held_day, b.held_month, b.estimated_cents
    FROM c CROSS JOIN LATERAL (
        SELECT b.ctid AS row_id, b.budget_ids, b.day AS held_day, b.month AS held_month,
               b.estimated_cents
        FROM budget_reservations b
        WHERE b.tenant_id = c.tenant_id AND b.id = c.id
        OFFSET 0) b
),
deltas AS (
    SELECT r.tenant_id, b.budget_id, d.period, d.window_start,
           sum(d.reserved) AS reserved, sum(d.spent) AS spent
    FROM r CROSS JOIN unnest(r.budget_ids) AS b(budget_id)
    CROSS JOIN LATERAL (VALUES
        ('daily', r.held_day, CASE WHEN r.release THEN -r.estimated_cents ELSE 0 END,
         0::numeric),
        ('monthly', r.held_month, CASE WHEN r.release THEN -r.estimated_cents ELSE 0 END,
         0::numeric),
        ('daily', r.day, 0::numeric, r.charge::numeric),
        ('monthly', r.month, 0::numeric, r.charge::numeric))
        AS d(period, window_start, reserved, spent)
    GROUP BY 1, 2, 3, 4
    HAVING sum(d.reserved) <> 0 OR sum(d.spent) <> 0
),
locked AS (
    SELECT k.tenant_id, k.budget_id, k.period, k.window_start
    FROM budget_counters k JOIN deltas USING (tenant_id, budget_id, period, window_start)
    WHERE k.tenant_id = ANY ($1)
    ORDER BY 1, 2, 3, 4
    FOR UPDATE OF k
),
counted AS (
    UPDATE budget_counters k
    SET reserved_cents = k.reserved_cents + d.reserved,
        spent_cents = k.spent_cents + d.spent, updated_at = now()
    FROM locked l JOIN deltas d USING (tenant_id, budget_id, period, window_start)
    WHERE (k.tenant_id, k.budget_id, k.period, k.window_start)
        = (l.tenant_id, l.budget_id, l.period, l.window_start)
      AND k.tenant_id = ANY ($1)
    RETURNING 1
)
UPDATE budget_reservations b
SET status = r.status, closed_at = now(), actual_cents = r.actual, cost_record_id = r.record_id
FROM r
-- The row found above (locked by the caller, so it has not moved; its ctid is unique
-- within its partition, which its tenant and id pick).
WHERE b.ctid = r.row_id AND b.tenant_id = r.tenant_id AND b.id = r.id
  AND b.tenant_id = ANY ($1)
RETURNING (SELECT count(*) FROM counted) AS n
