DROP FUNCTION costdb_compact_rollups(date);
DROP FUNCTION costdb_rebuild_rollups(text, timestamptz, timestamptz);
