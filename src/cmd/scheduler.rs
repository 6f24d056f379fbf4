//! `gleaner scheduler`.

use std::sync::Arc;

use gleaner_common::config::Settings;
use gleaner_common::outbox::Signal;
use gleaner_scheduler::SystemClock;
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
    let scheduler = app::scheduler(settings, db.clone());
    // Jobs reach RabbitMQ through the outbox relay of the API and worker processes.
    gleaner_scheduler::run(
        scheduler,
        settings
            .database
            .schema
            .clone()
            .unwrap_or_else(|| "public".to_owned()),
        Arc::new(SystemClock),
        Signal::new(),
        shutdown,
    )
    .await;
    Ok(())
}
