//! Provenance workloads: batch writes against COPY, the input hash against plain
//! serialisation and SHA-256.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use sha2::{Digest, Sha256};

use super::writes::rolled_back;
use super::{Ctx, Scale, Target, Workload};
use costdb::drivers::{ProvenanceDriver, ProvenanceInput};
use costdb::input_hash::compute_input_hash;
use costdb::models::{ProvenanceSource, VariantSlug};
use costdb::schema::costsim_provenance;
use costdb_testkit::Result;

/// `n` simulation payloads of about 300 bytes of JSON each.
pub fn payloads(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let model = ["gpt-4o", "claude-sonnet-4", "gpt-4o-mini"][i % 3];
            serde_json::json!({
                "model": model,
                "prompt_tokens": 800 + i % 1000,
                "completion_tokens": 120 + i % 300,
                "temperature": 0.7,
                "features": ["support.chat", "search.rank"],
                "messages": [
                    {"role": "system", "content": "You are a careful cost simulator."},
                    {"role": "user", "content": format!("Estimate request {i} for tenant {}", i % 100)}
                ],
                "retry": i % 17 == 0,
                "budget_cents": 1500.25
            })
        })
        .collect()
}

fn inputs(payloads: &[serde_json::Value]) -> Vec<ProvenanceInput> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| ProvenanceInput {
            run_id: Some(format!("run-{i}")),
            tenant_id: Some(format!("bench-tenant-{:03}", i % 100)),
            variant_slug: VariantSlug::V2,
            source: ProvenanceSource::Sandbox,
            model_version: Some("2026.11".into()),
            adapter_version: Some("v2.3".into()),
            commit_sha: Some("4f1c2d3e".into()),
            input_hash: Some(format!("{i:016x}")),
            output_hash: Some(format!("{:016x}", i * 7)),
            v1_cost: Some(10.0 + (i % 50) as f64),
            v2_cost: Some(11.0 + (i % 40) as f64),
            payload: Some(payload.clone()),
            runtime_ms: Some(40 + (i % 20) as i32),
        })
        .collect()
}

/// A provenance row as binary COPY sends it.
#[derive(Insertable)]
#[diesel(table_name = costsim_provenance, treat_none_as_default_value = false)]
struct CopyRow<'a> {
    run_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    variant_slug: Option<VariantSlug>,
    source: Option<ProvenanceSource>,
    model_version: Option<&'a str>,
    adapter_version: Option<&'a str>,
    commit_sha: Option<&'a str>,
    input_hash: Option<&'a str>,
    output_hash: Option<&'a str>,
    v1_cost: Option<f64>,
    v2_cost: Option<f64>,
    cost_delta: Option<f64>,
    payload: Option<&'a serde_json::Value>,
    runtime_ms: Option<i32>,
    created_at: DateTime<Utc>,
}

/// `provenance batch`: `insert_provenance_batch` against binary COPY of the same rows.
struct Batch {
    rows: usize,
    inputs: Vec<ProvenanceInput>,
}

impl Workload for Batch {
    fn name(&self) -> String {
        format!("provenance batch {}: write_provenance_batch", self.rows)
    }
    fn baseline_name(&self) -> &'static str {
        "binary COPY"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.7)
    }
    fn prepare(&mut self, _ctx: &mut Ctx) -> Result<()> {
        self.inputs = inputs(&payloads(self.rows));
        Ok(())
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let inputs = &self.inputs;
        rolled_back(&mut ctx.conn, |c| {
            ProvenanceDriver::new(c).insert_provenance_batch(inputs)?;
            Ok(())
        })
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let inputs = &self.inputs;
        rolled_back(&mut ctx.conn, |c| {
            let now = Utc::now();
            let rows: Vec<CopyRow<'_>> = inputs
                .iter()
                .map(|i| CopyRow {
                    run_id: i.run_id.as_deref(),
                    tenant_id: i.tenant_id.as_deref(),
                    variant_slug: Some(i.variant_slug),
                    source: Some(i.source),
                    model_version: i.model_version.as_deref(),
                    adapter_version: i.adapter_version.as_deref(),
                    commit_sha: i.commit_sha.as_deref(),
                    input_hash: i.input_hash.as_deref(),
                    output_hash: i.output_hash.as_deref(),
                    v1_cost: i.v1_cost,
                    v2_cost: i.v2_cost,
                    cost_delta: i.v1_cost.zip(i.v2_cost).map(|(a, b)| b - a),
                    payload: i.payload.as_ref(),
                    runtime_ms: i.runtime_ms,
                    created_at: now,
                })
                .collect();
            diesel::copy_from(costsim_provenance::table)
                .from_insertable(rows)
                .execute(c)?;
            Ok(())
        })
    }
}

/// `input hash`: `compute_input_hash` against `serde_json::to_vec` + SHA-256.
struct Hash {
    docs: Vec<serde_json::Value>,
}

impl Workload for Hash {
    fn name(&self) -> String {
        format!("input hash {}: compute_input_hash", self.docs.len())
    }
    fn baseline_name(&self) -> &'static str {
        "serde_json::to_vec + SHA-256"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.5)
    }
    fn rounds(&self) -> usize {
        10
    }
    fn contender(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        let started = Instant::now();
        let mut sink = 0u8;
        for doc in &self.docs {
            sink ^= compute_input_hash(doc).as_bytes()[0];
        }
        std::hint::black_box(sink);
        Ok(started.elapsed())
    }
    fn baseline(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        let started = Instant::now();
        let mut sink = 0u8;
        for doc in &self.docs {
            let bytes = serde_json::to_vec(doc).expect("a Value serialises");
            sink ^= Sha256::digest(&bytes)[0];
        }
        std::hint::black_box(sink);
        Ok(started.elapsed())
    }
}

/// The provenance workloads at `scale`.
pub fn provenance_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(Batch {
            rows: scale.of(10_000),
            inputs: Vec::new(),
        }),
        Box::new(Hash {
            docs: payloads(scale.of(10_000)),
        }),
    ]
}
