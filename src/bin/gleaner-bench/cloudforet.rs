//! `cloudforet`: the Cloudforet test collector of `tests/plugins/cloudforet` (a plugin on
//! spaceone-core, served by `spaceone run grpc-server`) streaming `--resources` CloudService
//! messages. The time from `collect` to job SUCCESS through the `cloudforet` runtime (the
//! process started by the worker, every message mapped and stored) is printed beside the same
//! plugin's stream drained by a bare gRPC client that only counts, in the same run; then the
//! worker's peak RSS.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gleaner_cloudforet::Host;
use gleaner_common::external::{Runtime, Spec};
use serde_json::{Map, Value, json};

use super::billing::with_run_tuned;
use super::{Children, Run, Services, free_port, post};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plugins/cloudforet");

#[derive(Debug, clap::Args)]
pub struct CloudforetArgs {
    /// CloudService messages the plugin streams.
    #[arg(long, default_value_t = 100_000)]
    resources: u64,
    #[command(flatten)]
    services: Services,
}

pub async fn cloudforet(args: CloudforetArgs) -> anyhow::Result<()> {
    let setup = tokio::process::Command::new("sh")
        .arg(format!("{DIR}/setup.sh"))
        .status()
        .await
        .context("running tests/plugins/cloudforet/setup.sh")?;
    ensure!(setup.success(), "setup.sh failed: {setup}");
    let options = json!({"count": args.resources, "failures": 0});
    let secret: Map<String, Value> = serde_json::from_value(
        json!({"aws_access_key_id": "AKIABENCH", "aws_secret_access_key": "bench-secret"}),
    )?;
    let baseline = drained(&options, &secret).await?;
    println!("cloudforet: {} CloudService messages", args.resources);
    with_run_tuned(
        &args.services.database_url,
        &args.services.amqp_url,
        |s| s.plugins.dir = Some(DIR.into()),
        |run, http, base, children| {
            measure(
                run,
                http,
                base,
                children,
                args.resources,
                options,
                secret,
                baseline,
            )
        },
    )
    .await
}

/// The baseline: the plugin started here, then its `collect` stream read to the end by a bare
/// client, counting messages; the plugin's start is not timed.
async fn drained(options: &Value, secret: &Map<String, Value>) -> anyhow::Result<Duration> {
    let port = free_port()?;
    let _plugin = tokio::process::Command::new(format!("{DIR}/inventory.sh"))
        .env("SPACEONE_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let host = Host::new(Duration::from_secs(60));
    let spec = Spec {
        runtime: Runtime::Cloudforet,
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Spec::default()
    };
    let lease = host.lease("baseline", &spec, secret).await?;
    let client = lease.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.serving(Duration::from_secs(1)).await {
        ensure!(Instant::now() < deadline, "the plugin did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let mut stream = client.collect(options, secret, None).await?;
    let mut n = 0u64;
    while stream.message().await?.is_some() {
        n += 1;
    }
    let took = started.elapsed();
    ensure!(n > 0, "the plugin streamed nothing");
    Ok(took)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    _run: Run,
    http: reqwest::Client,
    base: String,
    children: Children,
    resources: u64,
    options: Value,
    secret: Map<String, Value>,
    baseline: Duration,
) -> anyhow::Result<Children> {
    post(
        &http,
        &base,
        "/v1/plugins",
        json!({"id": "bench-cloudforet", "version": "1.0.0", "runtime": "cloudforet",
               "kind": "collector", "command": "inventory.sh", "provider": "aws"}),
    )
    .await?;
    super::account_collector_report(
        &http,
        &base,
        &children,
        ("aws", &secret),
        ("bench-cloudforet", options),
        resources,
        ("bare gRPC client draining the stream:", baseline),
    )
    .await?;
    Ok(children)
}
