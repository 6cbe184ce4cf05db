#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod db;
pub mod drivers;
pub mod embedded;
pub mod error;
pub mod models;
#[allow(missing_docs)]
pub mod schema;
mod validate;

pub use drivers::{AnalyticsReadDriver, CostWriteDriver, WorkerWriteService};
pub use error::{Error, Result};
