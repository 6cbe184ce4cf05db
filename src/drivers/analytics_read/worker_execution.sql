-- Traces of tenant $1 in [$2, $3), per bucket of width $4 (see cost_metrics.sql).
SELECT date_bin($4, created_at, '2000-01-01 00:00:00+00') AS bucket,
       count(*) AS requests
FROM aos_traces
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY 1 ORDER BY 1
