//! Rows, new rows, closed-set enums and id generators, per table family.

pub mod audit;
pub mod cost;
pub mod costsim;
pub mod enums;
pub mod feedback;
pub mod ids;
pub mod sources;
pub mod worker;

pub use audit::*;
pub use cost::*;
pub use costsim::*;
pub use enums::*;
pub use feedback::*;
pub use sources::*;
pub use worker::*;
