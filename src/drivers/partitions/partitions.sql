-- Every partition of cost_records with its bounds (NULL: unbounded), oldest first, the
-- default partition last (the catalog function of migration time_partitions).
SELECT name, from_at, to_at, is_default
FROM costdb_cost_partitions()
