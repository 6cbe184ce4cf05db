//! `AnalyticsReadDriver`: tenant-scoped usage and cost aggregates in UTC time buckets.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveTime, Utc};
use diesel::pg::data_types::PgInterval;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};
use serde::Serialize;

use crate::error::Result;
use crate::models::rollup::cost_rollup_hourly_live as h;
use crate::models::rollup::{
    blank_to_none, hour_of, hourly_totals, hourly_window, record_totals, record_window,
    split_hours, TotalsRow,
};
use crate::models::{TimeBucket, Totals};
use crate::prepared::{Param, Prepared};
use crate::schema::cost_records as cr;
use crate::types::{TenantId, TimeWindow};

/// Requests and tokens in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
pub struct UsageBucket {
    /// Start of the bucket (UTC hour or UTC midnight).
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    /// Rows in the bucket.
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
    /// Input plus output tokens.
    #[diesel(sql_type = BigInt)]
    pub tokens: i64,
}

/// Executions in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
pub struct CountBucket {
    /// Start of the bucket.
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    /// Rows in the bucket.
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
}

/// Spend and usage in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendBucket {
    /// Start of the bucket.
    pub bucket: DateTime<Utc>,
    /// Sum of `cost_cents`.
    pub spend_cents: f64,
    /// Records in the bucket.
    pub requests: i64,
    /// Sum of input tokens.
    pub input_tokens: i64,
    /// Sum of output tokens.
    pub output_tokens: i64,
}

/// One model's spend in one bucket, from [`AnalyticsReadDriver::fetch_model_spend`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelBucket {
    /// Start of the bucket.
    pub bucket: DateTime<Utc>,
    /// Model name.
    pub model: String,
    /// Sum of `cost_cents`.
    pub spend_cents: f64,
    /// Records.
    pub requests: i64,
}

/// Spend of one model over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpend {
    /// Model name (one row per model).
    pub model: String,
    /// Sum of `cost_cents`.
    pub spend_cents: f64,
    /// Records.
    pub requests: i64,
    /// Sum of input tokens.
    pub input_tokens: i64,
    /// Sum of output tokens.
    pub output_tokens: i64,
}

/// Spend of one feature tag over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureSpend {
    /// The tag; `None` is the one group of records without a tag, which can never be
    /// confused with a real tag (the original labelled it `untagged`).
    pub feature_tag: Option<String>,
    /// Sum of `cost_cents`.
    pub spend_cents: f64,
    /// Records.
    pub requests: i64,
}

/// The six analytics queries, for [`AnalyticsReadDriver::explain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnalyticsQuery {
    /// [`AnalyticsReadDriver::fetch_cost_metrics`].
    CostMetrics,
    /// [`AnalyticsReadDriver::fetch_llm_usage`].
    LlmUsage,
    /// [`AnalyticsReadDriver::fetch_worker_execution`].
    WorkerExecution,
    /// [`AnalyticsReadDriver::fetch_cost_spend`].
    CostSpend,
    /// [`AnalyticsReadDriver::fetch_cost_by_model`].
    CostByModel,
    /// [`AnalyticsReadDriver::fetch_cost_by_feature`].
    CostByFeature,
}

impl AnalyticsQuery {
    /// Every query.
    pub const ALL: [AnalyticsQuery; 6] = [
        AnalyticsQuery::CostMetrics,
        AnalyticsQuery::LlmUsage,
        AnalyticsQuery::WorkerExecution,
        AnalyticsQuery::CostSpend,
        AnalyticsQuery::CostByModel,
        AnalyticsQuery::CostByFeature,
    ];

    /// The table the query reads for whole hours: the hourly rollup for the cost queries,
    /// the other system's `runs` and `aos_traces` for the two that read them.
    pub const fn table(self) -> &'static str {
        match self {
            AnalyticsQuery::LlmUsage => "runs",
            AnalyticsQuery::WorkerExecution => "aos_traces",
            _ => "cost_rollup_hourly",
        }
    }

    /// The one statement the driver runs for the queries over the other system's tables
    /// (`$1` tenant, `$2` from, `$3` to, `$4` the [`bucket_width`]); `None` for the cost
    /// queries, which read the rollup and the records of partial hours.
    pub const fn source_sql(self) -> Option<&'static str> {
        match self {
            AnalyticsQuery::LlmUsage => Some(LLM_USAGE),
            AnalyticsQuery::WorkerExecution => Some(WORKER_EXECUTION),
            _ => None,
        }
    }
}

/// Runs and their tokens per bucket (`$4` the bucket width), from `runs`.
const LLM_USAGE: &str = include_str!("analytics_read/llm_usage.sql");
/// Traces per bucket (`$4` the bucket width), from `aos_traces`.
const WORKER_EXECUTION: &str = include_str!("analytics_read/worker_execution.sql");

/// The width of a bucket as an `interval` of whole microseconds (an hour, or a UTC day of
/// 24 hours), the `$4` of the statements over `runs` and `aos_traces`.
pub fn bucket_width(bucket: TimeBucket) -> PgInterval {
    const HOUR_US: i64 = 3_600_000_000;
    PgInterval::from_microseconds(match bucket {
        TimeBucket::Hour => HOUR_US,
        TimeBucket::Day => 24 * HOUR_US,
    })
}

/// A model's key in a breakdown: its bucket (when bucketed) and its name.
type ModelKey = (Option<DateTime<Utc>>, String);

/// Totals by key, as one statement of [`AnalyticsReadDriver::fold`] loads them.
type KeyedRows<K> = QueryResult<Vec<(K, TotalsRow)>>;

/// The bucket that holds the UTC hour `hour`.
fn bucket_of(hour: DateTime<Utc>, bucket: TimeBucket) -> DateTime<Utc> {
    match bucket {
        TimeBucket::Hour => hour,
        TimeBucket::Day => hour.date_naive().and_time(NaiveTime::MIN).and_utc(),
    }
}

/// The tenant's spend per whole hour of `[from, to)`, from the hourly rollup.
#[diesel::dsl::auto_type]
fn per_hour<'a>(tenant_id: &'a str, from: DateTime<Utc>, to: DateTime<Utc>) -> _ {
    let rows: hourly_window<'a> = hourly_window(tenant_id, from, to);
    rows.group_by(h::bucket_hour)
        .select((h::bucket_hour, hourly_totals()))
        .order(h::bucket_hour)
}

/// The tenant's spend per whole hour of `[from, to)` and model.
#[diesel::dsl::auto_type]
fn per_hour_model<'a>(tenant_id: &'a str, from: DateTime<Utc>, to: DateTime<Utc>) -> _ {
    let rows: hourly_window<'a> = hourly_window(tenant_id, from, to);
    rows.group_by((h::bucket_hour, h::model))
        .select((h::bucket_hour, h::model, hourly_totals()))
}

/// The tenant's spend per model over the whole hours `[from, to)`.
#[diesel::dsl::auto_type]
fn per_model<'a>(tenant_id: &'a str, from: DateTime<Utc>, to: DateTime<Utc>) -> _ {
    let rows: hourly_window<'a> = hourly_window(tenant_id, from, to);
    rows.group_by(h::model).select((h::model, hourly_totals()))
}

/// The tenant's spend per feature tag (`''` for none) over the whole hours `[from, to)`.
#[diesel::dsl::auto_type]
fn per_feature<'a>(tenant_id: &'a str, from: DateTime<Utc>, to: DateTime<Utc>) -> _ {
    let rows: hourly_window<'a> = hourly_window(tenant_id, from, to);
    rows.group_by(h::feature_tag)
        .select((h::feature_tag, hourly_totals()))
}

/// Read-only analytics over cost records, runs and traces: only buckets that hold rows,
/// oldest first. Needs no transaction; inside one it sees the caller's uncommitted rows.
///
/// The cost queries read the whole UTC hours of a window from the hourly rollup, so their
/// cost grows with the hours of the window, not with its records; the partial hours at the
/// edges of a window that does not start and end on a whole hour are summed from the
/// records of those hours.
pub struct AnalyticsReadDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> AnalyticsReadDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        AnalyticsReadDriver { conn }
    }

    /// Whether the tenant has recorded any cost, ever (from the daily rollup, which
    /// outlives the raw records).
    pub fn has_costs(&mut self, tenant_id: &TenantId) -> Result<bool> {
        use crate::models::rollup::cost_rollup_daily_live as d;
        Ok(diesel::select(diesel::dsl::exists(
            d::table.filter(d::tenant_id.eq(tenant_id.as_str())),
        ))
        .get_result(self.conn)?)
    }

    /// Runs one of the statements over `runs` or `aos_traces`, prepared with the bucket
    /// width as `$4`.
    fn run<T>(
        &mut self,
        sql: &'static str,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<T>>
    where
        T: QueryableByName<Pg> + 'static,
    {
        check(window)?;
        let params = [
            Param::Text(tenant_id),
            Param::Instant(&window.from),
            Param::Instant(&window.to),
            Param::Interval(bucket_width(bucket)),
        ];
        Ok(Prepared {
            sql,
            params: &params,
        }
        .load(self.conn)?)
    }

    /// Sums the tenant's window by key: its whole hours from the rollup (`whole`, given
    /// their range), the partial hours at its edges from the records (`edge`, given each
    /// edge, which lies within one UTC hour). Keys without calls are left out.
    fn fold<K: Ord>(
        &mut self,
        window: TimeWindow,
        whole: impl FnOnce(&mut PgConnection, DateTime<Utc>, DateTime<Utc>) -> KeyedRows<K>,
        mut edge: impl FnMut(&mut PgConnection, DateTime<Utc>, DateTime<Utc>) -> KeyedRows<K>,
    ) -> Result<BTreeMap<K, Totals>> {
        check(window)?;
        let split = split_hours(window.from, window.to);
        let mut rows = match split.whole {
            Some((from, to)) => whole(self.conn, from, to)?,
            None => Vec::new(),
        };
        for (from, to) in split.edges {
            rows.extend(edge(self.conn, from, to)?);
        }
        let mut out: BTreeMap<K, Totals> = BTreeMap::new();
        for (key, row) in rows {
            let totals = Totals::from(row);
            if totals.requests > 0 {
                *out.entry(key).or_default() += totals;
            }
        }
        Ok(out)
    }

    /// The tenant's totals per bucket of the window, oldest first.
    fn buckets(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<BTreeMap<DateTime<Utc>, Totals>> {
        self.fold(
            window,
            |conn, from, to| {
                let rows: Vec<(DateTime<Utc>, TotalsRow)> =
                    per_hour(tenant_id, from, to).load(conn)?;
                Ok(rows
                    .into_iter()
                    .map(|(hour, totals)| (bucket_of(hour, bucket), totals))
                    .collect())
            },
            |conn, from, to| {
                let totals: TotalsRow = record_window(tenant_id, from, to)
                    .select(record_totals())
                    .get_result(conn)?;
                Ok(vec![(bucket_of(hour_of(from), bucket), totals)])
            },
        )
    }

    /// The tenant's totals per model over the window, by model; with `bucket`, per bucket
    /// and model.
    fn models(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: Option<TimeBucket>,
    ) -> Result<BTreeMap<ModelKey, Totals>> {
        self.fold(
            window,
            |conn, from, to| {
                Ok(match bucket {
                    Some(bucket) => {
                        let rows: Vec<(DateTime<Utc>, String, TotalsRow)> =
                            per_hour_model(tenant_id, from, to).load(conn)?;
                        rows.into_iter()
                            .map(|(hour, model, totals)| {
                                ((Some(bucket_of(hour, bucket)), model), totals)
                            })
                            .collect()
                    }
                    None => {
                        let rows: Vec<(String, TotalsRow)> =
                            per_model(tenant_id, from, to).load(conn)?;
                        rows.into_iter()
                            .map(|(model, totals)| ((None, model), totals))
                            .collect()
                    }
                })
            },
            |conn, from, to| {
                let rows: Vec<(String, TotalsRow)> = record_window(tenant_id, from, to)
                    .group_by(cr::model)
                    .select((cr::model, record_totals()))
                    .load(conn)?;
                let at = bucket.map(|b| bucket_of(hour_of(from), b));
                Ok(rows
                    .into_iter()
                    .map(|(model, totals)| ((at, model), totals))
                    .collect())
            },
        )
    }

    /// Requests and tokens per bucket.
    pub fn fetch_cost_metrics(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<UsageBucket>> {
        Ok(self
            .buckets(tenant_id, window, bucket)?
            .into_iter()
            .map(|(bucket, t)| UsageBucket {
                bucket,
                requests: t.requests,
                tokens: t.input_tokens + t.output_tokens,
            })
            .collect())
    }

    /// Runs and their LLM tokens (input + output) per bucket from `runs`.
    pub fn fetch_llm_usage(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<UsageBucket>> {
        self.run(LLM_USAGE, tenant_id, window, bucket)
    }

    /// Worker executions per bucket from `aos_traces`.
    pub fn fetch_worker_execution(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<CountBucket>> {
        self.run(WORKER_EXECUTION, tenant_id, window, bucket)
    }

    /// Spend, requests and tokens per bucket.
    pub fn fetch_cost_spend(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<SpendBucket>> {
        Ok(self
            .buckets(tenant_id, window, bucket)?
            .into_iter()
            .map(|(bucket, t)| SpendBucket {
                bucket,
                spend_cents: t.cost_cents,
                requests: t.requests,
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
            })
            .collect())
    }

    /// Spend per bucket per model, oldest bucket first, then by model: the series of a
    /// chart of spend over time per model.
    pub fn fetch_model_spend(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<ModelBucket>> {
        Ok(self
            .models(tenant_id, window, Some(bucket))?
            .into_iter()
            .filter_map(|((at, model), t)| {
                Some(ModelBucket {
                    bucket: at?,
                    model,
                    spend_cents: t.cost_cents,
                    requests: t.requests,
                })
            })
            .collect())
    }

    /// Spend per model over the window, largest first (ties by model name).
    pub fn fetch_cost_by_model(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
    ) -> Result<Vec<ModelSpend>> {
        let mut out: Vec<ModelSpend> = self
            .models(tenant_id, window, None)?
            .into_iter()
            .map(|((_, model), t)| ModelSpend {
                model,
                spend_cents: t.cost_cents,
                requests: t.requests,
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
            })
            .collect();
        // Stable: ties stay in model order.
        out.sort_by(|a, b| b.spend_cents.total_cmp(&a.spend_cents));
        Ok(out)
    }

    /// Spend per feature tag over the window, largest first (ties by tag, untagged last).
    pub fn fetch_cost_by_feature(
        &mut self,
        tenant_id: &TenantId,
        window: TimeWindow,
    ) -> Result<Vec<FeatureSpend>> {
        let tags = self.fold(
            window,
            |conn, from, to| {
                let rows: Vec<(String, TotalsRow)> = per_feature(tenant_id, from, to).load(conn)?;
                Ok(rows
                    .into_iter()
                    .map(|(tag, totals)| (blank_to_none(tag), totals))
                    .collect())
            },
            |conn, from, to| {
                record_window(tenant_id, from, to)
                    .group_by(cr::feature_tag)
                    .select((cr::feature_tag, record_totals()))
                    .load(conn)
            },
        )?;
        let mut out: Vec<FeatureSpend> = tags
            .into_iter()
            .map(|(feature_tag, t)| FeatureSpend {
                feature_tag,
                spend_cents: t.cost_cents,
                requests: t.requests,
            })
            .collect();
        // Tags in order with the untagged group last, then the costliest first (stable).
        out.sort_by_key(|f| f.feature_tag.is_none());
        out.sort_by(|a, b| b.spend_cents.total_cmp(&a.spend_cents));
        Ok(out)
    }

    /// The plan PostgreSQL chooses for `query` with these arguments, one line per node:
    /// for operators checking that an index serves it. For the cost queries, the plan of
    /// the statement that reads the rollup over the window's whole hours.
    pub fn explain(
        &mut self,
        query: AnalyticsQuery,
        tenant_id: &TenantId,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<String>> {
        check(window)?;
        let (from, to) = split_hours(window.from, window.to)
            .whole
            .unwrap_or((window.from, window.to));
        match query {
            AnalyticsQuery::LlmUsage => self.explain_source(LLM_USAGE, tenant_id, window, bucket),
            AnalyticsQuery::WorkerExecution => {
                self.explain_source(WORKER_EXECUTION, tenant_id, window, bucket)
            }
            AnalyticsQuery::CostMetrics | AnalyticsQuery::CostSpend => {
                crate::db::explain(self.conn, &per_hour(tenant_id, from, to))
            }
            AnalyticsQuery::CostByModel => {
                crate::db::explain(self.conn, &per_model(tenant_id, from, to))
            }
            AnalyticsQuery::CostByFeature => {
                crate::db::explain(self.conn, &per_feature(tenant_id, from, to))
            }
        }
    }

    /// The plan of a statement over `runs` or `aos_traces`.
    fn explain_source(
        &mut self,
        sql: &'static str,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<String>> {
        let params = [
            Param::Text(tenant_id),
            Param::Instant(&window.from),
            Param::Instant(&window.to),
            Param::Interval(bucket_width(bucket)),
        ];
        crate::db::explain(
            self.conn,
            &Prepared {
                sql,
                params: &params,
            },
        )
    }
}

/// Refuses a bad window before any SQL.
fn check(window: TimeWindow) -> Result<()> {
    TimeWindow::new(window.from, window.to).map(|_| ())
}
