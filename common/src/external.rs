//! The external plugin protocol: a plugin is an executable, in any language, that reads one
//! JSON request line on stdin and writes JSON lines on stdout (docs/plugins.md).
//!
//! - One process per call (`init`, `verify`, `collect`), started in its own process group so
//!   that a timeout or a stop kills whatever it spawned too.
//! - The request, with the credentials, goes through stdin: never through arguments or the
//!   environment, which other users of the host can read. The environment is cleared but for a
//!   few variables ([`PASSED_ENV`]), so Gleaner's own settings (its secret key) never reach a
//!   plugin.
//! - stdout carries protocol messages only; anything else there is an error ("garbage"), since a
//!   plugin that prints stray text cannot be trusted to report its items faithfully. stderr is
//!   free-form and its last [`STDERR_KEPT`] bytes are kept for the task.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::plugin::PluginKind;

/// The protocol version sent with every request.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest stdout line accepted: one item's JSON.
pub const MAX_LINE: usize = 16 << 20;
/// How much of the end of stderr is kept.
pub const STDERR_KEPT: usize = 64 << 10;
/// `init` and `verify` must answer within this, whatever the plugin's own timeout.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variables a plugin inherits; everything else is cleared.
pub const PASSED_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];
/// A plugin's default time limit for one collection.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 3600;

/// The protocol a private plugin speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// JSON lines on stdin and stdout, one process per call (this module).
    #[default]
    JsonLines,
    /// An unmodified Cloudforet (SpaceONE) plugin over gRPC: a process Gleaner keeps running,
    /// or an endpoint already serving (the `gleaner-cloudforet` crate).
    Cloudforet,
}

impl Runtime {
    fn is_json_lines(&self) -> bool {
        *self == Runtime::JsonLines
    }
}

/// How to run a plugin: its executable, arguments and time limit. Stored per version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// An executable: an absolute path, or a name looked up in `PATH`. Empty for a Cloudforet
    /// plugin reached at an [`Spec::endpoint`].
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// A collection still running after this long is killed and fails.
    pub timeout_seconds: u64,
    /// Rows stored before there was a choice have none: JSON lines.
    #[serde(default, skip_serializing_if = "Runtime::is_json_lines")]
    pub runtime: Runtime,
    /// Cloudforet: environment variables for the process, among the names the operator
    /// allows (`GLEANER_PLUGINS__ENV`). Never credentials: those go in each request.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Cloudforet: the port the process serves on, when it cannot be told one; otherwise
    /// Gleaner picks a free one and passes it (`SPACEONE_PORT`, `{port}` in `args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Cloudforet: the `http://host:port` of a plugin already serving, instead of a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Why no private plugin can be registered or run: no plugin directory.
pub const PRIVATE_DISABLED: &str = "private plugins are disabled: the operator sets GLEANER_PLUGINS__DIR to the directory their executables are installed in";

/// The executable `command` names, if it is inside the operator's plugin directory `dir`: a
/// relative command is taken relative to `dir`, and links are followed before the check, so
/// nothing outside `dir` can be run.
///
/// # Errors
/// No directory is configured, the command does not exist, or it is outside the directory; the
/// message says which, for the `command` field.
pub fn resolve_command(dir: Option<&Path>, command: &str) -> Result<std::path::PathBuf, String> {
    let Some(dir) = dir else {
        return Err(PRIVATE_DISABLED.to_owned());
    };
    let root = dir
        .canonicalize()
        .map_err(|e| format!("the plugin directory {} is unusable: {e}", dir.display()))?;
    let path = Path::new(command);
    let path = if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    };
    let real = path
        .canonicalize()
        .map_err(|e| format!("`{command}` was not found in the plugin directory: {e}"))?;
    if !real.starts_with(&root) || !real.is_file() {
        return Err(format!(
            "`{command}` is not a file inside the plugin directory {}",
            root.display()
        ));
    }
    // A plugin's own environment (a Python `.venv` with its `pip`) may sit beside its launcher:
    // what is hidden there is not for registrations to run.
    if real.strip_prefix(&root).is_ok_and(|rel| {
        rel.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    }) {
        return Err(format!(
            "`{command}` is in a hidden file or folder of the plugin directory, which plugins may not run"
        ));
    }
    Ok(real)
}

/// Checks one environment variable a Cloudforet plugin's registration sets: a plain name the
/// operator allows (`GLEANER_PLUGINS__ENV`), never one that changes how programs load or what
/// they run, and, for a URL or a proxy, a value that is an endpoint the operator allows.
///
/// # Errors
/// What is wrong, for the field `env.<name>`.
pub fn check_env(
    plugins: &crate::config::PluginSettings,
    access: &crate::access::Access,
    name: &str,
    value: &str,
) -> Result<(), crate::model::Invalid> {
    let field = format!("env.{name}");
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return Err(crate::model::Invalid::new(
            field,
            "must be a name of letters, digits and `_`, not starting with a digit",
        ));
    }
    let upper = name.to_ascii_uppercase();
    if NEVER_ENV.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => upper.starts_with(prefix),
        None => upper == *p,
    }) {
        return Err(crate::model::Invalid::new(
            field,
            "changes how the plugin's programs load or run, or what Gleaner sets itself: never allowed",
        ));
    }
    if !plugins.env_allowed(name) {
        return Err(crate::model::Invalid::new(
            field,
            "is not a variable the operator lets plugins set (GLEANER_PLUGINS__ENV)",
        ));
    }
    if upper.contains("URL")
        || upper.contains("PROXY")
        || upper.contains("ENDPOINT")
        || value.contains("://")
    {
        access.endpoint(&field, value, &[])?;
    }
    Ok(())
}

/// Variables no registration sets, whatever the operator's patterns: the loader's, the
/// interpreters' start-up hooks, the search paths, and what Gleaner sets itself.
const NEVER_ENV: [&str; 12] = [
    "LD_*",
    "PYTHON*",
    "PATH",
    "HOME",
    "SPACEONE_*",
    "PERL5*",
    "RUBY*",
    "NODE_OPTIONS",
    "BASH_ENV",
    "ENV",
    "IFS",
    "GLEANER_*",
];

/// What `init` answers: the catalog entry of the plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: PluginKind,
    /// Service accounts of this provider are linked to the plugin's collectors.
    pub provider: String,
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// A JSON Schema for the collector's `options`; any object when absent.
    #[serde(default = "any_object")]
    pub options_schema: Value,
    /// What a Cloudforet plugin's `init` answered (its supported resource types, features,
    /// schedules and options schema), kept as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_metadata: Option<Value>,
    /// The metrics a metric data source collects, per resource type.
    #[serde(default)]
    pub metrics: Vec<crate::metric::MetricInfo>,
}

fn any_object() -> Value {
    json!({"type": "object"})
}

/// A line a plugin writes on stdout.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// The answer to `init`.
    Metadata(Metadata),
    /// The answer to `verify`: options and credentials work.
    Verified,
    /// One resource (`collect`).
    Resource {
        resource_type: String,
        resource_key: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        region: Option<String>,
        data: Map<String, Value>,
    },
    /// One cost record (`collect` of a cost data source), in FOCUS's terms.
    Cost(Box<crate::billing::CostItem>),
    /// One metric sample (`collect` of a metric data source) of one of the task's resources.
    Sample {
        resource_id: crate::id::ResourceId,
        metric: String,
        time: chrono::DateTime<chrono::Utc>,
        value: f64,
    },
    /// One item that could not be collected; the collection goes on.
    Error {
        message: String,
        #[serde(default)]
        resource_type: Option<String>,
        #[serde(default)]
        resource_key: Option<String>,
    },
    /// The last line of a complete `collect`.
    Done,
}

/// Why a call failed. Each message is written for the user who registered the plugin.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "line {line} of its output is not a protocol message ({reason}); the line starts with: {start}"
    )]
    Garbage {
        line: u64,
        reason: String,
        start: String,
    },
    #[error("it did not finish within {0} s (timeout_seconds) and was killed")]
    Timeout(u64),
    #[error("it exited with {status}{}", last_line(.stderr))]
    Exited {
        status: String,
        /// The exit code, when it exited rather than being killed by a signal.
        code: Option<i32>,
        stderr: String,
    },
    #[error("it exited without writing {expected}")]
    Incomplete { expected: &'static str },
    #[error("reading its output failed: {0}")]
    Io(std::io::Error),
}

/// A plugin program as every runtime starts it: a cleared environment but for
/// [`PASSED_ENV`], its own process group (so that a stop reaches what it spawned), killed when
/// its handle is dropped, and run from its own directory. Arguments and pipes are the caller's.
#[must_use]
pub fn plugin_command(command: &str) -> Command {
    let mut cmd = Command::new(command);
    cmd.env_clear()
        .envs(
            PASSED_ENV
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = Path::new(command).parent().filter(|d| d.is_absolute()) {
        cmd.current_dir(dir);
    }
    cmd
}

/// `": <the last non-blank line>"` of a plugin's output, for an error message; empty when it
/// wrote nothing.
#[must_use]
pub fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

/// The end of a plugin's stderr, shared with the task reading it. More than is shown is kept,
/// so that credentials are redacted before the text is cut: a cut inside a value would leave a
/// part no pattern matches.
#[derive(Clone, Debug, Default)]
struct StderrTail {
    buf: Arc<Mutex<Vec<u8>>>,
    redactor: Arc<Redactor>,
}

impl StderrTail {
    fn margin(&self) -> usize {
        self.redactor.longest() * 2 + 64
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buf.extend_from_slice(bytes);
        let keep = STDERR_KEPT + self.margin();
        if buf.len() > keep {
            let cut = buf.len() - keep;
            buf.drain(..cut);
        }
    }

    /// The last [`STDERR_KEPT`] bytes, redacted (invalid UTF-8 replaced).
    fn text(&self) -> String {
        let buf = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let redacted = self.redactor.apply(&String::from_utf8_lossy(&buf));
        shown_end(redacted, buf.len() > STDERR_KEPT)
    }
}

/// A running call: read its messages with [`Session::next`], then [`Session::finish`].
/// Dropping a session kills the plugin's process group.
pub struct Session {
    child: Child,
    pgid: Option<i32>,
    lines: FramedRead<ChildStdout, LinesCodec>,
    line: u64,
    stderr: StderrTail,
    redactor: Arc<Redactor>,
    stderr_reader: tokio::task::JoinHandle<()>,
    deadline: Instant,
    timeout_seconds: u64,
}

impl Session {
    /// Starts `spec` and sends it `method` with `params`.
    ///
    /// # Errors
    /// The executable could not be started or did not take its request.
    pub async fn start(
        spec: &Spec,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Self, ProtocolError> {
        let mut cmd = plugin_command(&spec.command);
        cmd.args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ProtocolError::Spawn {
            command: spec.command.clone(),
            source,
        })?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let redactor = Arc::new(
            params
                .get("secret")
                .and_then(Value::as_object)
                .map(Redactor::new)
                .unwrap_or_default(),
        );
        let stderr = StderrTail {
            buf: Arc::default(),
            redactor: redactor.clone(),
        };
        let mut err_pipe = child.stderr.take().ok_or_else(|| pipe_missing("stderr"))?;
        let tail = stderr.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.push(&buf[..n]);
            }
        });
        let stdout = child.stdout.take().ok_or_else(|| pipe_missing("stdout"))?;
        let mut session = Self {
            child,
            pgid,
            lines: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE)),
            line: 0,
            stderr,
            redactor,
            stderr_reader,
            deadline: Instant::now() + timeout,
            timeout_seconds: timeout.as_secs(),
        };
        let mut request = serde_json::to_vec(
            &json!({"protocol": PROTOCOL_VERSION, "method": method, "params": params}),
        )
        .map_err(|e| ProtocolError::Io(std::io::Error::other(e)))?;
        request.push(b'\n');
        let mut stdin = session
            .child
            .stdin
            .take()
            .ok_or_else(|| pipe_missing("stdin"))?;
        // A plugin that exits without reading its request closes the pipe: that is reported by
        // its exit status, not as a write error. One that never reads it cannot block the call
        // past its deadline.
        let deadline = session.deadline;
        let _ = tokio::time::timeout_at(deadline, stdin.write_all(&request)).await;
        drop(stdin);
        Ok(session)
    }

    /// The next message; `None` once the plugin closed its stdout.
    ///
    /// # Errors
    /// Garbage on stdout, a read error, or the deadline passed.
    pub async fn next(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            let line = match tokio::time::timeout_at(self.deadline, self.lines.next()).await {
                Err(_) => return Err(ProtocolError::Timeout(self.timeout_seconds)),
                Ok(None) => return Ok(None),
                Ok(Some(Ok(line))) => line,
                Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                    return Err(self.garbage(format!("longer than {MAX_LINE} bytes"), ""));
                }
                Ok(Some(Err(LinesCodecError::Io(e)))) => {
                    return Err(if e.kind() == std::io::ErrorKind::InvalidData {
                        self.garbage("not UTF-8".into(), "")
                    } else {
                        ProtocolError::Io(e)
                    });
                }
            };
            self.line += 1;
            if !line.trim().is_empty() {
                return serde_json::from_str(&line)
                    .map(Some)
                    .map_err(|e| self.garbage(e.to_string(), &line));
            }
        }
    }

    fn garbage(&self, reason: String, line: &str) -> ProtocolError {
        ProtocolError::Garbage {
            line: self.line + u64::from(line.is_empty()),
            reason: self.redactor.apply(&reason),
            // Redacted before it is cut, so no part of a value is left.
            start: self.redactor.apply(line).chars().take(120).collect(),
        }
    }

    /// Waits for the plugin to exit; an exit status other than 0 is an error.
    ///
    /// # Errors
    /// A non-zero exit, or the deadline passed.
    pub async fn finish(&mut self) -> Result<(), ProtocolError> {
        let status = match tokio::time::timeout_at(self.deadline, self.child.wait()).await {
            Err(_) => return Err(ProtocolError::Timeout(self.timeout_seconds)),
            Ok(Err(e)) => return Err(ProtocolError::Io(e)),
            Ok(Ok(status)) => status,
        };
        // stderr is complete once its pipe closed; a grandchild may keep it open, so bounded.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr_reader).await;
        if status.success() {
            Ok(())
        } else {
            Err(ProtocolError::Exited {
                status: describe(status),
                code: status.code(),
                stderr: self.stderr.text(),
            })
        }
    }

    /// The end of what the plugin wrote on stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Asks the plugin to stop (SIGTERM to its process group), and kills the group if it has
    /// not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                    "the plugin did not stop on SIGTERM within the grace period; killing it"
                );
            }
        }
        self.kill();
    }

    /// Kills the plugin and everything in its process group.
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
    }

    /// Reads messages to the end and checks the exit: for `init` and `verify`, which answer
    /// with one message.
    async fn answer(&mut self) -> Result<Vec<Message>, ProtocolError> {
        let mut messages = Vec::new();
        while let Some(m) = self.next().await? {
            messages.push(m);
        }
        self.finish().await?;
        Ok(messages)
    }
}

impl ProtocolError {
    /// Whether the plugin said a later attempt may succeed: it exited with
    /// [`EXIT_TEMPORARY`].
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            ProtocolError::Exited {
                code: Some(EXIT_TEMPORARY),
                ..
            }
        )
    }
}

/// The exit code by which a plugin says its failure is temporary (an endpoint unreachable, a
/// rate limit): `EX_TEMPFAIL` of sysexits.h. The task then runs again after a backoff.
pub const EXIT_TEMPORARY: i32 = 75;

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
        self.stderr_reader.abort();
    }
}

fn pipe_missing(which: &str) -> ProtocolError {
    ProtocolError::Io(std::io::Error::other(format!("no {which} pipe")))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// A failed call, with the plugin's stderr.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CallError {
    pub error: ProtocolError,
    pub stderr: String,
}

/// Runs `init`: what the plugin says it is.
///
/// # Errors
/// The plugin failed or did not answer with exactly one `metadata` message.
pub async fn init(spec: &Spec) -> Result<Metadata, CallError> {
    ask(
        spec,
        "init",
        json!({}),
        "exactly one `metadata` line",
        |m| match m {
            Message::Metadata(meta) => Some(meta),
            _ => None,
        },
    )
    .await
}

/// Runs `verify` with options and credentials.
///
/// # Errors
/// The plugin refused them (its stderr says why) or did not answer `verified`.
pub async fn verify(
    spec: &Spec,
    options: &Value,
    secret: &Map<String, Value>,
) -> Result<(), CallError> {
    let params = json!({"options": options, "secret": secret});
    ask(spec, "verify", params, "one `verified` line", |m| {
        (m == Message::Verified).then_some(())
    })
    .await
}

/// Runs a call that answers with exactly one message, which `pick` accepts; a failure carries
/// the plugin's stderr.
async fn ask<T>(
    spec: &Spec,
    method: &str,
    params: Value,
    expected: &'static str,
    pick: impl FnOnce(Message) -> Option<T>,
) -> Result<T, CallError> {
    let mut session = Session::start(spec, method, params, INIT_TIMEOUT)
        .await
        .map_err(|error| CallError {
            error,
            stderr: String::new(),
        })?;
    let answer = session.answer().await;
    let stderr = session.stderr();
    let mut messages = match answer {
        Ok(m) => m.into_iter(),
        Err(error) => return Err(CallError { error, stderr }),
    };
    match (messages.next().and_then(pick), messages.next()) {
        (Some(picked), None) => Ok(picked),
        _ => Err(CallError {
            error: ProtocolError::Incomplete { expected },
            stderr,
        }),
    }
}

/// Replaces credential values in text a plugin wrote, so that what it echoes of its secrets is
/// not stored with the task or shown by the API: each value of 4 characters or more, as is and
/// as JSON escapes it (a plugin that prints its request), and each line of 16 characters or more
/// of a multi-line value (a PEM key printed as is).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is replaced whole.
    patterns: Vec<String>,
}

impl Redactor {
    #[must_use]
    pub fn new(secret: &Map<String, Value>) -> Self {
        let mut patterns = Vec::new();
        for v in secret.values() {
            let Some(raw) = v.as_str() else { continue };
            if raw.chars().count() < 4 {
                continue;
            }
            patterns.push(raw.to_owned());
            if let Ok(escaped) = serde_json::to_string(raw) {
                let inner = escaped[1..escaped.len() - 1].to_owned();
                if inner != raw {
                    patterns.push(inner);
                }
            }
            if raw.contains('\n') {
                patterns.extend(
                    raw.lines()
                        .map(str::trim)
                        .filter(|l| l.len() >= 16)
                        .map(String::from),
                );
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        Self { patterns }
    }

    /// Also redacts the values of `secret`: a process serving many requests may echo any of
    /// their credentials.
    pub fn add(&mut self, secret: &Map<String, Value>) {
        let more = Self::new(secret);
        self.patterns.extend(more.patterns);
        // By length then text, so that equal patterns meet and go.
        self.patterns
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.patterns.dedup();
    }

    /// Longest pattern, in bytes: a cut of the text must keep this much before what it shows.
    fn longest(&self) -> usize {
        self.patterns.first().map_or(0, String::len)
    }

    #[must_use]
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

/// [`Redactor::apply`] with the values of `secret`.
#[must_use]
pub fn redact(text: &str, secret: &Map<String, Value>) -> String {
    Redactor::new(secret).apply(text)
}

/// What is shown of a plugin's redacted output: its last [`STDERR_KEPT`] bytes. When the
/// text was cut (here, or before it was redacted: `cut`), its front line goes too: it may hold
/// the end of a value cut off before redaction could match it.
#[must_use]
pub fn shown_end(redacted: String, cut: bool) -> String {
    if !cut && redacted.len() <= STDERR_KEPT {
        return redacted;
    }
    let t = tail(&redacted, STDERR_KEPT);
    t.split_once('\n').map_or(t, |(_, rest)| rest).to_owned()
}

/// The last `n` bytes of `text`, cut at a character boundary.
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_seconds: u64) -> Spec {
        Spec {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout_seconds,
            ..Spec::default()
        }
    }

    async fn collect(spec: &Spec) -> (Vec<Message>, Result<(), ProtocolError>, String) {
        let mut s = Session::start(
            spec,
            "collect",
            json!({}),
            Duration::from_secs(spec.timeout_seconds),
        )
        .await
        .expect("start");
        let mut out = Vec::new();
        let r = loop {
            match s.next().await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break s.finish().await,
                Err(e) => break Err(e),
            }
        };
        (out, r, s.stderr())
    }

    #[tokio::test]
    async fn reads_messages_and_the_request() {
        let spec = sh(
            r#"read req; echo "$req" >&2
echo '{"type":"resource","resource_type":"t","resource_key":"k","data":{"a":1}}'
echo
echo '{"type":"error","message":"no access","resource_key":"k2"}'
echo '{"type":"done"}'"#,
            10,
        );
        let (msgs, r, stderr) = collect(&spec).await;
        r.expect("exit 0");
        assert_eq!(msgs.len(), 3);
        assert!(matches!(&msgs[0], Message::Resource { resource_key, .. } if resource_key == "k"));
        assert!(matches!(&msgs[1], Message::Error { message, .. } if message == "no access"));
        assert_eq!(msgs[2], Message::Done);
        assert!(stderr.contains(r#""method":"collect""#), "{stderr}");
        assert!(stderr.contains(r#""protocol":1"#), "{stderr}");
    }

    #[tokio::test]
    async fn cost_lines_keep_every_digit() {
        let spec = sh(
            r#"echo '{"type":"cost","charge_period_start":"2024-09-18T22:00:00Z","provider":"AWS","billing_account_id":"1234567890123","currency":"USD","billed_cost":"0.00000080000","effective_cost":"-2.61370000000"}'
echo '{"type":"done"}'"#,
            10,
        );
        let (msgs, result, _) = collect(&spec).await;
        result.expect("a clean run");
        let Message::Cost(c) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        assert_eq!(c.billed_cost.to_string(), "0.00000080000");
        assert_eq!(c.effective_cost.to_string(), "-2.61370000000");
        assert_eq!(c.list_cost, rust_decimal::Decimal::ZERO, "absent is zero");
        let float = sh(
            r#"echo '{"type":"cost","charge_period_start":"2024-09-18T22:00:00Z","provider":"AWS","billing_account_id":"1","currency":"USD","billed_cost":0.1}'"#,
            10,
        );
        let (_, result, _) = collect(&float).await;
        assert!(result.is_err(), "a float amount is refused, not rounded");
    }

    #[tokio::test]
    async fn garbage_names_the_line() {
        let spec = sh(
            r#"echo '{"type":"done"}'; echo 'Traceback (most recent call last):'"#,
            10,
        );
        let (_, r, _) = collect(&spec).await;
        match r {
            Err(ProtocolError::Garbage { line, start, .. }) => {
                assert_eq!(line, 2);
                assert!(start.starts_with("Traceback"));
            }
            other => panic!("{other:?}"),
        }
        let unknown = sh(r#"echo '{"type":"resource","resource_type":"t"}'"#, 10);
        assert!(matches!(
            collect(&unknown).await.1,
            Err(ProtocolError::Garbage { line: 1, .. })
        ));
    }

    #[tokio::test]
    async fn a_hang_is_killed_with_its_children() {
        let started = std::time::Instant::now();
        let spec = sh("sleep 30 & sleep 30; echo '{\"type\":\"done\"}'", 1);
        let (_, r, _) = collect(&spec).await;
        assert!(matches!(r, Err(ProtocolError::Timeout(1))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Starts `script` and waits for its first message, so its traps are set.
    async fn running(script: &str) -> Session {
        let mut s = Session::start(
            &sh(script, 60),
            "collect",
            json!({}),
            Duration::from_secs(60),
        )
        .await
        .expect("start");
        assert!(matches!(s.next().await, Ok(Some(_))));
        s
    }

    const RESOURCE: &str =
        r#"echo '{"type":"resource","resource_type":"t","resource_key":"k","data":{}}'"#;

    #[tokio::test]
    async fn stop_asks_with_sigterm_then_kills_after_the_grace_period() {
        // A plugin that exits on SIGTERM stops at once, long before the grace period ends.
        let mut polite = running(&format!(
            "trap 'exit 0' TERM; {RESOURCE}; while :; do sleep 0.05; done"
        ))
        .await;
        let started = std::time::Instant::now();
        polite.stop(Duration::from_secs(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // One that ignores it is killed when the grace period is over.
        let mut stubborn = running(&format!(
            "trap '' TERM; {RESOURCE}; while :; do sleep 0.05; done"
        ))
        .await;
        let started = std::time::Instant::now();
        stubborn.stop(Duration::from_millis(500)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let end = tokio::time::timeout(Duration::from_secs(3), stubborn.next()).await;
        assert!(
            matches!(end, Ok(Ok(None) | Err(_))),
            "the plugin is gone: {end:?}"
        );
    }

    #[tokio::test]
    async fn exit_75_says_the_failure_is_temporary() {
        let (_, r, _) = collect(&sh("exit 75", 10)).await;
        assert!(r.expect_err("exit 75").is_temporary());
        let (_, r, _) = collect(&sh("exit 3", 10)).await;
        assert!(!r.expect_err("exit 3").is_temporary());
    }

    #[tokio::test]
    async fn exit_status_and_stderr_make_the_error() {
        let spec = sh(
            "echo 'starting' >&2; echo 'bad credentials' >&2; exit 3",
            10,
        );
        let (_, r, stderr) = collect(&spec).await;
        let e = r.expect_err("exit 3");
        assert_eq!(e.to_string(), "it exited with status 3: bad credentials");
        assert!(stderr.starts_with("starting"));
        let missing = Spec {
            command: "/nonexistent/plugin".into(),
            timeout_seconds: 1,
            ..Spec::default()
        };
        let e = init(&missing).await.expect_err("missing");
        assert!(
            e.to_string()
                .contains("could not start `/nonexistent/plugin`")
        );
    }

    #[tokio::test]
    async fn init_wants_one_metadata_line() {
        let ok = sh(
            r#"echo '{"type":"metadata","name":"X","kind":"collector","provider":"demo"}'"#,
            10,
        );
        let m = init(&ok).await.expect("metadata");
        assert_eq!(m.provider, "demo");
        assert_eq!(m.options_schema, json!({"type": "object"}));
        let none = sh("exit 0", 10);
        assert!(matches!(
            init(&none).await.map_err(|e| e.error),
            Err(ProtocolError::Incomplete { .. })
        ));
    }

    #[test]
    fn commands_run_only_from_the_plugin_directory() {
        let dir = std::env::temp_dir().join(format!("gleaner-plugins-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        std::fs::write(dir.join("sub/p.sh"), "#!/bin/sh\n").expect("file");
        std::os::unix::fs::symlink("/bin/sh", dir.join("escape")).expect("link");
        let ok = resolve_command(Some(&dir), "sub/p.sh").expect("inside");
        assert!(ok.ends_with("sub/p.sh"));
        assert_eq!(
            resolve_command(Some(&dir), &ok.to_string_lossy()).expect("absolute inside"),
            ok
        );
        for bad in ["/bin/sh", "../../bin/sh", "escape", "sub", "missing"] {
            assert!(resolve_command(Some(&dir), bad).is_err(), "{bad}");
        }
        let off = resolve_command(None, "sub/p.sh").expect_err("disabled");
        assert!(off.contains("GLEANER_PLUGINS__DIR"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[tokio::test]
    async fn echoed_secrets_are_redacted_escaped_and_before_any_cut() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----";
        let params = json!({"secret": {"private_key": key, "token": "tok-1234567890"}});
        // Echoes the request (JSON-escaped key) to stderr, then 70 KB so the tail is cut, then
        // the token raw at the very start of what is kept; then garbage holding the token past
        // the 120 characters shown.
        let script = r#"read -r req; echo "$req" >&2
head -c 70000 /dev/zero | tr '\0' x >&2; echo >&2; echo "tok-1234567890 raw" >&2
printf '%0130d tok-1234567890\n' 0"#;
        let spec = sh(script, 10);
        let mut s = Session::start(&spec, "collect", params, Duration::from_secs(10))
            .await
            .expect("start");
        let garbage = s.next().await.expect_err("garbage");
        let _ = s.finish().await;
        let stderr = s.stderr();
        assert!(!stderr.contains("tok-1234567890"), "raw token kept");
        assert!(stderr.contains("[REDACTED] raw"));
        assert!(stderr.len() <= STDERR_KEPT);
        assert!(!garbage.to_string().contains("tok-12345"), "{garbage}");
        // The whole request, escaped key included, is redacted when nothing is cut.
        let spec = sh(r#"read -r req; echo "$req" >&2; exit 1"#, 10);
        let params = json!({"secret": {"private_key": key}});
        let mut s = Session::start(&spec, "verify", params, Duration::from_secs(10))
            .await
            .expect("start");
        let e = s.answer().await.expect_err("exit 1");
        let all = format!("{e} {}", s.stderr());
        assert!(!all.contains("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"), "{all}");
        assert!(all.contains("[REDACTED]"), "{all}");
    }

    #[test]
    fn plugin_environments_are_the_operators_to_allow() {
        let plugins = crate::config::PluginSettings {
            env: vec!["AWS_ENDPOINT_URL*".into(), "REGION".into(), "*".into()],
            ..crate::config::PluginSettings::default()
        };
        let access = crate::access::Access::new(&[], &["http://127.0.0.1:*".to_owned()]).unwrap();
        let check = |name: &str, value: &str| check_env(&plugins, &access, name, value);
        assert!(check("AWS_ENDPOINT_URL", "http://127.0.0.1:5000").is_ok());
        assert!(check("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:5000").is_ok());
        assert!(check("REGION", "us-east-1").is_ok());
        // Not an allowed endpoint, or not a URL where one is expected.
        assert!(check("AWS_ENDPOINT_URL", "http://169.254.169.254").is_err());
        assert!(check("HTTPS_PROXY", "evil:3128").is_err());
        // A name that smuggles a value, and names no pattern may allow ("*" included).
        assert!(check("AWS_ENDPOINT_URL=http://evil/#", "").is_err());
        for name in [
            "LD_PRELOAD",
            "PYTHONPATH",
            "pythonstartup",
            "PATH",
            "SPACEONE_PORT",
            "GLEANER_SECRET_KEY",
        ] {
            let e = check(name, "x").expect_err(name);
            assert_eq!(e.field, format!("env.{name}"));
        }
        let none = crate::config::PluginSettings::default();
        assert!(
            check_env(&none, &access, "REGION", "x").is_err(),
            "nothing is allowed by default"
        );
    }

    #[test]
    fn hidden_files_of_the_plugin_directory_are_not_runnable() {
        let dir = std::env::temp_dir().join(format!("gleaner-hidden-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".venv/bin")).unwrap();
        std::fs::write(dir.join(".venv/bin/pip"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").unwrap();
        assert!(resolve_command(Some(&dir), "run.sh").is_ok());
        let e = resolve_command(Some(&dir), ".venv/bin/pip").unwrap_err();
        assert!(e.contains("hidden"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn redact_hides_every_secret_value() {
        let secret: Map<String, Value> = serde_json::from_value(json!({
            "key": "AKIAXYZ", "long": "AKIAXYZ-and-more", "short": "ab", "n": 5
        }))
        .expect("map");
        let out = redact("got AKIAXYZ-and-more and AKIAXYZ and ab", &secret);
        assert_eq!(out, "got [REDACTED] and [REDACTED] and ab");
    }
}
