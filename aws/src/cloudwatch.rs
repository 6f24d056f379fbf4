//! The `aws-cloudwatch` metric data source: CloudWatch's series of the `aws` collector's EC2
//! instances and EBS volumes, through GetMetricData.
//!
//! A task's targets are grouped by region (each region's calls go to its own endpoint), then by
//! where their collection starts. Each group's queries (one per resource and metric) go out at
//! most [`MAX_QUERIES`] per call, over time windows short enough that a call never asks for
//! more than [`MAX_POINTS`] data points, oldest window first, each call followed through its
//! pages. A series' points of one call are sent once the call's last page is in, sorted, so
//! every series reaches the worker oldest first.
//!
//! Periods are whole: a collection asks from the first period after the series' watermark to
//! the last period that ended before the task's start, so a period is never stored half-full.
//! CloudWatch labels each value with its period's start, and so do the samples.
//!
//! AWS bills GetMetricData per metric requested (each query of each call), not per call or
//! data point.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_cloudwatch::operation::get_metric_data::GetMetricDataOutput;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricStat, ScanBy, StatusCode,
};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use gleaner_common::access::Access;
use gleaner_common::config::AwsSettings;
use gleaner_common::metric::{MetricInfo, instant, millis};
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_worker::plugin::{
    CollectRequest, Item, ItemError, ItemSender, MetricTarget, Plugin, PluginError, Point, Samples,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{Failure, classify};
use crate::inventory::{REGION, endpoint_schema};
use crate::session::{Endpoint, Session, open_checked};

/// GetMetricData's most queries per call.
pub const MAX_QUERIES: usize = 500;

/// GetMetricData's most data points per call, over all its queries.
pub const MAX_POINTS: i64 = 100_800;

/// Points per item sent to the worker: a day of minutes.
const CHUNK: usize = 1440;

const INSTANCE: &str = "aws.ec2.instance";
const VOLUME: &str = "aws.ec2.volume";

/// A CloudWatch metric collected for one resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct CwMetric {
    /// CloudWatch's name, which is also the sample's metric name.
    pub name: &'static str,
    pub resource_type: &'static str,
    pub namespace: &'static str,
    /// The dimension naming the resource, whose value is the `field` of the resource's data.
    pub dimension: &'static str,
    pub field: &'static str,
    pub unit: &'static str,
    /// The statistic of each period.
    pub stat: &'static str,
}

const fn ec2(name: &'static str, unit: &'static str, stat: &'static str) -> CwMetric {
    CwMetric {
        name,
        resource_type: INSTANCE,
        namespace: "AWS/EC2",
        dimension: "InstanceId",
        field: "instance_id",
        unit,
        stat,
    }
}

const fn ebs(name: &'static str, unit: &'static str) -> CwMetric {
    CwMetric {
        name,
        resource_type: VOLUME,
        namespace: "AWS/EBS",
        dimension: "VolumeId",
        field: "volume_id",
        unit,
        stat: "Sum",
    }
}

/// Every metric the plugin collects.
pub const METRICS: [CwMetric; 9] = [
    ec2("CPUUtilization", "Percent", "Average"),
    ec2("NetworkIn", "Bytes", "Sum"),
    ec2("NetworkOut", "Bytes", "Sum"),
    ec2("DiskReadBytes", "Bytes", "Sum"),
    ec2("DiskWriteBytes", "Bytes", "Sum"),
    ebs("VolumeReadOps", "Count"),
    ebs("VolumeWriteOps", "Count"),
    ebs("VolumeReadBytes", "Bytes"),
    ebs("VolumeWriteBytes", "Bytes"),
];

/// The options of an `aws-cloudwatch` data source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchOptions {
    /// Seconds per sample: CloudWatch's statistic over each period.
    #[serde(default = "default_period")]
    pub period_seconds: i32,
    /// Only these metrics (default: all).
    pub metrics: Option<Vec<String>>,
    /// Only resources of these regions (default: all).
    pub regions: Option<Vec<String>>,
    pub endpoint_url: Option<String>,
}

/// Five minutes: EC2's basic monitoring publishes once per 5 minutes, so shorter periods are
/// empty for most instances.
const fn default_period() -> i32 {
    300
}

/// The `aws-cloudwatch` metric data source.
pub struct CloudWatch {
    info: PluginInfo,
    access: Arc<Access>,
    settings: AwsSettings,
}

impl CloudWatch {
    /// The plugin, calling only the endpoints `access` allows.
    #[must_use]
    pub fn new(access: Arc<Access>, settings: AwsSettings) -> Self {
        let names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        Self {
            access,
            settings,
            info: PluginInfo {
                id: "aws-cloudwatch".into(),
                name: "AWS CloudWatch".into(),
                description: "CPU, network and disk metrics of EC2 instances and EBS volumes from CloudWatch's GetMetricData. AWS charges per metric requested.".into(),
                kind: PluginKind::MetricDataSource,
                provider: "aws".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: vec![INSTANCE.into(), VOLUME.into()],
                metrics: METRICS
                    .iter()
                    .map(|m| MetricInfo {
                        name: m.name.into(),
                        resource_type: m.resource_type.into(),
                        unit: m.unit.into(),
                        description: format!(
                            "{} {} by {}, {} per period",
                            m.namespace, m.name, m.dimension, m.stat
                        ),
                    })
                    .collect(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "period_seconds": {"type": "integer", "minimum": 60, "maximum": 86400, "multipleOf": 60,
                            "description": "seconds per sample, a multiple of 60 (default 300): each sample is the metric's statistic over one period, labelled with the period's start"},
                        "metrics": {"type": "array", "items": {"enum": names}, "minItems": 1, "uniqueItems": true,
                            "description": "collect only these metrics (default: all)"},
                        "regions": {"type": "array", "items": {"type": "string", "pattern": REGION}, "minItems": 1, "uniqueItems": true,
                            "description": "collect only resources of these regions (default: every region the resources are in)"},
                        "endpoint_url": endpoint_schema()
                    },
                    "additionalProperties": false
                }),
            },
        }
    }

    async fn session(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(CloudWatchOptions, Session), PluginError> {
        open_checked(&self.info, &self.access, &self.settings, options, secret).await
    }
}

#[async_trait]
impl Plugin for CloudWatch {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        let (_, session) = self.session(options, secret).await?;
        session.identity().await?;
        // One page of ListMetrics (free of charge), to learn whether the credentials may read
        // CloudWatch at all.
        let home = session.home();
        let cw = session.cloudwatch(home);
        let _permit = session.call().await;
        cw.list_metrics()
            .namespace("AWS/EC2")
            .metric_name("CPUUtilization")
            .send()
            .await
            .map(drop)
            .map_err(|e| match classify(e) {
                Failure::Transient(w) => {
                    PluginError::Transient(format!("{home}: cloudwatch:ListMetrics: {w}"))
                }
                Failure::Denied(w) | Failure::Gone(w) | Failure::Other(w) => {
                    PluginError::Permanent(format!("{home}: cloudwatch:ListMetrics: {w}"))
                }
            })
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let asked = request.task.metric_request()?;
        let (opts, session) = self.session(&request.options, &request.secret).await?;
        let period_ms = i64::from(opts.period_seconds.max(60)) * 1000;
        let metrics: Vec<&'static CwMetric> = METRICS
            .iter()
            .filter(|m| {
                opts.metrics
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| n == m.name))
            })
            .collect();
        let mut wanted = Vec::new();
        for (target, problem) in queries(&asked.targets, &metrics, &opts, period_ms, &mut wanted) {
            out.send(Item::Error(ItemError {
                resource_type: Some(target.resource_type.clone()),
                resource_key: Some(target.resource_key.clone()),
                message: problem,
            }))
            .await?;
        }
        let calls = plan(&wanted, period_ms, millis(asked.end));
        let mut regions: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
        for call in &calls {
            regions.entry(call.region.as_str()).or_default().push(call);
        }
        tracing::info!(
            series = wanted.len(),
            calls = calls.len(),
            regions = regions.len(),
            "collecting CloudWatch"
        );
        let work = async {
            // Regions at once (the session bounds the calls in flight), each region's calls in
            // order, so that a series' windows arrive oldest first.
            let mut units: FuturesUnordered<_> = regions
                .iter()
                .map(|(region, calls)| {
                    region_unit(
                        &session,
                        region,
                        calls,
                        &wanted,
                        &asked.targets,
                        period_ms,
                        &out,
                    )
                })
                .collect();
            while let Some(done) = units.next().await {
                done?;
            }
            Ok(())
        };
        tokio::select! {
            done = work => done,
            () = request.cancel.cancelled() => Err(PluginError::Stopped),
        }
    }
}

/// One series to collect: a target's metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// Index of the target in the task's targets.
    pub target: usize,
    pub metric: &'static CwMetric,
    pub region: String,
    /// The dimension's value: the instance or volume id.
    pub id: String,
    /// The first period's start, in milliseconds.
    pub start: i64,
}

/// The series of `targets` for `metrics`, into `wanted`; returns the targets that cannot be
/// asked for, with why.
fn queries<'t>(
    targets: &'t [MetricTarget],
    metrics: &[&'static CwMetric],
    opts: &CloudWatchOptions,
    period_ms: i64,
    wanted: &mut Vec<Query>,
) -> Vec<(&'t gleaner_worker::plugin::Target, String)> {
    let mut refused = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let r = &t.resource;
        let mine: Vec<&&CwMetric> = metrics
            .iter()
            .filter(|m| m.resource_type == r.resource_type)
            .collect();
        let Some(first) = mine.first() else { continue };
        let Some(region) = r.region.as_deref() else {
            refused.push((
                r,
                "the resource has no region to ask CloudWatch in".to_owned(),
            ));
            continue;
        };
        if opts
            .regions
            .as_ref()
            .is_some_and(|only| !only.iter().any(|o| o == region))
        {
            continue;
        }
        let Some(id) = r
            .data
            .get(first.field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            refused.push((
                r,
                format!(
                    "{region}: no `{}` in the resource's data to ask CloudWatch for",
                    first.field
                ),
            ));
            continue;
        };
        for m in mine {
            // The first whole period after what is stored of the series.
            let start = (millis(t.since_of(m.name)).div_euclid(period_ms) + 1) * period_ms;
            wanted.push(Query {
                target: i,
                metric: m,
                region: region.to_owned(),
                id: id.to_owned(),
                start,
            });
        }
    }
    refused
}

/// One GetMetricData call (with its pages): some queries over `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub region: String,
    pub start: i64,
    pub end: i64,
    /// Indexes into the queries; a query's id in the call is `m` and its place among those
    /// asked.
    pub queries: Vec<usize>,
}

/// The calls that ask for every query's whole periods from its start to `end` (rounded down to
/// a period): grouped by region and start, at most [`MAX_QUERIES`] queries a call, and windows
/// short enough for [`MAX_POINTS`]. A region's calls are in order: each batch of queries
/// through its windows, oldest first.
#[must_use]
pub fn plan(queries: &[Query], period_ms: i64, end: i64) -> Vec<Call> {
    let end = end.div_euclid(period_ms) * period_ms;
    let mut groups: BTreeMap<(&str, i64), Vec<usize>> = BTreeMap::new();
    for (i, q) in queries.iter().enumerate() {
        if q.start < end {
            groups.entry((&q.region, q.start)).or_default().push(i);
        }
    }
    let mut calls = Vec::new();
    for ((region, start), members) in groups {
        for batch in members.chunks(MAX_QUERIES) {
            let n = i64::try_from(batch.len()).unwrap_or(i64::MAX);
            let span = (MAX_POINTS / n).max(1) * period_ms;
            let mut from = start;
            while from < end {
                let to = (from + span).min(end);
                calls.push(Call {
                    region: region.to_owned(),
                    start: from,
                    end: to,
                    queries: batch.to_vec(),
                });
                from = to;
            }
        }
    }
    calls
}

/// What one call gathered of one of its queries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gathered {
    pub points: Vec<Point>,
    /// Why CloudWatch did not answer this series (Forbidden, InternalError): its points of the
    /// call are then not sent, so that no gap is stored behind a watermark.
    pub failed: Option<String>,
}

/// Takes one page of a call with `gathered.len()` queries into `gathered`: a series may go on
/// from one page to the next.
pub fn absorb(page: &GetMetricDataOutput, gathered: &mut [Gathered]) {
    for result in page.metric_data_results() {
        let Some(i) = result
            .id()
            .and_then(|id| id.strip_prefix('m'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < gathered.len())
        else {
            tracing::warn!(id = ?result.id(), "a GetMetricData result of no query");
            continue;
        };
        let g = &mut gathered[i];
        if let Some(status @ (StatusCode::Forbidden | StatusCode::InternalError)) =
            result.status_code()
        {
            let words: Vec<String> = result
                .messages()
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.code().unwrap_or_default(),
                        m.value().unwrap_or_default()
                    )
                })
                .collect();
            g.failed = Some(if words.is_empty() {
                status.as_str().to_owned()
            } else {
                format!("{}: {}", status.as_str(), words.join("; "))
            });
        }
        for (t, v) in result.timestamps().iter().zip(result.values()) {
            if let Some(time) = time_of(*t) {
                g.points.push(Point { time, value: *v });
            }
        }
    }
}

fn time_of(t: aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    let ms = t.to_millis().ok()?;
    Some(instant(ms))
}

fn smithy(ms: i64) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_millis(ms)
}

/// The calls of one region, in order. A call the credentials may not make is reported, naming
/// the region and the call, and the region's other calls are skipped (they would fail alike);
/// a transient failure fails the task. A series CloudWatch refused in one window is left out
/// of the later ones: their points would move its watermark past the refused window's.
async fn region_unit(
    session: &Session,
    region: &str,
    calls: &[&Call],
    queries: &[Query],
    targets: &[MetricTarget],
    period_ms: i64,
    out: &ItemSender,
) -> Result<(), PluginError> {
    let cw = session.cloudwatch(region);
    let period = i32::try_from(period_ms / 1000).unwrap_or(300);
    let mut refused: HashSet<usize> = HashSet::new();
    for call in calls {
        let members: Vec<usize> = call
            .queries
            .iter()
            .copied()
            .filter(|i| !refused.contains(i))
            .collect();
        if members.is_empty() {
            continue;
        }
        let asked: Vec<MetricDataQuery> = members
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let q = &queries[i];
                MetricDataQuery::builder()
                    .id(format!("m{n}"))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace(q.metric.namespace)
                                    .metric_name(q.metric.name)
                                    .dimensions(
                                        Dimension::builder()
                                            .name(q.metric.dimension)
                                            .value(&q.id)
                                            .build(),
                                    )
                                    .build(),
                            )
                            .period(period)
                            .stat(q.metric.stat)
                            .build(),
                    )
                    .return_data(true)
                    .build()
            })
            .collect();
        let mut gathered = vec![Gathered::default(); asked.len()];
        let mut token: Option<String> = None;
        loop {
            let answer = {
                let _permit = session.call().await;
                cw.get_metric_data()
                    .set_metric_data_queries(Some(asked.clone()))
                    .start_time(smithy(call.start))
                    .end_time(smithy(call.end))
                    .scan_by(ScanBy::TimestampAscending)
                    .set_next_token(token.take())
                    .send()
                    .await
            };
            let page = match answer {
                Ok(page) => page,
                Err(e) => {
                    return match classify(e) {
                        Failure::Transient(w) => Err(PluginError::Transient(format!(
                            "{region}: cloudwatch:GetMetricData: {w}"
                        ))),
                        failure => {
                            out.send(Item::Error(ItemError {
                                resource_type: None,
                                resource_key: None,
                                message: format!(
                                    "{region}: cloudwatch:GetMetricData: {}",
                                    failure.words()
                                ),
                            }))
                            .await
                        }
                    };
                }
            };
            absorb(&page, &mut gathered);
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => break,
            }
        }
        for (g, &i) in gathered.into_iter().zip(&members) {
            let q = &queries[i];
            let target = &targets[q.target].resource;
            if let Some(why) = g.failed {
                refused.insert(i);
                out.send(Item::Error(ItemError {
                    resource_type: Some(target.resource_type.clone()),
                    resource_key: Some(target.resource_key.clone()),
                    message: format!(
                        "{region}: cloudwatch:GetMetricData: {}: {why}",
                        q.metric.name
                    ),
                }))
                .await?;
                continue;
            }
            for points in in_order(g.points).chunks(CHUNK) {
                out.send(Item::Samples(Samples {
                    resource_id: target.id,
                    metric: q.metric.name.to_owned(),
                    points: points.to_vec(),
                }))
                .await?;
            }
        }
    }
    Ok(())
}

/// A series' points oldest first, each time once.
fn in_order(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by_key(|p| p.time);
    points.dedup_by_key(|p| p.time);
    points
}

impl Endpoint for CloudWatchOptions {
    fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_cloudwatch::types::{MessageData, MetricDataResult};
    use gleaner_common::id::ResourceId;
    use gleaner_worker::plugin::Target;

    use super::*;

    const MIN: i64 = 60_000;

    fn query(target: usize, region: &str, start: i64) -> Query {
        Query {
            target,
            metric: &METRICS[0],
            region: region.into(),
            id: format!("i-{target}"),
            start,
        }
    }

    #[test]
    fn calls_hold_500_queries_and_100800_points_at_most_and_cover_each_period_once() {
        let period = 5 * MIN;
        let end = 1_000 * period + 17;
        // 1,201 series of one region from one start, 3 of another region, 2 from a later start.
        let mut qs: Vec<Query> = (0..1201).map(|t| query(t, "us-east-1", 0)).collect();
        qs.extend((0..3).map(|t| query(2000 + t, "eu-west-1", 990 * period)));
        qs.extend((0..2).map(|t| query(3000 + t, "us-east-1", 900 * period)));
        // Nothing to ask for: its start is the end.
        qs.push(query(4000, "us-east-1", 1_000 * period));
        let calls = plan(&qs, period, end);
        let mut covered: HashSet<(usize, i64)> = HashSet::new();
        for c in &calls {
            assert!(
                c.queries.len() <= MAX_QUERIES,
                "{} queries",
                c.queries.len()
            );
            let points = c.queries.len() as i64 * (c.end - c.start) / period;
            assert!(points <= MAX_POINTS, "{points} points");
            assert!(c.start < c.end && c.start % period == 0 && c.end % period == 0);
            for &q in &c.queries {
                assert_eq!(qs[q].region, c.region);
                for p in (c.start..c.end).step_by(period as usize) {
                    assert!(covered.insert((q, p)), "query {q} period {p} asked twice");
                }
            }
        }
        let want: usize = qs
            .iter()
            .map(|q| usize::try_from((1_000 * period - q.start) / period).unwrap())
            .sum();
        assert_eq!(covered.len(), want, "every period of every query, once");
        // 500 queries get 201 periods a call: 1,000 periods take 5 calls; 201 queries get 501.
        let full = calls.iter().filter(|c| c.queries.len() == 500).count();
        assert_eq!(full, 2 * 1_000_usize.div_ceil(201));
        let rest = calls.iter().filter(|c| c.queries.len() == 201).count();
        assert_eq!(rest, 1_000_usize.div_ceil(501));
        // A batch's windows follow each other, oldest first.
        let first: Vec<&Call> = calls
            .iter()
            .filter(|c| c.queries.first() == Some(&0))
            .collect();
        for w in first.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(first.last().map(|c| c.end), Some(1_000 * period));
    }

    fn result(id: &str, points: &[(i64, f64)], status: StatusCode) -> MetricDataResult {
        let mut r = MetricDataResult::builder().id(id).status_code(status);
        for (t, v) in points {
            r = r.timestamps(smithy(*t)).values(*v);
        }
        r.build()
    }

    #[test]
    fn a_series_goes_on_across_pages_and_a_refused_one_is_kept_apart() {
        let pages = [
            GetMetricDataOutput::builder()
                .metric_data_results(result(
                    "m0",
                    &[(0, 1.0), (MIN, 2.5)],
                    StatusCode::PartialData,
                ))
                .metric_data_results(
                    MetricDataResult::builder()
                        .id("m1")
                        .status_code(StatusCode::Forbidden)
                        .messages(
                            MessageData::builder()
                                .code("Forbidden")
                                .value("no access to the namespace")
                                .build(),
                        )
                        .build(),
                )
                .next_token("more")
                .build(),
            GetMetricDataOutput::builder()
                .metric_data_results(result(
                    "m0",
                    &[(2 * MIN, 3.0), (MIN, 2.5)],
                    StatusCode::Complete,
                ))
                .metric_data_results(result("m2", &[(0, 7.0)], StatusCode::Complete))
                .metric_data_results(result("x9", &[(0, 9.0)], StatusCode::Complete))
                .build(),
        ];
        let mut gathered = vec![Gathered::default(); 3];
        for p in &pages {
            absorb(p, &mut gathered);
        }
        let series = in_order(gathered[0].points.clone());
        let got: Vec<(i64, f64)> = series.iter().map(|p| (millis(p.time), p.value)).collect();
        assert_eq!(got, [(0, 1.0), (MIN, 2.5), (2 * MIN, 3.0)]);
        assert_eq!(
            gathered[1].failed.as_deref(),
            Some("Forbidden: Forbidden: no access to the namespace")
        );
        assert_eq!(gathered[2].points.len(), 1);
        assert!(gathered[2].failed.is_none());
    }

    fn target(kind: &str, region: Option<&str>, data: Value, since: i64) -> MetricTarget {
        MetricTarget {
            resource: Target {
                id: ResourceId::new(),
                resource_type: kind.into(),
                resource_key: format!("arn:{kind}"),
                name: None,
                region: region.map(str::to_owned),
                data,
            },
            since: instant(since),
            watermarks: std::collections::HashMap::new(),
            floor: instant(since),
        }
    }

    #[test]
    fn targets_become_queries_from_their_next_period_and_missing_ids_are_errors() {
        let period = 5 * MIN;
        let targets = [
            target(
                INSTANCE,
                Some("us-east-1"),
                json!({"instance_id": "i-1"}),
                period,
            ),
            target(VOLUME, Some("eu-west-1"), json!({"volume_id": "vol-1"}), 7),
            target(VOLUME, Some("us-east-1"), json!({"size": 8}), 0),
            target(
                INSTANCE,
                Some("ap-south-1"),
                json!({"instance_id": "i-2"}),
                0,
            ),
            target("aws.s3.bucket", Some("us-east-1"), json!({}), 0),
        ];
        let opts = CloudWatchOptions {
            period_seconds: 300,
            metrics: None,
            regions: Some(vec!["us-east-1".into(), "eu-west-1".into()]),
            endpoint_url: None,
        };
        let all: Vec<&'static CwMetric> = METRICS.iter().collect();
        let mut wanted = Vec::new();
        let refused = queries(&targets, &all, &opts, period, &mut wanted);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0.resource_key, "arn:aws.ec2.volume");
        assert!(refused[0].1.contains("`volume_id`"), "{}", refused[0].1);
        let seen: Vec<(usize, &str, &str, i64)> = wanted
            .iter()
            .map(|q| (q.target, q.metric.name, q.id.as_str(), q.start))
            .collect();
        let mut want = Vec::new();
        for m in &METRICS[..5] {
            want.push((0, m.name, "i-1", 2 * period));
        }
        for m in &METRICS[5..] {
            want.push((1, m.name, "vol-1", period));
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn every_metric_is_declared_once_per_type_with_its_statistic() {
        let p = CloudWatch::new(Arc::new(Access::default()), AwsSettings::default());
        let info = p.info();
        assert_eq!(info.metrics.len(), METRICS.len());
        let names: HashSet<(&str, &str)> = info
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.resource_type.as_str()))
            .collect();
        assert_eq!(names.len(), METRICS.len());
        assert_eq!(
            info.metrics[0].description,
            "AWS/EC2 CPUUtilization by InstanceId, Average per period"
        );
        for (options, ok) in [
            (json!({"period_seconds": 60}), true),
            (
                json!({"period_seconds": 3600, "metrics": ["VolumeReadOps"]}),
                true,
            ),
            (json!({"period_seconds": 90}), false),
            (json!({"period_seconds": 30}), false),
            (json!({"metrics": ["nope"]}), false),
            (json!({"regions": ["evil.example/x"]}), false),
            (json!({"other": 1}), false),
        ] {
            assert_eq!(info.validate_options(&options).is_ok(), ok, "{options}");
        }
    }
}
