//! The `gleaner` binary's wiring: settings in, running components out. `main.rs` parses the
//! command line; [`app`] connects the crates so that tests and benchmarks start exactly what the
//! binary starts.

/// mimalloc, not glibc's malloc: glibc gives threads that allocate at once arenas of their own
/// (up to eight per core) that keep what was freed in them. Over a 200,000-resource standalone
/// collection the process peaked at 282–303 MB with glibc and 223–239 MB with mimalloc, and ran
/// no slower (BENCHMARKS.md, "Standalone ingest").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod cli;
pub mod cmd;
pub mod standalone;
