//! The plugin trait and the registry of plugins a worker can run.
//!
//! A plugin streams [`Item`]s into a bounded channel: the worker writes batches to the database
//! while the plugin produces the next ones, and a slow database slows the plugin down instead of
//! letting items pile up in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gleaner_common::access::Access;
use gleaner_common::billing::Month;
use gleaner_common::external::{Runtime, Spec};
use gleaner_common::id::{DomainId, JobId, ResourceId, ServiceAccountId, TaskId};
use gleaner_common::plugin::{Catalog, PluginInfo, Verifier, VerifyError, VerifyRequest};
use gleaner_common::store;
pub use gleaner_common::store::metric::Target;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub mod cloudforet;
pub mod demo;
pub mod demo_billing;
pub mod demo_metrics;
pub mod external;
pub mod focus;
pub mod prometheus;

/// One resource reported by a collector plugin. Its match key is (provider, `resource_type`,
/// `resource_key`): the same key from two runs or two collectors is the same resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceItem {
    pub resource_type: String,
    pub resource_key: String,
    pub name: Option<String>,
    pub region: Option<String>,
    /// A JSON object.
    pub data: Value,
}

/// A failure the plugin reports for one item, without stopping the collection.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemError {
    pub resource_type: Option<String>,
    pub resource_key: Option<String>,
    pub message: String,
}

pub use gleaner_common::billing::CostItem;

/// A cost record of 2024-09-01 in USD with `billed_cost` and nothing else, for tests.
#[cfg(test)]
pub(crate) fn test_cost(billed_cost: rust_decimal::Decimal) -> CostItem {
    use chrono::TimeZone as _;
    use rust_decimal::Decimal;
    CostItem {
        charge_period_start: chrono::Utc.with_ymd_and_hms(2024, 9, 1, 10, 0, 0).unwrap(),
        charge_period_end: None,
        billing_period_start: None,
        provider: "AWS".into(),
        billing_account_id: "1".into(),
        billing_account_name: None,
        sub_account_id: None,
        sub_account_name: None,
        service_name: None,
        service_category: None,
        region_id: None,
        resource_id: None,
        charge_category: None,
        usage_type: None,
        currency: "USD".into(),
        billed_cost,
        effective_cost: Decimal::ZERO,
        list_cost: Decimal::ZERO,
        consumed_quantity: None,
        consumed_unit: None,
        pricing_quantity: None,
        pricing_unit: None,
        tags: None,
    }
}

/// Samples of one series (a resource's metric), reported by a metric data source, oldest
/// first.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// One of the task's [`MetricRequest::targets`].
    pub resource_id: ResourceId,
    pub metric: String,
    pub points: Vec<Point>,
}

/// One sample's time and value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub time: DateTime<Utc>,
    pub value: f64,
}

/// What a plugin emits.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Resource(ResourceItem),
    Cost(Box<CostItem>),
    Samples(Samples),
    /// Catalog data a collector reports besides resources (a Cloudforet plugin's cloud
    /// service types and regions): kept and listable, not counted as resources.
    Catalog(gleaner_common::store::catalog::Entry),
    /// A cost data source's word that the task's month has not changed since it was stored,
    /// and why: the month's stored records are kept as they are (a Cloudforet plugin whose
    /// `changed` periods leave the month out).
    Unchanged(String),
    Error(ItemError),
}

/// What a metrics task asks a metric data source for: samples of these resources after each
/// one's `since`, up to `end`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRequest {
    pub targets: Vec<MetricTarget>,
    /// The newest time asked for: the task's start.
    pub end: DateTime<Utc>,
}

/// A resource to collect metrics of.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricTarget {
    pub resource: Target,
    /// Samples at or before it are stored already (the oldest watermark of the resource's
    /// series, or the first backfill's start): a source asks for what comes after it.
    pub since: DateTime<Utc>,
    /// The watermark of each series of the resource stored before, by metric (none before
    /// the first backfill's start).
    pub watermarks: HashMap<String, DateTime<Utc>>,
    /// The first backfill's start: where a series not stored before starts.
    pub floor: DateTime<Utc>,
}

impl MetricTarget {
    /// Where one series of the resource starts: samples of `metric` at or before it are
    /// stored already. A source that collects some of its metrics only (an option) asks from
    /// here, not from [`MetricTarget::since`], which the metrics it skips hold back.
    #[must_use]
    pub fn since_of(&self, metric: &str) -> DateTime<Utc> {
        self.watermarks
            .get(metric)
            .copied()
            .unwrap_or(self.floor)
            .max(self.floor)
    }
}

/// Which resources a metric data source's tasks collect for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetScope {
    /// The active resources of these types found with the task's service account: a cloud's
    /// monitoring API sees what the account owns.
    Account(Vec<String>),
    /// The active resources of these types in the service account's project (the whole
    /// domain's when it has none), whoever found them: a source that watches resources other
    /// accounts collect, such as a Prometheus server.
    Project(Vec<String>),
}

/// Why a plugin run failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Retrying cannot help: bad credentials, bad options.
    #[error("{0}")]
    Permanent(String),
    /// A timeout or an unavailable endpoint: a later attempt may succeed.
    #[error("{0}")]
    Transient(String),
    /// The worker stopped reading (the task was cancelled or the worker is shutting down).
    #[error("the collection was stopped")]
    Stopped,
}

impl PluginError {
    /// A failure the runtime calls temporary (an attempt later may succeed) or not.
    #[must_use]
    pub fn classified(temporary: bool, message: String) -> Self {
        if temporary {
            Self::Transient(message)
        } else {
            Self::Permanent(message)
        }
    }
}

/// The sending half of a plugin's item stream.
#[derive(Clone, Debug)]
pub struct ItemSender {
    tx: mpsc::UnboundedSender<Item>,
    /// One permit per item that may still wait in the channel.
    room: Arc<Semaphore>,
}

impl ItemSender {
    /// Sends an item, waiting while the worker is busy writing.
    ///
    /// # Errors
    /// [`PluginError::Stopped`] when the worker no longer reads: the plugin must return.
    pub async fn send(&self, item: Item) -> Result<(), PluginError> {
        let permit = self
            .room
            .acquire()
            .await
            .map_err(|_| PluginError::Stopped)?;
        // Given back by the receiver when it takes the item out.
        permit.forget();
        self.tx.send(item).map_err(|_| PluginError::Stopped)
    }

    /// [`ItemSender::send`] from a blocking thread (a plugin reading files).
    ///
    /// # Errors
    /// [`PluginError::Stopped`] when the worker no longer reads: the plugin must return.
    pub fn blocking_send(&self, item: Item) -> Result<(), PluginError> {
        futures::executor::block_on(self.send(item))
    }
}

/// The receiving half of a plugin's item stream. Its room can grow while the plugin runs: a
/// task starts with room for a small batch and gets more once it turns out big
/// ([`crate::slots`]).
#[derive(Debug)]
pub struct ItemReceiver {
    rx: mpsc::UnboundedReceiver<Item>,
    room: Arc<Semaphore>,
}

impl ItemReceiver {
    /// The next item; `None` once the plugin is done and every item was taken.
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await?;
        self.room.add_permits(1);
        Some(item)
    }

    /// [`ItemReceiver::recv`] from a blocking thread.
    pub fn blocking_recv(&mut self) -> Option<Item> {
        let item = self.rx.blocking_recv()?;
        self.room.add_permits(1);
        Some(item)
    }

    /// Whether the plugin is done sending: what is left in the channel is all there will be.
    #[must_use]
    pub fn plugin_done(&self) -> bool {
        self.rx.is_closed()
    }

    /// Lets `more` items more wait between the plugin and the writer.
    pub fn widen(&self, more: usize) {
        self.room.add_permits(more);
    }
}

impl Drop for ItemReceiver {
    fn drop(&mut self) {
        // A plugin waiting for room learns that nobody reads any more.
        self.room.close();
    }
}

/// A bounded item channel; `capacity` items may wait between the plugin and the writer.
#[must_use]
pub fn channel(capacity: usize) -> (ItemSender, ItemReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(capacity.clamp(1, Semaphore::MAX_PERMITS)));
    (
        ItemSender {
            tx,
            room: Arc::clone(&room),
        },
        ItemReceiver { rx, room },
    )
}

/// What a collection is for.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub domain: DomainId,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: i32,
    pub service_account_id: Option<ServiceAccountId>,
    /// Billing: the month whose costs to report (rows charged in other months are not wanted).
    pub month: Option<Month>,
    /// Metrics: the resources and times to collect.
    pub metrics: Option<Arc<MetricRequest>>,
    /// The part of the account's collection this task is, when the plugin split it
    /// ([`Plugin::sub_tasks`]).
    pub sub_task: Option<gleaner_common::lifecycle::task::SubTask>,
}

impl TaskInfo {
    /// The month a cost data source reports.
    ///
    /// # Errors
    /// The task is not a billing task's, which always has one.
    pub fn billing_month(&self) -> Result<Month, PluginError> {
        self.month.ok_or_else(|| {
            PluginError::Permanent("a cost data source runs in billing jobs, for a month".into())
        })
    }

    /// The resources and times a metric data source collects.
    ///
    /// # Errors
    /// The task is not a metrics task's, which always has them.
    pub fn metric_request(&self) -> Result<Arc<MetricRequest>, PluginError> {
        self.metrics.clone().ok_or_else(|| {
            PluginError::Permanent("a metric data source runs in metrics jobs".into())
        })
    }
}

/// Everything a plugin gets for one collection.
#[derive(Clone)]
pub struct CollectRequest {
    pub version: String,
    pub options: Value,
    /// Decrypted credentials. Never log them.
    pub secret: Map<String, Value>,
    pub task: TaskInfo,
    /// Cancelled when the plugin must stop early.
    pub cancel: CancellationToken,
    /// Where a plugin leaves what the task should keep besides items (an external plugin's
    /// stderr).
    pub diagnostics: Diagnostics,
}

/// Text a plugin leaves for the task record; the runner redacts credentials from it.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics(Arc<Mutex<Option<String>>>);

impl Diagnostics {
    pub fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
    }

    #[must_use]
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl std::fmt::Debug for CollectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectRequest")
            .field("version", &self.version)
            .field("options", &self.options)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

/// A plugin's options, checked against its schema (again: a worker trusts neither that the API
/// did, nor that a collector made before a pattern existed follows it) and against the
/// operator's allowlists, then parsed.
///
/// # Errors
/// Every refusal, in one permanent error.
pub fn checked_options<T: serde::de::DeserializeOwned>(
    info: &PluginInfo,
    access: &Access,
    options: &Value,
) -> Result<T, PluginError> {
    if let Err(refused) = info.validate_options(options) {
        let words: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(PluginError::Permanent(words.join("; ")));
    }
    if let Err(refused) = access.check(&info.options_schema, options) {
        let words: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(PluginError::Permanent(words.join("; ")));
    }
    serde_json::from_value(options.clone())
        .map_err(|e| PluginError::Permanent(format!("invalid options: {e}")))
}

/// A plugin: describes itself, checks credentials, and collects.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The catalog entry: kind, provider, versions, options schema.
    fn info(&self) -> &PluginInfo;

    /// Whether a run starts a process of its own. Such a run holds one of the worker's
    /// `concurrency` slots from its start ([`crate::slots`]), so that setting bounds the
    /// plugin processes a worker starts.
    fn runs_a_process(&self) -> bool {
        false
    }

    /// The resources a metrics task of this plugin collects for, with these options: by
    /// default the service account's own, of every type the plugin declares metrics for.
    ///
    /// # Errors
    /// The options cannot be used.
    fn metric_targets(&self, options: &Value) -> Result<TargetScope, PluginError> {
        let _ = options;
        let mut types: Vec<String> = self
            .info()
            .metrics
            .iter()
            .map(|m| m.resource_type.clone())
            .collect();
        types.sort();
        types.dedup();
        Ok(TargetScope::Account(types))
    }

    /// Whether [`Plugin::sub_tasks`] may split a collection: only then does planning read the
    /// accounts' credentials to ask.
    fn splits(&self) -> bool {
        false
    }

    /// The parts an account's collection splits into, each collected by a task of its own
    /// that any worker may run: the options of each part, or `None` when the plugin does not
    /// split it (then one task collects the account). Asked when a job is planned.
    ///
    /// # Errors
    /// The plugin could not say; the account is then planned as one task.
    async fn sub_tasks(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        account: ServiceAccountId,
    ) -> Result<Option<Vec<Value>>, PluginError> {
        let _ = (options, secret, account);
        Ok(None)
    }

    /// Checks that options and credentials work, without collecting.
    ///
    /// # Errors
    /// What is wrong, in words a user can act on.
    async fn verify(&self, options: &Value, secret: &Map<String, Value>)
    -> Result<(), PluginError>;

    /// Streams items into `out` until done.
    ///
    /// # Errors
    /// The run failed as a whole; items already sent are kept.
    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError>;
}

/// The plugins this worker can run, by id.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: HashMap<String, Arc<dyn Plugin>>,
    /// Private plugins: the directory their executables must be in (`None` refuses to run
    /// them), and the environment variables a Cloudforet plugin may be given.
    private: gleaner_common::config::PluginSettings,
    /// What plugin options may reach.
    access: Arc<Access>,
    /// The Cloudforet plugin processes this worker runs.
    cloudforet: Arc<gleaner_cloudforet::Host>,
}

impl Registry {
    /// The official plugins built into Gleaner, reaching the files and endpoints `access`
    /// allows.
    #[must_use]
    pub fn builtin(access: Arc<Access>) -> Self {
        let mut r = Self {
            access: access.clone(),
            ..Self::default()
        };
        r.add(Arc::new(demo::Demo::new()));
        r.add(Arc::new(demo_billing::DemoBilling::new()));
        r.add(Arc::new(demo_metrics::DemoMetrics::new()));
        r.add(Arc::new(focus::Focus::new(access.clone())));
        r.add(Arc::new(prometheus::Prometheus::new(access)));
        r
    }

    /// What plugin options may reach: checked before every run.
    #[must_use]
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The same registry, running private plugins as `plugins` says: from its directory, and
    /// Cloudforet plugins with only the environment variables it allows.
    #[must_use]
    pub fn with_private(mut self, plugins: gleaner_common::config::PluginSettings) -> Self {
        self.private = plugins;
        self
    }

    /// The same registry, keeping Cloudforet plugin processes in `host`.
    #[must_use]
    pub fn with_cloudforet_host(mut self, host: Arc<gleaner_cloudforet::Host>) -> Self {
        self.cloudforet = host;
        self
    }

    /// The Cloudforet plugin processes (for a worker's shutdown).
    #[must_use]
    pub fn cloudforet_host(&self) -> &Arc<gleaner_cloudforet::Host> {
        &self.cloudforet
    }

    /// Adds (or replaces) a plugin.
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(plugin.info().id.clone(), plugin);
    }

    /// A plugin by id.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Arc<dyn Plugin>> {
        self.plugins.get(id).cloned()
    }

    /// The plugin to run for a task: a built-in one, else the domain's private plugin at
    /// `version`. `None` when neither exists.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn resolve(
        &self,
        db: &impl ConnectionTrait,
        domain: DomainId,
        id: &str,
        version: &str,
    ) -> Result<Option<Arc<dyn Plugin>>, store::Error> {
        if let Some(p) = self.get(id) {
            return Ok(Some(p));
        }
        let Some((info, spec, init)) = store::plugin::runnable(db, domain, id, version).await?
        else {
            return Ok(None);
        };
        Ok(Some(match spec.runtime {
            Runtime::JsonLines => Arc::new(external::External::new(
                info,
                spec,
                self.private.dir.clone(),
            )),
            Runtime::Cloudforet => match self.cloudforet_spec(spec) {
                Ok(spec) => Arc::new(cloudforet::Cloudforet::new(
                    info,
                    version,
                    spec,
                    init,
                    domain,
                    self.cloudforet.clone(),
                )),
                Err(why) => Arc::new(Unrunnable { info, why }),
            },
        }))
    }

    /// A Cloudforet plugin's spec as this worker runs it: the command resolved inside its
    /// plugin directory, the environment and the endpoint checked against the operator's
    /// allowlists again (they may have narrowed since the registration).
    fn cloudforet_spec(&self, mut spec: Spec) -> Result<Spec, String> {
        if let Some(endpoint) = &spec.endpoint {
            self.access
                .endpoint("endpoint", endpoint, &[])
                .map_err(|e| e.to_string())?;
            return Ok(spec);
        }
        for (name, value) in &spec.env {
            gleaner_common::external::check_env(&self.private, &self.access, name, value)
                .map_err(|e| format!("the plugin's environment is no longer allowed: {e}"))?;
        }
        let command =
            gleaner_common::external::resolve_command(self.private.dir.as_deref(), &spec.command)?;
        spec.command = command.to_string_lossy().into_owned();
        Ok(spec)
    }

    /// The catalog of these plugins, sorted by id, for the API.
    #[must_use]
    pub fn catalog(&self) -> Catalog {
        let mut infos: Vec<PluginInfo> = self.plugins.values().map(|p| p.info().clone()).collect();
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        Catalog::new(infos)
    }
}

/// A registered plugin this worker cannot run (its command is outside the plugin directory,
/// its endpoint no longer allowed): every call fails with the reason.
struct Unrunnable {
    info: PluginInfo,
    why: String,
}

#[async_trait]
impl Plugin for Unrunnable {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(&self, _: &Value, _: &Map<String, Value>) -> Result<(), PluginError> {
        Err(PluginError::Permanent(self.why.clone()))
    }

    async fn collect(&self, _: CollectRequest, _: ItemSender) -> Result<(), PluginError> {
        Err(PluginError::Permanent(self.why.clone()))
    }
}

/// The API's credential check: the same plugins a worker runs, private ones included (from this
/// registry's private directory, as on a worker).
#[async_trait]
impl Verifier for Registry {
    async fn verify(
        &self,
        db: &DatabaseConnection,
        request: VerifyRequest<'_>,
    ) -> Result<(), VerifyError> {
        let plugin = self
            .resolve(db, request.domain, request.plugin_id, request.version)
            .await?
            .ok_or_else(|| VerifyError::UnknownPlugin {
                id: request.plugin_id.to_owned(),
                version: request.version.to_owned(),
            })?;
        plugin
            .verify(request.options, request.secret)
            .await
            .map_err(|e| match e {
                PluginError::Permanent(reason) => VerifyError::Refused(reason),
                PluginError::Transient(reason) => VerifyError::Transient(reason),
                PluginError::Stopped => VerifyError::Transient(e.to_string()),
            })
    }
}

#[cfg(test)]
mod channel_tests {
    use std::time::Duration;

    use super::*;

    fn item(n: usize) -> Item {
        Item::Error(ItemError {
            resource_type: None,
            resource_key: None,
            message: n.to_string(),
        })
    }

    #[tokio::test]
    async fn the_room_bounds_what_waits_and_can_grow() {
        let (tx, mut rx) = channel(2);
        let sender = tokio::spawn(async move {
            for n in 0..5 {
                tx.send(item(n)).await?;
            }
            Ok::<_, PluginError>(())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sender.is_finished(), "two items fill the room");
        assert!(!rx.plugin_done());
        rx.widen(3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sender.is_finished(), "five fit once it grew");
        assert!(rx.plugin_done(), "the sender is gone");
        for n in 0..5 {
            assert_eq!(rx.recv().await, Some(item(n)));
        }
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_stops_when_nobody_reads() {
        let (tx, rx) = channel(1);
        tx.send(item(0)).await.expect("room for one");
        let waiting = tokio::spawn(async move { tx.send(item(1)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        assert!(matches!(waiting.await.unwrap(), Err(PluginError::Stopped)));
    }

    #[test]
    fn blocking_send_waits_for_room_too() {
        let (tx, mut rx) = channel(1);
        let sender = std::thread::spawn(move || (0..3).try_for_each(|n| tx.blocking_send(item(n))));
        for n in 0..3 {
            assert_eq!(rx.blocking_recv(), Some(item(n)));
        }
        sender.join().unwrap().expect("every item sent");
    }
}
