-- Expires up to $3 held reservations of tenant $1 whose expiry is at or before $2
-- (skipping any a settler holds) and gives their estimates back, the counters locked in
-- key order.
WITH gone AS (
    UPDATE budget_reservations r SET status = 'expired', closed_at = now()
    FROM (SELECT tenant_id, id FROM budget_reservations
          WHERE tenant_id = $1 AND status = 'held' AND expires_at <= $2
          ORDER BY expires_at, id LIMIT $3
          FOR UPDATE SKIP LOCKED) e
    WHERE (r.tenant_id, r.id) = (e.tenant_id, e.id) AND r.tenant_id = $1
    RETURNING r.tenant_id, r.budget_ids, r.day, r.month, r.estimated_cents
),
deltas AS (
    SELECT g.tenant_id, b.budget_id, d.period, d.window_start,
           -sum(g.estimated_cents) AS reserved, 0::numeric AS spent
    FROM gone g CROSS JOIN unnest(g.budget_ids) AS b(budget_id)
    CROSS JOIN LATERAL (VALUES ('daily', g.day), ('monthly', g.month))
         AS d(period, window_start)
    GROUP BY 1, 2, 3, 4
),
locked AS (
    SELECT c.tenant_id, c.budget_id, c.period, c.window_start
    FROM budget_counters c JOIN deltas USING (tenant_id, budget_id, period, window_start)
    WHERE c.tenant_id = $1
    ORDER BY 1, 2, 3, 4
    FOR UPDATE OF c
),
counted AS (
    UPDATE budget_counters c
    SET reserved_cents = c.reserved_cents + d.reserved,
        spent_cents = c.spent_cents + d.spent, updated_at = now()
    FROM locked l JOIN deltas d USING (tenant_id, budget_id, period, window_start)
    WHERE (c.tenant_id, c.budget_id, c.period, c.window_start)
        = (l.tenant_id, l.budget_id, l.period, l.window_start)
      AND c.tenant_id = $1
    RETURNING 1
)
SELECT count(*) AS n FROM gone
