//! `gleaner worker`.

use gleaner_common::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::app;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Apply pending migrations before consuming.
    #[arg(long)]
    pub migrate: bool,
}

/// Consumes until `shutdown`, then stops gracefully.
///
/// # Errors
/// Bad settings or an unreachable database.
pub async fn run(
    args: Args,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.cipher()?;
    let db = app::database(settings, args.migrate).await?;
    app::run_worker(settings, db, shutdown).await
}
