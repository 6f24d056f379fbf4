//! Logging set-up: a `RUST_LOG` filter defaulting to `info`, JSON lines in production and
//! compact text on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which lets tests call it freely.
pub fn init(settings: &LogSettings) {
    // PostgreSQL's notices (a batch's `CREATE TEMP TABLE IF NOT EXISTS` finding its table)
    // would otherwise be an INFO line per batch.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.compact().with_span_events(FmtSpan::NONE).try_init()
    };
    // Already installed: keep the first subscriber.
    drop(result);
}

/// A subscriber for tests: output captured by the test harness, `warn` unless `RUST_LOG` says
/// otherwise.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    drop(
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .compact()
            .try_init(),
    );
}
