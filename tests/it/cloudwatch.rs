//! The `aws-cloudwatch` metric data source against moto's CloudWatch: datapoints put with
//! PutMetricData come back as samples, exactly, at their periods' starts; more than 500
//! queries in a region; throttling retried; a region that refuses the call reported.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aws::{aws_collector, collect, collect_ok, keys, start, task_errors};
use crate::in_both_modes;
use crate::support::aws::{FaultProxy, Moto};
use crate::support::{Mode, TestEnv};

const PERIOD: i64 = 300;

/// Instances in us-east-1: with their root volumes, their queries are more than one call's
/// 500 (60 × 5 instance metrics + 62 × 4 volume metrics).
const INSTANCES: usize = 60;

/// One series put: the stored resource, CloudWatch's names, and (epoch seconds, value).
struct Put {
    resource: String,
    region: &'static str,
    namespace: &'static str,
    metric: &'static str,
    dimension: &'static str,
    id: String,
    points: Vec<(i64, f64)>,
}

/// The stored resources of `kind` as (CloudWatch id, resource id), from keys ending in the id.
async fn ids(env: &TestEnv, kind: &str, region: &str) -> anyhow::Result<Vec<(String, String)>> {
    let a = env
        .get(&format!("/v1/resources?resource_type={kind}&limit=1000"))
        .await?;
    anyhow::ensure!(a.status == StatusCode::OK, "{a:?}");
    let mut out: Vec<(String, String)> = a.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|r| r["region"] == region)
        .map(|r| {
            let key = r["resource_key"].as_str().unwrap_or_default();
            let id = key.rsplit('/').next().unwrap_or_default().to_owned();
            (id, r["id"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    out.sort();
    Ok(out)
}

fn rfc3339(seconds: i64) -> anyhow::Result<String> {
    Ok(DateTime::<Utc>::from_timestamp(seconds, 0)
        .context("a time")?
        .to_rfc3339()
        .replace('+', "%2B"))
}

/// A series as the API gives it by periods of `PERIOD` from `base`: one value per period, the
/// average of its samples.
async fn values(env: &TestEnv, put: &Put, base: i64) -> anyhow::Result<Vec<Value>> {
    let a = env
        .get(&format!(
            "/v1/resources/{}/metrics/{}?start={}&end={}&period={PERIOD}&stat=avg",
            put.resource,
            put.metric,
            rfc3339(base)?,
            rfc3339(base + 12 * PERIOD)?,
        ))
        .await?;
    anyhow::ensure!(
        a.status == StatusCode::OK,
        "{} {}: {a:?}",
        put.resource,
        put.metric
    );
    Ok(a.body["values"].as_array().context("values")?.clone())
}

/// An estate of 60 instances (with their root volumes) and 2 more volumes in us-east-1, one
/// instance and one volume in eu-west-1, collected by `aws`; datapoints put for some of their
/// series at minute-aligned times of the last two hours, one per 5-minute period (so its
/// Average or Sum is the datum itself), some on a period's start and some inside one. The
/// `aws-cloudwatch` collector, through a proxy that throttles every other request, stores each
/// datum exactly at its period's start, and nothing else; a second run stores nothing new; a
/// region that refuses GetMetricData fails the task naming the region and the call, and the
/// other region's new data is still stored.
async fn cloudwatch_gives_the_values_put_exactly(mode: Mode) -> anyhow::Result<()> {
    let env = start(mode).await?;
    let moto = Moto::start().await?;
    moto.run(json!({"do": "seed", "regions": {
        "us-east-1": {"instances": INSTANCES, "reservations": 1, "volumes": 2},
        "eu-west-1": {"instances": 1, "volumes": 0},
    }}))
    .await?;
    let inventory = aws_collector(
        &env,
        keys(),
        json!({"regions": ["us-east-1", "eu-west-1"], "endpoint_url": moto.url,
               "resource_types": ["aws.ec2.instance", "aws.ec2.volume"]}),
    )
    .await?;
    collect_ok(&env, &inventory).await?;
    let instances = ids(&env, "aws.ec2.instance", "us-east-1").await?;
    let volumes = ids(&env, "aws.ec2.volume", "us-east-1").await?;
    let eu_instances = ids(&env, "aws.ec2.instance", "eu-west-1").await?;
    let eu_volumes = ids(&env, "aws.ec2.volume", "eu-west-1").await?;
    assert_eq!(instances.len(), INSTANCES);
    assert_eq!(
        volumes.len(),
        INSTANCES + 2,
        "each instance has a root volume"
    );
    assert_eq!((eu_instances.len(), eu_volumes.len()), (1, 1));

    let now = Utc::now().timestamp();
    let base = now.div_euclid(PERIOD) * PERIOD - 2 * 3600;
    // Datum k of a series is in period k (0 to 11, which end at least an hour ago), at the
    // period's start or a few minutes in.
    let at = |k: i64, minute: i64| base + k * PERIOD + minute * 60;
    let series = |(id, resource): &(String, String),
                  region: &'static str,
                  (namespace, dimension): (&'static str, &'static str),
                  metric: &'static str,
                  points: Vec<(i64, f64)>| Put {
        resource: resource.clone(),
        region,
        namespace,
        metric,
        dimension,
        id: id.clone(),
        points,
    };
    const EC2: (&str, &str) = ("AWS/EC2", "InstanceId");
    const EBS: (&str, &str) = ("AWS/EBS", "VolumeId");
    let last = instances.last().context("an instance")?;
    let puts = vec![
        series(
            &instances[0],
            "us-east-1",
            EC2,
            "CPUUtilization",
            vec![(at(0, 0), 12.345), (at(1, 2), 0.1), (at(3, 4), 99.5)],
        ),
        series(
            &instances[0],
            "us-east-1",
            EC2,
            "NetworkIn",
            vec![(at(2, 1), 1_234_567_890.5), (at(11, 0), 3.0)],
        ),
        series(
            last,
            "us-east-1",
            EC2,
            "NetworkOut",
            vec![(at(5, 3), 4096.0), (at(6, 3), 0.0), (at(7, 3), 17.25)],
        ),
        series(
            &volumes[0],
            "us-east-1",
            EBS,
            "VolumeReadOps",
            vec![(at(0, 1), 5.0), (at(4, 1), 7.0)],
        ),
        series(
            volumes.last().context("a volume")?,
            "us-east-1",
            EBS,
            "VolumeWriteBytes",
            vec![(at(8, 0), 65536.0), (at(9, 4), 1.5e-3)],
        ),
        series(
            &eu_instances[0],
            "eu-west-1",
            EC2,
            "DiskWriteBytes",
            vec![(at(1, 0), 2048.0), (at(10, 2), 512.0)],
        ),
        series(
            &eu_volumes[0],
            "eu-west-1",
            EBS,
            "VolumeReadBytes",
            vec![(at(3, 0), 8.0)],
        ),
    ];
    // A datum of an instance Gleaner does not know, which nothing may store.
    let stranger = series(
        &("i-0123456789abcdef0".to_owned(), String::new()),
        "us-east-1",
        EC2,
        "CPUUtilization",
        vec![(at(0, 0), 1.0)],
    );
    let put = |puts: &[&Put], region: &str| {
        let series: Vec<Value> = puts
            .iter()
            .filter(|p| p.region == region)
            .map(|p| {
                json!({"namespace": p.namespace, "metric": p.metric, "dimension": p.dimension,
                       "id": p.id, "points": p.points})
            })
            .collect();
        json!({"do": "put_metrics", "region": region, "series": series})
    };
    let mut all: Vec<&Put> = puts.iter().collect();
    all.push(&stranger);
    for region in ["us-east-1", "eu-west-1"] {
        moto.run(put(&all, region)).await?;
    }
    let total: usize = puts.iter().map(|p| p.points.len()).sum();

    let proxy = FaultProxy::start(&moto.url).await?;
    proxy.faults.throttle_every.store(2, Ordering::Relaxed);
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "cloudwatch", "plugin_id": "aws-cloudwatch",
                   "options": {"period_seconds": PERIOD, "endpoint_url": proxy.url}}),
        )
        .await?;
    let metrics = c["id"].as_str().context("collector id")?.to_owned();
    let job = collect_ok(&env, &metrics).await?;
    assert_eq!(job["kind"], "metrics");
    assert_eq!(job["counts"]["created"], total, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    let throttled = proxy.faults.injected.load(Ordering::Relaxed);
    assert!(throttled >= 2, "only {throttled} requests were throttled");
    assert_eq!(
        env.scalar("SELECT count(*) FROM metric_samples").await?,
        i64::try_from(total)?
    );
    for p in &puts {
        let mut want = vec![Value::Null; 12];
        for (t, v) in &p.points {
            want[usize::try_from((t - base) / PERIOD)?] = json!(v);
        }
        assert_eq!(values(&env, p, base).await?, want, "{} {}", p.id, p.metric);
    }

    // Again: everything CloudWatch has is stored already, and each series is asked from its
    // own watermark, so nothing comes back twice.
    let again = collect_ok(&env, &metrics).await?;
    assert_eq!(again["counts"]["created"], 0, "{again}");
    assert_eq!(again["counts"]["unchanged"], 0, "{again}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM metric_samples").await?,
        i64::try_from(total)?
    );

    // eu-west-1 refuses; us-east-1's new datum is stored all the same.
    proxy.faults.throttle_every.store(0, Ordering::Relaxed);
    *proxy.faults.denied_region.lock().unwrap() = Some("eu-west-1".into());
    let later = series(
        &instances[0],
        "us-east-1",
        EC2,
        "CPUUtilization",
        vec![(at(11, 3), 42.0)],
    );
    moto.run(put(&[&later], "us-east-1")).await?;
    let denied = collect(&env, &metrics).await?;
    assert_eq!(denied["status"], "FAILURE", "{denied}");
    assert_eq!(denied["counts"]["created"], 1, "{denied}");
    let errors = task_errors(&env, &denied).await?;
    assert!(
        errors.contains("eu-west-1: cloudwatch:GetMetricData: AccessDenied"),
        "{errors}"
    );
    assert!(!errors.contains("us-east-1"), "{errors}");
    let cpu: BTreeMap<usize, Value> = values(&env, &later, base)
        .await?
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .collect();
    assert_eq!(
        cpu,
        BTreeMap::from([
            (0, json!(12.345)),
            (1, json!(0.1)),
            (3, json!(99.5)),
            (11, json!(42.0))
        ])
    );
    Ok(())
}

in_both_modes!(cloudwatch_gives_the_values_put_exactly);
