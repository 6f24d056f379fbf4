//! `gleaner standalone`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use gleaner_common::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::standalone::{self, DataDir};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the SQLite database and the credentials key live (created if missing).
    #[arg(long, default_value = "./gleaner-data", env = "GLEANER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where the API listens; defaults to `GLEANER_LISTEN`, or 127.0.0.1:8080.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Runs the API, the workers and the scheduler in this process until `shutdown`.
///
/// # Errors
/// The data directory is in use or unusable, or the port is taken.
pub async fn run(
    args: Args,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dir = DataDir::open(&args.data_dir)?;
    let listen = args.listen.unwrap_or(settings.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    // On stdout, for people and for scripts waiting for the port (the tests read this line).
    println!(
        "Gleaner standalone is listening on http://{addr} (data in {})",
        dir.path().display()
    );
    standalone::run(settings, &dir, listener, shutdown).await
}
