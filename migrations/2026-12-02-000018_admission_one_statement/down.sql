DROP FUNCTION costdb_admit_batch(text[], text[], text[], date[], float8[], text[], text[],
    timestamptz[], text[], text[], text[], text[], text[], text[], text[], text[], text[],
    int4[], int4[], float8[], bool[], timestamptz[], text[], text[]);

ALTER FUNCTION costdb_reserve_batch(text[], text[], text[], date[], float8[], text[], text[],
    timestamptz[], text[], text[], date[])
    RESET enable_seqscan;
