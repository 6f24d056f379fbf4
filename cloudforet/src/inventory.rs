//! What an inventory collector streams (`ResourceInfo`), as Gleaner's items.
//!
//! - `inventory.CloudService` (and any other resource type, such as the older
//!   `inventory.Server`) becomes a resource of type `provider.group.type`, lowercased, with
//!   the key its `match_rules` give ([`key_of`]).
//! - `inventory.CloudServiceType`, `inventory.Region` (and the newer SDK's `Namespace` and
//!   `Metric`) are catalog data: kept and listable, not resources.
//! - A FAILURE state or an `inventory.ErrorResource` is an item error with the plugin's words.
//!
//! `data` and `metadata` may come as JSON text (`json_data`, `json_metadata`), which keeps
//! integers exact; `metadata` (the console's view layouts, often the largest part) is not kept.

use serde_json::{Map, Value};

use crate::pb::inventory::ResourceInfo;
use crate::pb::inventory::resource_info::State;
use crate::value::to_json_or_empty;

/// One streamed item, mapped.
#[derive(Clone, Debug, PartialEq)]
pub enum Collected {
    Resource {
        resource_type: String,
        key: String,
        name: Option<String>,
        region: Option<String>,
        /// Everything the plugin sent but `metadata`, with `data` parsed from `json_data`.
        data: Map<String, Value>,
    },
    Catalog {
        kind: CatalogKind,
        provider: String,
        key: String,
        name: Option<String>,
        data: Map<String, Value>,
    },
    Error {
        resource_type: Option<String>,
        key: Option<String>,
        message: String,
    },
}

/// Catalog data a collector reports besides resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogKind {
    CloudServiceType,
    Region,
    Namespace,
    Metric,
}

impl CatalogKind {
    /// The name in the API and the database.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CloudServiceType => "cloud_service_type",
            Self::Region => "region",
            Self::Namespace => "namespace",
            Self::Metric => "metric",
        }
    }

    /// Every kind, for the API's list of accepted names.
    pub const ALL: [Self; 4] = [
        Self::CloudServiceType,
        Self::Region,
        Self::Namespace,
        Self::Metric,
    ];

    fn of(resource_type: &str) -> Option<Self> {
        match resource_type {
            "inventory.CloudServiceType" => Some(Self::CloudServiceType),
            "inventory.Region" => Some(Self::Region),
            "inventory.Namespace" => Some(Self::Namespace),
            "inventory.Metric" => Some(Self::Metric),
            _ => None,
        }
    }
}

/// The fields that make a CloudService's type: a key need not repeat them.
const TYPE_PATHS: [&str; 3] = ["provider", "cloud_service_group", "cloud_service_type"];

/// Maps one streamed item.
#[must_use]
pub fn map(info: ResourceInfo) -> Collected {
    let failed = info.state == State::Failure as i32;
    let declared = info.resource_type;
    let mut resource = to_json_or_empty(info.resource);
    parse_json_field(&mut resource, "json_data", "data");
    resource.remove("json_metadata");
    resource.remove("metadata");
    let str_of = |r: &Map<String, Value>, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if failed || declared == "inventory.ErrorResource" {
        let message = if info.message.trim().is_empty() {
            "the plugin reported a failure without a message".to_owned()
        } else {
            info.message
        };
        return Collected::Error {
            resource_type: type_of(&resource).ok(),
            key: str_of(&resource, "resource_id"),
            message,
        };
    }
    let rules = to_json_or_empty(info.match_rules);
    if let Some(kind) = CatalogKind::of(&declared) {
        let provider = str_of(&resource, "provider").unwrap_or_default();
        return match key_of(&rules, &resource, &[]) {
            Ok(key) => Collected::Catalog {
                kind,
                provider,
                key,
                name: str_of(&resource, "name"),
                data: resource,
            },
            Err(why) => Collected::Error {
                resource_type: Some(declared),
                key: None,
                message: why,
            },
        };
    }
    let resource_type = match type_of(&resource) {
        Ok(t) => t,
        Err(why) => {
            return Collected::Error {
                resource_type: Some(declared),
                key: None,
                message: why,
            };
        }
    };
    match key_of(&rules, &resource, &TYPE_PATHS) {
        Ok(key) => Collected::Resource {
            resource_type,
            key,
            name: str_of(&resource, "name"),
            region: str_of(&resource, "region_code"),
            data: resource,
        },
        Err(why) => Collected::Error {
            resource_type: Some(resource_type),
            key: None,
            message: why,
        },
    }
}

/// `provider.group.type`, lowercased, spaces as `_`.
fn type_of(resource: &Map<String, Value>) -> Result<String, String> {
    let mut parts = Vec::with_capacity(3);
    for field in TYPE_PATHS {
        match resource.get(field).and_then(Value::as_str).map(str::trim) {
            Some(v) if !v.is_empty() => {
                parts.push(v.to_lowercase().replace(char::is_whitespace, "_"));
            }
            _ => return Err(format!("the resource has no `{field}`")),
        }
    }
    Ok(parts.join("."))
}

/// The key the plugin's `match_rules` give: rules in priority order (`"1"`, `"2"`, …), the
/// first whose paths all hold a value; its values joined by `/`, `reference.resource_id` first,
/// without the paths in `implied` (those the resource type already says).
///
/// # Errors
/// No rules, or none that resolves; the message says which paths were missing.
pub fn key_of(
    rules: &Map<String, Value>,
    resource: &Map<String, Value>,
    implied: &[&str],
) -> Result<String, String> {
    let mut ordered: Vec<(u64, &Value)> = rules
        .iter()
        .filter_map(|(k, v)| Some((k.trim().parse().ok()?, v)))
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    if ordered.is_empty() {
        return Err("the item has no match_rules to key it by (ERROR_MATCH_RULE)".to_owned());
    }
    let mut missing = Vec::new();
    for (n, paths) in ordered {
        let Some(paths) = paths.as_array() else {
            continue;
        };
        let mut paths: Vec<&str> = paths
            .iter()
            .filter_map(Value::as_str)
            .filter(|p| !implied.contains(p))
            .collect();
        if paths.is_empty() {
            continue;
        }
        // A stable sort: the rest keep the plugin's order.
        paths.sort_by_key(|p| *p != "reference.resource_id");
        let values: Vec<Option<String>> = paths.iter().map(|p| scalar_at(resource, p)).collect();
        if values.iter().all(Option::is_some) {
            return Ok(values.into_iter().flatten().collect::<Vec<_>>().join("/"));
        }
        let absent: Vec<&str> = paths
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(p, _)| *p)
            .collect();
        missing.push(format!("rule {n} lacks {}", absent.join(", ")));
    }
    Err(format!(
        "none of its match_rules resolves: {}",
        if missing.is_empty() {
            "they name no paths".to_owned()
        } else {
            missing.join("; ")
        }
    ))
}

/// The value at a dotted path, as key text: a non-empty string, a number or a bool.
pub(crate) fn scalar_at(resource: &Map<String, Value>, path: &str) -> Option<String> {
    match crate::value::at_path(resource, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Replaces `from` (JSON text) by `to` (the parsed value); text that does not parse stays
/// where it was.
fn parse_json_field(resource: &mut Map<String, Value>, from: &str, to: &str) {
    let Some(Value::String(text)) = resource.get(from) else {
        return;
    };
    if let Ok(parsed) = serde_json::from_str::<Value>(text) {
        resource.remove(from);
        resource.insert(to.to_owned(), parsed);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::value::from_json;

    fn info(state: State, resource_type: &str, rules: Value, resource: Value) -> ResourceInfo {
        ResourceInfo {
            state: state as i32,
            message: String::new(),
            resource_type: resource_type.into(),
            match_rules: Some(from_json(rules.as_object().unwrap())),
            resource: Some(from_json(resource.as_object().unwrap())),
            options: None,
        }
    }

    fn instance() -> Value {
        json!({
            "name": "web-1", "provider": "aws", "account": "123456789012",
            "cloud_service_group": "EC2", "cloud_service_type": "Instance",
            "region_code": "us-east-1",
            "reference": {"resource_id": "i-0abc", "external_link": "https://x"},
            "tags": {"env": "prod"},
            "data": {"hardware": {"core": 2, "memory": 4.5}},
            "metadata": {"view": {"layouts": []}},
        })
    }

    #[test]
    fn a_cloud_service_is_a_resource_keyed_by_its_first_rule() {
        let rules = json!({"1": ["provider", "cloud_service_type", "cloud_service_group", "account", "reference.resource_id"]});
        let Collected::Resource {
            resource_type,
            key,
            name,
            region,
            data,
        } = map(info(
            State::Success,
            "inventory.CloudService",
            rules,
            instance(),
        ))
        else {
            panic!("a resource")
        };
        assert_eq!(resource_type, "aws.ec2.instance");
        assert_eq!(key, "i-0abc/123456789012", "reference.resource_id first");
        assert_eq!(name.as_deref(), Some("web-1"));
        assert_eq!(region.as_deref(), Some("us-east-1"));
        assert_eq!(data["data"]["hardware"]["core"], json!(2));
        assert!(data["data"]["hardware"]["core"].is_i64());
        assert_eq!(data["tags"], json!({"env": "prod"}));
        assert!(!data.contains_key("metadata"));
    }

    #[test]
    fn a_later_rule_keys_what_the_first_cannot() {
        let mut r = instance();
        r["reference"] = json!({});
        let rules = json!({"2": ["name", "account"], "1": ["reference.resource_id"]});
        let Collected::Resource { key, .. } = map(info(
            State::Success,
            "inventory.CloudService",
            rules,
            r.clone(),
        )) else {
            panic!("a resource")
        };
        assert_eq!(key, "web-1/123456789012");
        let Collected::Error { message, .. } = map(info(
            State::Success,
            "inventory.CloudService",
            json!({"1": ["reference.resource_id"]}),
            r,
        )) else {
            panic!("an error")
        };
        assert_eq!(
            message,
            "none of its match_rules resolves: rule 1 lacks reference.resource_id"
        );
    }

    #[test]
    fn json_data_is_parsed_and_metadata_dropped() {
        let mut r = instance();
        r.as_object_mut().unwrap().remove("data");
        r["json_data"] = json!(r#"{"size": 9007199254740993}"#);
        r["json_metadata"] = json!("{}");
        let Collected::Resource { data, .. } = map(info(
            State::Success,
            "inventory.CloudService",
            json!({"1": ["reference.resource_id"]}),
            r,
        )) else {
            panic!("a resource")
        };
        // Text keeps what a double cannot.
        assert_eq!(data["data"]["size"], json!(9_007_199_254_740_993_u64));
        assert!(!data.contains_key("json_data") && !data.contains_key("json_metadata"));
    }

    #[test]
    fn types_and_regions_are_catalog_data() {
        let Collected::Catalog {
            kind,
            provider,
            key,
            ..
        } = map(info(
            State::Success,
            "inventory.Region",
            json!({"1": ["region_code", "provider"]}),
            json!({"name": "US East", "region_code": "us-east-1", "provider": "aws"}),
        ))
        else {
            panic!("catalog")
        };
        assert_eq!(
            (kind, provider.as_str(), key.as_str()),
            (CatalogKind::Region, "aws", "us-east-1/aws")
        );
    }

    #[test]
    fn failures_are_item_errors() {
        let mut failed = info(
            State::Failure,
            "inventory.ErrorResource",
            json!({}),
            json!({"provider": "aws", "cloud_service_group": "EC2", "cloud_service_type": "Instance", "resource_id": "i-9"}),
        );
        failed.message = "AccessDenied in eu-west-1".into();
        assert_eq!(
            map(failed),
            Collected::Error {
                resource_type: Some("aws.ec2.instance".into()),
                key: Some("i-9".into()),
                message: "AccessDenied in eu-west-1".into(),
            }
        );
        let Collected::Error { message, .. } = map(info(
            State::Success,
            "inventory.CloudService",
            json!({}),
            instance(),
        )) else {
            panic!("an error")
        };
        assert!(message.contains("ERROR_MATCH_RULE"));
    }
}
