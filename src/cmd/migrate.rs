//! `gleaner migrate`.

use gleaner_common::config::Settings;

use crate::app;

/// Creates the database if needed and applies pending migrations.
///
/// # Errors
/// The database is unreachable or a migration fails.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let db = app::database(settings, true).await?;
    db.close().await?;
    tracing::info!("migrations applied");
    Ok(())
}
