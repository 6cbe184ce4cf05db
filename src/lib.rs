#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod db;
pub mod embedded;
pub mod error;
pub mod models;
#[allow(missing_docs)]
pub mod schema;

pub use error::{Error, Result};
