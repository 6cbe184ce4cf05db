-- cost_records becomes range-partitioned by created_at, one partition per UTC day, so that
-- retention drops whole days (never DELETE) and each day's indexes stay small.
--
-- Why a day: `costdb upkeep --retain-days N` retires data by the day, and the daily rollup
-- that must verify before a day goes has the same grain. At a million calls a day a
-- partition holds ~300 MB; a year is ~365 partitions, and every read of the crate either
-- comes from the rollups or names its instants, so the planner prunes to the days it
-- needs.
--
-- The rows already stored stay where they are: the old table becomes the partition
-- `cost_records_legacy`, from the beginning of time to the UTC day after its newest
-- record, and is dropped whole once all of it is past the retention. Daily partitions
-- follow from today for a week; `costdb upkeep` keeps them a week ahead. A record whose
-- day has no partition yet lands in `cost_records_default`, never refused; upkeep moves
-- such a day into its own partition.
--
-- A unique key of a partitioned table must include the partition key, so the per-tenant
-- request id can no longer be a unique index of cost_records. `cost_request_keys` holds
-- it instead: (tenant_id, request_id) → the record's id and instant. Every statement that
-- inserts records claims the keys of its rows in the statement trigger, so a request id
-- is billed at most once per tenant whatever instant a retry carries and whoever writes
-- (costdb, COPY, the original system); costdb's INSERTs claim theirs first in the same
-- statement and skip a row whose key is taken, as ON CONFLICT skipped it before.

CREATE TABLE cost_request_keys (
    tenant_id  varchar(64) NOT NULL,
    request_id varchar(64) NOT NULL,
    record_id  varchar(64) NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT cost_request_keys_pkey PRIMARY KEY (tenant_id, request_id)
);

-- The boundary before which records were retired: rollup verify and rebuild stop there.
CREATE TABLE cost_record_retention (
    one            boolean     PRIMARY KEY DEFAULT true CHECK (one),
    retired_before timestamptz NOT NULL
);

LOCK TABLE cost_records IN ACCESS EXCLUSIVE MODE;

INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
SELECT tenant_id, request_id, id, created_at
FROM cost_records
WHERE request_id IS NOT NULL;

DROP TRIGGER trg_cost_records_fold ON cost_records;
DROP INDEX uq_cost_records_tenant_request;
ALTER TABLE cost_records RENAME TO cost_records_legacy;
ALTER TABLE cost_records_legacy DROP CONSTRAINT cost_records_pkey;
ALTER TABLE cost_records_legacy
    ADD CONSTRAINT cost_records_legacy_pkey PRIMARY KEY (tenant_id, id, created_at);
ALTER INDEX ix_cost_records_tenant_created RENAME TO cost_records_legacy_tenant_created;

CREATE TABLE cost_records (
    id            varchar(64)      NOT NULL,
    tenant_id     varchar(64)      NOT NULL,
    user_id       varchar(64),
    feature_tag   varchar(128),
    request_id    varchar(64),
    workflow_id   varchar(64),
    skill_id      varchar(64),
    model         varchar(64)      NOT NULL,
    input_tokens  integer          NOT NULL DEFAULT 0,
    output_tokens integer          NOT NULL DEFAULT 0,
    cost_cents    double precision NOT NULL,
    created_at    timestamptz      NOT NULL DEFAULT now(),
    is_retry      boolean          NOT NULL DEFAULT false,
    CONSTRAINT cost_records_pkey PRIMARY KEY (tenant_id, id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX ix_cost_records_tenant_created ON cost_records (tenant_id, created_at);
CREATE TABLE cost_records_default PARTITION OF cost_records DEFAULT;

-- Every partition of cost_records with its bounds (NULL: unbounded), read off the catalog.
CREATE FUNCTION costdb_cost_partitions()
RETURNS TABLE (name text, from_at timestamptz, to_at timestamptz, is_default boolean)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(b.bound FROM 'FROM \(''([^'']*)''\)')::timestamptz,
           substring(b.bound FROM 'TO \(''([^'']*)''\)')::timestamptz,
           b.bound = 'DEFAULT'
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
    WHERE i.inhparent = 'cost_records'::regclass
    ORDER BY 3 NULLS LAST, 2 NULLS FIRST
$$;

-- Creates the partition of UTC day `day` (`cost_records_pYYYYMMDD`) unless a partition
-- already covers any of it, moving the day's rows out of the default partition. Attaching
-- takes only a SHARE UPDATE EXCLUSIVE lock on cost_records: inserts go on meanwhile,
-- except into the default partition.
-- Returns the new partition's name, or NULL when there was nothing to do.
CREATE FUNCTION costdb_create_cost_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'cost_records_p' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF EXISTS (SELECT 1 FROM costdb_cost_partitions() p
               WHERE NOT p.is_default
                 AND (p.from_at IS NULL OR p.from_at < hi)
                 AND (p.to_at IS NULL OR p.to_at > lo)) THEN
        RETURN NULL;
    END IF;
    -- Writers into the default partition finish first (the attach would fail on a row
    -- of this day they commit later) and wait meanwhile; writers of other days go on.
    LOCK TABLE cost_records_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I (LIKE cost_records INCLUDING DEFAULTS)', part);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (created_at >= %L AND created_at < %L)',
                   part, part || '_day', lo, hi);
    EXECUTE format('WITH moved AS (DELETE FROM cost_records_default '
                   'WHERE created_at >= %L AND created_at < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE cost_records ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, lo, hi);
    -- The check only spared the attach a scan; the partition bound says the same.
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_day');
    RETURN part;
END
$$;

-- The partitions of the UTC days `first` to `last` and of every day with rows in the
-- default partition, where none covers them yet, in day order; returns those created.
CREATE FUNCTION costdb_create_cost_partitions(first date, last date) RETURNS SETOF text
LANGUAGE sql AS $$
    SELECT made
    FROM (SELECT d::date AS day FROM generate_series(first, last, interval '1 day') AS d
          UNION
          SELECT (created_at AT TIME ZONE 'UTC')::date FROM cost_records_default) days
    CROSS JOIN LATERAL costdb_create_cost_partition(days.day) AS made
    WHERE made IS NOT NULL
    ORDER BY days.day
$$;

-- Retirement goes in two steps, so that inserts wait only for the first.
--
-- 1. Detaches one bounded partition of cost_records (an ACCESS EXCLUSIVE lock on
--    cost_records until the transaction ends: commit at once) and moves the retention
--    boundary to its end. Its records are gone from cost_records; their request keys
--    still hold, so a retry in between is refused rather than billed. Returns the end.
CREATE FUNCTION costdb_detach_cost_partition(part text) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    upto timestamptz;
BEGIN
    SELECT p.to_at INTO upto
    FROM costdb_cost_partitions() p
    WHERE p.name = part AND NOT p.is_default;
    IF upto IS NULL THEN
        RAISE EXCEPTION 'costdb: % is not a bounded partition of cost_records', part
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('ALTER TABLE cost_records DETACH PARTITION %I', part);
    INSERT INTO cost_record_retention AS r (one, retired_before) VALUES (true, upto)
    ON CONFLICT (one) DO UPDATE
        SET retired_before = greatest(r.retired_before, excluded.retired_before);
    RETURN upto;
END
$$;

-- The partitions of cost_records detached and not dropped yet.
CREATE FUNCTION costdb_detached_cost_partitions() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text
    FROM pg_class c
    WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'cost_records'::regclass)
      AND c.relkind = 'r' AND NOT c.relispartition
      AND c.relname ~ '^cost_records_(p[0-9]{8}|legacy)$'
    ORDER BY 1
$$;

-- 2. Deletes the request keys of a detached partition's records (a request id of a
--    retired day may be billed again: the one window of the guarantee) and drops it,
--    never emptied by DELETE. No lock on cost_records. Returns how many keys went.
CREATE FUNCTION costdb_drop_detached_cost_partition(part text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    keys bigint;
BEGIN
    IF part NOT IN (SELECT costdb_detached_cost_partitions()) THEN
        RAISE EXCEPTION 'costdb: % is not a detached partition of cost_records', part
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('DELETE FROM cost_request_keys k USING %I r '
                   'WHERE k.tenant_id = r.tenant_id AND k.request_id = r.request_id '
                   'AND k.record_id = r.id', part);
    GET DIAGNOSTICS keys = ROW_COUNT;
    EXECUTE format('DROP TABLE %I', part);
    RETURN keys;
END
$$;

-- The stored rows become the legacy partition, up to the UTC day after the newest one
-- but not beyond today: rows stamped later (a clock ahead, a planned entry) go through the
-- new partitions like any new row, before the trigger exists (their rollups and keys are
-- already there).
DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    upto date;
BEGIN
    CREATE TEMPORARY TABLE costdb_later_records ON COMMIT DROP AS
    SELECT * FROM cost_records_legacy WITH NO DATA;
    WITH later AS (DELETE FROM cost_records_legacy
                   WHERE created_at >= (today + 1)::timestamp AT TIME ZONE 'UTC' RETURNING *)
    INSERT INTO costdb_later_records SELECT * FROM later;
    upto := (SELECT (max(created_at) AT TIME ZONE 'UTC')::date + 1 FROM cost_records_legacy);
    IF upto IS NULL THEN
        DROP TABLE cost_records_legacy;
    ELSE
        EXECUTE format('ALTER TABLE cost_records ATTACH PARTITION cost_records_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)',
                       upto::timestamp AT TIME ZONE 'UTC');
    END IF;
    PERFORM costdb_create_cost_partition(today + d) FROM generate_series(0, 7) AS d;
    INSERT INTO cost_records SELECT * FROM costdb_later_records;
END
$$;

-- The statement trigger claims the request ids of the rows it inserted, then folds them
-- into the rollups. A key held already is a unique violation of cost_request_keys_pkey,
-- which aborts the statement: a COPY that meets a recorded request id fails as it did on
-- the old unique index, and costdb's bulk path then goes by INSERT, which skips it.
-- costdb's INSERTs claim their keys themselves, first, in the same statement, and skip a
-- row whose key is taken; they say so by setting `costdb.request_keys` to 'claimed' for
-- the statement, and the trigger then leaves the keys alone (and clears the setting).
-- An argument limits the trigger to one half: 'keys by index' folds only (a table that
-- keeps its request ids unique by an index of its own: the unpartitioned shape, which
-- `costdb bench` measures against), 'claim only' claims only (the table without its
-- rollups, the bench's measure of what they cost).
CREATE OR REPLACE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := coalesce(
        nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
        (1 + pg_backend_pid() % 63)::smallint);
BEGIN
    IF this_slot NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'costdb.rollup_slot is % but must be 1 to 63 (0 holds the past days'' folded rows)',
            this_slot USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF current_setting('costdb.request_keys', true) = 'claimed' THEN
        PERFORM set_config('costdb.request_keys', '', true);
    ELSIF TG_NARGS = 0 OR TG_ARGV[0] = 'claim only' THEN
        INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
        SELECT n.tenant_id, n.request_id, n.id, n.created_at
        FROM new_records n
        WHERE n.request_id IS NOT NULL
        ORDER BY n.tenant_id, n.request_id;
    END IF;
    IF TG_NARGS > 0 AND TG_ARGV[0] = 'claim only' THEN
        RETURN NULL;
    END IF;

    INSERT INTO cost_rollup_hourly AS r
        (tenant_id, bucket_hour, model, feature_tag, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT n.tenant_id, date_bin('1 hour', n.created_at, '2000-01-01 00:00:00+00'), n.model,
           coalesce(n.feature_tag, ''), this_slot, count(*), count(*) FILTER (WHERE n.is_retry),
           sum(n.input_tokens), sum(n.output_tokens), sum(n.cost_cents)
    FROM new_records n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, bucket_hour, model, feature_tag, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents;

    INSERT INTO cost_rollup_daily AS r
        (tenant_id, day, feature_tag, user_id, slot,
         requests, retries, input_tokens, output_tokens, cost_cents)
    SELECT n.tenant_id, (n.created_at AT TIME ZONE 'UTC')::date, coalesce(n.feature_tag, ''),
           coalesce(n.user_id, ''), this_slot, count(*), count(*) FILTER (WHERE n.is_retry),
           sum(n.input_tokens), sum(n.output_tokens), sum(n.cost_cents)
    FROM new_records n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, feature_tag, user_id, slot) DO UPDATE SET
        requests = r.requests + excluded.requests,
        retries = r.retries + excluded.retries,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_cents = r.cost_cents + excluded.cost_cents;
    RETURN NULL;
END
$$;

CREATE TRIGGER trg_cost_records_fold
    AFTER INSERT ON cost_records
    REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION costdb_fold_cost_records();
