//! Rows, new rows, closed-set enums and id generators, per table family.

pub(crate) mod audit;
pub(crate) mod cost;
pub(crate) mod costsim;
pub(crate) mod enums;
pub(crate) mod feedback;
pub mod ids;
pub(crate) mod rollup;
pub(crate) mod sources;
pub(crate) mod worker;

pub use audit::*;
pub use cost::*;
pub use costsim::*;
pub use enums::*;
pub use feedback::*;
pub use rollup::Totals;
pub use sources::*;
pub use worker::*;
