//! The `costdb` command as operators run it.

use costdb_testkit as common;

use std::process::{Command, Output};

/// The database name of a `postgres://…/name?…` URL.
fn database_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

fn costdb(args: &[&str], url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_costdb"));
    cmd.args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run costdb")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_error_line(o: &Output) -> String {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("costdb: error: "), "{err}");
    err
}

#[test]
fn migrate_applies_lists_reverts_and_reapplies() {
    let url = common::fresh_database();
    let up = costdb(&["migrate"], Some(&url));
    assert!(up.status.success(), "{up:?}");
    let applied = stdout(&up)
        .lines()
        .filter(|l| l.starts_with("applied"))
        .count();
    assert!(applied >= 7);

    let status = costdb(&["migrate", "--status"], Some(&url));
    assert!(stdout(&status).contains(&format!("{applied} applied, 0 pending, 0 unknown")));

    let revert = costdb(&["migrate", "--revert", "--database-url", &url], None);
    assert!(stdout(&revert).starts_with("reverted "), "{revert:?}");
    let status = costdb(&["migrate", "--status"], Some(&url));
    assert!(stdout(&status).contains(&format!("{} applied, 1 pending", applied - 1)));

    let again = costdb(&["migrate"], Some(&url));
    assert!(stdout(&again).contains("1 applied, schema is up to date"));
}

#[test]
fn bad_urls_unreachable_servers_and_failing_migrations_give_one_line_and_non_zero() {
    let err = one_error_line(&costdb(&["migrate"], None));
    assert!(
        err.contains("no database given: pass --database-url") && err.contains("DATABASE_URL"),
        "{err}"
    );
    one_error_line(&costdb(&["migrate"], Some("not a url")));
    let err = one_error_line(&costdb(
        &["migrate"],
        Some("postgres://nobody@127.0.0.1:1/x"),
    ));
    assert!(err.contains("cannot connect"), "{err}");

    // A table that a migration creates already exists: the step fails, nothing is applied.
    let url = common::fresh_database();
    let mut conn = costdb::db::connect(&url).unwrap();
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        "CREATE TABLE cost_records (x int)",
    )
    .unwrap();
    let err = one_error_line(&costdb(&["migrate"], Some(&url)));
    assert!(err.contains("migration failed"), "{err}");
    let status = costdb::db::migration_status(&mut conn).unwrap();
    assert!(status.applied.is_empty(), "{status:?}");
}

/// Databases on the server whose names start with `prefix`.
fn databases_like(prefix: &str) -> Vec<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let mut conn = costdb::db::connect(common::admin_url()).unwrap();
    diesel::sql_query("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
        .bind::<diesel::sql_types::Text, _>(prefix)
        .load::<Name>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|n| n.datname)
        .collect()
}

fn tables_in(url: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = costdb::db::connect(url).unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n
}

#[test]
fn the_demo_on_a_server_works_in_a_database_of_its_own_and_drops_it() {
    // The URL names an existing database: the demo must not write into it.
    let existing = common::fresh_database();
    let out = costdb(&["demo", "--database-url", &existing], None);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let own = text
        .lines()
        .find_map(|l| l.strip_prefix("database: "))
        .expect("its database's name")
        .to_owned();
    assert!(own.starts_with("costdb_demo_"), "{text}");
    assert!(text.contains("top models:"), "{text}");
    assert!(
        text.contains("server: postgres://"),
        "says which server: {text}"
    );
    assert_eq!(
        tables_in(&existing),
        0,
        "nothing written into the given database"
    );
    assert!(
        !databases_like("costdb_demo_").contains(&own),
        "its own database is gone"
    );

    // --keep keeps it and prints its URL.
    let (url, name) = kept_demo(&existing);
    assert!(tables_in(&url) >= 16, "{url}");
    assert!(name.starts_with("costdb_demo_"), "{name}");
    costdb_testkit::drop_database(common::admin_url(), &name).unwrap();
}

#[test]
fn the_demo_ignores_an_exported_database_url() {
    let existing = common::fresh_database();
    let dir = private_tmp();
    let out = Command::new(env!("CARGO_BIN_EXE_costdb"))
        .arg("demo")
        .env("DATABASE_URL", &existing)
        .env("TMPDIR", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("starting a throwaway PostgreSQL"));
    assert_eq!(tables_in(&existing), 0);
    assert_cleaned_up(&dir);
}

/// A temporary directory for `TMPDIR` that the server's OS user can write to.
fn private_tmp() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("costdb-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// Processes whose command line or environment mentions `needle` (the guardian carries
/// the test's `TMPDIR` in its environment before anything of it shows in a command line).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let read = |path: std::path::PathBuf| {
        std::fs::read(path)
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| std::process::id().to_string() != e.file_name().to_string_lossy())
        .map(|e| {
            (
                read(e.path().join("cmdline")),
                read(e.path().join("environ")),
            )
        })
        .filter(|(cmdline, environ)| cmdline.contains(needle) || environ.contains(needle))
        .map(|(cmdline, _)| cmdline)
        .collect()
}

/// Waits (bounded) for the guardian to finish, then asserts it left nothing: no
/// directory in `dir` and no server running from it.
#[track_caller]
fn assert_cleaned_up(dir: &std::path::Path) {
    let needle = dir.to_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = std::fs::read_dir(dir).unwrap().count();
        let servers = processes_mentioning(&needle);
        if left == 0 && servers.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left} entries in {needle}, processes {servers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir(dir).unwrap();
}

#[test]
fn a_demo_killed_while_its_cluster_starts_leaves_nothing_behind() {
    for (signal, after_ms) in [
        (libc::SIGKILL, 0),
        (libc::SIGKILL, 150),
        (libc::SIGTERM, 400),
        (libc::SIGKILL, 800),
        (libc::SIGINT, 300),
    ] {
        let dir = private_tmp();
        let mut child = Command::new(env!("CARGO_BIN_EXE_costdb"))
            .arg("demo")
            .env_remove("DATABASE_URL")
            .env("TMPDIR", &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        // SAFETY: signals a child process this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
        assert_cleaned_up(&dir);
    }
}

#[test]
fn a_closed_pipe_ends_the_demo_quietly_and_cleans_up() {
    use std::io::BufRead;
    let dir = private_tmp();
    let mut child = Command::new(env!("CARGO_BIN_EXE_costdb"))
        .arg("demo")
        .env_remove("DATABASE_URL")
        .env("TMPDIR", &dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("starting a throwaway"), "{first}");
    // Like `costdb demo | head -1`: the reader goes away after one line.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_cleaned_up(&dir);
}

#[test]
fn migrate_reports_unknown_versions_and_check_fails_while_steps_are_pending() {
    use diesel::connection::SimpleConnection;
    let url = common::fresh_database();
    let known = costdb::db::migration_status(&mut costdb::db::connect(&url).unwrap())
        .unwrap()
        .pending
        .len();
    let check = costdb(&["migrate", "--check"], Some(&url));
    assert!(!check.status.success());
    assert!(
        stdout(&check).contains(&format!("0 applied, {known} pending, 0 unknown")),
        "{check:?}"
    );
    assert!(String::from_utf8_lossy(&check.stderr).contains("pending"));

    assert!(costdb(&["migrate"], Some(&url)).status.success());
    let check = costdb(&["migrate", "--check"], Some(&url));
    assert!(check.status.success(), "{check:?}");

    // A newer build applied a step this one does not know.
    let mut conn = costdb::db::connect(&url).unwrap();
    conn.batch_execute(
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('20991231000000')",
    )
    .unwrap();
    let status = costdb(&["migrate", "--status"], Some(&url));
    assert!(
        stdout(&status).contains("unknown  20991231000000"),
        "{status:?}"
    );
    assert!(stdout(&status).contains(&format!("{known} applied, 0 pending, 1 unknown")));
    let err = one_error_line(&status);
    assert!(err.contains("20991231000000"), "{err}");
    // Neither applying nor reverting goes on.
    one_error_line(&costdb(&["migrate"], Some(&url)));
    one_error_line(&costdb(&["migrate", "--revert"], Some(&url)));
    let s = costdb::db::migration_status(&mut conn).unwrap();
    assert_eq!((s.applied.len(), s.unknown.len()), (known, 1));
}

#[test]
fn the_quick_benchmark_measures_every_workload_in_a_database_of_its_own() {
    let json = std::env::temp_dir().join(format!("costdb-bench-{}.json", uuid::Uuid::new_v4()));
    let before = databases_like("costdb_bench_");
    let out = costdb(
        &[
            "bench",
            "--quick",
            "--database-url",
            common::admin_url(),
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(
        table.contains("| workload | costdb | baseline | ratio | target | met? |"),
        "{table}"
    );
    let figures: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["workload"].as_str().unwrap())
        .collect();
    for expected in [
        "per-row",
        "bulk",
        "one per transaction",
        "fenced",
        "provenance batch",
        "input hash",
        "detector",
        "alerts 200 by 1 worker",
        "alerts 200 by 4 worker",
        "read CostMetrics",
        "read LlmUsage",
        "read WorkerExecution",
        "read CostSpend",
        "read CostByModel",
        "read CostByFeature",
        "read WorkerExecution, beside a C client",
        "recorder: 16 threads",
        "recorder: 64 threads",
        "admission",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(expected)),
            "{expected}: {names:?}"
        );
    }
    for f in &figures {
        let name = f["workload"].as_str().unwrap();
        if name.starts_with("alerts") {
            assert!(name.ends_with("(0 duplicates)"), "{name}");
        }
        if let Some(threads) = name.strip_prefix("recorder: ") {
            // The ceiling was measured beside the baseline: as many rows per INSERT as threads.
            let threads = threads.split_whitespace().next().unwrap();
            let ceiling = name
                .split_once(&format!("1 connection × {threads}-row INSERTs: "))
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|rate| rate.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no ceiling in {name}"));
            assert!(ceiling > 0.0, "{name}");
        }
        let ratio = f["ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{f}");
        assert!(table.contains(f["workload"].as_str().unwrap()));
    }
    assert_eq!(
        databases_like("costdb_bench_"),
        before,
        "its database is dropped"
    );

    let only = costdb(&["bench", "--quick", "--only", "nothing-matches"], None);
    let err = one_error_line(&only);
    assert!(err.contains("no workload matches"), "{err}");
}

#[test]
fn terms_grow_across_processes_and_a_second_process_stands_by() {
    let url = common::fresh_database();
    assert!(costdb(&["migrate"], Some(&url)).status.success());
    let lock = "7002";
    let run = |url: &str| {
        costdb(
            &[
                "leader",
                "run",
                "--lock",
                lock,
                "--",
                "sh",
                "-c",
                "echo \"work in term $COSTDB_LEADER_TERM of lock $COSTDB_LEADER_LOCK\"",
            ],
            Some(url),
        )
    };
    let term_of = |o: &Output| -> i64 {
        assert!(o.status.success(), "{o:?}");
        let text = stdout(o);
        let term: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("leading lock 7002 in term "))
            .expect("a term")
            .parse()
            .unwrap();
        assert!(
            text.contains(&format!("work in term {term} of lock 7002")),
            "{text}"
        );
        term
    };
    let first = term_of(&run(&url));
    let second = term_of(&run(&url));
    assert!(second > first);

    // While this process leads, the command stands by and runs nothing.
    let guard =
        costdb::leader::LeaderGuard::acquire(&url, 7002, "test", std::time::Duration::from_secs(5))
            .unwrap()
            .unwrap();
    assert!(guard.term() > second);
    let status = costdb(&["leader", "status"], Some(&url));
    let line = stdout(&status)
        .lines()
        .find(|l| l.starts_with("7002"))
        .expect("a line for 7002")
        .to_owned();
    assert!(line.contains(&guard.backend_pid().to_string()), "{line}");
    assert!(line.contains(&format!(" {} ", guard.term())), "{line}");
    let stood_by = run(&url);
    assert!(stood_by.status.success());
    assert!(stdout(&stood_by).starts_with("stood by"), "{stood_by:?}");
    assert!(!stdout(&stood_by).contains("work in term"));
    let held_term = guard.term();
    drop(guard);
    assert!(term_of(&run(&url)) > held_term);

    // A failing command fails the run, after the lock is released.
    let failed = costdb(
        &["leader", "run", "--lock", lock, "--", "false"],
        Some(&url),
    );
    one_error_line(&failed);
    let mut conn = costdb::db::connect(&url).unwrap();
    assert!(!costdb::leader::is_lock_held(&mut conn, 7002).unwrap());
}

#[test]
fn hash_prints_the_input_hash_of_a_file_or_stdin_and_refuses_bad_json() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("costdb-hash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("doc.json");
    std::fs::write(
        &file,
        r#"{ "tokens": 1200, "model": "gpt-4",  "temperature": 0.7 }"#,
    )
    .unwrap();
    let out = costdb(&["hash", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "9bc53fedb32cbea5\n");

    let mut child = Command::new(env!("CARGO_BIN_EXE_costdb"))
        .args(["hash", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "44136fa355b3678a\n");

    let err = one_error_line(&costdb(
        &["hash", dir.join("missing.json").to_str().unwrap()],
        None,
    ));
    assert!(err.contains("cannot read"), "{err}");
    std::fs::write(&file, "{not json").unwrap();
    let err = one_error_line(&costdb(&["hash", file.to_str().unwrap()], None));
    assert!(err.contains("not valid JSON"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn alerts_stats_retry_and_purge_for_operators() {
    use diesel::connection::SimpleConnection;
    let url = common::fresh_database();
    assert!(costdb(&["migrate"], Some(&url)).status.success());
    let mut conn = costdb::db::connect(&url).unwrap();
    conn.batch_execute(
        "INSERT INTO costsim_alert_queue (payload, status, attempts, created_at) VALUES \
         ('[{}]', 'pending', 0, now()), \
         ('[{}]', 'failed', 10, now()), \
         ('[{}]', 'sent', 0, now() - interval '40 days'), \
         ('[{}]', 'failed', 10, now() - interval '40 days')",
    )
    .unwrap();
    let s = costdb(&["alerts", "stats"], Some(&url));
    assert!(s.status.success(), "{s:?}");
    let text = stdout(&s);
    assert!(
        text.contains("pending  1 (0 leased)") && text.contains("sent     1"),
        "{text}"
    );
    assert!(text.contains("failed   2"), "{text}");

    let r = costdb(&["alerts", "retry", "--max-retries", "2"], Some(&url));
    assert!(
        stdout(&r).starts_with("2 dead letter(s) queued again"),
        "{r:?}"
    );
    let p = costdb(
        &["alerts", "purge", "--days", "30", "--status", "sent"],
        Some(&url),
    );
    assert!(stdout(&p).starts_with("purged 1 alert(s)"), "{p:?}");
    let text = stdout(&costdb(&["alerts", "stats"], Some(&url)));
    assert!(
        text.contains("pending  3") && text.contains("sent     0"),
        "{text}"
    );

    let bad = costdb(&["alerts", "purge", "--status", "lost"], Some(&url));
    let err = one_error_line(&bad);
    assert!(err.contains("--status"), "{err}");
}

#[test]
fn rollup_verify_finds_a_planted_difference_and_rebuild_repairs_it() {
    use diesel::connection::SimpleConnection;
    let url = common::fresh_database();
    assert!(costdb(&["migrate"], Some(&url)).status.success());
    let mut conn = costdb::db::connect(&url).unwrap();
    conn.batch_execute(
        "INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, model, cost_cents, \
             created_at) VALUES \
         ('cr_1', 'acme', 'ann', 'chat', 'o3', 4, '2026-11-05 10:15+00'), \
         ('cr_2', 'acme', NULL, NULL, 'o3', 6, '2026-11-06 23:59+00'), \
         ('cr_3', 'other', NULL, NULL, 'o3', 1, '2026-11-05 10:15+00')",
    )
    .unwrap();
    let ok = costdb(&["rollup", "verify"], Some(&url));
    assert!(ok.status.success(), "{ok:?}");
    assert!(stdout(&ok).contains("the rollups agree with the records"));

    // A record changed behind costdb's back.
    conn.batch_execute("UPDATE cost_records SET cost_cents = 5 WHERE id = 'cr_1'")
        .unwrap();
    let range = [
        "--tenant",
        "acme",
        "--from",
        "2026-11-05",
        "--to",
        "2026-11-05",
    ];
    let verify = [&["rollup", "verify"][..], &range[..]].concat();
    let found = costdb(&verify, Some(&url));
    let err = one_error_line(&found);
    assert!(err.contains("2 rollup key(s) differ"), "{err}");
    let text = stdout(&found);
    assert!(
        text.contains("hourly      acme 2026-11-05T10:00Z model o3 tag chat"),
        "{text}"
    );
    assert!(
        text.contains("daily       acme 2026-11-05 tag chat user ann"),
        "{text}"
    );
    assert!(
        text.contains("rollup:  1 calls, 0 retries, 0 in, 0 out, 4 cents"),
        "{text}"
    );
    assert!(
        text.contains("records: 1 calls, 0 retries, 0 in, 0 out, 5 cents"),
        "{text}"
    );
    // Another tenant's range, or another day, finds nothing.
    let elsewhere = costdb(
        &[
            "rollup",
            "verify",
            "--from",
            "2026-11-06",
            "--to",
            "2026-11-30",
        ],
        Some(&url),
    );
    assert!(elsewhere.status.success(), "{elsewhere:?}");

    let rebuild = costdb(
        &[&["rollup", "rebuild"][..], &range[..]].concat(),
        Some(&url),
    );
    assert!(rebuild.status.success(), "{rebuild:?}");
    assert!(
        stdout(&rebuild).contains("rebuilt: 1 hourly rows, 1 daily rows"),
        "{rebuild:?}"
    );
    assert!(costdb(&["rollup", "verify"], Some(&url)).status.success());

    let reversed = costdb(
        &[
            "rollup",
            "verify",
            "--from",
            "2026-11-05",
            "--to",
            "2026-11-04",
        ],
        Some(&url),
    );
    let err = one_error_line(&reversed);
    assert!(err.contains("to"), "{err}");
}

/// The demo's anomaly lines: (tenant, type, entity, cause).
fn demo_anomalies(text: &str) -> Vec<(String, String, String, String)> {
    let section = text
        .split("anomalies found")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("an anomalies section");
    section
        .lines()
        .skip(1)
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].into(), w[2].into(), w[5].into(), w[6].into())
        })
        .collect()
}

/// The demo's spend per day: (weekday, cents) of each bar line.
fn demo_days(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.contains('█'))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let dollars: f64 = w.last().unwrap().trim_start_matches('$').parse().unwrap();
            (w[1].to_owned(), dollars * 100.0)
        })
        .collect()
}

#[test]
fn the_demo_finds_the_three_planted_anomalies_and_reports_every_capability() {
    let planted = |text: &str| {
        let s = |a: &str, b: &str, c: &str, d: &str| {
            (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned())
        };
        assert_eq!(
            demo_anomalies(text),
            vec![
                s("tenant-01", "ABSOLUTE_SPIKE", "u-spike", "RETRY_LOOP"),
                s("tenant-02", "SUSTAINED_DRIFT", "tenant-02", "FEATURE_SURGE"),
                s("tenant-03", "BUDGET_EXCEEDED", "-", "UNKNOWN"),
            ],
            "{text}"
        );
        assert!(
            text.contains("alerts: 3 queued (one per anomaly)"),
            "{text}"
        );
        // Bulk, admission and the recorder all went through the rollups' fold.
        assert!(
            text.contains("rollups: 0 key(s) differ from the records"),
            "{text}"
        );
    };
    let out = costdb(
        &["demo", "--tenants", "5", "--days", "30", "--seed", "1"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    planted(&text);
    assert!(
        text.contains("seed 1 (the same seed replays it: --seed 1)"),
        "{text}"
    );
    // Three of the six exports are refused at the hard 35¢ budget.
    assert!(text.contains(", 3 refused at a hard limit"), "{text}");
    assert_eq!(text.matches(" led (term ").count(), 1, "one leader: {text}");
    assert_eq!(text.matches(" stood by: ").count(), 1, "{text}");
    for section in [
        "spend per day, all 5 tenants",
        "top models:",
        "top features:",
        "CostSim V2 vs V1 over",
        "steps:",
    ] {
        assert!(text.contains(section), "{section}: {text}");
    }
    // A budget's figure is its use of the limit, a spike's its rise over its baseline.
    assert!(text.contains("limit (10"), "{text}");
    assert!(text.contains("against a baseline of $"), "{text}");
    // One bar per day of history, with a weekly shape, noise and growth: weekends below
    // weekdays, no two weeks alike.
    let days = demo_days(&text);
    assert_eq!(days.len(), 30);
    let history = &days[..days.len() - 1];
    let mean = |weekend: bool| {
        let v: Vec<f64> = history
            .iter()
            .filter(|(d, _)| (d == "Sat" || d == "Sun") == weekend)
            .map(|(_, c)| *c)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(mean(true) < 0.9 * mean(false), "{days:?}");
    let mut amounts: Vec<i64> = history.iter().map(|(_, c)| c.round() as i64).collect();
    amounts.sort_unstable();
    amounts.dedup();
    assert!(amounts.len() > history.len() * 3 / 4, "{days:?}");
    // The same seed replays the same history; other seeds' noisy normal days raise
    // nothing beyond the planted anomalies.
    let replay = costdb(
        &["demo", "--tenants", "5", "--days", "30", "--seed", "1"],
        None,
    );
    assert_eq!(demo_days(&stdout(&replay)), days);
    for seed in ["2", "3", "17", "4242"] {
        let out = costdb(&["demo", "--days", "30", "--seed", seed], None);
        assert!(out.status.success(), "{out:?}");
        planted(&stdout(&out));
    }
    // Bad sizes are refused before anything starts.
    for bad in [["--tenants", "2"], ["--days", "29"], ["--seed", "x"]] {
        assert!(!costdb(&["demo", bad[0], bad[1]], None).status.success());
    }
}

/// The URL and name of the database a `demo --keep` made on `server`.
fn kept_demo(server: &str) -> (String, String) {
    let out = costdb(&["demo", "--keep", "--database-url", server], None);
    assert!(out.status.success(), "{out:?}");
    let url = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("kept: "))
        .expect("the kept URL")
        .to_owned();
    let name = database_of(&url);
    (url, name)
}

#[test]
fn report_prints_tables_json_and_a_chart_and_refuses_bad_input() {
    let (url, name) = kept_demo(common::admin_url());
    let to = (chrono::Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    let from = (chrono::Utc::now().date_naive() - chrono::Duration::days(7)).to_string();
    // `costdb report --tenant tenant-01 …` on the kept database.
    let report = |args: &[&str]| {
        costdb(
            &[&["report", "--tenant", "tenant-01"], args].concat(),
            Some(&url),
        )
    };
    let table = report(&["--from", &from, "--to", &to]);
    assert!(table.status.success(), "{table:?}");
    let text = stdout(&table);
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("20"))
            .count(),
        7,
        "{text}"
    );
    let json = report(&["--from", &from, "--to", &to, "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    // Through a replica URL (here the server itself, which is no replica: never behind),
    // the same report, and the command says where it read.
    let json_args = ["--from", &from, "--to", &to, "--format", "json"];
    let via = costdb(
        &[
            &["report", "--tenant", "tenant-01", "--replica-url", &url][..],
            &json_args,
        ]
        .concat(),
        None,
    );
    assert!(via.status.success(), "{via:?}");
    let via_doc: serde_json::Value = serde_json::from_slice(&via.stdout).expect("JSON");
    assert_eq!(via_doc, doc);
    assert!(
        String::from_utf8_lossy(&via.stderr)
            .contains("reading from the replica (replica 0.0 s behind)"),
        "{via:?}"
    );
    let err = one_error_line(&costdb(
        &[
            "report",
            "--tenant",
            "tenant-01",
            "--replica-url",
            &url,
            "--max-lag-secs",
            "0",
        ],
        None,
    ));
    assert!(err.contains("--max-lag-secs 0 is not a positive"), "{err}");
    let days = doc["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let by_day: f64 = days
        .iter()
        .map(|d| d["spend_cents"].as_f64().unwrap())
        .sum();
    let by_model: f64 = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["spend_cents"].as_f64().unwrap())
        .sum();
    assert!((by_day - doc["spend_cents"].as_f64().unwrap()).abs() < 1e-6);
    assert!((by_model - by_day).abs() < 1e-6);
    // Each day's calls are the tenant's records of that UTC day.
    let mut conn = costdb::db::connect(&url).unwrap();
    for d in days {
        let day: chrono::NaiveDate = d["bucket"].as_str().unwrap()[..10].parse().unwrap();
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N = diesel::RunQueryDsl::get_result(
            diesel::sql_query(
                "SELECT count(*) AS n FROM cost_records WHERE tenant_id = 'tenant-01' \
                 AND created_at >= $1::date AND created_at < $1::date + 1",
            )
            .bind::<diesel::sql_types::Date, _>(day),
            &mut conn,
        )
        .unwrap();
        assert_eq!(d["requests"], n.n, "{day}");
    }
    // The spike's last two days: the spike user calls three times as often.
    assert!(days[6]["requests"].as_i64() > days[4]["requests"].as_i64());
    let svg = std::env::temp_dir().join(format!("costdb-report-{}.svg", std::process::id()));
    let plotted = report(&["--plot", svg.to_str().unwrap()]);
    assert!(plotted.status.success(), "{plotted:?}");
    let drawing = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(drawing.starts_with("<svg") && drawing.contains("tenant-01"));
    assert!(
        drawing.matches("<polyline").count() >= 5,
        "one line per model"
    );

    let err = one_error_line(&costdb(&["report", "--tenant", "nobody"], Some(&url)));
    assert!(err.contains("\"nobody\" has no cost records"), "{err}");
    let err = one_error_line(&report(&["--from", &to, "--to", &from]));
    assert!(err.contains("is after --to"), "{err}");
    one_error_line(&costdb(
        &["report", "--tenant", "tenant-01"],
        Some("postgres://nobody@127.0.0.1:1/x"),
    ));
    one_error_line(&costdb(&["report", "--tenant", "tenant-01"], None));
    let bad_date = report(&["--from", "2026-02-30"]);
    assert!(!bad_date.status.success());
    one_error_line(&report(&["--plot", "/nonexistent/dir/x.svg"]));
    costdb_testkit::drop_database(common::admin_url(), &name).unwrap();
}

#[test]
fn upkeep_reclaims_retries_and_purges_as_leader_and_stands_by_otherwise() {
    use costdb::admission::{Admission, AdmissionDriver, ReserveInput};
    use costdb::drivers::BudgetLimits;
    use costdb::types::{BudgetScope, TenantId};
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let url = common::fresh_database();
    let mut conn = costdb::db::connect(&url).unwrap();
    costdb::db::run_migrations(&mut conn).unwrap();
    let acme = TenantId::new("acme").unwrap();
    // A reservation whose holder vanished an hour ago.
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let held = conn
        .transaction(|c| {
            costdb::drivers::CostWriteDriver::new(c).upsert_budget(
                &acme,
                &BudgetScope::Tenant,
                &BudgetLimits {
                    daily_limit_cents: Some(100),
                    monthly_limit_cents: None,
                    warn_threshold_pct: 80,
                    hard_limit_enabled: true,
                },
            )?;
            AdmissionDriver::new(c).reserve(
                &acme,
                &ReserveInput {
                    request_id: "gone".into(),
                    feature_tag: None,
                    user_id: None,
                    estimated_cents: 10.0,
                    expires_at: past + chrono::Duration::minutes(1),
                    now: past,
                },
            )
        })
        .unwrap();
    let Admission::Admitted { reservation, .. } = held else {
        panic!("{held:?}")
    };
    // A past day's calls from two writers in two rollup slots, folded as they land.
    for slot in [1, 2] {
        conn.batch_execute(&format!(
            "SET costdb.rollup_slot = {slot}; SET costdb.fold_from = 1; \
             INSERT INTO cost_records (id, tenant_id, model, cost_cents, created_at) \
             VALUES ('cr_slot_{slot}', 'acme', 'o3', 1, '2026-01-05 10:00+00')"
        ))
        .unwrap();
    }
    let out = costdb(&["upkeep"], Some(&url));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("reclaimed 1 expired budget reservation(s)"),
        "{text}"
    );
    // The hourly and the daily rollup held the key in two slots: one row each now.
    assert!(
        text.contains("folded 4 rollup slot row(s) of days before"),
        "{text}"
    );
    assert!(text.contains("into 2"), "{text}");
    let stored = conn
        .transaction(|c| AdmissionDriver::new(c).fetch_reservation(&acme, &reservation.id))
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, costdb::models::ReservationStatus::Expired);
    // While another process leads upkeep, it stands by and changes nothing.
    let guard = costdb::leader::LeaderGuard::acquire(
        &url,
        costdb::types::locks::LOCK_UPKEEP,
        "test",
        std::time::Duration::from_secs(5),
    )
    .unwrap()
    .unwrap();
    let out = costdb(&["upkeep"], Some(&url));
    assert!(out.status.success());
    assert!(stdout(&out).contains("stood by"), "{out:?}");
    drop(guard);
    one_error_line(&costdb(&["upkeep", "--max-retries", "0"], Some(&url)));
    one_error_line(&costdb(&["upkeep"], None));
}

#[test]
fn upkeep_makes_partitions_ahead_and_retires_old_days_once_their_rollups_verify() {
    use diesel::connection::SimpleConnection;
    let url = common::fresh_database();
    let mut conn = costdb::db::connect(&url).unwrap();
    costdb::db::run_migrations(&mut conn).unwrap();
    let today = chrono::Utc::now().date_naive();
    let ago = |days: i64| today - chrono::Duration::days(days);
    let part = |d: chrono::NaiveDate| format!("cost_records_p{}", d.format("%Y%m%d"));
    // Calls of 40 and 39 days ago: their days have no partition yet.
    for (n, days) in [(1, 40), (2, 39), (3, 39)] {
        conn.batch_execute(&format!(
            "INSERT INTO cost_records (id, tenant_id, request_id, model, cost_cents, created_at) \
             VALUES ('cr_old_{n}', 'acme', 'rq-{n}', 'o3', {n}, '{} 10:00+00')",
            ago(days)
        ))
        .unwrap();
    }
    let spent = |conn: &mut diesel::PgConnection| -> f64 {
        use costdb::schema::cost_rollup_daily as d;
        use diesel::prelude::*;
        d::table
            .filter(d::tenant_id.eq("acme"))
            .select(diesel::dsl::sum(d::cost_cents))
            .get_result::<Option<f64>>(conn)
            .unwrap()
            .unwrap_or(0.0)
    };
    let records = |conn: &mut diesel::PgConnection| -> i64 {
        use costdb::schema::cost_records as cr;
        use diesel::prelude::*;
        cr::table.count().get_result(conn).unwrap()
    };
    let out = costdb(&["upkeep", "--partitions-ahead", "9"], Some(&url));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for d in [ago(40), ago(39), today + chrono::Duration::days(9)] {
        assert!(text.contains(&part(d)), "{text}");
    }
    // A dry run lists the two old days and changes nothing.
    let out = costdb(&["upkeep", "--retain-days", "30", "--dry-run"], Some(&url));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("would drop {}", part(ago(40)))),
        "{text}"
    );
    assert!(
        text.contains(&format!("would drop {}", part(ago(39)))),
        "{text}"
    );
    assert!(!text.contains("reclaimed"), "{text}");
    assert_eq!(records(&mut conn), 3);
    // A call of 35 days ago changed behind the crate's back: retention refuses, naming
    // its day, and drops nothing.
    conn.batch_execute(&format!(
        "INSERT INTO cost_records (id, tenant_id, model, cost_cents, created_at) \
         VALUES ('cr_old_4', 'acme', 'o3', 4, '{} 10:00+00'); \
         UPDATE cost_records SET cost_cents = 40 WHERE id = 'cr_old_4'",
        ago(35)
    ))
    .unwrap();
    let out = costdb(&["upkeep", "--retain-days", "30"], Some(&url));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        one_error_line(&out).contains(&ago(35).to_string()),
        "{out:?}"
    );
    assert_eq!(records(&mut conn), 4);
    // Repaired, the three old days go; their rollups stay.
    let rebuilt = costdb(&["rollup", "rebuild"], Some(&url));
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    let before = spent(&mut conn);
    assert_eq!(before, 46.0);
    let out = costdb(&["upkeep", "--retain-days", "30"], Some(&url));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("detached 3 partition(s) of cost records"),
        "{text}"
    );
    assert!(
        text.contains("dropped 3 detached partition(s) and 3 request key(s)"),
        "{text}"
    );
    assert_eq!(records(&mut conn), 0);
    assert_eq!(spent(&mut conn), before);
    let verify = costdb(&["rollup", "verify"], Some(&url));
    assert!(verify.status.success(), "{verify:?}");
    let alone = costdb(&["upkeep", "--dry-run"], Some(&url));
    assert!(!alone.status.success());
    assert!(String::from_utf8_lossy(&alone.stderr).contains("--retain-days"));
    one_error_line(&costdb(
        &["upkeep", "--partitions-ahead", "400"],
        Some(&url),
    ));
}

#[test]
fn every_subcommand_explains_itself_with_an_example() {
    for args in [
        &["migrate", "--help"][..],
        &["demo", "--help"],
        &["bench", "--help"],
        &["report", "--help"],
        &["upkeep", "--help"],
        &["hash", "--help"],
        &["alerts", "stats", "--help"],
        &["alerts", "retry", "--help"],
        &["alerts", "purge", "--help"],
        &["leader", "status", "--help"],
        &["leader", "run", "--help"],
    ] {
        let out = costdb(args, None);
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        assert!(text.contains("Example:\n  costdb "), "{args:?}: {text}");
    }
}

/// Stand-ins for Citus's `create_distributed_table` that check what Citus checks before
/// it shards a table: the column exists and is NOT NULL, every unique index includes it,
/// the table to co-locate with is distributed already, and every foreign key to or from a
/// distributed table includes the column on both sides. Each call is logged.
const CITUS_STAND_IN: &str = r#"
CREATE TABLE citus_stand_in_log (n serial, relation text, dist_column text, colocate text);
CREATE FUNCTION create_distributed_table(tbl regclass, col text, colocate_with text DEFAULT 'default')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tbl AND attname = col AND attnotnull) THEN
        RAISE EXCEPTION '% has no NOT NULL column %', tbl, col;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indisunique
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl
                               AND a.attname = col AND a.attnum = ANY (i.indkey))) THEN
        RAISE EXCEPTION 'cannot create constraint on "%": distributed relations cannot have UNIQUE constraints that do not include the partition column', tbl;
    END IF;
    IF colocate_with <> 'default' AND NOT EXISTS (SELECT 1 FROM citus_stand_in_log l WHERE l.relation = colocate_with) THEN
        RAISE EXCEPTION 'cannot colocate % with %, which is not distributed', tbl, colocate_with;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conrelid = tbl
               AND (f.confrelid::regclass::text NOT IN (SELECT l.relation FROM citus_stand_in_log l)
                    AND f.confrelid <> tbl
                    OR NOT (SELECT attnum FROM pg_attribute WHERE attrelid = f.conrelid AND attname = col) = ANY (f.conkey)
                    OR NOT (SELECT attnum FROM pg_attribute WHERE attrelid = f.confrelid AND attname = col) = ANY (f.confkey))) THEN
        RAISE EXCEPTION 'a foreign key of % does not reference a distributed table on %', tbl, col;
    END IF;
    INSERT INTO citus_stand_in_log (relation, dist_column, colocate) VALUES (tbl::text, col, colocate_with);
END
$$;
"#;

#[test]
fn distribute_prints_statements_that_shard_the_migrated_schema_by_tenant() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    let out = costdb(&["distribute", "--print"], None);
    assert!(out.status.success(), "{out:?}");
    let ddl = stdout(&out);
    let url = common::fresh_database();
    assert!(costdb(&["migrate"], Some(&url)).status.success());
    let mut conn = costdb::db::connect(&url).unwrap();
    conn.batch_execute(CITUS_STAND_IN).unwrap();
    conn.batch_execute(&ddl).unwrap();
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Call {
        #[diesel(sql_type = diesel::sql_types::Text)]
        tbl: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        col: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        colocate: String,
    }
    let calls: Vec<Call> = diesel::sql_query(
        "SELECT relation AS tbl, dist_column AS col, colocate FROM citus_stand_in_log ORDER BY n",
    )
    .load(&mut conn)
    .unwrap();
    let distributed: Vec<&str> = costdb::placement::distributed_tables().collect();
    assert_eq!(
        calls.iter().map(|c| c.tbl.as_str()).collect::<Vec<_>>(),
        distributed
    );
    assert!(calls.iter().all(|c| c.col == "tenant_id"));
    assert_eq!(calls[0].colocate, "default");
    assert!(calls[1..].iter().all(|c| c.colocate == distributed[0]));

    // The schema before tenant-led keys could not have been distributed.
    let before = common::fresh_database();
    assert!(costdb(&["migrate"], Some(&before)).status.success());
    loop {
        let reverted = stdout(&costdb(&["migrate", "--revert"], Some(&before)));
        assert!(reverted.starts_with("reverted "), "{reverted}");
        if reverted.contains("tenant_led_keys") {
            break;
        }
    }
    let mut conn = costdb::db::connect(&before).unwrap();
    conn.batch_execute(CITUS_STAND_IN).unwrap();
    let refused = conn.batch_execute(&ddl).unwrap_err().to_string();
    assert!(
        refused.contains("cannot have UNIQUE constraints that do not include the partition column"),
        "{refused}"
    );

    // Printing is the only mode.
    let bare = costdb(&["distribute"], None);
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("--print"));
}

#[test]
fn rollup_fold_moves_the_deltas_of_small_statements_vacuums_and_no_sum_changes() {
    use costdb::drivers::CostWriteDriver;
    use costdb::models::CostInput;
    use diesel::{Connection, RunQueryDsl};
    let url = common::fresh_database();
    assert!(costdb(&["migrate"], Some(&url)).status.success());
    let mut conn = costdb::db::connect(&url).unwrap();
    conn.transaction::<_, costdb::Error, _>(|c| {
        for cents in [4.0, 6.0] {
            CostWriteDriver::new(c).insert_cost_record(&CostInput {
                tenant_id: "acme".into(),
                model: "o3".into(),
                cost_cents: cents,
                ..CostInput::default()
            })?;
        }
        // A statement of three records: one delta row for the tenant.
        let call = |model: &str| CostInput {
            tenant_id: "acme".into(),
            model: model.into(),
            cost_cents: 1.0,
            ..CostInput::default()
        };
        CostWriteDriver::new(c).record_costs(&[call("o3"), call("o3"), call("gpt-4o")])?;
        Ok(())
    })
    .unwrap();
    let fold = costdb(&["rollup", "fold"], Some(&url));
    assert!(fold.status.success(), "{fold:?}");
    assert_eq!(
        stdout(&fold).trim(),
        "folded the deltas of 5 record(s) into the rollups\nvacuumed the delta tables"
    );
    // Both delta tables were vacuumed by the command (autovacuum does not run this fast).
    #[derive(diesel::QueryableByName)]
    struct Vacuumed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let vacuumed: Vacuumed = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_user_tables \
         WHERE relname IN ('cost_rollup_deltas', 'cost_rollup_delta_batches') \
           AND last_vacuum IS NOT NULL",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(vacuumed.n, 2);
    let again = costdb(&["rollup", "fold"], Some(&url));
    assert_eq!(
        stdout(&again).trim(),
        "folded the deltas of 0 record(s) into the rollups\nvacuumed the delta tables"
    );
    let verify = costdb(&["rollup", "verify"], Some(&url));
    assert!(verify.status.success(), "{verify:?}");
}
