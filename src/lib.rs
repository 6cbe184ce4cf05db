//! `costdb`: the PostgreSQL data layer of an AI-agent platform's cost analytics, on Diesel.
//!
//! It records worker runs and every LLM call's cost, keeps budgets and feature tags, and
//! serves the analytics queries over them. Blocking services embed it; everything is
//! synchronous.
//!
//! - [`db`]: connections and pools whose sessions run in UTC, the embedded migrations,
//!   and [`db::require_transaction`].
//! - [`drivers`]: one struct per data-access role. A driver borrows the caller's
//!   connection, runs its SQL at once and never begins, commits or rolls back: the caller
//!   owns the transaction, and a write outside one is [`Error::NoTransaction`].
//! - [`models`]: rows, new rows, closed-set enums and id formats.
//! - [`types`]: what every layer shares: time windows, budget scopes, entity keys, lock
//!   ids, column limits.
//! - [`admission`]: budget reservations that keep hard limits exact under concurrency.
//! - [`detector`]: the cost-anomaly detector's rules over the anomaly driver.
//! - [`recorder`]: durable group commit for services that record each call as it happens.
//! - [`leader`]: leader election among processes on advisory locks, with fencing terms.
//! - [`replica`]: reads from a streaming replica, bounded in staleness, with a fall back
//!   to the primary.
//! - [`retention`]: dropping the daily partitions of old cost records once their
//!   rollups agree with them.
//! - [`placement`]: which tables are distributed by tenant on a Citus cluster, and why
//!   the others are not.
//!
//! The `costdb` command is the crate `costdb-cli`; a throwaway PostgreSQL and scratch
//! databases for tests are in `costdb-testkit`.
//!
//! Bad input is refused with [`Error::InvalidInput`] naming the field before any SQL runs:
//! empty ids, text longer than its column or holding NUL, negative counts, amounts that are
//! not finite, negative or above [`MAX_AMOUNT_CENTS`], instants PostgreSQL cannot store,
//! empty or reversed time windows, JSON nested deeper than [`MAX_JSON_DEPTH`].
//!
//! ```no_run
//! use costdb::models::CostInput;
//! use diesel::Connection;
//!
//! # fn main() -> costdb::Result<()> {
//! let mut conn = costdb::db::connect("postgres://postgres@127.0.0.1/costdb")?;
//! costdb::db::run_migrations(&mut conn)?;
//! let recorded = conn.transaction(|conn| {
//!     costdb::drivers::CostWriteDriver::new(conn).record_costs(&[CostInput {
//!         tenant_id: "acme".into(),
//!         request_id: Some("req-1".into()),
//!         model: "gpt-4o-mini".into(),
//!         input_tokens: 800,
//!         output_tokens: 120,
//!         cost_cents: 0.21,
//!         ..Default::default()
//!     }])
//! })?;
//! assert!(recorded[0].id.starts_with("cr_"));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod admission;
mod batching;
pub mod connect;
pub mod db;
pub mod detector;
pub mod drivers;
pub(crate) mod error;
pub mod input_hash;
pub mod leader;
pub mod models;
pub mod placement;
mod prepared;
pub mod recorder;
pub mod replica;
pub mod retention;
#[allow(missing_docs)]
pub mod schema;
pub(crate) mod sql_fns;
pub mod types;
mod validate;

pub use error::{report, BoxError, Error, Result};
pub use validate::{MAX_AMOUNT_CENTS, MAX_JSON_DEPTH};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The usage guide's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/usage.md")]
pub struct UsageDoctests;
