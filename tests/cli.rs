//! The `costdb` command as operators run it.

mod common;

use std::process::{Command, Output};

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
    assert!(stdout(&status).contains(&format!("{applied} applied, 0 pending")));

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
    assert!(err.contains("DATABASE_URL"));
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
