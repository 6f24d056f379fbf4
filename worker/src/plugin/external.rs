//! Private plugins: external executables speaking the JSON-lines protocol of
//! `gleaner_common::external` (docs/plugins.md).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use gleaner_common::external::{self, Message, ProtocolError, Session, Spec};
use gleaner_common::plugin::PluginInfo;
use serde_json::{Map, Value, json};

use super::{
    CollectRequest, Item, ItemError, ItemSender, MetricRequest, Plugin, PluginError, Point,
    ResourceItem, Samples,
};

/// A registered version of a private plugin.
pub struct External {
    info: PluginInfo,
    spec: Spec,
    dir: Option<PathBuf>,
}

impl External {
    /// A registered version; it runs only from `dir`, this worker's plugin directory.
    #[must_use]
    pub fn new(info: PluginInfo, spec: Spec, dir: Option<PathBuf>) -> Self {
        Self { info, spec, dir }
    }

    /// The spec with its command resolved inside this worker's plugin directory.
    fn runnable(&self) -> Result<Spec, PluginError> {
        let command = external::resolve_command(self.dir.as_deref(), &self.spec.command)
            .map_err(PluginError::Permanent)?;
        Ok(Spec {
            command: command.to_string_lossy().into_owned(),
            ..self.spec.clone()
        })
    }
}

/// How long a plugin asked to stop (its task was canceled or timed out, or the worker is
/// stopping) may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn failed(e: &ProtocolError) -> PluginError {
    PluginError::classified(e.is_temporary(), e.to_string())
}

#[async_trait]
impl Plugin for External {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn runs_a_process(&self) -> bool {
        true
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        external::verify(&self.runnable()?, options, secret)
            .await
            .map_err(|e| failed(&e.error))
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let task = &request.task;
        let mut params = json!({
            "version": request.version,
            "options": request.options,
            "secret": request.secret,
            "task": {
                "job_id": task.job_id,
                "task_id": task.task_id,
                "attempt": task.attempt,
                "service_account_id": task.service_account_id,
                "month": task.month,
            },
        });
        if let Some(m) = &task.metrics {
            params["metrics"] = metric_params(m);
        }
        let spec = self.runnable()?;
        let timeout = Duration::from_secs(spec.timeout_seconds);
        let mut session = Session::start(&spec, "collect", params, timeout)
            .await
            .map_err(|e| failed(&e))?;
        let result = tokio::select! {
            r = pump(&mut session, &out) => r,
            () = request.cancel.cancelled() => Err(PluginError::Stopped),
        };
        match &result {
            Err(PluginError::Stopped) => session.stop(STOP_GRACE).await,
            Err(_) => session.kill(),
            Ok(()) => {}
        }
        request.diagnostics.set(session.stderr());
        result
    }
}

/// What a metric data source is asked for: each resource with the time its samples are wanted
/// after, and the newest time wanted.
fn metric_params(m: &MetricRequest) -> Value {
    let targets: Vec<Value> = m
        .targets
        .iter()
        .map(|t| {
            json!({
                "resource_id": t.resource.id,
                "resource_type": t.resource.resource_type,
                "resource_key": t.resource.resource_key,
                "name": t.resource.name,
                "region": t.resource.region,
                "data": t.resource.data,
                "since": t.since,
                "watermarks": t.watermarks,
                "floor": t.floor,
            })
        })
        .collect();
    json!({"end": m.end, "targets": targets})
}

/// Points of one series gathered from consecutive `sample` lines before they are sent: an item
/// per line would cost a channel round trip per sample.
const SAMPLES_PER_ITEM: usize = 1_000;

/// Forwards the plugin's messages until `done`, then waits for a clean exit. Reading stops at
/// `done`: a child the plugin left behind holding its stdout does not hold up the task.
async fn pump(session: &mut Session, out: &ItemSender) -> Result<(), PluginError> {
    let mut series: Option<Samples> = None;
    loop {
        let message = match session.next().await.map_err(|e| failed(&e))? {
            Some(Message::Sample {
                resource_id,
                metric,
                time,
                value,
            }) => {
                let point = Point { time, value };
                match &mut series {
                    Some(s) if s.resource_id == resource_id && s.metric == metric => {
                        s.points.push(point);
                    }
                    open => {
                        if let Some(s) = open.replace(Samples {
                            resource_id,
                            metric,
                            points: vec![point],
                        }) {
                            out.send(Item::Samples(s)).await?;
                        }
                    }
                }
                if series
                    .as_ref()
                    .is_some_and(|s| s.points.len() >= SAMPLES_PER_ITEM)
                    && let Some(s) = series.take()
                {
                    out.send(Item::Samples(s)).await?;
                }
                continue;
            }
            other => other,
        };
        if let Some(s) = series.take() {
            out.send(Item::Samples(s)).await?;
        }
        let Some(message) = message else {
            session.finish().await.map_err(|e| failed(&e))?;
            return Err(failed(&ProtocolError::Incomplete {
                expected: "`done` (its output ended early)",
            }));
        };
        let item = match message {
            Message::Done => {
                session.finish().await.map_err(|e| failed(&e))?;
                return Ok(());
            }
            Message::Resource {
                resource_type,
                resource_key,
                name,
                region,
                data,
            } => Item::Resource(ResourceItem {
                resource_type,
                resource_key,
                name,
                region,
                data: Value::Object(data),
            }),
            Message::Cost(mut c) => {
                c.currency = c.currency.to_ascii_uppercase();
                Item::Cost(c)
            }
            Message::Error {
                message,
                resource_type,
                resource_key,
            } => Item::Error(ItemError {
                resource_type,
                resource_key,
                message,
            }),
            // Gathered above; none reaches here.
            Message::Sample { .. } | Message::Metadata(_) | Message::Verified => {
                return Err(PluginError::Permanent(
                    "it answered `collect` with a message of another call".to_owned(),
                ));
            }
        };
        out.send(item).await?;
    }
}
