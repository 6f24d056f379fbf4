//! `gleaner`: one binary, one subcommand per process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use gleaner::{cli, cmd};
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
    #[command(flatten)]
    Server(Server),
    #[command(flatten)]
    Client(cli::Command),
    /// Exit 0 when URL answers 2xx within 3 s, 1 otherwise: the container image's
    /// HEALTHCHECK, which has no curl.
    Healthcheck {
        /// The probe to ask: the API's `/healthz`, or a worker's metrics listener's.
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Print a completion script for a shell: `gleaner completions bash > /etc/bash_completion.d/gleaner`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The processes of Gleaner itself, which read the settings.
#[derive(Debug, Subcommand)]
enum Server {
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
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The client commands talk to a server: they read no server settings and log nothing,
        // so a bad `gleaner.toml` on an operator's laptop does not stop them.
        Command::Client(c) => cli::run(c).await,
        Command::Healthcheck { url } => healthcheck(&url).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gleaner",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Server(server) => match serve(cli.config, server).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn healthcheck(url: &str) -> ExitCode {
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, command: Server) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref()).context("loading settings")?;
    gleaner_common::telemetry::init(&settings.log);
    let shutdown = CancellationToken::new();
    tokio::spawn(cmd::cancel_on_signal(shutdown.clone()));
    match command {
        Server::Standalone(args) => cmd::standalone::run(args, &settings, shutdown).await,
        Server::Api(args) => cmd::api::run(args, &settings, shutdown).await,
        Server::Worker(args) => cmd::worker::run(args, &settings, shutdown).await,
        Server::Scheduler(args) => cmd::scheduler::run(args, &settings, shutdown).await,
        Server::Migrate => cmd::migrate::run(&settings).await,
        Server::Domain(args) => cmd::domain::run(args, &settings).await,
        Server::RotateSecretKey(args) => cmd::rotate_secret_key::run(args, &settings).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["gleaner", "worker", "--migrate"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Server(Server::Worker(cmd::worker::Args { migrate: true }))
        ));
        let cli = Cli::try_parse_from(["gleaner", "rotate-secret-key"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Server(Server::RotateSecretKey(cmd::rotate_secret_key::Args {
                data_dir: None,
                batch: cmd::rotate_secret_key::BATCH,
            }))
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
            Command::Server(Server::RotateSecretKey(cmd::rotate_secret_key::Args { data_dir: Some(ref d), batch: 50 }))
                if d == std::path::Path::new("/var/lib/gleaner")
        ));
        assert!(Cli::try_parse_from(["gleaner", "explode"]).is_err());
        let cli = Cli::try_parse_from(["gleaner", "domain", "create", "acme"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Server(Server::Domain(cmd::domain::Args {
                action: cmd::domain::Action::Create { .. },
                data_dir: None,
            }))
        ));
    }

    #[test]
    fn client_commands_parse_and_bad_flags_are_refused() {
        let cli = Cli::try_parse_from([
            "gleaner",
            "collect",
            "demo",
            "--wait",
            "--timeout",
            "60",
            "-o",
            "json",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Client(cli::Command::Collect(cli::job::CollectArgs {
                wait: true,
                timeout: cli::job::Timeout { timeout: Some(60) },
                out: cli::Output {
                    format: cli::Format::Json
                },
                ..
            }))
        ));
        let cli = Cli::try_parse_from([
            "gleaner",
            "costs",
            "summary",
            "--group-by",
            "provider,month",
            "--start",
            "2024-09-01",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Client(cli::Command::Costs(cli::cost::Args {
                action: cli::cost::Action::Summary { ref group_by, .. },
                ..
            })) if group_by == &["provider", "month"]
        ));
        // `-o` goes after the noun or the verb alike.
        for args in [
            &["gleaner", "collectors", "-o", "csv", "ls"][..],
            &["gleaner", "collectors", "ls", "-o", "csv"][..],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert!(matches!(
                cli.command,
                Command::Client(cli::Command::Collectors(cli::collector::Args {
                    out: cli::Output {
                        format: cli::Format::Csv
                    },
                    ..
                }))
            ));
        }
        let refused = [
            (
                &["gleaner", "costs", "summary", "--group-by", "planet"][..],
                "planet",
            ),
            (&["gleaner", "collectors", "ls", "-o", "yaml"][..], "yaml"),
            (
                &[
                    "gleaner",
                    "schedules",
                    "create",
                    "--collector",
                    "c",
                    "--name",
                    "n",
                    "--hours",
                    "24",
                ][..],
                "24",
            ),
            (
                &[
                    "gleaner",
                    "schedules",
                    "create",
                    "--collector",
                    "c",
                    "--name",
                    "n",
                    "--hours",
                    "1",
                    "--every-minutes",
                    "5",
                ][..],
                "cannot be used with",
            ),
            (&["gleaner", "collect"][..], "<COLLECTOR>"),
        ];
        for (args, says) in refused {
            let err = Cli::try_parse_from(args).expect_err("refused").to_string();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }
}
