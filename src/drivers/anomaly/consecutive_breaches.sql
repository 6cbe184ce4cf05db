-- The length of the run of consecutive breach days that ends on $5 (0 without a breach
-- that day), counted inside [$5 - 7 days, $5]: numbered newest first, day + row number is
-- the same for every day of one run.
WITH days AS (
    SELECT DISTINCT breach_date FROM cost_breach_history
    WHERE tenant_id = $1 AND entity_type = $2 AND entity_id IS NOT DISTINCT FROM $3::text
      AND breach_type = $4 AND breach_date BETWEEN $5::date - 7 AND $5::date
), runs AS (
    SELECT breach_date,
           breach_date + (row_number() OVER (ORDER BY breach_date DESC))::int AS run
    FROM days
)
SELECT count(*)::int AS n FROM runs
WHERE run = (SELECT run FROM runs WHERE breach_date = $5::date)
