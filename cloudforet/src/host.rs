//! The plugin processes a worker keeps running, and the channels to them.
//!
//! A Cloudforet plugin is a server: it is started once, on a free loopback port, and then
//! serves every task of its plugin version until it has been idle for a while. A [`Lease`]
//! is one task's use of it.
//! - Start: the command (already resolved inside the operator's plugin directory) runs in its
//!   own process group with a cleared environment, the registration's allowed variables and
//!   `SPACEONE_PORT`; `{port}` in its arguments becomes the port. It is ready once gRPC health
//!   answers SERVING; `ServerInfo/get_version` then says what it runs.
//! - Crash: a lease finding the process gone starts it again; a task that lost its stream
//!   fails as temporary and its next attempt gets the new process.
//! - Idle: a process without a lease for `idle` is stopped (SIGTERM, then SIGKILL).
//! - Output: stdout and stderr go to one tail; a lease hands out what was written while it
//!   lasted, with every credential sent to the process redacted. Plugins log their requests,
//!   `secret_data` included, in clear text.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use gleaner_common::external::{Redactor, STDERR_KEPT, Spec, last_line, plugin_command, shown_end};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::client::Client;

/// How long a started process may take to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process asked to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A running process must answer its health check within this to serve another task.
const REUSE_CHECK: Duration = Duration::from_secs(10);

/// Fixed ports (a registration's `port`) this process's plugins serve on: a second plugin is
/// refused one, since the Python server shares a port it binds with SO_REUSEPORT and either
/// process could then answer the other's calls.
static FIXED_PORTS: std::sync::LazyLock<Mutex<std::collections::HashSet<u16>>> =
    std::sync::LazyLock::new(Mutex::default);

/// Why a plugin could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "port {0} is already in use on this host: the plugin cannot serve on it (choose another `port`, or leave it out so that Gleaner picks a free one)"
    )]
    PortTaken(u16),
    #[error("no free loopback port: {0}")]
    NoPort(std::io::Error),
    #[error("it exited with {status} before serving{}", last_line(.output))]
    Exited { status: String, output: String },
    #[error(
        "it did not answer its gRPC health check within {} s and was stopped{}",
        .waited.as_secs(), last_line(.output)
    )]
    NotReady { waited: Duration, output: String },
    #[error("its endpoint `{0}` is not a usable URL")]
    Endpoint(String),
}

impl StartError {
    /// What the process wrote before it failed, redacted.
    #[must_use]
    pub fn output(&self) -> &str {
        match self {
            Self::Exited { output, .. } | Self::NotReady { output, .. } => output,
            _ => "",
        }
    }
}

/// One plugin's process, if running: locked while it starts, so that two tasks asking at once
/// start one.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Proc>>>>;

/// The plugin processes of one worker (or of one registration on the API host).
pub struct Host {
    slots: Mutex<HashMap<String, Slot>>,
    idle: Duration,
    reaper: std::sync::Once,
}

impl Default for Host {
    /// Processes idle for 5 minutes are stopped.
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            idle: Duration::from_secs(300),
            reaper: std::sync::Once::new(),
        }
    }
}

impl Host {
    /// Processes idle for `idle` are stopped.
    #[must_use]
    pub fn new(idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle,
            ..Self::default()
        })
    }

    /// A lease on the plugin `key` (one per plugin version) run by `spec`, for a request
    /// carrying `secret`: the process is started if it is not running.
    ///
    /// # Errors
    /// The process could not be started, or did not become ready.
    pub async fn lease(
        self: &Arc<Self>,
        key: &str,
        spec: &Spec,
        secret: &Map<String, Value>,
    ) -> Result<Lease, StartError> {
        if let Some(endpoint) = &spec.endpoint {
            return Ok(Lease {
                client: Client::new(channel_to(endpoint)?),
                proc: None,
                from: 0,
            });
        }
        self.start_reaper();
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone();
        let mut running = slot.lock().await;
        if let Some(p) = running.as_ref() {
            if p.killed.load(Ordering::SeqCst) {
                running.take();
            } else if let Some(status) = p.exited() {
                tracing::warn!(plugin = key, %status, "the plugin process exited; starting it again");
                running.take();
            } else if !Client::new(p.channel.clone()).serving(REUSE_CHECK).await {
                tracing::warn!(
                    plugin = key,
                    "the plugin process stopped answering; starting another"
                );
                p.kill();
                running.take();
            }
        }
        let proc = match running.as_ref() {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(Proc::start(spec).await?);
                tracing::info!(plugin = key, port = p.port, version = %p.version, "plugin process started");
                *running = Some(p.clone());
                p
            }
        };
        proc.leases.fetch_add(1, Ordering::SeqCst);
        proc.redactor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(secret);
        Ok(Lease {
            client: Client::new(proc.channel.clone()),
            from: proc.output.written(),
            proc: Some(proc),
        })
    }

    /// Stops every process (the worker is shutting down).
    pub async fn shutdown(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let Some(p) = slot.lock().await.take() {
                p.stop().await;
            }
        }
    }

    /// How many plugin processes run.
    pub async fn running(&self) -> usize {
        let slots: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut n = 0;
        for slot in slots {
            if slot
                .lock()
                .await
                .as_ref()
                .is_some_and(|p| p.exited().is_none())
            {
                n += 1;
            }
        }
        n
    }

    fn start_reaper(self: &Arc<Self>) {
        let host = Arc::downgrade(self);
        let every = (self.idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        self.reaper.call_once(|| {
            tokio::spawn(reap(host, every));
        });
    }
}

/// Stops processes idle for the host's `idle`; ends with the host.
async fn reap(host: Weak<Host>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(host) = host.upgrade() else { return };
        let slots: Vec<(String, _)> = host
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, slot) in slots {
            let mut running = slot.lock().await;
            let idle = running.as_ref().is_some_and(|p| {
                p.leases.load(Ordering::SeqCst) == 0
                    && p.idle_since
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .elapsed()
                        >= host.idle
            });
            if idle && let Some(p) = running.take() {
                tracing::info!(plugin = key, "stopping the idle plugin process");
                p.stop().await;
            }
        }
    }
}

/// A channel to `endpoint` (`http://host:port`), connected on first use.
fn channel_to(endpoint: &str) -> Result<Channel, StartError> {
    Ok(Endpoint::from_shared(endpoint.to_owned())
        .map_err(|_| StartError::Endpoint(endpoint.to_owned()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// One task's use of a plugin.
pub struct Lease {
    client: Client,
    proc: Option<Arc<Proc>>,
    /// Where the process's output stood when the lease began.
    from: u64,
}

impl Lease {
    /// The plugin's services.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What the process wrote while this lease lasted (its last [`STDERR_KEPT`] bytes), with
    /// every credential sent to it redacted; empty for a plugin Gleaner did not start.
    #[must_use]
    pub fn output(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.output_since(self.from))
            .unwrap_or_default()
    }

    /// How the process ended, if it did while in use (a crash): a call that broke then is
    /// worth another attempt, on a new process.
    #[must_use]
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc.as_ref().and_then(|p| p.exited())
    }

    /// Kills the process (it stopped answering): the next lease starts a new one.
    pub fn kill(&self) {
        if let Some(p) = &self.proc {
            p.kill();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(p) = &self.proc {
            *p.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            p.leases.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A running plugin process.
struct Proc {
    child: Mutex<Child>,
    pgid: Option<i32>,
    port: u16,
    channel: Channel,
    version: String,
    output: Tail,
    redactor: Mutex<Redactor>,
    leases: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Killed by Gleaner: gone, even before the kernel has reaped it.
    killed: std::sync::atomic::AtomicBool,
    /// Its registration's fixed port, held in [`FIXED_PORTS`] while it lives.
    _fixed: Option<FixedPort>,
}

/// A fixed port held in [`FIXED_PORTS`], given back when dropped.
struct FixedPort(u16);

impl Drop for FixedPort {
    fn drop(&mut self) {
        FIXED_PORTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

impl Proc {
    async fn start(spec: &Spec) -> Result<Self, StartError> {
        // A fixed port is held from here: given back if the start fails, or when the process
        // it started is dropped.
        let (port, held) = match spec.port {
            Some(p) => {
                if !FIXED_PORTS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(p)
                {
                    return Err(StartError::PortTaken(p));
                }
                let held = FixedPort(p);
                ensure_free(p)?;
                (p, Some(held))
            }
            None => (free_port()?, None),
        };
        let args = spec
            .args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()));
        let mut cmd = plugin_command(&spec.command);
        cmd.args(args)
            .envs(&spec.env)
            .env("SPACEONE_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
            command: spec.command.clone(),
            source,
        })?;
        let output = Tail::default();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, output.clone()));
        }
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let channel = channel_to(&format!("http://127.0.0.1:{port}"))?;
        let mut proc = Self {
            child: Mutex::new(child),
            pgid,
            port,
            _fixed: held,
            channel: channel.clone(),
            version: String::new(),
            output,
            redactor: Mutex::default(),
            leases: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            killed: std::sync::atomic::AtomicBool::new(false),
        };
        let client = Client::new(channel);
        let started = Instant::now();
        loop {
            if let Some(status) = proc.exited() {
                return Err(StartError::Exited {
                    status: status.to_string(),
                    output: proc.output_since(0),
                });
            }
            if client.serving(Duration::from_secs(2)).await {
                break;
            }
            if started.elapsed() >= START_TIMEOUT {
                proc.kill();
                return Err(StartError::NotReady {
                    waited: START_TIMEOUT,
                    output: proc.output_since(0),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Older plugins lack ServerInfo: the version is only for the log.
        proc.version = client
            .version()
            .await
            .unwrap_or_else(|_| "unknown".to_owned());
        Ok(proc)
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_wait()
            .ok()
            .flatten()
    }

    fn output_since(&self, from: u64) -> String {
        let (mut bytes, cut) = self.output.since(from);
        if cut {
            // The front was dropped mid-line: a value there may be cut past redaction.
            let start = bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            bytes.drain(..start);
        }
        let text = self
            .redactor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(&String::from_utf8_lossy(&bytes));
        // Its cut front line is gone already.
        shown_end(text, false)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
        }
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .start_kill();
    }

    async fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while self.exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Its children too: a plugin's server may run workers of its own.
        self.kill();
    }
}

/// Copies a pipe into the tail until it closes, whole lines at a time: stdout and stderr share
/// the tail, and a credential split between two chunks with the other pipe's text between
/// them would match no redaction.
async fn pump(mut pipe: impl AsyncRead + Unpin, tail: Tail) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().rposition(|&b| b == b'\n') {
            tail.push(&line[..=end]);
            line.drain(..=end);
        } else if line.len() > LONGEST_LINE {
            tail.push(&line);
            line.clear();
        }
    }
    if !line.is_empty() {
        tail.push(&line);
    }
}

/// A line longer than this is kept in pieces.
const LONGEST_LINE: usize = 64 << 10;

/// The end of a process's output, with a count of every byte written.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<TailBuf>>);

#[derive(Default)]
struct TailBuf {
    bytes: VecDeque<u8>,
    /// Bytes written in all, kept ones and dropped ones.
    written: u64,
}

/// More than is shown is kept, so that a credential is redacted before the text is cut.
const TAIL_KEPT: usize = STDERR_KEPT + (16 << 10);

impl Tail {
    fn push(&self, chunk: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        t.bytes.extend(chunk);
        t.written += chunk.len() as u64;
        let over = t.bytes.len().saturating_sub(TAIL_KEPT);
        t.bytes.drain(..over);
    }

    fn written(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .written
    }

    /// What was written after the first `from` bytes, as far as it is still kept, and whether
    /// some of it is no longer kept.
    fn since(&self, from: u64) -> (Vec<u8>, bool) {
        let t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept_from = t.written - t.bytes.len() as u64;
        let skip = usize::try_from(from.saturating_sub(kept_from)).unwrap_or(usize::MAX);
        (
            t.bytes.iter().skip(skip).copied().collect(),
            from < kept_from,
        )
    }
}

/// A port nothing listens on now, on loopback.
fn free_port() -> Result<u16, StartError> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(StartError::NoPort)?;
    Ok(l.local_addr().map_err(StartError::NoPort)?.port())
}

/// Fails when something listens on `port` already. The Python server binds every interface
/// with SO_REUSEPORT, so a plugin started there anyway might share the port with the other
/// listener, and Gleaner's calls would reach either.
fn ensure_free(port: u16) -> Result<(), StartError> {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
    let taken = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AddrInUse;
    if let Err(e) = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        && taken(&e)
    {
        return Err(StartError::PortTaken(port));
    }
    if let Err(e) = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        && taken(&e)
    {
        return Err(StartError::PortTaken(port));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_sees_what_was_written_while_it_lasted() {
        let t = Tail::default();
        t.push(b"before\n");
        let from = t.written();
        t.push(b"during\n");
        assert_eq!(t.since(from), (b"during\n".to_vec(), false));
        assert_eq!(t.since(0), (b"before\nduring\n".to_vec(), false));
        // Past what is kept, the lease gets the newest bytes, and knows the front is gone.
        t.push(&vec![b'x'; TAIL_KEPT + 10]);
        let (bytes, cut) = t.since(from);
        assert_eq!(bytes.len(), TAIL_KEPT);
        assert!(cut);
    }

    #[test]
    fn a_taken_port_is_refused() {
        let l = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(matches!(ensure_free(port), Err(StartError::PortTaken(p)) if p == port));
        drop(l);
        assert!(ensure_free(port).is_ok());
    }
}
