//! `ProvenanceDriver`: the CostSim V1/V2 provenance log, its drift statistics and the V1
//! baseline backfill.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde::{Deserialize, Serialize};

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::{NewProvenance, Provenance, ProvenanceSource, VariantSlug};
use crate::prepared::{Param, Prepared};
use crate::schema::costsim_provenance;
use crate::sql_fns::{pg_advisory_xact_lock, stddev_samp};
use crate::types::locks::LOCK_BASELINE_BACKFILL;
use crate::types::TimeWindow;
use crate::validate;

/// The largest page [`ProvenanceDriver::fetch_provenance`] returns.
pub const MAX_PAGE: i64 = 10_000;

/// One simulation to record, for [`ProvenanceDriver::insert_provenance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenanceInput {
    /// Run simulated.
    pub run_id: Option<String>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Variant (default `v2`).
    pub variant_slug: VariantSlug,
    /// Origin (default `sandbox`).
    pub source: ProvenanceSource,
    /// Model version.
    pub model_version: Option<String>,
    /// Adapter version.
    pub adapter_version: Option<String>,
    /// Commit of the simulator.
    pub commit_sha: Option<String>,
    /// [`compute_input_hash`](crate::input_hash::compute_input_hash) of the input.
    pub input_hash: Option<String>,
    /// Hash of the output.
    pub output_hash: Option<String>,
    /// V1 cost: an amount (finite, `0..=MAX_AMOUNT_CENTS`).
    pub v1_cost: Option<f64>,
    /// V2 cost: an amount. With both costs, `cost_delta = v2_cost − v1_cost` is stored.
    pub v2_cost: Option<f64>,
    /// The full payload; `None` is SQL `NULL` (the original stored JSON `null`).
    pub payload: Option<serde_json::Value>,
    /// Runtime in milliseconds, not negative.
    pub runtime_ms: Option<i32>,
}

impl Default for ProvenanceInput {
    fn default() -> Self {
        ProvenanceInput {
            run_id: None,
            tenant_id: None,
            variant_slug: VariantSlug::V2,
            source: ProvenanceSource::Sandbox,
            model_version: None,
            adapter_version: None,
            commit_sha: None,
            input_hash: None,
            output_hash: None,
            v1_cost: None,
            v2_cost: None,
            payload: None,
            runtime_ms: None,
        }
    }
}

impl ProvenanceInput {
    fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("run_id", &self.run_id),
            ("tenant_id", &self.tenant_id),
            ("model_version", &self.model_version),
            ("adapter_version", &self.adapter_version),
            ("commit_sha", &self.commit_sha),
            ("input_hash", &self.input_hash),
            ("output_hash", &self.output_hash),
        ] {
            validate::optional(field, value.as_deref(), usize::MAX)?;
        }
        for (field, cost) in [("v1_cost", self.v1_cost), ("v2_cost", self.v2_cost)] {
            if let Some(cost) = cost {
                validate::amount(field, cost)?;
            }
        }
        if let Some(ms) = self.runtime_ms {
            validate::non_negative("runtime_ms", ms.into())?;
        }
        self.payload
            .as_ref()
            .map_or(Ok(()), |p| validate::json("payload", p))
    }

    fn new_row(&self) -> NewProvenance {
        NewProvenance {
            run_id: self.run_id.clone(),
            tenant_id: self.tenant_id.clone(),
            variant_slug: Some(self.variant_slug),
            source: Some(self.source),
            model_version: self.model_version.clone(),
            adapter_version: self.adapter_version.clone(),
            commit_sha: self.commit_sha.clone(),
            input_hash: self.input_hash.clone(),
            output_hash: self.output_hash.clone(),
            v1_cost: self.v1_cost.map(|c| c + 0.0),
            v2_cost: self.v2_cost.map(|c| c + 0.0),
            cost_delta: self.v1_cost.zip(self.v2_cost).map(|(v1, v2)| v2 - v1 + 0.0),
            payload: self.payload.clone(),
            runtime_ms: self.runtime_ms,
            created_at: None,
        }
    }
}

/// Which provenance rows a query or count covers; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProvenanceFilter {
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Variant.
    pub variant_slug: Option<VariantSlug>,
    /// Origin.
    pub source: Option<ProvenanceSource>,
    /// Input hash.
    pub input_hash: Option<String>,
    /// `created_at` in `[from, to)` (the original included both ends, so adjacent windows
    /// counted boundary rows twice).
    pub created: Option<TimeWindow>,
}

/// V2 − V1 cost deltas over the rows that have both costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriftStats {
    /// Rows with both costs.
    pub total: i64,
    /// Mean delta; `0.0` when there is none.
    pub avg_delta: f64,
    /// Smallest delta; `0.0` when there is none.
    pub min_delta: f64,
    /// Largest delta; `0.0` when there is none.
    pub max_delta: f64,
    /// Sample standard deviation (n − 1); `0.0` for fewer than two rows.
    pub stddev_delta: f64,
}

/// One V1 baseline to backfill, for [`ProvenanceDriver::backfill_v1_baseline`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineRecord {
    /// Run.
    pub run_id: Option<String>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// The V1 cost (stored as `v1_cost`).
    pub cost: Option<f64>,
    /// Input hash: a hash already stored anywhere in the table is skipped; records
    /// without one are always inserted.
    pub input_hash: Option<String>,
    /// Payload.
    pub payload: Option<serde_json::Value>,
}

impl BaselineRecord {
    fn as_input(&self) -> ProvenanceInput {
        ProvenanceInput {
            run_id: self.run_id.clone(),
            tenant_id: self.tenant_id.clone(),
            variant_slug: VariantSlug::V1,
            source: ProvenanceSource::Backfill,
            input_hash: self.input_hash.clone(),
            v1_cost: self.cost,
            payload: self.payload.clone(),
            ..ProvenanceInput::default()
        }
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BackfillStats {
    /// Records inserted.
    pub inserted: usize,
    /// Records whose input hash was already stored (or came earlier in the input).
    pub skipped: usize,
    /// Records refused (invalid) or whose insert failed; the others went on.
    pub errors: usize,
}

/// Inserts the rows of the arrays in array order; `cost_delta` is `v2 − v1` when both are
/// known. Ids come from the sequence in that order.
const BATCH_INSERT: &str = include_str!("provenance/insert_batch.sql");

/// Backfills V1 baselines: the first record of each input hash, unless the table already
/// has that hash; records without a hash always. Returns one row per inserted record.
const BACKFILL: &str = include_str!("provenance/backfill.sql");

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The CostSim provenance log: writes (single, batch, backfill), queries, counts and
/// drift statistics. Writes refuse to run outside the caller's transaction and never
/// commit (the original committed even a caller's session).
pub struct ProvenanceDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> ProvenanceDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        ProvenanceDriver { conn }
    }

    /// Records one simulation and returns its id.
    #[doc(alias = "write_provenance")]
    pub fn insert_provenance(&mut self, input: &ProvenanceInput) -> Result<i64> {
        input.validate()?;
        require_transaction(self.conn)?;
        Ok(diesel::insert_into(costsim_provenance::table)
            .values(input.new_row())
            .returning(costsim_provenance::id)
            .get_result(self.conn)?)
    }

    /// Records many simulations in one statement and returns their ids in input order
    /// (the original returned `0..n`). An empty batch runs no SQL.
    #[doc(alias = "write_provenance_batch")]
    pub fn insert_provenance_batch(&mut self, inputs: &[ProvenanceInput]) -> Result<Vec<i64>> {
        for input in inputs {
            input.validate()?;
        }
        require_transaction(self.conn)?;
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let texts = |f: fn(&ProvenanceInput) -> Option<&str>| {
            inputs.iter().map(f).collect::<Vec<Option<&str>>>()
        };
        let (run_ids, tenants) = (
            texts(|i| i.run_id.as_deref()),
            texts(|i| i.tenant_id.as_deref()),
        );
        let variants = texts(|i| Some(i.variant_slug.as_str()));
        let sources = texts(|i| Some(i.source.as_str()));
        let models = texts(|i| i.model_version.as_deref());
        let adapters = texts(|i| i.adapter_version.as_deref());
        let commits = texts(|i| i.commit_sha.as_deref());
        let inputs_hashes = texts(|i| i.input_hash.as_deref());
        let outputs_hashes = texts(|i| i.output_hash.as_deref());
        let v1: Vec<Option<f64>> = inputs.iter().map(|i| i.v1_cost).collect();
        let v2: Vec<Option<f64>> = inputs.iter().map(|i| i.v2_cost).collect();
        let payloads: Vec<Option<&serde_json::Value>> =
            inputs.iter().map(|i| i.payload.as_ref()).collect();
        let runtimes: Vec<Option<i32>> = inputs.iter().map(|i| i.runtime_ms).collect();
        let mut ids: Vec<i64> = Prepared {
            sql: BATCH_INSERT,
            params: &[
                Param::OptTexts(&run_ids),
                Param::OptTexts(&tenants),
                Param::OptTexts(&variants),
                Param::OptTexts(&sources),
                Param::OptTexts(&models),
                Param::OptTexts(&adapters),
                Param::OptTexts(&commits),
                Param::OptTexts(&inputs_hashes),
                Param::OptTexts(&outputs_hashes),
                Param::OptFloats(&v1),
                Param::OptFloats(&v2),
                Param::OptJsons(&payloads),
                Param::OptInt4s(&runtimes),
            ],
        }
        .load::<IdRow>(self.conn)?
        .into_iter()
        .map(|r| r.id)
        .collect();
        // The sequence hands out ids in insertion order, which is input order.
        ids.sort_unstable();
        Ok(ids)
    }

    /// Rows matching `filter`, newest first (ties by id, newest first), `limit` (1 to
    /// [`MAX_PAGE`]) after skipping `offset`.
    #[doc(alias = "query_provenance")]
    pub fn fetch_provenance(
        &mut self,
        filter: &ProvenanceFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Provenance>> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("{limit} is outside 1..={MAX_PAGE}"),
            ));
        }
        validate::non_negative("offset", offset)?;
        Ok(filtered(filter)?
            .select(Provenance::as_select())
            .order((
                costsim_provenance::created_at.desc(),
                costsim_provenance::id.desc(),
            ))
            .limit(limit)
            .offset(offset)
            .load(self.conn)?)
    }

    /// How many rows match `filter`.
    #[doc(alias = "count_provenance")]
    pub fn fetch_provenance_count(&mut self, filter: &ProvenanceFilter) -> Result<i64> {
        Ok(filtered(filter)?.count().get_result(self.conn)?)
    }

    /// Count, mean, min, max and sample standard deviation of `cost_delta` over the rows
    /// with both costs, created in `window` (all rows when `None`); zeros when there are
    /// none.
    #[doc(alias = "get_drift_stats")]
    pub fn fetch_drift_stats(&mut self, window: Option<TimeWindow>) -> Result<DriftStats> {
        if let Some(w) = window {
            TimeWindow::new(w.from, w.to)?;
        }
        use costsim_provenance::dsl as p;
        use diesel::dsl::{avg, count_star, max, min};
        let mut q = p::costsim_provenance
            .filter(p::v1_cost.is_not_null())
            .filter(p::v2_cost.is_not_null())
            .select((
                count_star(),
                avg(p::cost_delta),
                min(p::cost_delta),
                max(p::cost_delta),
                stddev_samp(p::cost_delta),
            ))
            .into_boxed();
        if let Some(w) = window {
            q = q
                .filter(p::created_at.ge(w.from))
                .filter(p::created_at.lt(w.to));
        }
        type Row = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);
        let (total, avg, min, max, stddev): Row = q.get_result(self.conn)?;
        Ok(DriftStats {
            total,
            avg_delta: avg.unwrap_or(0.0),
            min_delta: min.unwrap_or(0.0),
            max_delta: max.unwrap_or(0.0),
            stddev_delta: stddev.unwrap_or(0.0),
        })
    }

    /// Whether any row (any tenant, variant or source) has this input hash.
    pub fn check_duplicate(&mut self, input_hash: &str) -> Result<bool> {
        validate::required("input_hash", input_hash, usize::MAX)?;
        let same = costsim_provenance::table.filter(costsim_provenance::input_hash.eq(input_hash));
        Ok(diesel::select(diesel::dsl::exists(same)).get_result(self.conn)?)
    }

    /// Backfills V1 baselines (`variant_slug = v1`, `source = backfill`), `batch_size`
    /// records per statement. A record whose input hash is already stored, or came earlier
    /// in the input, is skipped.
    ///
    /// Concurrent backfills are serialised by the transaction-scoped advisory lock
    /// [`LOCK_BASELINE_BACKFILL`] (held until the caller's transaction ends), so each
    /// input hash is inserted once. Each batch runs in a savepoint; when one fails, its
    /// records are retried one by one, each in its own savepoint, and those that fail
    /// again count as `errors` while the rest and the caller's transaction go on. Invalid
    /// records count as `errors` without reaching SQL.
    pub fn backfill_v1_baseline(
        &mut self,
        records: &[BaselineRecord],
        batch_size: usize,
    ) -> Result<BackfillStats> {
        if batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        require_transaction(self.conn)?;
        let mut stats = BackfillStats::default();
        let valid: Vec<&BaselineRecord> = records
            .iter()
            .filter(|r| {
                let ok = r.as_input().validate().is_ok();
                stats.errors += usize::from(!ok);
                ok
            })
            .collect();
        if valid.is_empty() {
            return Ok(stats);
        }
        diesel::select(pg_advisory_xact_lock(LOCK_BASELINE_BACKFILL)).execute(self.conn)?;
        for batch in valid.chunks(batch_size) {
            match self.conn.transaction(|c| backfill(c, batch)) {
                Ok(inserted) => {
                    stats.inserted += inserted;
                    stats.skipped += batch.len() - inserted;
                }
                Err(_) => {
                    for record in batch {
                        match self.conn.transaction(|c| backfill(c, &[*record])) {
                            Ok(inserted) => {
                                stats.inserted += inserted;
                                stats.skipped += 1 - inserted;
                            }
                            Err(_) => stats.errors += 1,
                        }
                    }
                }
            }
        }
        Ok(stats)
    }
}

/// Runs [`BACKFILL`] for `records`; returns how many were inserted.
fn backfill(conn: &mut PgConnection, records: &[&BaselineRecord]) -> Result<usize> {
    let text = |f: fn(&BaselineRecord) -> Option<&str>| {
        records.iter().map(|r| f(r)).collect::<Vec<Option<&str>>>()
    };
    let run_ids = text(|r| r.run_id.as_deref());
    let tenants = text(|r| r.tenant_id.as_deref());
    let costs: Vec<Option<f64>> = records.iter().map(|r| r.cost).collect();
    let hashes = text(|r| r.input_hash.as_deref());
    let payloads: Vec<Option<&serde_json::Value>> =
        records.iter().map(|r| r.payload.as_ref()).collect();
    Ok(Prepared {
        sql: BACKFILL,
        params: &[
            Param::OptTexts(&run_ids),
            Param::OptTexts(&tenants),
            Param::OptFloats(&costs),
            Param::OptTexts(&hashes),
            Param::OptJsons(&payloads),
        ],
    }
    .load::<IdRow>(conn)?
    .len())
}

/// The provenance rows `filter` selects, as a boxed query.
fn filtered(
    filter: &ProvenanceFilter,
) -> Result<costsim_provenance::BoxedQuery<'static, diesel::pg::Pg>> {
    use costsim_provenance::dsl as p;
    validate::optional("tenant_id", filter.tenant_id.as_deref(), usize::MAX)?;
    validate::optional("input_hash", filter.input_hash.as_deref(), usize::MAX)?;
    let mut query = p::costsim_provenance.into_boxed();
    if let Some(tenant) = &filter.tenant_id {
        query = query.filter(p::tenant_id.eq(tenant.clone()));
    }
    if let Some(variant) = filter.variant_slug {
        query = query.filter(p::variant_slug.eq(variant));
    }
    if let Some(source) = filter.source {
        query = query.filter(p::source.eq(source));
    }
    if let Some(hash) = &filter.input_hash {
        query = query.filter(p::input_hash.eq(hash.clone()));
    }
    if let Some(w) = filter.created {
        let w: TimeWindow = TimeWindow::new(w.from, w.to)?;
        let (from, to): (DateTime<Utc>, DateTime<Utc>) = (w.from, w.to);
        query = query
            .filter(p::created_at.ge(from))
            .filter(p::created_at.lt(to));
    }
    Ok(query)
}
