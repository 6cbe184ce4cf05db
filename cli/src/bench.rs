//! `costdb bench`: every workload of `costdb_cli::workloads`, each next to PostgreSQL's own path.

use std::io::Write;

use costdb::db;
use costdb_cli::workloads::{self as bench, Ctx, Figure, Scale};
use costdb_testkit::embedded::{self, Durability, EmbeddedPostgres};
use costdb_testkit::ScratchDatabase;

use crate::{say, Failure, Outcome};

/// Where and what to measure.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  costdb bench --quick --only read --json figures.json")]
pub struct Options {
    /// A PostgreSQL server to measure, e.g. postgres://user@host:5432/postgres: the
    /// benchmark creates a database of its own there and drops it afterwards. Without it,
    /// it starts a throwaway local PostgreSQL with the default durability (fsync on).
    #[arg(long)]
    database_url: Option<String>,
    /// Every size ÷ 10.
    #[arg(long)]
    quick: bool,
    /// Only the workloads whose names contain one of these words.
    #[arg(long, num_args = 1..)]
    only: Vec<String>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Only the dashboard reads, with this many records of the large tenant in the window
    /// (10⁶ in a full run; the other tenant has a tenth): a one-off at a larger size.
    #[arg(long, conflicts_with_all = ["quick", "only"])]
    dashboard_records: Option<usize>,
}

/// Runs the benchmark; see [`Options`].
pub fn run(options: Options) -> Outcome {
    let scale = if options.quick {
        Scale::QUICK
    } else {
        Scale::FULL
    };
    let mut workloads: Vec<_> = match options.dashboard_records {
        Some(records) => bench::dashboard_workloads(records),
        None => bench::all_workloads(scale)
            .into_iter()
            .filter(|w| {
                options.only.is_empty() || options.only.iter().any(|o| w.name().contains(o))
            })
            .collect(),
    };
    if workloads.is_empty() {
        return Err(Failure::Usage(format!(
            "no workload matches {:?}",
            options.only
        )));
    }
    let mut cluster = None;
    let admin_url = match options.database_url.filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            say!("starting a throwaway PostgreSQL with default durability (fsync on)…")?;
            let pg = cluster.insert(EmbeddedPostgres::start_with(Durability::Default)?);
            pg.url("postgres")
        }
    };
    let database = ScratchDatabase::create(&admin_url, "costdb_bench")?;
    say!("database: {}", database.name())?;
    let mut conn = db::connect(database.url())?;
    db::run_migrations(&mut conn)?;
    // The pgbench beside the server binaries first: it matches the server's version.
    let pgbench = cluster
        .as_ref()
        .map(|pg| pg.bin_dir().join("pgbench"))
        .filter(|p| p.is_file())
        .or_else(|| embedded::find_program("pgbench"));
    let mut ctx = Ctx {
        conn,
        url: database.url().to_owned(),
        pgbench,
        scale,
    };
    let progress = indicatif::ProgressBar::new(workloads.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let mut figures = Vec::new();
    for w in &mut workloads {
        progress.set_message(w.name());
        figures.push(bench::measure(&mut ctx, w.as_mut())?);
        progress.inc(1);
    }
    progress.finish_and_clear();
    print_table(&figures)?;
    if let Some(path) = options.json {
        let text = serde_json::to_string_pretty(&figures).expect("figures serialise");
        std::fs::write(&path, text)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn print_table(figures: &[Figure]) -> Outcome {
    say!("\n| workload | costdb | baseline | ratio | target | met? |\n|---|---|---|---|---|---|")?;
    for f in figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        say!(
            "| {} | {:.2} ms | {:.2} ms ({}) | {:.2}× | {} | {met} |",
            f.workload,
            f.costdb_ms,
            f.baseline_ms,
            f.baseline_name,
            f.ratio,
            f.target.label()
        )?;
    }
    Ok(())
}
