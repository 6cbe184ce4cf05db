//! The throwaway cluster: starts, serves, and leaves nothing behind.

use costdb::db;
use costdb::embedded::EmbeddedPostgres;
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
    let url2 = costdb::embedded::create_database(&url, "second_db").unwrap();
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
    let err = costdb::embedded::create_database("postgres://nowhere.invalid/x", "a;b").unwrap_err();
    assert!(
        matches!(err, costdb::Error::InvalidInput { field: "name", .. }),
        "{err}"
    );
}
