//! # costdb
//!
//! The PostgreSQL data layer of an AI-agent platform's cost analytics, on Diesel.
//!
//! Drivers borrow the caller's connection and never begin, commit or roll back: the
//! caller owns the transaction. Write methods refuse to run outside one
//! ([`Error::NoTransaction`]). Every connection the crate opens runs with `TimeZone = UTC`.
//!
//! ```no_run
//! use diesel::Connection;
//!
//! # fn main() -> costdb::Result<()> {
//! let pool = costdb::db::pool("postgres://postgres@127.0.0.1/costdb", 4)?;
//! let mut conn = pool.get()?;
//! costdb::db::run_migrations(&mut conn)?;
//! conn.transaction(|conn| {
//!     costdb::db::require_transaction(conn)?; // inside: Ok
//!     Ok::<_, costdb::Error>(())
//! })?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod db;
pub mod embedded;
pub mod error;
pub mod models;
#[allow(missing_docs)]
pub mod schema;

pub use error::{Error, Result};
