-- Spend and requests of tenant $1 in [$2, $3) per feature tag (records without one are
-- one group, last among equals), the costliest first.
SELECT feature_tag, coalesce(sum(cost_cents), 0)::float8 AS spend_cents,
       count(*) AS requests
FROM cost_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY feature_tag ORDER BY spend_cents DESC, feature_tag NULLS LAST
