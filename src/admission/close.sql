-- Closes reservation $1 (already locked by the caller) with status $2: gives its estimate
-- back when $3 (it was still held), adds $4 cents of spend to the counters of day $5 and
-- month $6, and records actual cost $7 and cost record $8. The counters are locked in key
-- order before they change.
WITH r AS (
    SELECT budget_ids, day, month, estimated_cents FROM budget_reservations WHERE id = $1
),
deltas AS (
    SELECT b.budget_id, d.period, d.window_start,
           sum(d.reserved) AS reserved, sum(d.spent) AS spent
    FROM r CROSS JOIN unnest(r.budget_ids) AS b(budget_id)
    CROSS JOIN LATERAL (VALUES
        ('daily', r.day, CASE WHEN $3 THEN -r.estimated_cents ELSE 0 END, 0::numeric),
        ('monthly', r.month, CASE WHEN $3 THEN -r.estimated_cents ELSE 0 END, 0::numeric),
        ('daily', $5::date, 0::numeric, $4::float8::numeric),
        ('monthly', $6::date, 0::numeric, $4::float8::numeric))
        AS d(period, window_start, reserved, spent)
    GROUP BY 1, 2, 3
    HAVING sum(d.reserved) <> 0 OR sum(d.spent) <> 0
),
locked AS (
    SELECT c.budget_id, c.period, c.window_start
    FROM budget_counters c JOIN deltas USING (budget_id, period, window_start)
    ORDER BY 1, 2, 3
    FOR UPDATE OF c
),
counted AS (
    UPDATE budget_counters c
    SET reserved_cents = c.reserved_cents + d.reserved,
        spent_cents = c.spent_cents + d.spent, updated_at = now()
    FROM locked l JOIN deltas d USING (budget_id, period, window_start)
    WHERE (c.budget_id, c.period, c.window_start) = (l.budget_id, l.period, l.window_start)
    RETURNING 1
)
UPDATE budget_reservations
SET status = $2, closed_at = now(), actual_cents = $7, cost_record_id = $8
WHERE id = $1
RETURNING (SELECT count(*) FROM counted) AS n
