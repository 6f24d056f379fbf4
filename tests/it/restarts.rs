//! Faults 2 and 3: RabbitMQ and PostgreSQL restarted in the middle of a run. They restart the
//! machine's services, which every other test shares, so they are `#[ignore]`d and run one at
//! a time by `scripts/faults.sh`. The restart commands can be changed with
//! `GLEANER_FAULT_RESTART_RABBITMQ` and `GLEANER_FAULT_RESTART_POSTGRES` (shell commands).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::support::{Mode, Options, TestEnv, quick_recovery};

fn restart(var: &str, default: &str) -> anyhow::Result<()> {
    let command = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    eprintln!("restarting: {command}");
    let started = Instant::now();
    let status = std::process::Command::new("sh")
        .args(["-c", &command])
        .status()
        .with_context(|| format!("running `{command}`"))?;
    if !status.success() {
        bail!("`{command}` failed: {status}");
    }
    eprintln!("restarted in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Waits for every job to end; returns how many succeeded.
async fn wait_all(env: &TestEnv, jobs: &[String], limit: Duration) -> anyhow::Result<usize> {
    let mut succeeded = 0;
    let deadline = tokio::time::Instant::now() + limit;
    for job in jobs {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ended = env.wait_job_within(job, left).await?;
        if ended["status"] == "SUCCESS" {
            succeeded += 1;
        } else {
            eprintln!("job {job} ended {}", ended);
        }
    }
    Ok(succeeded)
}

/// Fault 2: 200 small jobs, RabbitMQ stopped and started again while they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ; run by scripts/faults.sh"]
async fn rabbitmq_restarted_during_200_jobs_loses_none() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 2,
            tune: quick_recovery,
            ..Options::default()
        },
    )
    .await?;
    let project = env.create("/v1/projects", json!({"name": "p"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "a", "provider": "demo", "project_id": project["id"], "credentials": {}}),
    )
    .await?;
    // 200 collectors, each its own resource type, so each job stores 5 resources of its own.
    let mut collectors = Vec::new();
    for i in 0..200 {
        let c = env
            .create(
                "/v1/collectors",
                json!({"name": format!("c{i}"), "plugin_id": "demo",
                       "options": {"resources": 5, "resource_types": [format!("fault.t{i}")]}}),
            )
            .await?;
        collectors.push(c["id"].as_str().context("id")?.to_owned());
    }
    let mut jobs = Vec::new();
    for (i, c) in collectors.iter().enumerate() {
        jobs.push(env.start_collect(c).await?);
        if i == 100 {
            restart(
                "GLEANER_FAULT_RESTART_RABBITMQ",
                "rabbitmqctl stop_app && rabbitmqctl start_app && rabbitmqctl await_startup",
            )?;
        }
    }
    let succeeded = wait_all(&env, &jobs, Duration::from_secs(300)).await?;
    assert_eq!(succeeded, 200);
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 1000);
    assert_eq!(
        env.scalar("SELECT count(*) FROM outbox").await?,
        0,
        "all published"
    );
    Ok(())
}

/// Fault 3: PostgreSQL restarted in the middle of a 60,000-resource collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts PostgreSQL; run by scripts/faults.sh"]
async fn postgres_restarted_during_a_collection_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 1,
            batch_size: 1000,
            // Leases long enough to outlast the restart: the tasks go on where they were.
            tune: |s| {
                quick_recovery(s);
                s.worker.lease = Duration::from_secs(30);
            },
        },
    )
    .await?;
    let collector = env.demo_collector(3, json!({"resources": 20_000})).await?;
    let job = env.start_collect(&collector).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = env.scalar("SELECT count(*) FROM resources").await?;
        if stored >= 10_000 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no progress: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restart(
        "GLEANER_FAULT_RESTART_POSTGRES",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main restart",
    )?;
    let ended = env.wait_job_within(&job, Duration::from_secs(180)).await?;
    assert_eq!(ended["status"], "SUCCESS", "{ended}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 60_000);
    Ok(())
}
