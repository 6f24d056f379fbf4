//! The client commands: a thin client of the HTTP API, one module per noun.
//!
//! Each command sends the API's own requests and prints the answer through one [`Output`]
//! switch (`-o table|json|csv`). Errors print the API's problem with its fields, and the exit
//! code says what kind of failure it was ([`Error::exit_code`], listed in docs/cli.md).

use std::io::Write as _;
use std::process::ExitCode;

use serde_json::Value;

pub mod client;
pub mod collector;
pub mod cost;
pub mod job;
pub mod login;
pub mod output;
pub mod project;
pub mod resource;
pub mod schedule;
pub mod service_account;

pub use client::Client;
pub use output::{Column, Format, Output};

use client::Problem;

/// The client commands, as `gleaner`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Store a server and API key for the commands below (in the user's config directory).
    Login(login::Args),
    /// Forget the stored server and key.
    Logout(login::LogoutArgs),
    /// Projects.
    Projects(project::Args),
    /// Service accounts and providers.
    ServiceAccounts(service_account::Args),
    /// Collectors and the plugin catalog.
    Collectors(collector::Args),
    /// A collector's schedules.
    Schedules(schedule::Args),
    /// Jobs and their tasks.
    Jobs(job::Args),
    /// Collect now; with --wait, follow the job to its end.
    Collect(job::CollectArgs),
    /// Collected resources and their history.
    Resources(resource::Args),
    /// Billing data.
    Costs(cost::Args),
}

/// Runs a client command to its exit code.
pub async fn run(cmd: Command) -> ExitCode {
    exit(async {
        let client = Client::from_login;
        match cmd {
            Command::Login(a) => login::login(a).await,
            Command::Logout(a) => login::logout(a),
            Command::Projects(a) => project::run(&client()?, a).await,
            Command::ServiceAccounts(a) => service_account::run(&client()?, a).await,
            Command::Collectors(a) => collector::run(&client()?, a).await,
            Command::Schedules(a) => schedule::run(&client()?, a).await,
            Command::Jobs(a) => job::run(&client()?, a).await,
            Command::Collect(a) => job::collect(&client()?, a).await,
            Command::Resources(a) => resource::run(&client()?, a).await,
            Command::Costs(a) => cost::run(&client()?, a).await,
        }
    })
    .await
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server configured, a bad URL, an unreadable login file.
    #[error("{0}")]
    Config(String),
    /// A bad argument the parser could not catch (a malformed `--options` file, say).
    #[error("{0}")]
    Usage(String),
    /// The API refused or failed the request.
    #[error("{}", .0.detail)]
    Problem(Box<Problem>),
    /// The server did not answer.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// The job ended in FAILURE or CANCELED.
    #[error("{0}")]
    JobFailed(String),
    /// `--timeout` passed before the job ended.
    #[error("{0}")]
    TimedOut(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The process's exit code: 2 is clap's for a usage error, the rest are ours.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Io(_) => 1,
            Self::Usage(_) => 2,
            Self::Config(_) => 3,
            Self::Problem(p) if p.status >= 500 => 5,
            Self::Problem(_) => 4,
            Self::Unreachable(_) => 5,
            Self::JobFailed(_) => 6,
            Self::TimedOut(_) => 7,
        }
    }

    /// Prints the error for a person: the problem's title and detail, each offending field on
    /// a line of its own, and a plugin's stderr when the API gave it.
    pub fn report(&self) {
        let mut err = std::io::stderr().lock();
        let _ = match self {
            Self::Problem(p) => {
                let _ = if p.title.is_empty() || p.detail.starts_with(&p.title) {
                    writeln!(err, "error: {} ({})", p.detail, p.status)
                } else {
                    writeln!(err, "error: {}: {} ({})", p.title, p.detail, p.status)
                };
                for f in &p.errors {
                    let _ = writeln!(err, "  {}: {}", f.field, f.detail);
                }
                if let Some(s) = p.stderr.as_deref().filter(|s| !s.trim().is_empty()) {
                    let _ = writeln!(err, "plugin stderr:\n{}", s.trim_end());
                }
                if p.status == 401 {
                    let _ = writeln!(
                        err,
                        "hint: run `gleaner login --server URL`, or set {}",
                        client::KEY_VAR
                    );
                }
                Ok(())
            }
            other => writeln!(err, "error: {other}"),
        };
    }
}

async fn exit<F>(f: F) -> ExitCode
where
    F: Future<Output = Result<(), Error>>,
{
    match f.await {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`gleaner jobs ls | head`) is not a failure.
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit_code())
        }
    }
}

/// Whether `s` is an id rather than a name.
pub(crate) fn is_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// The id of the item of `list_path` named `name_or_id`; an id is taken as given.
///
/// # Errors
/// [`Error::Problem`] (404) naming `what` when no item has that name, and (409) when several
/// have it, which happens only for nouns whose names are not unique.
pub(crate) async fn resolve(
    c: &Client,
    what: &str,
    list_path: &str,
    name_or_id: &str,
) -> Result<String, Error> {
    if is_id(name_or_id) {
        return Ok(name_or_id.to_owned());
    }
    let list = c.get(list_path, &[]).await?;
    let matches: Vec<&Value> = items(&list)
        .iter()
        .filter(|i| i.get("name").and_then(Value::as_str) == Some(name_or_id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(output::cell(output::at(one, "id"))),
        [] => Err(Error::Problem(Box::new(Problem {
            title: "Not found".into(),
            status: 404,
            detail: format!("no {what} is named `{name_or_id}`"),
            ..Problem::default()
        }))),
        many => Err(Error::Problem(Box::new(Problem {
            title: "Ambiguous name".into(),
            status: 409,
            detail: format!(
                "{} {what}s are named `{name_or_id}`; give an id: {}",
                many.len(),
                many.iter()
                    .map(|i| output::cell(output::at(i, "id")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ..Problem::default()
        }))),
    }
}

/// The `items` of a list answer.
pub(crate) fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `KEY=VALUE` pairs as a JSON object of strings.
///
/// # Errors
/// [`Error::Usage`] naming `flag` for a pair without `=`.
pub(crate) fn pairs(flag: &str, raw: &[String]) -> Result<serde_json::Map<String, Value>, Error> {
    raw.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Value::String(v.to_owned()))),
            _ => Err(Error::Usage(format!("{flag} `{p}`: expected KEY=VALUE"))),
        })
        .collect()
}

/// A JSON value given inline, as `@FILE`, or as `-` for standard input.
///
/// # Errors
/// [`Error::Usage`] naming `flag` when the file cannot be read or the text is not JSON.
pub(crate) fn json_arg(flag: &str, raw: &str) -> Result<Value, Error> {
    let text = if raw == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Error::Usage(format!("{flag}: reading standard input: {e}")))?
    } else if let Some(path) = raw.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("{flag}: {path}: {e}")))?
    } else {
        raw.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{flag}: not JSON: {e}")))
}

/// Asks on the terminal before something that cannot be undone; `--yes` skips it, and without
/// a terminal to ask on the answer is no.
///
/// # Errors
/// [`Error::Usage`] when the answer is not yes.
pub(crate) fn confirm(yes: bool, question: &str) -> Result<(), Error> {
    use std::io::IsTerminal as _;
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!("{question}: pass --yes to confirm")));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_json_arguments_say_what_is_wrong() {
        let p = pairs("--tag", &["env=prod".into(), "empty=".into()]).expect("pairs");
        assert_eq!(p["env"], "prod");
        assert_eq!(p["empty"], "");
        let e = pairs("--tag", &["env".into()]).expect_err("no =");
        assert_eq!(e.to_string(), "--tag `env`: expected KEY=VALUE");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(json_arg("--options", r#"{"a":1}"#).expect("json")["a"], 1);
        let e = json_arg("--options", "{").expect_err("not json");
        assert!(e.to_string().starts_with("--options: not JSON"), "{e}");
        let e = json_arg("--options", "@/nonexistent/x.json").expect_err("no file");
        assert!(
            e.to_string()
                .starts_with("--options: /nonexistent/x.json: "),
            "{e}"
        );
    }

    #[test]
    fn exit_codes_tell_failures_apart() {
        let problem = |status| {
            Error::Problem(Box::new(Problem {
                status,
                ..Problem::default()
            }))
        };
        assert_eq!(problem(409).exit_code(), 4);
        assert_eq!(problem(503).exit_code(), 5);
        assert_eq!(Error::Config(String::new()).exit_code(), 3);
        assert_eq!(Error::JobFailed(String::new()).exit_code(), 6);
        assert_eq!(Error::TimedOut(String::new()).exit_code(), 7);
    }
}
