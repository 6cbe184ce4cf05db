-- Every active budget of tenant $1, its daily counter of day $2 and monthly counter of
-- month $3 (zero where none exists), beside the exact sum of its scope's cost records in
-- each window.
SELECT b.id::text AS budget_id, b.budget_type::text AS budget_type,
       b.entity_id::text AS entity_id, w.period, w.window_start,
       coalesce(c.spent_cents, 0)::float8 AS counted_cents,
       coalesce(c.reserved_cents, 0)::float8 AS reserved_cents,
       coalesce(s.recorded, 0)::float8 AS recorded_cents,
       (coalesce(c.spent_cents, 0) - coalesce(s.recorded, 0))::float8 AS difference_cents
FROM cost_budgets b
CROSS JOIN (VALUES ('daily', $2::date, $2::date + 1),
                   ('monthly', $3::date, ($3::date + interval '1 month')::date))
     AS w(period, window_start, window_end)
LEFT JOIN budget_counters c
       ON c.tenant_id = $1 AND c.budget_id = b.id AND c.period = w.period AND c.window_start = w.window_start
CROSS JOIN LATERAL (
    SELECT sum(r.cost_cents::numeric) AS recorded
    FROM cost_records r
    WHERE r.tenant_id = b.tenant_id
      AND r.created_at >= w.window_start::timestamp AT TIME ZONE 'UTC'
      AND r.created_at < w.window_end::timestamp AT TIME ZONE 'UTC'
      AND (b.budget_type = 'tenant'
           OR (b.budget_type = 'feature' AND r.feature_tag = b.entity_id)
           OR (b.budget_type = 'user' AND r.user_id = b.entity_id))
) s
WHERE b.tenant_id = $1 AND b.is_active
ORDER BY b.budget_type, b.entity_id NULLS FIRST, b.id, w.period
