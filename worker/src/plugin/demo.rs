//! `demo`: a deterministic synthetic estate, for trying Gleaner and for tests and benchmarks.
//!
//! Each service account has its own estate of `resources` resources (about 0.5 KB of JSON each),
//! derived from `seed`, the account id and the index alone: the same options give the same
//! resources on every run. `change_ratio` picks an evenly spread share of the estate (exactly
//! ⌊n·ratio⌋ resources) whose data carries `revision`, so a run with a new revision updates
//! exactly that share and leaves the rest unchanged.
//!
//! Two options rehearse failures: `fail_attempts` makes the first attempts of a task fail
//! transiently halfway through (a flaky cloud API), and `item_delay_ms` paces the estate (a
//! long collection to cancel or to kill a worker in).

use async_trait::async_trait;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{CollectRequest, Item, ItemSender, Plugin, PluginError, ResourceItem};

const DEFAULT_TYPES: [&str; 3] = ["compute.instance", "storage.volume", "network.vpc"];
const REGIONS: [&str; 6] = [
    "ap-northeast-2",
    "us-east-1",
    "us-west-2",
    "eu-central-1",
    "eu-west-1",
    "ap-southeast-1",
];
const SIZES: [&str; 6] = [
    "t3.micro",
    "t3.large",
    "m6i.xlarge",
    "c6g.2xlarge",
    "r6i.4xlarge",
    "m7g.large",
];
const TEAMS: [&str; 5] = ["payments", "search", "platform", "data", "growth"];

/// Options of the demo plugin.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoOptions {
    /// Resources per service account.
    pub resources: u64,
    pub seed: u64,
    pub resource_types: Vec<String>,
    /// Share of resources (0–1) whose data carries `revision`.
    pub change_ratio: f64,
    /// The revision written into the changed share; 1 when omitted.
    pub revision: Option<u64>,
    /// Attempts (of each task) that fail transiently after half of the estate.
    pub fail_attempts: u32,
    /// A pause after each resource.
    pub item_delay_ms: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            resources: 100,
            seed: 0,
            resource_types: DEFAULT_TYPES.map(String::from).to_vec(),
            change_ratio: 0.0,
            revision: None,
            fail_attempts: 0,
            item_delay_ms: 0,
        }
    }
}

impl DemoOptions {
    /// Whether resource `i` is in the changed share: exactly ⌊n·ratio⌋ of the first n indexes,
    /// evenly spread.
    fn changed(&self, i: u64) -> bool {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let floor = |x: u64| (x as f64 * self.change_ratio).floor() as u64;
        floor(i + 1) > floor(i)
    }
}

/// The demo collector.
pub struct Demo {
    info: PluginInfo,
}

impl Default for Demo {
    fn default() -> Self {
        Self::new()
    }
}

impl Demo {
    #[must_use]
    pub fn new() -> Self {
        Self {
            info: PluginInfo {
                id: "demo".into(),
                name: "Demo estate".into(),
                description: "A deterministic synthetic estate: no cloud account needed.".into(),
                kind: PluginKind::Collector,
                provider: "demo".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: DEFAULT_TYPES.map(String::from).to_vec(),
                metrics: Vec::new(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "resources": {"type": "integer", "minimum": 0, "maximum": 100_000_000, "description": "resources per service account (default 100)"},
                        "seed": {"type": "integer", "minimum": 0, "description": "varies the estate (default 0)"},
                        "resource_types": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": true},
                        "change_ratio": {"type": "number", "minimum": 0, "maximum": 1, "description": "share of resources whose data carries `revision`"},
                        "revision": {"type": "integer", "minimum": 0},
                        "fail_attempts": {"type": "integer", "minimum": 0, "maximum": 100, "description": "the first N attempts of each task fail transiently halfway (default 0)"},
                        "item_delay_ms": {"type": "integer", "minimum": 0, "maximum": 60_000, "description": "a pause after each resource, in milliseconds (default 0)"}
                    },
                    "additionalProperties": false
                }),
            },
        }
    }

    fn options(options: &Value) -> Result<DemoOptions, PluginError> {
        if options.is_null() {
            return Ok(DemoOptions::default());
        }
        serde_json::from_value(options.clone())
            .map_err(|e| PluginError::Permanent(format!("invalid demo options: {e}")))
    }
}

/// splitmix64: a tiny, well-mixed generator; ample for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        #[allow(clippy::cast_possible_truncation)]
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The resource at index `i` of an estate.
#[must_use]
pub fn resource(opts: &DemoOptions, estate: u64, i: u64) -> ResourceItem {
    let mut rng = Rng(opts.seed ^ estate.rotate_left(17) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    #[allow(clippy::cast_possible_truncation)]
    let resource_type =
        opts.resource_types[(i % opts.resource_types.len() as u64) as usize].clone();
    let key = format!(
        "{}-{:08x}-{i:08}",
        prefix(&resource_type),
        estate & 0xFFFF_FFFF
    );
    let region = rng.pick(&REGIONS);
    let team = rng.pick(&TEAMS);
    let revision = if opts.changed(i) {
        opts.revision.unwrap_or(1)
    } else {
        0
    };
    let name = format!(
        "{team}-{}-{i}",
        resource_type.rsplit('.').next().unwrap_or("r")
    );
    let ip = rng.next();
    #[allow(clippy::cast_possible_truncation)]
    let (zone, env) = (
        ["a", "b", "c"][(ip % 3) as usize],
        ["prod", "staging", "dev"][((ip >> 2) % 3) as usize],
    );
    let data = json!({
        "id": key,
        "name": name,
        "type": resource_type,
        "size": rng.pick(&SIZES),
        "state": if revision % 2 == 1 { "stopped" } else { "running" },
        "region": region,
        "zone": format!("{region}{zone}"),
        "cpu": 2u64 << (rng.next() % 4),
        "memory_gb": 4u64 << (rng.next() % 5),
        "image": format!("img-{:012x}", rng.next() >> 16),
        "network": {
            "vpc": format!("vpc-{:08x}", rng.next() >> 32),
            "subnet": format!("subnet-{:08x}", rng.next() >> 32),
            "private_ip": format!("10.{}.{}.{}", (ip >> 8) & 0xFF, (ip >> 16) & 0xFF, (ip >> 24) & 0xFF),
            "security_groups": [format!("sg-{:08x}", rng.next() >> 32), format!("sg-{:08x}", rng.next() >> 32)],
        },
        "tags": {"team": team, "env": env, "cost_center": format!("cc-{}", rng.next() % 900 + 100)},
        "launched_at": format!("2025-{:02}-{:02}T{:02}:00:00Z", rng.next() % 12 + 1, rng.next() % 28 + 1, rng.next() % 24),
        "monitoring": {"enabled": rng.next().is_multiple_of(2), "agent": "demo-agent/2.4"},
        "revision": revision,
    });
    ResourceItem {
        resource_type,
        resource_key: key,
        name: Some(name),
        region: Some(region.to_owned()),
        data,
    }
}

fn prefix(resource_type: &str) -> String {
    resource_type
        .rsplit('.')
        .next()
        .unwrap_or(resource_type)
        .chars()
        .take(3)
        .collect()
}

/// A stable number per estate, from the service account id (or 0 without one).
fn estate_of(request: &CollectRequest) -> u64 {
    request.task.service_account_id.map_or(0, |id| {
        let b = id.as_uuid().as_u128();
        #[allow(clippy::cast_possible_truncation)]
        let folded = (b ^ (b >> 64)) as u64;
        folded
    })
}

#[async_trait]
impl Plugin for Demo {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        _secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        Self::options(options).map(drop)
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let opts = Self::options(&request.options)?;
        let estate = estate_of(&request);
        let attempt = u32::try_from(request.task.attempt).unwrap_or(u32::MAX);
        let fail_at = (attempt <= opts.fail_attempts).then_some(opts.resources / 2);
        let pause = std::time::Duration::from_millis(opts.item_delay_ms);
        let transient = || {
            PluginError::Transient(format!(
                "simulated transient failure of attempt {attempt} (fail_attempts = {})",
                opts.fail_attempts
            ))
        };
        for i in 0..opts.resources {
            if fail_at == Some(i) {
                return Err(transient());
            }
            if (i % 1024 == 0 || !pause.is_zero()) && request.cancel.is_cancelled() {
                return Err(PluginError::Stopped);
            }
            out.send(Item::Resource(resource(&opts, estate, i))).await?;
            if !pause.is_zero() {
                tokio::select! {
                    () = request.cancel.cancelled() => return Err(PluginError::Stopped),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        if fail_at.is_some() {
            return Err(transient());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estate_is_deterministic_and_about_half_a_kilobyte() {
        let opts = DemoOptions::default();
        let a = resource(&opts, 42, 7);
        assert_eq!(a, resource(&opts, 42, 7));
        assert_ne!(
            a.resource_key,
            resource(&opts, 43, 7).resource_key,
            "estates of two accounts differ"
        );
        let size = serde_json::to_vec(&a.data).expect("json").len();
        assert!((400..=700).contains(&size), "{size} bytes");
    }

    #[test]
    fn change_ratio_changes_exactly_that_share() {
        let base = DemoOptions::default();
        let changed = DemoOptions {
            change_ratio: 0.1,
            revision: Some(3),
            ..DemoOptions::default()
        };
        let n = (0..500)
            .filter(|&i| resource(&base, 1, i) != resource(&changed, 1, i))
            .count();
        assert_eq!(n, 50);
        let keys_equal = (0..500)
            .all(|i| resource(&base, 1, i).resource_key == resource(&changed, 1, i).resource_key);
        assert!(keys_equal, "a change never moves a resource to another key");
    }

    #[test]
    fn unknown_options_are_refused() {
        assert!(Demo::options(&json!({"resourcez": 3})).is_err());
        assert_eq!(
            Demo::options(&json!({"resources": 3}))
                .expect("valid")
                .resources,
            3
        );
    }

    #[test]
    fn options_schema_accepts_what_the_plugin_accepts() {
        let demo = Demo::new();
        assert!(
            demo.info
                .validate_options(&json!({"resources": 10, "change_ratio": 0.5, "revision": 2}))
                .is_ok()
        );
        assert!(
            demo.info
                .validate_options(&json!({"change_ratio": 2}))
                .is_err()
        );
    }
}
