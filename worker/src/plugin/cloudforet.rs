//! Private plugins of the `cloudforet` runtime: unmodified Cloudforet (SpaceONE) plugins over
//! gRPC (the `gleaner-cloudforet` crate; docs/cloudforet.md).
//!
//! The plugin process is shared by the tasks of its version ([`Host`]); credentials travel in
//! each request's `secret_data`, never in the process's environment or arguments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound as _, SecondsFormat, Utc};
use gleaner_cloudforet::cost::{Changed, Costing, Coverage};
use gleaner_cloudforet::inventory::{self, Collected};
use gleaner_cloudforet::monitoring;
use gleaner_cloudforet::value::to_json_or_empty;
use gleaner_cloudforet::{CallError, Host, Lease, StartError};
use gleaner_common::billing::Month;
use gleaner_common::external::{INIT_TIMEOUT, Spec};
use gleaner_common::id::{DomainId, ResourceId, ServiceAccountId};
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_common::store::catalog::Entry;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{
    CollectRequest, Item, ItemError, ItemSender, MetricRequest, Plugin, PluginError, Point,
    ResourceItem, Samples,
};

/// A registered version of a Cloudforet plugin.
pub struct Cloudforet {
    info: PluginInfo,
    /// With its command resolved inside the worker's plugin directory.
    spec: Spec,
    /// The host's name for the plugin version's processes: domain, plugin and version.
    key: String,
    /// What its `init` answered at the registration (a cost data source's currency and
    /// account rules).
    init: Map<String, Value>,
    domain: DomainId,
    host: Arc<Host>,
}

impl Cloudforet {
    /// `version` of a registered plugin, run by `host`; `spec`'s command is already resolved
    /// (or it has an endpoint).
    #[must_use]
    pub fn new(
        info: PluginInfo,
        version: &str,
        spec: Spec,
        init: Map<String, Value>,
        domain: DomainId,
        host: Arc<Host>,
    ) -> Self {
        let key = format!("{domain}/{}/{version}", info.id);
        Self {
            info,
            spec,
            key,
            init,
            domain,
            host,
        }
    }

    /// A lease on the process serving `account` (the one for credential checks when `None`):
    /// one process per service account, so that what a task keeps of the process's output is
    /// that account's only.
    async fn lease(
        &self,
        account: Option<ServiceAccountId>,
        secret: &Map<String, Value>,
    ) -> Result<Lease, PluginError> {
        let key = match account {
            Some(a) => format!("{}/{a}", self.key),
            None => format!("{}/verify", self.key),
        };
        self.host
            .lease(&key, &self.spec, secret)
            .await
            .map_err(|e| started(&e))
    }
}

/// A plugin that could not be started may start next time (its fixed port still held by a
/// process being killed, a slow start); one that cannot be run at all (no such command, a bad
/// endpoint) fails the same way again.
fn started(e: &StartError) -> PluginError {
    match e {
        StartError::Spawn { .. } | StartError::Endpoint(_) => PluginError::Permanent(e.to_string()),
        _ => PluginError::Transient(e.to_string()),
    }
}

fn failed(e: &CallError) -> PluginError {
    PluginError::classified(e.is_temporary(), e.to_string())
}

#[async_trait]
impl Plugin for Cloudforet {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn runs_a_process(&self) -> bool {
        self.spec.endpoint.is_none()
    }

    fn splits(&self) -> bool {
        self.info.kind == PluginKind::Collector
    }

    /// A collector's `Job.get_tasks`, when it answers two sub-tasks or more. A cost data
    /// source's sub-tasks stay within its month's task, whose records replace the month in one
    /// transaction.
    async fn sub_tasks(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        account: ServiceAccountId,
    ) -> Result<Option<Vec<Value>>, PluginError> {
        if !self.splits() {
            return Ok(None);
        }
        let lease = self.lease(Some(account), secret).await?;
        let tasks = lease
            .client()
            .collector_tasks(options, secret)
            .await
            .map_err(|e| failed(&e))?;
        Ok(tasks
            .filter(|t| t.len() > 1)
            .map(|t| t.into_iter().map(Value::Object).collect()))
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        let lease = self.lease(None, secret).await?;
        lease
            .client()
            .verify(
                self.info.kind,
                options,
                secret,
                &self.domain.to_string(),
                INIT_TIMEOUT * 2,
            )
            .await
            .map_err(|e| failed(&e))
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let work = match self.info.kind {
            PluginKind::Collector => Work::Inventory,
            PluginKind::CostDataSource => Work::Costs(request.task.billing_month()?),
            PluginKind::MetricDataSource => Work::Metrics(request.task.metric_request()?),
        };
        let lease = self
            .lease(request.task.service_account_id, &request.secret)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(self.spec.timeout_seconds);
        let run = async {
            match work {
                Work::Inventory => collect(&lease, &request, &out).await,
                Work::Costs(month) => self.costs(&lease, &request, month, &out).await,
                Work::Metrics(wanted) => self.metrics(&lease, &request, &wanted, &out).await,
            }
        };
        let result = tokio::select! {
            r = run => r,
            () = request.cancel.cancelled() => Err(PluginError::Stopped),
            () = tokio::time::sleep_until(deadline) => {
                // It may be stuck for every task: the next one starts a new process.
                lease.kill();
                Err(PluginError::Permanent(format!(
                    "it did not finish within {} s (timeout_seconds) and was killed",
                    self.spec.timeout_seconds
                )))
            }
        };
        request.diagnostics.set(lease.output());
        result
    }
}

/// What a task asks of the plugin, by its kind.
enum Work {
    Inventory,
    Costs(Month),
    Metrics(Arc<MetricRequest>),
}

/// A resource's metric to ask `Metric.get_data` for: the resource, the query `Metric.list`
/// gave, and where its series starts.
struct Wanted {
    resource: ResourceId,
    query: Value,
    since: DateTime<Utc>,
}

impl Cloudforet {
    /// A metrics task: `Metric.list` for each target resource that holds the plugin's
    /// `required_keys[0]` object (`data.cloudwatch`), then `Metric.get_data` per declared
    /// metric for up to 200 resources at once, every minute from the oldest series' start to
    /// the task's end.
    async fn metrics(
        &self,
        lease: &Lease,
        request: &CollectRequest,
        wanted: &MetricRequest,
        out: &ItemSender,
    ) -> Result<(), PluginError> {
        let client = lease.client();
        let path = self
            .init
            .get("required_keys")
            .and_then(Value::as_array)
            .and_then(|k| k.first())
            .and_then(Value::as_str)
            .ok_or_else(|| {
                PluginError::Permanent(
                    "the plugin's metadata names no required_keys: Gleaner cannot tell which object of a resource to ask Metric.list about".into(),
                )
            })?;
        let mut by_metric: BTreeMap<String, Vec<Wanted>> = BTreeMap::new();
        for target in &wanted.targets {
            let r = &target.resource;
            let Some(query) = monitoring::query_at(&r.data, path) else {
                continue;
            };
            let declared: Vec<&str> = self
                .info
                .metrics
                .iter()
                .filter(|m| m.applies_to(&r.resource_type))
                .map(|m| m.name.as_str())
                .collect();
            if declared.is_empty() {
                continue;
            }
            let listed = match client
                .metrics(&request.options, &request.secret, query)
                .await
            {
                Ok(listed) => listed,
                Err(e) if e.is_temporary() => return Err(failed(&e)),
                // One resource the plugin cannot list is that resource's error, not the task's.
                Err(e) => {
                    out.send(Item::Error(ItemError {
                        resource_type: Some(r.resource_type.clone()),
                        resource_key: Some(r.resource_key.clone()),
                        message: e.to_string(),
                    }))
                    .await?;
                    continue;
                }
            };
            for l in listed.iter().filter(|l| declared.contains(&l.key.as_str())) {
                by_metric.entry(l.key.clone()).or_default().push(Wanted {
                    resource: r.id,
                    query: monitoring::data_query(l, query),
                    since: target.since_of(&l.key),
                });
            }
        }
        // Whole minutes only: the minute in progress is not over, and a sample stored moves
        // its series' watermark past it for good.
        let whole = wanted
            .end
            .duration_trunc(chrono::TimeDelta::minutes(1))
            .unwrap_or(wanted.end);
        let end = whole.to_rfc3339_opts(SecondsFormat::Secs, true);
        for (metric, resources) in by_metric {
            for chunk in resources.chunks(monitoring::RESOURCES_PER_CALL) {
                let start = chunk.iter().map(|w| w.since).min().unwrap_or(whole);
                let queries: Map<String, Value> = chunk
                    .iter()
                    .map(|w| (w.resource.to_string(), w.query.clone()))
                    .collect();
                let data = client
                    .metric_data(
                        &request.options,
                        &request.secret,
                        &metric,
                        &queries,
                        (&start.to_rfc3339_opts(SecondsFormat::Secs, true), &end, 60),
                    )
                    .await
                    .map_err(|e| failed(&e))?;
                for w in chunk {
                    let item = match data.points(&w.resource.to_string()) {
                        Ok(points) => Item::Samples(Samples {
                            resource_id: w.resource,
                            metric: metric.clone(),
                            points: points
                                .into_iter()
                                .filter(|&(time, _)| time > w.since && time < whole)
                                .map(|(time, value)| Point { time, value })
                                .collect(),
                        }),
                        Err(message) => Item::Error(ItemError {
                            resource_type: None,
                            resource_key: Some(w.resource.to_string()),
                            message: format!("Metric/get_data of {metric}: {message}"),
                        }),
                    };
                    out.send(item).await?;
                }
            }
        }
        Ok(())
    }

    /// A billing task: the plugin's sub-tasks from the month's first day (`Job.get_tasks`),
    /// then each one's `Cost.get_data` stream, forwarding the records of the month. When the
    /// answer's `changed` periods leave the month out, the plugin replaces nothing there and
    /// the month is kept as stored.
    async fn costs(
        &self,
        lease: &Lease,
        request: &CollectRequest,
        month: Month,
        out: &ItemSender,
    ) -> Result<(), PluginError> {
        let client = lease.client();
        let domain = self.domain.to_string();
        let start = format!("{}T00:00:00Z", month.first_day());
        let tasks = client
            .cost_tasks(&request.options, &request.secret, &start, &domain)
            .await
            .map_err(|e| failed(&e))?;
        match Changed::of(&tasks).coverage(month) {
            Coverage::All => {}
            Coverage::None(periods) => {
                return out
                    .send(Item::Unchanged(format!(
                        "the plugin's changed periods ({periods}) leave {month} out"
                    )))
                    .await;
            }
            Coverage::Partial(left_out) => {
                return Err(PluginError::Permanent(format!(
                    "the plugin replaces {month} for some of its sub-tasks only ({left_out} leave it out): a month of a service account is replaced whole, so it is kept as stored"
                )));
            }
        }
        let account = request
            .task
            .service_account_id
            .map_or_else(String::new, |a| a.to_string());
        let costing = Costing::new(&self.init, &self.info.provider, account);
        let task_options: Vec<Value> = if tasks.tasks.is_empty() {
            // No sub-task: one `get_data` with empty task options.
            vec![Value::Object(Map::new())]
        } else {
            tasks
                .tasks
                .into_iter()
                .map(|t| Value::Object(to_json_or_empty(t.task_options)))
                .collect()
        };
        for options in task_options {
            let mut stream = client
                .cost_data(&request.options, &request.secret, &options, &domain)
                .await
                .map_err(|e| failed(&e))?;
            while let Some(batch) = next(lease, &mut stream, "Cost/get_data").await? {
                for info in batch.results {
                    let item = match costing.record(info) {
                        // Records of other months are other billing tasks' to store.
                        Ok(c) if Month::of(c.charge_period_start.date_naive()) != month => {
                            continue;
                        }
                        Ok(c) => Item::Cost(Box::new(c)),
                        Err(message) => Item::Error(ItemError {
                            resource_type: None,
                            resource_key: None,
                            message,
                        }),
                    };
                    out.send(item).await?;
                }
            }
        }
        Ok(())
    }
}

/// The next message of a stream; a plugin process that ended mid-stream is a transient
/// failure (the next attempt starts a new one).
async fn next<T>(
    lease: &Lease,
    stream: &mut gleaner_cloudforet::Streaming<T>,
    method: &'static str,
) -> Result<Option<T>, PluginError> {
    match stream.message().await {
        Ok(m) => Ok(m),
        Err(_) if let Some(status) = lease.exited() => Err(PluginError::Transient(format!(
            "the plugin process ended ({status}) during {method}"
        ))),
        Err(s) => Err(failed(&CallError::from_status(method, &s))),
    }
}

/// Runs the plugin's sub-tasks (`Job.get_tasks`) one after another, or one `collect` when it
/// has none, forwarding every item.
async fn collect(
    lease: &Lease,
    request: &CollectRequest,
    out: &ItemSender,
) -> Result<(), PluginError> {
    let client = lease.client();
    let tasks: Vec<Option<Value>> = match &request.task.sub_task {
        // A part planned as a task of its own collects that part only.
        Some(part) => vec![Some(part.options.clone())],
        None => match client
            .collector_tasks(&request.options, &request.secret)
            .await
            .map_err(|e| failed(&e))?
        {
            Some(t) if !t.is_empty() => t.into_iter().map(|o| Some(Value::Object(o))).collect(),
            // No Job service, or no sub-task: one collect without task_options, as Cloudforet
            // does.
            _ => vec![None],
        },
    };
    for task_options in tasks {
        let mut stream = client
            .collect(&request.options, &request.secret, task_options.as_ref())
            .await
            .map_err(|e| failed(&e))?;
        while let Some(info) = next(lease, &mut stream, "Collector/collect").await? {
            out.send(item(inventory::map(info))).await?;
        }
    }
    Ok(())
}

fn item(c: Collected) -> Item {
    match c {
        Collected::Resource {
            resource_type,
            key,
            name,
            region,
            data,
        } => Item::Resource(ResourceItem {
            resource_type,
            resource_key: key,
            name,
            region,
            data: Value::Object(data),
        }),
        Collected::Catalog {
            kind,
            provider,
            key,
            name,
            data,
        } => Item::Catalog(Entry {
            kind: kind.as_str(),
            provider,
            key,
            name,
            data: Value::Object(data),
        }),
        Collected::Error {
            resource_type,
            key,
            message,
        } => Item::Error(ItemError {
            resource_type,
            resource_key: key,
            message,
        }),
    }
}
