-- Which of the tables $1 hold more than twice the pages they held at their last analysis,
-- and at least 16: a plan made from their statistics may no longer fit them.
SELECT c.relname::text AS relname
FROM pg_class c
WHERE c.relname = ANY ($1::text[]) AND c.relnamespace = current_schema()::regnamespace
  AND pg_relation_size(c.oid) / current_setting('block_size')::int > greatest(2 * c.relpages, 16)
