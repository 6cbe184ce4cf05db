-- Creates the missing counters of the budgets that apply to a request ($1 tenant,
-- $2 feature tag, $3 user) for day $4 and month $5, in key order, so concurrent creators
-- wait for each other instead of deadlocking.
INSERT INTO budget_counters (budget_id, period, window_start)
SELECT b.id, p.period, p.window_start
FROM cost_budgets b
CROSS JOIN (VALUES ('daily', $4::date), ('monthly', $5::date)) AS p(period, window_start)
WHERE b.tenant_id = $1 AND b.is_active
  AND ((b.budget_type = 'tenant' AND b.entity_id IS NULL)
    OR (b.budget_type = 'feature' AND b.entity_id = $2)
    OR (b.budget_type = 'user' AND b.entity_id = $3))
ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING
