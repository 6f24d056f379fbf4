//! Health and readiness.

use crate::support::{Mode, TestEnv};

async fn health_and_readiness_report_their_dependencies(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let h = env.get("/healthz").await?;
    assert_eq!(h.status, 200);
    let r = env.get("/readyz").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["checks"]["database"], "ok");
    let broker = match mode {
        Mode::Distributed => "ok",
        Mode::Standalone => "in-process",
    };
    assert_eq!(r.body["checks"]["broker"], broker);
    Ok(())
}

crate::in_both_modes!(health_and_readiness_report_their_dependencies,);
