//! `aws`: the `aws` collector over a local AWS (a moto server) holding `--instances` EC2
//! instances spread over `--regions` regions, seeded beforehand (not timed) by the tests'
//! `aws_seed.py`. The time from `collect` to job SUCCESS (instances only, in those regions) is
//! printed beside a plain loop over the same SDK clients that only pages through
//! DescribeInstances in every region at once and counts, in the same run; then the worker's
//! peak RSS.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use gleaner_aws::session::{AwsCredentials, Session};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;

use super::billing::with_run;
use super::{Children, Run, Services, free_port};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/aws_seed.py");
const REGIONS: [&str; 8] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "ap-northeast-2",
    "eu-central-1",
    "ap-southeast-1",
    "us-east-2",
    "sa-east-1",
];

#[derive(Debug, clap::Args)]
pub struct AwsArgs {
    /// EC2 instances in all.
    #[arg(long, default_value_t = 10_000)]
    instances: u64,
    /// Regions they are spread over (1–8).
    #[arg(long, default_value_t = 4)]
    regions: usize,
    #[command(flatten)]
    services: Services,
}

pub async fn aws(args: AwsArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=REGIONS.len()).contains(&args.regions),
        "--regions must be 1 to {}",
        REGIONS.len()
    );
    let port = free_port()?;
    let _moto = tokio::process::Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting moto (pip install 'moto[server]')")?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{url}/moto-api/")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ensure!(up, "moto did not start on {url}");
    let regions: Vec<&str> = REGIONS[..args.regions].to_vec();
    let per_region = args.instances / args.regions as u64;
    let started = Instant::now();
    let mut plan = Map::new();
    for r in &regions {
        // 25 instances per reservation: moto pages DescribeInstances by reservation.
        plan.insert(
            (*r).to_owned(),
            json!({"instances": per_region, "reservations": per_region.div_ceil(25)}),
        );
    }
    seed(&url, json!({"do": "seed", "regions": plan})).await?;
    let instances = per_region * args.regions as u64;
    println!(
        "aws: {instances} EC2 instances in {} regions, seeded in {:.0} s (not timed)",
        args.regions,
        started.elapsed().as_secs_f64()
    );
    let regions: Vec<String> = regions.iter().map(|r| (*r).to_owned()).collect();
    with_run(
        &args.services.database_url,
        &args.services.amqp_url,
        |run, http, base, children| {
            measure(run, http, base, children, url.clone(), regions, instances)
        },
    )
    .await
}

async fn seed(url: &str, mut command: Value) -> anyhow::Result<()> {
    command["endpoint"] = Value::String(url.to_owned());
    let mut child = tokio::process::Command::new("python3")
        .arg(SEED)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(command.to_string().as_bytes()).await?;
    drop(stdin);
    ensure!(child.wait().await?.success(), "seeding moto failed");
    Ok(())
}

async fn measure(
    _run: Run,
    http: reqwest::Client,
    base: String,
    children: Children,
    url: String,
    regions: Vec<String>,
    instances: u64,
) -> anyhow::Result<Children> {
    // The baseline: the same SDK clients, every region at once, paging and counting only.
    let secret: Map<String, Value> = serde_json::from_value(
        json!({"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}),
    )?;
    let session = Session::open(
        &AwsCredentials::from_secret(&secret)?,
        Some(&url),
        &gleaner_common::config::AwsSettings::default(),
    )
    .await?;
    let started = Instant::now();
    let counts = futures::future::try_join_all(regions.iter().map(|region| {
        let ec2 = session.ec2(region);
        async move {
            let mut n = 0u64;
            let mut pages = ec2
                .describe_instances()
                .max_results(1000)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for r in page?.reservations() {
                    n += r.instances().len() as u64;
                }
            }
            anyhow::Ok(n)
        }
    }))
    .await?;
    let baseline = started.elapsed();
    ensure!(
        counts.iter().sum::<u64>() == instances,
        "the loop listed {counts:?}, not {instances}"
    );
    super::account_collector_report(
        &http,
        &base,
        &children,
        ("aws", &secret),
        (
            "aws",
            json!({"regions": regions, "resource_types": ["aws.ec2.instance"], "endpoint_url": url}),
        ),
        instances,
        ("plain SDK loop listing the instances:", baseline),
    )
    .await?;
    Ok(children)
}
