-- Decides the requests of the arrays in order (element i of each is request i: $1 tenant,
-- $2 feature tag, $3 user, $4 UTC day, $5 estimate, $6 reservation id, $7 request id,
-- $8 expiry), each as one reservation would be, after locking their counters and those of
-- $9–$12 (tenant, budget, period, window start) in key order: see costdb_reserve_batch in
-- the migration admission_batches. One row per counter of each request, tagged with its
-- place `n`.
SELECT * FROM costdb_reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
