//! One module per subcommand: `pub async fn run(args, settings, shutdown)`.

pub mod api;
pub mod migrate;
pub mod scheduler;
pub mod worker;
