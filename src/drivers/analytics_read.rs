//! `AnalyticsReadDriver`: tenant-scoped usage and cost aggregates in UTC time buckets.

use chrono::{DateTime, Utc};
use diesel::pg::data_types::PgInterval;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::error::Result;
use crate::models::TimeBucket;
use crate::prepared::{Param, PlannedPerCall, Prepared};
use crate::types::{limits, TimeWindow};
use crate::validate;

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
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct SpendBucket {
    /// Start of the bucket.
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    /// Sum of `cost_cents`.
    #[diesel(sql_type = Double)]
    pub spend_cents: f64,
    /// Records in the bucket.
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
    /// Sum of input tokens.
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    /// Sum of output tokens.
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
}

/// One model's spend in one bucket, from [`AnalyticsReadDriver::fetch_model_spend`].
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct ModelBucket {
    /// Start of the bucket.
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    /// Model name.
    #[diesel(sql_type = Text)]
    pub model: String,
    /// Sum of `cost_cents`.
    #[diesel(sql_type = Double)]
    pub spend_cents: f64,
    /// Records.
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
}

/// Spend of one model over the window.
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct ModelSpend {
    /// Model name (one row per model).
    #[diesel(sql_type = Text)]
    pub model: String,
    /// Sum of `cost_cents`.
    #[diesel(sql_type = Double)]
    pub spend_cents: f64,
    /// Records.
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
    /// Sum of input tokens.
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    /// Sum of output tokens.
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
}

/// Spend of one feature tag over the window.
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
pub struct FeatureSpend {
    /// The tag; `None` is the one group of records without a tag, which can never be
    /// confused with a real tag (the original labelled it `untagged`).
    #[diesel(sql_type = Nullable<Text>)]
    pub feature_tag: Option<String>,
    /// Sum of `cost_cents`.
    #[diesel(sql_type = Double)]
    pub spend_cents: f64,
    /// Records.
    #[diesel(sql_type = BigInt)]
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

    /// The table the query reads.
    pub const fn table(self) -> &'static str {
        match self {
            AnalyticsQuery::LlmUsage => "runs",
            AnalyticsQuery::WorkerExecution => "aos_traces",
            _ => "cost_records",
        }
    }

    /// Whether the statement takes the bucket width (`$4`).
    pub const fn bucketed(self) -> bool {
        !matches!(
            self,
            AnalyticsQuery::CostByModel | AnalyticsQuery::CostByFeature
        )
    }

    /// The statement: `$1` tenant, `$2` from, `$3` to, and `$4` the bucket width
    /// ([`bucket_width`], an `interval`) when [`bucketed`](Self::bucketed).
    //
    // `date_bin` counts whole hours or days
    // from a UTC midnight, so buckets start at UTC hours and midnights whatever the
    // session's TimeZone, and cost less than `date_trunc(unit, t, 'UTC')`, which converts
    // every row to local time first. GROUP BY 1 keeps the bound unit in one place.
    pub const fn sql(self) -> &'static str {
        match self {
            AnalyticsQuery::CostMetrics => include_str!("analytics_read/cost_metrics.sql"),
            AnalyticsQuery::LlmUsage => include_str!("analytics_read/llm_usage.sql"),
            AnalyticsQuery::WorkerExecution => {
                include_str!("analytics_read/worker_execution.sql")
            }
            AnalyticsQuery::CostSpend => include_str!("analytics_read/cost_spend.sql"),
            AnalyticsQuery::CostByModel => include_str!("analytics_read/cost_by_model.sql"),
            AnalyticsQuery::CostByFeature => include_str!("analytics_read/cost_by_feature.sql"),
        }
    }
}

/// Spend and requests per bucket and model (`$4` the bucket width).
const MODEL_SPEND: &str = include_str!("analytics_read/model_spend.sql");

/// The width of a bucket as an `interval` of whole microseconds (an hour, or a UTC day of
/// 24 hours), the `$4` of the bucketed statements.
pub fn bucket_width(bucket: TimeBucket) -> PgInterval {
    const HOUR_US: i64 = 3_600_000_000;
    PgInterval::from_microseconds(match bucket {
        TimeBucket::Hour => HOUR_US,
        TimeBucket::Day => 24 * HOUR_US,
    })
}

/// Read-only analytics over cost records, runs and traces: only buckets that hold rows,
/// oldest first. Needs no transaction; inside one it sees the caller's uncommitted rows.
pub struct AnalyticsReadDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> AnalyticsReadDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        AnalyticsReadDriver { conn }
    }

    /// Runs `query`. The bucketed ones are prepared statements (parsed and planned once
    /// per connection); the breakdowns are planned for each call's window, because their
    /// generic plan sorts where a plan that sees the window hashes, and costs more than
    /// planning does.
    fn load<T>(
        &mut self,
        query: AnalyticsQuery,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<T>>
    where
        T: QueryableByName<Pg> + 'static,
    {
        self.run(
            query.sql(),
            query.bucketed().then_some(bucket),
            tenant_id,
            window,
        )
    }

    /// Runs `sql` over the tenant's window: prepared with the bucket width as `$4` when
    /// `bucket` is given, else planned for this call.
    fn run<T>(
        &mut self,
        sql: &'static str,
        bucket: Option<TimeBucket>,
        tenant_id: &str,
        window: TimeWindow,
    ) -> Result<Vec<T>>
    where
        T: QueryableByName<Pg> + 'static,
    {
        validate::required("tenant_id", tenant_id, limits::TENANT_ID)?;
        TimeWindow::new(window.from, window.to)?;
        let Some(bucket) = bucket else {
            let params = [
                Param::Text(tenant_id),
                Param::Instant(&window.from),
                Param::Instant(&window.to),
            ];
            return Ok(PlannedPerCall(Prepared {
                sql,
                params: &params,
            })
            .load(self.conn)?);
        };
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

    /// Requests and tokens per bucket from `cost_records`.
    pub fn fetch_cost_metrics(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<UsageBucket>> {
        self.load(AnalyticsQuery::CostMetrics, tenant_id, window, bucket)
    }

    /// Runs and their LLM tokens (input + output) per bucket from `runs`.
    pub fn fetch_llm_usage(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<UsageBucket>> {
        self.load(AnalyticsQuery::LlmUsage, tenant_id, window, bucket)
    }

    /// Worker executions per bucket from `aos_traces`.
    pub fn fetch_worker_execution(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<CountBucket>> {
        self.load(AnalyticsQuery::WorkerExecution, tenant_id, window, bucket)
    }

    /// Spend, requests and tokens per bucket from `cost_records`.
    pub fn fetch_cost_spend(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<SpendBucket>> {
        self.load(AnalyticsQuery::CostSpend, tenant_id, window, bucket)
    }

    /// Spend per bucket per model, oldest bucket first, then by model: the series of a
    /// chart of spend over time per model. Prepared like the other bucketed queries.
    pub fn fetch_model_spend(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<ModelBucket>> {
        self.run(MODEL_SPEND, Some(bucket), tenant_id, window)
    }

    /// Spend per model over the window, largest first (ties by model name).
    pub fn fetch_cost_by_model(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
    ) -> Result<Vec<ModelSpend>> {
        self.load(
            AnalyticsQuery::CostByModel,
            tenant_id,
            window,
            TimeBucket::Day,
        )
    }

    /// Spend per feature tag over the window, largest first (ties by tag, untagged last).
    pub fn fetch_cost_by_feature(
        &mut self,
        tenant_id: &str,
        window: TimeWindow,
    ) -> Result<Vec<FeatureSpend>> {
        self.load(
            AnalyticsQuery::CostByFeature,
            tenant_id,
            window,
            TimeBucket::Day,
        )
    }

    /// The plan PostgreSQL chooses for `query` with these arguments, one line per node:
    /// for operators checking that an index serves it.
    pub fn explain(
        &mut self,
        query: AnalyticsQuery,
        tenant_id: &str,
        window: TimeWindow,
        bucket: TimeBucket,
    ) -> Result<Vec<String>> {
        validate::required("tenant_id", tenant_id, limits::TENANT_ID)?;
        TimeWindow::new(window.from, window.to)?;
        let mut params = vec![
            Param::Text(tenant_id),
            Param::Instant(&window.from),
            Param::Instant(&window.to),
        ];
        if query.bucketed() {
            params.push(Param::Interval(bucket_width(bucket)));
        }
        crate::db::explain(
            self.conn,
            &Prepared {
                sql: query.sql(),
                params: &params,
            },
        )
    }
}
