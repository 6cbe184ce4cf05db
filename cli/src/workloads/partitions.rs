//! Partition workloads: ingestion into the day-partitioned `cost_records` (its request
//! ids claimed in `cost_request_keys`) against the same rows into an unpartitioned table
//! of the shape before (its request ids kept by a unique index, the same rollup fold),
//! and retiring a day by dropping its partition against deleting it.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::writes::cost_inputs;
use super::{pgbench_with, Ctx, Scale, Target, Workload};
use costdb::drivers::PartitionDriver;
use costdb::models::{ids, CostInput};
use costdb::retention::{Retention, RetentionPlan};
use costdb::schema::cost_records;
use costdb::Error;
use costdb_testkit::Result;

diesel::table! {
    /// The unpartitioned baseline: `cost_records` as it was before partitioning.
    bench_flat_cost_records (tenant_id, id) {
        id -> Varchar,
        tenant_id -> Varchar,
        user_id -> Nullable<Varchar>,
        feature_tag -> Nullable<Varchar>,
        request_id -> Nullable<Varchar>,
        workflow_id -> Nullable<Varchar>,
        skill_id -> Nullable<Varchar>,
        model -> Varchar,
        input_tokens -> Int4,
        output_tokens -> Int4,
        cost_cents -> Float8,
        created_at -> Timestamptz,
        is_retry -> Bool,
    }
}

/// Creates the unpartitioned baseline table: the columns of `cost_records`, its key and
/// index as they were, the request id's unique index, and the same rollup trigger told
/// not to claim keys (the index keeps them).
const FLAT_TABLE: &str = "\
    CREATE TABLE bench_flat_cost_records \
        (LIKE cost_records INCLUDING DEFAULTS, PRIMARY KEY (tenant_id, id)); \
    CREATE UNIQUE INDEX bench_flat_request \
        ON bench_flat_cost_records (tenant_id, request_id) WHERE request_id IS NOT NULL; \
    CREATE INDEX bench_flat_tenant_created \
        ON bench_flat_cost_records (tenant_id, created_at); \
    CREATE TRIGGER bench_flat_fold AFTER INSERT ON bench_flat_cost_records \
        REFERENCING NEW TABLE AS new_records \
        FOR EACH STATEMENT EXECUTE FUNCTION costdb_fold_cost_records('keys by index')";

/// Makes the baseline table once, holding what `cost_records` holds by then (the rows of
/// the workloads before), so both tables and their indexes are of one size, and vacuums
/// both (the per-row workloads roll back what they write: dead rows the copy does not
/// have); the copy is not folded into the rollups again.
fn flat_table(ctx: &mut Ctx) -> Result<()> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        made: bool,
    }
    let made =
        diesel::sql_query("SELECT to_regclass('bench_flat_cost_records') IS NOT NULL AS made")
            .get_result::<Exists>(&mut ctx.conn)?
            .made;
    if !made {
        ctx.conn.batch_execute(FLAT_TABLE)?;
        ctx.conn.batch_execute(
            "ALTER TABLE bench_flat_cost_records DISABLE TRIGGER bench_flat_fold; \
             INSERT INTO bench_flat_cost_records SELECT * FROM cost_records; \
             ALTER TABLE bench_flat_cost_records ENABLE TRIGGER bench_flat_fold",
        )?;
        // On its own: VACUUM cannot run in the implicit transaction of several statements.
        ctx.conn.batch_execute(
            "VACUUM ANALYZE bench_flat_cost_records, cost_records, cost_request_keys",
        )?;
    }
    Ok(())
}

/// Rows of `rows` as both tables take them, ids made as the driver makes them.
fn copy_rows(conn: &mut PgConnection, rows: &[CostInput], flat: bool) -> Result<Duration> {
    let now = chrono::Utc::now();
    let ids: Vec<String> = rows.iter().map(|_| ids::cost_record_id()).collect();
    let records: Vec<_> = rows
        .iter()
        .zip(&ids)
        .map(|(c, id)| c.as_new_record(id, now))
        .collect();
    let started = Instant::now();
    conn.transaction::<_, Error, _>(|c| {
        if flat {
            use bench_flat_cost_records as f;
            // The same insert shape, column by column, into the flat table.
            let values: Vec<_> = records
                .iter()
                .map(|r| {
                    (
                        f::id.eq(&r.id),
                        f::tenant_id.eq(&r.tenant_id),
                        f::user_id.eq(&r.user_id),
                        f::feature_tag.eq(&r.feature_tag),
                        f::request_id.eq(&r.request_id),
                        f::workflow_id.eq(&r.workflow_id),
                        f::skill_id.eq(&r.skill_id),
                        f::model.eq(&r.model),
                        f::input_tokens.eq(r.input_tokens),
                        f::output_tokens.eq(r.output_tokens),
                        f::cost_cents.eq(r.cost_cents),
                        f::created_at.eq(r.created_at),
                        f::is_retry.eq(r.is_retry),
                    )
                })
                .collect();
            diesel::copy_from(f::table)
                .from_insertable(values)
                .execute(c)?;
        } else {
            diesel::copy_from(cost_records::table)
                .from_insertable(records.clone())
                .execute(c)?;
        }
        Ok(())
    })?;
    Ok(started.elapsed())
}

/// Batches per round of [`CopyIngest`].
const BATCHES: usize = 10;

/// `ingest copy`: committed batches by binary COPY into each table.
struct CopyIngest {
    rows: usize,
}

impl Workload for CopyIngest {
    fn name(&self) -> String {
        format!(
            "ingest {BATCHES}×{} by COPY: day partitions + request keys",
            self.rows
        )
    }
    fn baseline_name(&self) -> &'static str {
        "COPY into one unpartitioned table, unique request index"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.9)
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        flat_table(ctx)
    }
    fn rounds(&self) -> usize {
        BATCHES
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        copy_rows(&mut ctx.conn, &cost_inputs(self.rows), false)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        copy_rows(&mut ctx.conn, &cost_inputs(self.rows), true)
    }
}

/// One call per transaction, as a service without a recorder writes, in the shape of the
/// statement `insert_cost_record` sends: it claims its request id first and tells the
/// trigger so. Its sums go through the trigger's fold here, as the unpartitioned table's
/// do (not to the deltas, which that table lacks), so the row measures the partitions and
/// the key table alone. `:run`, `:client_id` and `:r` make unique keys.
const PER_CALL_PARTITIONED: &str = "\
\\set r random(1, 1000000000)
WITH claimed AS (
    INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at)
    VALUES ('bench-pc-' || :client_id, 'rq-' || :run || '-' || :r, 'cr_' || :run || '_' || :r, now())
    ON CONFLICT DO NOTHING
    RETURNING record_id, set_config('costdb.request_keys', 'claimed', true))
INSERT INTO cost_records (id, tenant_id, request_id, model, input_tokens, output_tokens,
                          cost_cents, created_at)
SELECT 'cr_' || :run || '_' || :r, 'bench-pc-' || :client_id, 'rq-' || :run || '-' || :r,
       'gpt-4o', 500, 200, 1.25, now()
WHERE EXISTS (SELECT FROM claimed)
RETURNING created_at;
";

/// The same call into the unpartitioned table, idempotent by its unique index.
const PER_CALL_FLAT: &str = "\
\\set r random(1, 1000000000)
INSERT INTO bench_flat_cost_records (id, tenant_id, request_id, model, input_tokens,
                                     output_tokens, cost_cents, created_at)
VALUES ('cr_' || :run || '_' || :r, 'bench-pc-' || :client_id, 'rq-' || :run || '-' || :r,
        'gpt-4o', 500, 200, 1.25, now())
ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
RETURNING created_at;
";

/// `ingest per call`: pgbench clients, one record per transaction.
struct PerCallIngest {
    clients: usize,
    transactions: usize,
    runs: usize,
}

impl PerCallIngest {
    fn run(&mut self, ctx: &mut Ctx, script: &str) -> Result<Duration> {
        self.runs += 1;
        pgbench_with(
            ctx,
            script,
            self.clients,
            self.transactions,
            &[("run", self.runs.to_string())],
        )
    }
}

impl Workload for PerCallIngest {
    fn name(&self) -> String {
        format!(
            "ingest {}×{} per call: day partitions + request keys",
            self.clients, self.transactions
        )
    }
    fn baseline_name(&self) -> &'static str {
        "the same INSERT into one unpartitioned table, unique request index"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.9)
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        flat_table(ctx)
    }
    fn rounds(&self) -> usize {
        2
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        self.run(ctx, PER_CALL_PARTITIONED)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        self.run(ctx, PER_CALL_FLAT)
    }
}

/// `retire a day`: one day of records gone by dropping its partition (with the request
/// keys of its records), against `DELETE` of the same day from the unpartitioned table.
struct RetireDay {
    rows: usize,
    /// Days used so far: each round retires a day of its own, long past.
    days: u32,
    /// The unpartitioned table's size after the last `DELETE`, in bytes.
    flat_after: Option<i64>,
    /// How long the last detach held the lock that makes inserts wait.
    detach: Option<Duration>,
}

/// Bytes of a table with its indexes and TOAST.
fn total_size(conn: &mut PgConnection, table: &str) -> Result<i64> {
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
    }
    Ok(
        diesel::sql_query("SELECT pg_total_relation_size($1::regclass) AS bytes")
            .bind::<diesel::sql_types::Text, _>(table)
            .get_result::<Size>(conn)?
            .bytes,
    )
}

impl RetireDay {
    /// A new day, long before any other workload's, with `rows` calls spread over it.
    fn next_day(&mut self) -> (NaiveDate, Vec<CostInput>) {
        self.days += 1;
        let day = NaiveDate::from_ymd_opt(2001, 1, 1).expect("a date")
            + chrono::Duration::days(i64::from(self.days));
        let start = day.and_time(NaiveTime::MIN).and_utc();
        let step = 86_400_000_000 / self.rows as i64;
        let mut rows = cost_inputs(self.rows);
        for (i, row) in rows.iter_mut().enumerate() {
            row.created_at = Some(start + chrono::Duration::microseconds(step * i as i64));
        }
        (day, rows)
    }
}

impl Workload for RetireDay {
    fn name(&self) -> String {
        let after = self.flat_after.map_or(String::new(), |b| {
            format!(
                "; table after DELETE {:.1} MB, after DROP 0",
                b as f64 / 1e6
            )
        });
        let lock = self.detach.map_or(String::new(), |d| {
            format!(" (inserts wait {:.1} ms)", d.as_secs_f64() * 1e3)
        });
        format!(
            "retire a day of {} records: detach{lock}, delete its keys, DROP{after}",
            self.rows
        )
    }
    fn baseline_name(&self) -> &'static str {
        "DELETE of the day from one unpartitioned table"
    }
    fn target(&self) -> Target {
        Target::Report
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        flat_table(ctx)
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let (day, rows) = self.next_day();
        let conn = &mut ctx.conn;
        conn.transaction::<_, Error, _>(|c| {
            PartitionDriver::new(c).create_partitions(day, day)?;
            Ok(())
        })?;
        for chunk in rows.chunks(10_000) {
            copy_rows(conn, chunk, false)?;
        }
        let name = format!("cost_records_p{}", day.format("%Y%m%d"));
        let partition = PartitionDriver::new(conn)
            .fetch_partitions()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Conflict(format!("{name} was not created")))?;
        // The day's rollups verify by construction; the plan names only this day.
        let plan = RetentionPlan {
            partitions: vec![partition],
            incomplete_days: Vec::new(),
        };
        let started = Instant::now();
        conn.transaction::<_, Error, _>(|c| Retention::new(c).retire(&plan))?;
        self.detach = Some(started.elapsed());
        conn.transaction::<_, Error, _>(|c| Retention::new(c).drop_detached())?;
        Ok(started.elapsed())
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let (day, rows) = self.next_day();
        let conn = &mut ctx.conn;
        for chunk in rows.chunks(10_000) {
            copy_rows(conn, chunk, true)?;
        }
        let from = day.and_time(NaiveTime::MIN).and_utc();
        let started = Instant::now();
        {
            use bench_flat_cost_records as f;
            diesel::delete(
                f::table
                    .filter(f::created_at.ge(from))
                    .filter(f::created_at.lt(from + chrono::Duration::days(1))),
            )
            .execute(conn)?;
        }
        let took = started.elapsed();
        self.flat_after = Some(total_size(conn, "bench_flat_cost_records")?);
        Ok(took)
    }
}

/// The partition workloads at `scale`.
pub fn partition_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(CopyIngest {
            rows: scale.of(1_000),
        }),
        Box::new(PerCallIngest {
            clients: 4,
            transactions: scale.of(2_000),
            runs: 0,
        }),
        Box::new(RetireDay {
            rows: scale.of(100_000),
            days: 0,
            flat_after: None,
            detach: None,
        }),
    ]
}
