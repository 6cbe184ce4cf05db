DROP FUNCTION costdb_reserve_batch(text[], text[], text[], date[], float8[], text[], text[], timestamptz[]);
DROP FUNCTION costdb_reserve_one(text, text, text, date, date, float8, text, text, timestamptz);
