//! The `gleaner` binary's wiring: settings in, running components out. `main.rs` parses the
//! command line; [`app`] connects the crates so that tests and benchmarks start exactly what the
//! binary starts.

pub mod app;
pub mod cli;
pub mod cmd;
pub mod standalone;
