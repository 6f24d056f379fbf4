//! `gleaner`: one binary, one subcommand per process.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gleaner::cmd;
use gleaner_common::config::Settings;
use tokio_util::sync::CancellationToken;

/// Collects cloud inventory, billing data and metrics through plugins.
#[derive(Debug, Parser)]
#[command(name = "gleaner", version, about)]
struct Cli {
    /// A TOML settings file; environment variables (`GLEANER_*`) override it.
    #[arg(long, global = true, env = "GLEANER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process on a local SQLite file: no database or broker to install.
    Standalone(cmd::standalone::Args),
    /// Serve the HTTP API (and publish its queued messages).
    Api(cmd::api::Args),
    /// Consume jobs and tasks, run plugins, store results.
    Worker(cmd::worker::Args),
    /// Turn schedules into jobs.
    Scheduler(cmd::scheduler::Args),
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// Domains (tenants) and their operators' API keys.
    Domain(cmd::domain::Args),
    /// Re-encrypt every stored credential from GLEANER_SECRET_KEY_PREVIOUS to
    /// GLEANER_SECRET_KEY (or, with --data-dir, to a new key kept in the data directory).
    RotateSecretKey(cmd::rotate_secret_key::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("loading settings")?;
    gleaner_common::telemetry::init(&settings.log);
    let shutdown = CancellationToken::new();
    tokio::spawn(cmd::cancel_on_signal(shutdown.clone()));
    match cli.command {
        Command::Standalone(args) => cmd::standalone::run(args, &settings, shutdown).await,
        Command::Api(args) => cmd::api::run(args, &settings, shutdown).await,
        Command::Worker(args) => cmd::worker::run(args, &settings, shutdown).await,
        Command::Scheduler(args) => cmd::scheduler::run(args, &settings, shutdown).await,
        Command::Migrate => cmd::migrate::run(&settings).await,
        Command::Domain(args) => cmd::domain::run(args, &settings).await,
        Command::RotateSecretKey(args) => cmd::rotate_secret_key::run(args, &settings).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["gleaner", "worker", "--migrate"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Worker(cmd::worker::Args { migrate: true })
        ));
        let cli = Cli::try_parse_from(["gleaner", "rotate-secret-key"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::RotateSecretKey(cmd::rotate_secret_key::Args {
                data_dir: None,
                batch: cmd::rotate_secret_key::BATCH,
            })
        ));
        let cli = Cli::try_parse_from([
            "gleaner",
            "rotate-secret-key",
            "--data-dir",
            "/var/lib/gleaner",
            "--batch",
            "50",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::RotateSecretKey(cmd::rotate_secret_key::Args { data_dir: Some(ref d), batch: 50 })
                if d == std::path::Path::new("/var/lib/gleaner")
        ));
        assert!(Cli::try_parse_from(["gleaner", "explode"]).is_err());
        let cli = Cli::try_parse_from(["gleaner", "domain", "create", "acme"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Domain(cmd::domain::Args {
                action: cmd::domain::Action::Create { .. },
                data_dir: None,
            })
        ));
    }
}
