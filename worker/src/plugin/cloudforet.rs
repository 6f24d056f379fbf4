//! Private plugins of the `cloudforet` runtime: unmodified Cloudforet (SpaceONE) plugins over
//! gRPC (the `gleaner-cloudforet` crate; docs/cloudforet.md).
//!
//! The plugin process is shared by the tasks of its version ([`Host`]); credentials travel in
//! each request's `secret_data`, never in the process's environment or arguments.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gleaner_cloudforet::inventory::{self, Collected};
use gleaner_cloudforet::{CallError, Host, Lease, StartError};
use gleaner_common::external::{INIT_TIMEOUT, Spec};
use gleaner_common::id::{DomainId, ServiceAccountId};
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_common::store::catalog::Entry;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{CollectRequest, Item, ItemError, ItemSender, Plugin, PluginError, ResourceItem};

/// A registered version of a Cloudforet plugin.
pub struct Cloudforet {
    info: PluginInfo,
    /// With its command resolved inside the worker's plugin directory.
    spec: Spec,
    /// The host's name for the plugin version's processes: domain, plugin and version.
    key: String,
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
        domain: DomainId,
        host: Arc<Host>,
    ) -> Self {
        let key = format!("{domain}/{}/{version}", info.id);
        Self {
            info,
            spec,
            key,
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
        if self.info.kind != PluginKind::Collector {
            return Err(PluginError::Permanent(format!(
                "the cloudforet runtime runs inventory collectors; a {} is not supported yet",
                self.info.kind.as_str()
            )));
        }
        let lease = self
            .lease(request.task.service_account_id, &request.secret)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(self.spec.timeout_seconds);
        let result = tokio::select! {
            r = collect(&lease, &request, &out) => r,
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

/// Runs the plugin's sub-tasks (`Job.get_tasks`) one after another, or one `collect` when it
/// has none, forwarding every item.
async fn collect(
    lease: &Lease,
    request: &CollectRequest,
    out: &ItemSender,
) -> Result<(), PluginError> {
    let client = lease.client();
    let tasks = client
        .collector_tasks(&request.options, &request.secret)
        .await
        .map_err(|e| failed(&e))?;
    let tasks: Vec<Option<Value>> = match tasks {
        Some(t) if !t.is_empty() => t.into_iter().map(|o| Some(Value::Object(o))).collect(),
        // No Job service, or no sub-task: one collect without task_options, as Cloudforet does.
        _ => vec![None],
    };
    for task_options in tasks {
        let mut stream = client
            .collect(&request.options, &request.secret, task_options.as_ref())
            .await
            .map_err(|e| failed(&e))?;
        loop {
            let message = match stream.message().await {
                Ok(m) => m,
                Err(_) if let Some(status) = lease.exited() => {
                    return Err(PluginError::Transient(format!(
                        "the plugin process ended ({status}) during Collector/collect"
                    )));
                }
                Err(s) => return Err(failed(&CallError::from_status("Collector/collect", &s))),
            };
            let Some(info) = message else { break };
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
