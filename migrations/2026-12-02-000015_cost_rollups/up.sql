-- Exact rollups of cost_records, kept in the transaction of every insert: a statement-level
-- trigger folds the rows a statement inserted (its transition table, so a request id that
-- conflicted and was skipped is not there) into two rollups, one upsert per key, keys in
-- one global order (table by table, each in key order). Whatever writes the records
-- (costdb's drivers, COPY, the original system beside it), a reader in any snapshot sees
-- rollups that agree with the records.
--
-- Untagged records are feature_tag '' here, records without a user user_id '' (a key
-- column cannot be NULL; costdb refuses empty ids, so '' names no real tag or user).
-- `slot` spreads a hot key over rows, one per backend modulo 64, so concurrent per-call
-- writers of one tenant, model and feature do not queue on one row lock until each
-- other's commit; readers sum the slots, and `costdb upkeep` folds the slots of past days
-- into slot 0. A session may pin its slot with `SET costdb.rollup_slot = n`.
-- Rows are kept when records are later dropped: history beyond the raw retention remains.

-- Spend and usage per tenant, UTC hour, model and feature tag.
CREATE TABLE cost_rollup_hourly (
    tenant_id     varchar(64)      NOT NULL,
    bucket_hour   timestamptz      NOT NULL,
    model         varchar(64)      NOT NULL,
    feature_tag   varchar(128)     NOT NULL,
    slot          smallint         NOT NULL,
    requests      bigint           NOT NULL,
    retries       bigint           NOT NULL,
    input_tokens  bigint           NOT NULL,
    output_tokens bigint           NOT NULL,
    cost_cents    double precision NOT NULL,
    PRIMARY KEY (tenant_id, bucket_hour, model, feature_tag, slot)
) WITH (fillfactor = 80);

-- Spend and usage per tenant, UTC day, feature tag and user: what the anomaly driver and
-- the detector read (a tenant's day, a tag's, a user's).
CREATE TABLE cost_rollup_daily (
    tenant_id     varchar(64)      NOT NULL,
    day           date             NOT NULL,
    feature_tag   varchar(128)     NOT NULL,
    user_id       varchar(64)      NOT NULL,
    slot          smallint         NOT NULL,
    requests      bigint           NOT NULL,
    retries       bigint           NOT NULL,
    input_tokens  bigint           NOT NULL,
    output_tokens bigint           NOT NULL,
    cost_cents    double precision NOT NULL,
    PRIMARY KEY (tenant_id, day, feature_tag, user_id, slot)
) WITH (fillfactor = 80);

-- The detector reads a few days of every tenant at once: block ranges of the rollups by
-- time (rows arrive roughly in time order, so a BRIN index is small and nearly free to
-- keep).
CREATE INDEX ix_cost_rollup_hourly_hour ON cost_rollup_hourly USING brin (bucket_hour);
CREATE INDEX ix_cost_rollup_daily_day ON cost_rollup_daily USING brin (day);

CREATE FUNCTION costdb_fold_cost_records() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := coalesce(
        nullif(current_setting('costdb.rollup_slot', true), '')::smallint,
        (pg_backend_pid() % 64)::smallint);
BEGIN
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

-- No writer may slip between the fill below and the trigger.
LOCK TABLE cost_records IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO cost_rollup_hourly
SELECT tenant_id, date_bin('1 hour', created_at, '2000-01-01 00:00:00+00'), model,
       coalesce(feature_tag, ''), 0, count(*), count(*) FILTER (WHERE is_retry),
       sum(input_tokens), sum(output_tokens), sum(cost_cents)
FROM cost_records
GROUP BY 1, 2, 3, 4;

INSERT INTO cost_rollup_daily
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, coalesce(feature_tag, ''),
       coalesce(user_id, ''), 0, count(*), count(*) FILTER (WHERE is_retry),
       sum(input_tokens), sum(output_tokens), sum(cost_cents)
FROM cost_records
GROUP BY 1, 2, 3, 4;

-- Statistics for the filled tables now, so the first reads plan on them.
ANALYZE cost_rollup_hourly;
ANALYZE cost_rollup_daily;

CREATE TRIGGER trg_cost_records_fold
    AFTER INSERT ON cost_records
    REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION costdb_fold_cost_records();

-- Only the indexes a query uses (each shown by EXPLAIN in tests/schema.rs): the primary
-- key, the idempotency key, and (tenant_id, created_at) for the partial hours at the edges
-- of a window and for reconciling budgets. The reads by user and feature tag are served
-- by the rollups; the rest were prefixes or unscoped copies.
DROP INDEX ix_cost_records_tenant_id;
DROP INDEX ix_cost_records_user_id;
DROP INDEX ix_cost_records_feature_tag;
DROP INDEX ix_cost_records_tenant_feature;
DROP INDEX ix_cost_records_tenant_user;
