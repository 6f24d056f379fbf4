//! `gleaner scheduler`.

use gleaner_common::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::app;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Apply pending migrations before starting.
    #[arg(long)]
    pub migrate: bool,
}

/// Runs the scheduler until `shutdown`.
///
/// # Errors
/// An unreachable database.
pub async fn run(
    args: Args,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = app::database(settings, args.migrate).await?;
    gleaner_scheduler::run(db, shutdown).await;
    Ok(())
}
