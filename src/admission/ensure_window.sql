-- Creates the missing counters of budgets $1 for day $2 and month $3, in key order (a
-- settlement after midnight charges the new day).
INSERT INTO budget_counters (budget_id, period, window_start)
SELECT b.budget_id, p.period, p.window_start
FROM unnest($1::text[]) AS b(budget_id)
CROSS JOIN (VALUES ('daily', $2::date), ('monthly', $3::date)) AS p(period, window_start)
WHERE EXISTS (SELECT 1 FROM cost_budgets WHERE id = b.budget_id)
ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING
