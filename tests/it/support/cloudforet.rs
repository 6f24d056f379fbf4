//! The Cloudforet test plugins' Python: a virtual environment on Python 3.10 with the
//! spaceone-core and spaceone-api the protocol reference names, made once beside the plugins
//! (`tests/plugins/cloudforet/.venv`) and kept for later runs.
//!
//! Python 3.10 because spaceone-core pins protobuf 3, whose compiled implementation exists up
//! to 3.10 only; the pure-Python one takes about 20 s to serialise one nested message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// The plugins' directory.
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plugins/cloudforet");
/// What the environment holds; a change makes a new one.
const REQUIREMENTS: [&str; 2] = ["spaceone-core==2.0.144", "spaceone-api==2.0.435"];
/// How long a test waits for another process making the environment.
const WAIT: Duration = Duration::from_secs(600);

/// The launcher of the test inventory collector, ready to run.
///
/// # Errors
/// Python 3.10 is missing, or pip failed.
pub async fn inventory() -> anyhow::Result<String> {
    ensure_venv().await?;
    Ok(format!("{DIR}/inventory.sh"))
}

/// Makes the environment once per test binary, and waits for another test binary making it.
pub async fn ensure_venv() -> anyhow::Result<()> {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_try_init(|| async {
        tokio::task::spawn_blocking(make_venv)
            .await
            .context("making the plugins' environment")?
    })
    .await
    .map(|_| ())
}

fn make_venv() -> anyhow::Result<()> {
    let venv = Path::new(DIR).join(".venv");
    let marker = venv.join(".gleaner-requirements");
    let wanted = REQUIREMENTS.join("\n");
    let ready = || std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted);
    if ready() {
        return Ok(());
    }
    let lock = Path::new(DIR).join(".venv.lock");
    let started = std::time::Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if ready() {
                    return Ok(());
                }
                // A lock left by a run that died: older than any honest wait.
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > WAIT);
                if stale || started.elapsed() > WAIT {
                    std::fs::remove_file(&lock).ok();
                    continue;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).context("locking the plugins' environment"),
        }
    }
    let made = (|| {
        if ready() {
            return Ok(());
        }
        let python = python310()?;
        eprintln!(
            "making the Cloudforet test plugins' environment with {} (about a minute, once) ...",
            python.display()
        );
        if venv.exists() {
            std::fs::remove_dir_all(&venv).context("removing an incomplete environment")?;
        }
        run(std::process::Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv))?;
        run(std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(REQUIREMENTS))?;
        std::fs::write(&marker, &wanted)?;
        Ok(())
    })();
    std::fs::remove_file(&lock).ok();
    made
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Python 3.10: `GLEANER_TEST_PYTHON310`, else `python3.10` on the PATH (not pyenv's shim,
/// which answers only where 3.10 is the selected version), else the newest 3.10 pyenv has.
fn python310() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GLEANER_TEST_PYTHON310") {
        return Ok(p.into());
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .filter(|d| !d.ends_with("shims"))
            .map(|d| d.join("python3.10"))
            .find(|p| p.is_file())
    }) {
        return Ok(p);
    }
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))
        .context("no HOME")?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.10."))
        .map(|e| e.path().join("bin/python3.10"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().context(
        "Python 3.10 was not found (set GLEANER_TEST_PYTHON310, put python3.10 on the PATH, or install it with pyenv)",
    )
}
