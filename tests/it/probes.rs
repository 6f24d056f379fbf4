//! Health and readiness.

use crate::support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_report_their_dependencies() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let h = env.get("/healthz").await?;
    assert_eq!(h.status, 200);
    let r = env.get("/readyz").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["checks"]["database"], "ok");
    assert_eq!(r.body["checks"]["broker"], "ok");
    Ok(())
}
