-- A whole batch of the admission service in one statement (see costdb_admit_batch in the
-- migration admission_one_statement): $1–$8 the reservations as in reserve_batch.sql; $9
-- the settled reservations and $10–$22 their cost records, columns as in
-- insert_bulk.sql; $23, $24 the releases (reservation, tenant). Raises when the batch needs the full path, writing nothing.
SELECT * FROM costdb_admit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                 $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)
