//! The workloads of `costdb bench`, shared with the criterion benchmarks of the library
//! (`benches/`): each measures a costdb path against PostgreSQL's own in the same run.
#![warn(missing_docs)]

pub mod workloads;
