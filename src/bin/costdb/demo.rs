//! `costdb demo`: the main job on a real database, embedded by default.

use costdb::db;
use costdb::embedded::EmbeddedPostgres;

/// Runs the demo on `url`, or on a throwaway cluster when `None`.
pub fn run(url: Option<String>) -> costdb::Result<()> {
    let (_cluster, url) = match url.filter(|u| !u.is_empty()) {
        Some(url) => (None, url),
        None => {
            println!("starting a throwaway PostgreSQL…");
            let pg = EmbeddedPostgres::start()?;
            let url = pg.url("postgres");
            (Some(pg), url)
        }
    };
    let mut conn = db::connect(&url)?;
    let applied = db::run_migrations(&mut conn)?;
    println!("schema: {} step(s) applied", applied.len());
    Ok(())
}
