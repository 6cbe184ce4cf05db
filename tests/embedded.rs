//! The throwaway cluster: starts, serves, and leaves nothing behind.

use costdb::db;
use costdb_testkit::EmbeddedPostgres;
use diesel::prelude::*;
use diesel::sql_types::Integer;

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    one: i32,
}

#[test]
fn a_cluster_serves_and_is_removed_when_dropped() {
    let pg = EmbeddedPostgres::start().unwrap();
    let dir = pg.dir().to_path_buf();
    let url = pg.url("postgres");
    assert!(dir.join("data").join("PG_VERSION").is_file());
    {
        let mut conn = db::connect(&url).unwrap();
        let row: One = diesel::sql_query("SELECT 1 AS one")
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(row.one, 1);
    }
    let url2 = costdb_testkit::create_database(&url, "second_db").unwrap();
    assert!(url2.ends_with("/second_db"));
    db::connect(&url2).unwrap();

    drop(pg);
    assert!(!dir.exists(), "{} should be gone", dir.display());
    assert!(matches!(
        db::connect(&url),
        Err(costdb::Error::Connection(_))
    ));
}

#[test]
fn database_names_are_checked_before_any_sql() {
    let err = costdb_testkit::create_database("postgres://nowhere.invalid/x", "a;b").unwrap_err();
    assert!(
        matches!(
            err,
            costdb_testkit::Error::InvalidInput { field: "name", .. }
        ),
        "{err}"
    );
}

#[test]
fn a_kept_cluster_keeps_running_until_stopped_by_hand() {
    let pg = EmbeddedPostgres::start().unwrap();
    let url = pg.url("postgres");
    let bin = pg.bin_dir().to_path_buf();
    let dir = pg.keep();
    db::connect(&url).expect("still serving after keep");
    assert!(dir.join("data").is_dir());
    let stopped = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"cd / && if [ "$(id -u)" = 0 ]; then exec su postgres -s /bin/sh -c "$0 -D $1 -m fast -w stop"; else exec "$0" -D "$1" -m fast -w stop; fi"#)
        .arg(bin.join("pg_ctl"))
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(db::connect(&url).is_err());
}
