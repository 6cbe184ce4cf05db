-- Backfills V1 baselines: the first record of each input hash, unless the table already
-- has that hash; records without a hash always. One row per inserted record.
INSERT INTO costsim_provenance (run_id, tenant_id, variant_slug, source, input_hash, v1_cost,
    payload)
SELECT run_id, tenant_id, 'v1', 'backfill', input_hash, cost + 0, payload
FROM (
    SELECT DISTINCT ON (input_hash, CASE WHEN input_hash IS NULL THEN n END) *
    FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::jsonb[]) WITH ORDINALITY
         AS t(run_id, tenant_id, cost, input_hash, payload, n)
    ORDER BY input_hash, CASE WHEN input_hash IS NULL THEN n END, n
) first
WHERE input_hash IS NULL
   OR NOT EXISTS (SELECT 1 FROM costsim_provenance p WHERE p.input_hash = first.input_hash)
ORDER BY n
RETURNING id
