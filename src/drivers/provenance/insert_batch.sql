-- Inserts the rows of the arrays in array order; cost_delta is v2 - v1 when both are
-- known. Ids come from the sequence in that order.
INSERT INTO costsim_provenance (run_id, tenant_id, variant_slug, source, model_version,
    adapter_version, commit_sha, input_hash, output_hash, v1_cost, v2_cost, cost_delta,
    payload, runtime_ms)
SELECT run_id, tenant_id, variant_slug, source, model_version, adapter_version, commit_sha,
    input_hash, output_hash, v1 + 0, v2 + 0, v2 - v1 + 0, payload, runtime_ms
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::float8[], $11::float8[], $12::jsonb[],
            $13::int4[]) WITH ORDINALITY
     AS t(run_id, tenant_id, variant_slug, source, model_version, adapter_version, commit_sha,
          input_hash, output_hash, v1, v2, payload, runtime_ms, n)
ORDER BY n
RETURNING id
