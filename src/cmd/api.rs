//! `gleaner api`.

use anyhow::Context as _;
use gleaner_common::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::app;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Apply pending migrations before serving.
    #[arg(long)]
    pub migrate: bool,
}

/// Serves the API until `shutdown`.
///
/// # Errors
/// Bad settings, an unreachable database, or a port already in use.
pub async fn run(
    args: Args,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Fail before binding the port when the key is missing or malformed.
    settings.cipher()?;
    let db = app::database(settings, args.migrate).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    app::serve_api(settings, db, listener, shutdown).await
}
