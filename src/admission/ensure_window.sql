-- Creates the missing counters of tenant $1's budgets $2 for day $3 and month $4, in key
-- order (a settlement after midnight charges the new day).
INSERT INTO budget_counters (tenant_id, budget_id, period, window_start)
SELECT b.tenant_id, b.id, p.period, p.window_start
FROM cost_budgets b
CROSS JOIN (VALUES ('daily', $3::date), ('monthly', $4::date)) AS p(period, window_start)
WHERE b.tenant_id = $1 AND b.id = ANY ($2::text[])
ORDER BY 1, 2, 3, 4
ON CONFLICT DO NOTHING
