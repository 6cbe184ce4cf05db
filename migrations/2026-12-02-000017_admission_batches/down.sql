DROP FUNCTION costdb_reserve_batch(text[], text[], text[], date[], float8[], text[], text[],
    timestamptz[], text[], text[], date[]);
