//! `demo-metrics`: deterministic monitoring series for the `demo` plugin's `compute.instance`
//! resources, for trying metric collection and for tests and benchmarks.
//!
//! A series' samples are at every whole multiple `k` of `interval_seconds` since the Unix
//! epoch, and its value at `k` is
//!
//! ```text
//! value = scale × ((h + a × k) mod n)
//! ```
//!
//! where `h` is the sum of the UTF-8 bytes of the resource's key, modulo 1,000, and
//! `(a, n, scale)` are the metric's ([`SERIES`]). Every value is an integer, so averages and
//! sums are exact in floating point, and a test can compute them from the formula.

use async_trait::async_trait;

use gleaner_common::metric::{MetricInfo, instant, millis};
use gleaner_common::plugin::{PluginInfo, PluginKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{CollectRequest, Item, ItemSender, Plugin, PluginError, Point, Samples};

/// The resource type the series are for.
pub const RESOURCE_TYPE: &str = "compute.instance";

/// A demo series: its metric, unit, and the formula's `a`, `n` and `scale`.
pub struct Series {
    pub metric: &'static str,
    pub unit: &'static str,
    pub a: i64,
    pub n: i64,
    pub scale: i64,
}

/// The demo's metrics.
pub const SERIES: [Series; 6] = [
    Series {
        metric: "cpu.utilization",
        unit: "Percent",
        a: 1,
        n: 101,
        scale: 1,
    },
    Series {
        metric: "memory.utilization",
        unit: "Percent",
        a: 3,
        n: 97,
        scale: 1,
    },
    Series {
        metric: "disk.read_bytes",
        unit: "Bytes",
        a: 5,
        n: 1000,
        scale: 1024,
    },
    Series {
        metric: "disk.write_bytes",
        unit: "Bytes",
        a: 7,
        n: 1000,
        scale: 512,
    },
    Series {
        metric: "network.in_bytes",
        unit: "Bytes",
        a: 11,
        n: 997,
        scale: 1000,
    },
    Series {
        metric: "network.out_bytes",
        unit: "Bytes",
        a: 13,
        n: 991,
        scale: 1000,
    },
];

/// Points per item: a day of minutes.
const CHUNK: usize = 1440;

impl Series {
    /// The value at sample `k` of a resource whose key gives `h`.
    #[must_use]
    pub fn value(&self, h: i64, k: i64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let v = (self.scale * (h + self.a * k).rem_euclid(self.n)) as f64;
        v
    }
}

/// `h` of a resource key: the sum of its UTF-8 bytes, modulo 1,000.
#[must_use]
pub fn key_hash(key: &str) -> i64 {
    key.bytes().map(i64::from).sum::<i64>() % 1000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    interval_seconds: i64,
    /// Only these metrics; all when empty.
    metrics: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            interval_seconds: 60,
            metrics: Vec::new(),
        }
    }
}

/// The demo metric data source.
pub struct DemoMetrics {
    info: PluginInfo,
}

impl Default for DemoMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoMetrics {
    #[must_use]
    pub fn new() -> Self {
        let names: Vec<&str> = SERIES.iter().map(|s| s.metric).collect();
        Self {
            info: PluginInfo {
                id: "demo-metrics".into(),
                name: "Demo metrics".into(),
                description: "Deterministic CPU, memory, disk and network series for the demo estate's instances.".into(),
                kind: PluginKind::MetricDataSource,
                provider: "demo".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: vec![RESOURCE_TYPE.into()],
                metrics: SERIES
                    .iter()
                    .map(|s| MetricInfo {
                        name: s.metric.into(),
                        resource_type: RESOURCE_TYPE.into(),
                        unit: s.unit.into(),
                        description: format!(
                            "{} × ((h + {} × k) mod {})",
                            s.scale, s.a, s.n
                        ),
                    })
                    .collect(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "interval_seconds": {"type": "integer", "minimum": 10, "maximum": 3600, "description": "seconds between two samples of a series (default 60)"},
                        "metrics": {"type": "array", "items": {"enum": names}, "uniqueItems": true, "description": "only these metrics (default: all)"}
                    },
                    "additionalProperties": false
                }),
            },
        }
    }
}

fn options(value: &Value) -> Result<Options, PluginError> {
    serde_json::from_value(value.clone())
        .map_err(|e| PluginError::Permanent(format!("invalid options: {e}")))
}

#[async_trait]
impl Plugin for DemoMetrics {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        _secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        self::options(options).map(|_| ())
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let opts = options(&request.options)?;
        let asked = request.task.metric_request()?;
        let step = opts.interval_seconds.max(1) * 1000;
        let series: Vec<&Series> = SERIES
            .iter()
            .filter(|s| opts.metrics.is_empty() || opts.metrics.iter().any(|m| m == s.metric))
            .collect();
        let end = millis(asked.end);
        for target in asked
            .targets
            .iter()
            .filter(|t| t.resource.resource_type == RESOURCE_TYPE)
        {
            let h = key_hash(&target.resource.resource_key);
            let last = end.div_euclid(step);
            for s in &series {
                // The first sample after the series' watermark.
                let mut k = millis(target.since_of(s.metric)).div_euclid(step) + 1;
                while k <= last {
                    if request.cancel.is_cancelled() {
                        return Err(PluginError::Stopped);
                    }
                    let upto = (k + CHUNK as i64 - 1).min(last);
                    let points = (k..=upto)
                        .map(|k| Point {
                            time: instant(k * step),
                            value: s.value(h, k),
                        })
                        .collect();
                    out.send(Item::Samples(Samples {
                        resource_id: target.resource.id,
                        metric: s.metric.to_owned(),
                        points,
                    }))
                    .await?;
                    k = upto + 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formula_is_as_documented() {
        assert_eq!(key_hash("i-0"), 105 + 45 + 48);
        assert_eq!(key_hash(&"z".repeat(10)), 1220 - 1000);
        let cpu = &SERIES[0];
        assert!((cpu.value(5, 10) - 15.0).abs() < f64::EPSILON);
        assert!((cpu.value(5, 100) - 4.0).abs() < f64::EPSILON);
        let disk = &SERIES[2];
        assert!((disk.value(1, 1) - 6.0 * 1024.0).abs() < f64::EPSILON);
    }

    #[test]
    fn every_metric_is_declared_for_the_instances() {
        let p = DemoMetrics::new();
        assert_eq!(p.info().metrics.len(), SERIES.len());
        assert!(
            p.info()
                .validate_options(&json!({"interval_seconds": 5}))
                .is_err()
        );
        assert!(
            p.info()
                .validate_options(&json!({"metrics": ["cpu.utilization"]}))
                .is_ok()
        );
        assert!(
            p.info()
                .validate_options(&json!({"metrics": ["nope"]}))
                .is_err()
        );
    }
}
