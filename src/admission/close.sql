-- Closes the reservations of the arrays (element i of each: reservation $1, already locked
-- by the caller, gets status $2; its estimate is given back when $3; $4 cents of spend go
-- to the counters of day $5 and month $6; actual cost $7 and cost record $8 are recorded).
-- The deltas of all of them are summed per counter, and the counters are locked in key
-- order before they change. Returns how many counters changed. The reservations are found
-- by `id = ANY ($1)`: a plan kept from when the table was small still reads only them.
WITH c AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::float8[], $5::date[],
                         $6::date[], $7::float8[], $8::text[])
         AS c(id, status, release, charge, day, month, actual, record_id)
),
r AS (
    SELECT c.*, b.budget_ids, b.day AS held_day, b.month AS held_month, b.estimated_cents
    FROM c JOIN budget_reservations b ON b.id = c.id AND b.id = ANY ($1)
),
deltas AS (
    SELECT b.budget_id, d.period, d.window_start,
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
    GROUP BY 1, 2, 3
    HAVING sum(d.reserved) <> 0 OR sum(d.spent) <> 0
),
locked AS (
    SELECT k.budget_id, k.period, k.window_start
    FROM budget_counters k JOIN deltas USING (budget_id, period, window_start)
    ORDER BY 1, 2, 3
    FOR UPDATE OF k
),
counted AS (
    UPDATE budget_counters k
    SET reserved_cents = k.reserved_cents + d.reserved,
        spent_cents = k.spent_cents + d.spent, updated_at = now()
    FROM locked l JOIN deltas d USING (budget_id, period, window_start)
    WHERE (k.budget_id, k.period, k.window_start) = (l.budget_id, l.period, l.window_start)
    RETURNING 1
)
UPDATE budget_reservations b
SET status = c.status, closed_at = now(), actual_cents = c.actual, cost_record_id = c.record_id
FROM c
WHERE b.id = c.id AND b.id = ANY ($1)
RETURNING (SELECT count(*) FROM counted) AS n
