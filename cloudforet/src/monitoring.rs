//! A monitoring data source's answers (`spaceone.api.monitoring.plugin.Metric`), in Gleaner's
//! terms: which metrics a resource has, and the values of one metric per resource.
//!
//! Cloudforet's host reads the object at the plugin's `required_keys[0]` (`data.cloudwatch` for
//! CloudWatch) from each inventory resource, asks `Metric.list` with it, and sends the listed
//! `metric_query` of up to 200 resources at once to `Metric.get_data`, keyed by resource id.
//! The answer is `labels` (ISO 8601 times) and, per resource id, `values` aligned with them.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::pb;
use crate::value::{list_to_json, to_json_or_empty};

/// Resources per `Metric.get_data` call, as Cloudforet's host sends them.
pub const RESOURCES_PER_CALL: usize = 200;

/// One metric `Metric.list` names for a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// The metric's key (`CPUUtilization`): what `get_data` is asked for.
    pub key: String,
    /// What `get_data` needs to find the metric of this resource.
    pub query: Map<String, Value>,
}

/// A `Metric.get_data` answer: the times, and each resource's values at them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Data {
    pub labels: Vec<Value>,
    pub values: Map<String, Value>,
}

impl Data {
    #[must_use]
    pub fn of(info: pb::monitoring::MetricDataInfo) -> Self {
        let labels = match info.labels.map(list_to_json) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        Self {
            labels,
            values: to_json_or_empty(info.values),
        }
    }

    /// A resource's points, oldest first: the labels that are times paired with the values
    /// that are numbers (a gap is `null` or absent).
    ///
    /// # Errors
    /// A label is not an ISO 8601 time, or the values are not a list.
    pub fn points(&self, resource: &str) -> Result<Vec<(DateTime<Utc>, f64)>, String> {
        let values = match self.values.get(resource) {
            None => return Ok(Vec::new()),
            Some(Value::Array(v)) => v,
            Some(other) => {
                return Err(format!("the values of {resource} are not a list: {other}"));
            }
        };
        let mut out = Vec::with_capacity(values.len());
        for (label, value) in self.labels.iter().zip(values) {
            let Some(v) = value.as_f64() else { continue };
            let time = label
                .as_str()
                .and_then(|l| DateTime::parse_from_rfc3339(l).ok())
                .ok_or_else(|| format!("label {label} is not an ISO 8601 time"))?;
            out.push((time.to_utc(), v));
        }
        out.sort_by_key(|p| p.0);
        Ok(out)
    }
}

/// The object at `path` (`data.cloudwatch`) in a resource's data. A Cloudforet collector's
/// resource is stored whole but for its name and region, so the path reads as in Cloudforet.
#[must_use]
pub fn query_at<'a>(data: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
    crate::value::at_path(data.as_object()?, path)?
        .as_object()
        .filter(|o| !o.is_empty())
}

/// A listed metric's query as `get_data` takes it: with the resource query's `region_name`
/// when the plugin left it out (Cloudforet's host adds it).
#[must_use]
pub fn data_query(listed: &Listed, resource_query: &Map<String, Value>) -> Value {
    let mut q = listed.query.clone();
    if let Some(region) = resource_query.get("region_name") {
        q.entry("region_name").or_insert_with(|| region.clone());
    }
    Value::Object(q)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn points_pair_times_with_numbers_and_skip_gaps() {
        let data = Data {
            labels: vec![
                json!("2026-12-02T10:01:00Z"),
                json!("2026-12-02T10:00:00.000Z"),
                json!("2026-12-02T10:02:00Z"),
            ],
            values: json!({"r1": [2.5, 1, null], "r2": "x"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let points = data.points("r1").unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].0.to_rfc3339(), "2026-12-02T10:00:00+00:00");
        assert_eq!(points[0].1, 1.0);
        assert_eq!(points[1].1, 2.5);
        assert!(data.points("r2").is_err());
        assert_eq!(data.points("absent").unwrap(), []);
        let bad = Data {
            labels: vec![json!("yesterday")],
            values: json!({"r": [1]}).as_object().unwrap().clone(),
        };
        assert!(bad.points("r").is_err());
    }

    #[test]
    fn the_query_is_found_under_data_and_gets_the_region() {
        let data = json!({"data": {"cloudwatch": {"region_name": "eu-west-1", "metrics_info": []}, "empty": {}}});
        let q = query_at(&data, "data.cloudwatch").unwrap();
        assert_eq!(q["region_name"], "eu-west-1");
        assert!(query_at(&data, "data.empty").is_none());
        assert!(query_at(&data, "data.none").is_none());
        let listed = Listed {
            key: "CPUUtilization".into(),
            query: json!({"Namespace": "AWS/EC2"}).as_object().unwrap().clone(),
        };
        assert_eq!(
            data_query(&listed, q),
            json!({"Namespace": "AWS/EC2", "region_name": "eu-west-1"})
        );
    }
}
