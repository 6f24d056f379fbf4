//! The Cloudforet test plugins' Python: `tests/plugins/cloudforet/setup.sh` makes their
//! virtual environment on Python 3.10 once (later runs reuse it), here and for the benchmark.

use anyhow::Context as _;

/// The plugins' directory.
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plugins/cloudforet");

/// The launcher of the test inventory collector, ready to run.
///
/// # Errors
/// Python 3.10 is missing, or pip failed.
pub async fn inventory() -> anyhow::Result<String> {
    ensure_venv().await?;
    Ok(format!("{DIR}/inventory.sh"))
}

/// The launcher of the test cost data source, ready to run.
///
/// # Errors
/// Python 3.10 is missing, or pip failed.
pub async fn cost() -> anyhow::Result<String> {
    ensure_venv().await?;
    Ok(format!("{DIR}/cost.sh"))
}

/// The launcher of the test monitoring data source, ready to run.
///
/// # Errors
/// Python 3.10 is missing, or pip failed.
pub async fn monitoring() -> anyhow::Result<String> {
    ensure_venv().await?;
    Ok(format!("{DIR}/monitoring.sh"))
}

/// Makes the environment, once per test binary.
async fn ensure_venv() -> anyhow::Result<()> {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_try_init(|| async {
        let out = tokio::process::Command::new("sh")
            .arg(format!("{DIR}/setup.sh"))
            .output()
            .await
            .context("running setup.sh")?;
        anyhow::ensure!(
            out.status.success(),
            "setup.sh failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await
    .map(|_| ())
}
