-- Requests and tokens of tenant $1 in [$2, $3), per bucket of width $4 (an hour or a day)
-- counted from a UTC midnight, so buckets start at UTC hours and midnights whatever the
-- session's TimeZone (and cost less than date_trunc(unit, t, 'UTC'), which converts every
-- row to local time first). GROUP BY 1 keeps the bound width in one place.
SELECT date_bin($4, created_at, '2000-01-01 00:00:00+00') AS bucket,
       count(*) AS requests,
       coalesce(sum(input_tokens::bigint + output_tokens), 0)::bigint AS tokens
FROM cost_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY 1 ORDER BY 1
