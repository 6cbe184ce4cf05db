//! `costdb report`: one tenant's analytics over UTC days, as a table, as JSON, and as an
//! SVG chart of spend per day per model.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use chrono::{NaiveDate, TimeZone, Utc};
use costdb::db;
use costdb::drivers::AnalyticsReadDriver;
use costdb::drivers::{FeatureSpend, ModelSpend, SpendBucket};
use costdb::models::TimeBucket;
use costdb::replica::{ReadReplica, ReplicaConfig, Server};
use costdb::types::{TenantId, TimeWindow};
use serde::Serialize;

use crate::{require_url, say, Failure, Outcome, Target};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a person.
    Table,
    /// One JSON document for a program.
    Json,
}

/// Which tenant, which days, which form.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  costdb report --database-url postgres://postgres@localhost/costdb \\\n    \
    --tenant acme --from 2026-11-01 --to 2026-11-30 --plot acme.svg"
)]
pub struct Options {
    #[command(flatten)]
    target: Target,
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// First UTC day (default: 29 days before --to).
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last UTC day, included (default: today).
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Table or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also draw spend per day per model into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Read from this streaming replica instead of the primary (--database-url, or
    /// DATABASE_URL), which is read only when the replica is further behind than
    /// --max-lag-secs.
    #[arg(long)]
    replica_url: Option<String>,
    /// How far behind its primary the replica may be, in seconds (with --replica-url;
    /// default: any). Beyond it the report reads the primary, or fails without one.
    #[arg(long, requires = "replica_url")]
    max_lag_secs: Option<f64>,
}

/// The report as JSON prints it.
#[derive(Debug, Serialize)]
struct Report {
    tenant: String,
    from: NaiveDate,
    to: NaiveDate,
    spend_cents: f64,
    days: Vec<SpendBucket>,
    models: Vec<ModelSpend>,
    features: Vec<FeatureSpend>,
    /// Spend per model per day, for the chart.
    model_days: BTreeMap<String, Vec<(NaiveDate, f64)>>,
}

fn window(from: NaiveDate, to: NaiveDate) -> Result<TimeWindow, Failure> {
    let start = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
    let end = to
        .succ_opt()
        .ok_or_else(|| Failure::Usage("--to is the last day the calendar has".into()))?;
    Ok(TimeWindow::new(start(from), start(end))?)
}

/// The report's reads, in one snapshot when the caller gives one.
fn read(
    analytics: &mut AnalyticsReadDriver<'_>,
    tenant: &TenantId,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Report, Failure> {
    if !analytics.has_costs(tenant)? {
        return Err(Failure::Usage(format!(
            "tenant {:?} has no cost records in this database",
            tenant.as_str()
        )));
    }
    let whole = window(from, to)?;
    let days = analytics.fetch_cost_spend(tenant, whole, TimeBucket::Day)?;
    let models = analytics.fetch_cost_by_model(tenant, whole)?;
    let features = analytics.fetch_cost_by_feature(tenant, whole)?;
    let mut model_days: BTreeMap<String, Vec<(NaiveDate, f64)>> = BTreeMap::new();
    for m in analytics.fetch_model_spend(tenant, whole, TimeBucket::Day)? {
        model_days
            .entry(m.model)
            .or_default()
            .push((m.bucket.date_naive(), m.spend_cents));
    }
    Ok(Report {
        spend_cents: days.iter().map(|d| d.spend_cents).sum(),
        tenant: tenant.as_str().to_owned(),
        from,
        to,
        days,
        models,
        features,
        model_days,
    })
}

/// Runs `costdb report`.
pub fn run(options: Options) -> Outcome {
    let to = options.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = options.from.unwrap_or(to - chrono::Duration::days(29));
    if from > to {
        return Err(Failure::Usage(format!("--from {from} is after --to {to}")));
    }
    window(from, to)?; // refused before connecting
    let tenant = TenantId::new(options.tenant)?;
    let report = match &options.replica_url {
        None => {
            let mut conn = db::connect(&require_url(options.target)?)?;
            read(&mut AnalyticsReadDriver::new(&mut conn), &tenant, from, to)?
        }
        Some(replica_url) => {
            let max_lag = options
                .max_lag_secs
                .map(|s| {
                    std::time::Duration::try_from_secs_f64(s)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            Failure::Usage(format!(
                                "--max-lag-secs {s} is not a positive number of seconds"
                            ))
                        })
                })
                .transpose()?;
            let mut replica = ReadReplica::connect(ReplicaConfig {
                replica_url: replica_url.clone(),
                primary_url: require_url(options.target).ok(),
                max_lag,
            })?;
            let mut reads = replica.reads()?;
            eprintln!(
                "reading from the {} (replica {:.1} s behind)",
                match reads.server() {
                    Server::Replica => "replica",
                    Server::Primary => "primary",
                },
                reads.replica_lag().as_secs_f64()
            );
            reads.snapshot(|r| read(&mut r.analytics(), &tenant, from, to))?
        }
    };
    if let Some(path) = &options.plot {
        plot(&report, path)?;
    }
    match options.format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| Failure::Usage(format!("cannot write JSON: {e}")))?;
            say!("{text}")?;
        }
        Format::Table => table(&report)?,
    }
    if let Some(path) = &options.plot {
        eprintln!("chart written to {}", path.display());
    }
    Ok(())
}

fn table(r: &Report) -> Outcome {
    say!(
        "{} from {} to {}: ${:.2}",
        r.tenant,
        r.from,
        r.to,
        r.spend_cents / 100.0
    )?;
    say!(
        "\n  {:<10} {:>8} {:>12} {:>10}",
        "day",
        "calls",
        "tokens",
        "spend"
    )?;
    for d in &r.days {
        say!(
            "  {:<10} {:>8} {:>12} {:>10}",
            d.bucket.date_naive(),
            d.requests,
            d.input_tokens + d.output_tokens,
            format!("${:.2}", d.spend_cents / 100.0)
        )?;
    }
    say!("\n  {:<20} {:>8} {:>10}", "model", "calls", "spend")?;
    for m in &r.models {
        say!(
            "  {:<20} {:>8} {:>10}",
            m.model,
            m.requests,
            format!("${:.2}", m.spend_cents / 100.0)
        )?;
    }
    say!("\n  {:<20} {:>8} {:>10}", "feature", "calls", "spend")?;
    for f in &r.features {
        let label = f.feature_tag.as_deref().unwrap_or("(no feature tag)");
        say!(
            "  {label:<20} {:>8} {:>10}",
            f.requests,
            format!("${:.2}", f.spend_cents / 100.0)
        )?;
    }
    Ok(())
}

/// Spend per day per model as lines, in dollars.
fn plot(r: &Report, path: &std::path::Path) -> Result<(), Failure> {
    use plotters::prelude::*;
    let failed =
        |e: &dyn std::fmt::Display| Failure::Usage(format!("cannot draw {}: {e}", path.display()));
    let top = r
        .model_days
        .values()
        .flatten()
        .map(|(_, c)| c / 100.0)
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.1;
    let day_index = |d: NaiveDate| (d - r.from).num_days() as i32;
    let span = day_index(r.to).max(1);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: spend per day per model (USD)", r.tenant),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0..span, 0.0..top)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&|i| {
            (r.from + chrono::Duration::days(i64::from(*i)))
                .format("%m-%d")
                .to_string()
        })
        .y_label_formatter(&|v| format!("${v:.2}"))
        .draw()
        .map_err(|e| failed(&e))?;
    for (i, (model, points)) in r.model_days.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(d, c)| (day_index(*d), c / 100.0)),
                color.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label(model.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}
