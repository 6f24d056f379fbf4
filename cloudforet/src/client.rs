//! Calls to a plugin's services, in JSON terms.
//!
//! Every Struct field of a request is sent, as an empty Struct when there is nothing to say:
//! plugins check presence (`check_required(['options'])`). Unary calls get Cloudforet's
//! deadline; streams get none here, since the task's own time limit bounds them.

use std::future::Future;
use std::time::Duration;

use gleaner_common::plugin::PluginKind;
use serde_json::{Map, Value};
use tonic::transport::Channel;
use tonic::{Response, Status, Streaming};

use crate::pb;
use crate::status::CallError;
use crate::value::{request_struct, to_json_or_empty};

/// A message's size limit either way: Cloudforet's host uses 256 MiB (tonic's default of
/// 4 MiB is less than one big `collect` item).
pub const MAX_MESSAGE: usize = 256 << 20;
/// A unary call without an answer by then fails: Cloudforet's default deadline.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(180);

/// The services of one plugin.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
}

macro_rules! client {
    ($module:path, $ty:ident, $channel:expr) => {{
        use $module as m;
        m::$ty::new($channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }};
}

async fn unary<T>(
    method: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(CallError::Timeout {
            method,
            seconds: timeout.as_secs(),
        }),
        Ok(Err(status)) => Err(CallError::from_status(method, &status)),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

impl Client {
    #[must_use]
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }

    /// Whether the plugin's gRPC health check answers SERVING within `wait`.
    pub async fn serving(&self, wait: Duration) -> bool {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let check = health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        matches!(
            tokio::time::timeout(wait, check).await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        )
    }

    /// `ServerInfo/get_version`: the plugin package's version.
    ///
    /// # Errors
    /// The call failed.
    pub async fn version(&self) -> Result<String, CallError> {
        let mut c = client!(
            pb::core::v1::server_info_client,
            ServerInfoClient,
            self.channel
        );
        let v = unary(
            "ServerInfo/get_version",
            Duration::from_secs(10),
            c.get_version(()),
        )
        .await?;
        Ok(v.version)
    }

    /// `init` of the plugin's `kind`: its metadata.
    ///
    /// # Errors
    /// The call failed.
    pub async fn init(
        &self,
        kind: PluginKind,
        options: &Value,
        domain_id: &str,
        timeout: Duration,
    ) -> Result<Map<String, Value>, CallError> {
        let options = Some(request_struct(options));
        let metadata = match kind {
            PluginKind::Collector => {
                let mut c = client!(
                    pb::inventory::collector_client,
                    CollectorClient,
                    self.channel
                );
                let r = pb::inventory::InitRequest { options };
                unary("Collector/init", timeout, c.init(r)).await?.metadata
            }
            PluginKind::CostDataSource => {
                let mut c = client!(pb::cost::data_source_client, DataSourceClient, self.channel);
                let r = pb::cost::InitRequest {
                    options,
                    domain_id: domain_id.to_owned(),
                };
                unary("DataSource/init", timeout, c.init(r)).await?.metadata
            }
            PluginKind::MetricDataSource => {
                let mut c = client!(
                    pb::monitoring::data_source_client,
                    DataSourceClient,
                    self.channel
                );
                let r = pb::monitoring::InitRequest { options };
                unary("DataSource/init", timeout, c.init(r)).await?.metadata
            }
        };
        Ok(to_json_or_empty(metadata))
    }

    /// `verify` of the plugin's `kind`: whether the options and credentials work.
    ///
    /// # Errors
    /// The plugin refused them, or the call failed.
    pub async fn verify(
        &self,
        kind: PluginKind,
        options: &Value,
        secret: &Map<String, Value>,
        domain_id: &str,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let options = Some(request_struct(options));
        let secret_data = Some(crate::value::from_json(secret));
        match kind {
            PluginKind::Collector => {
                let mut c = client!(
                    pb::inventory::collector_client,
                    CollectorClient,
                    self.channel
                );
                let r = pb::inventory::VerifyRequest {
                    options,
                    secret_data,
                };
                unary("Collector/verify", timeout, c.verify(r)).await?;
            }
            PluginKind::CostDataSource => {
                let mut c = client!(pb::cost::data_source_client, DataSourceClient, self.channel);
                let r = pb::cost::PluginVerifyRequest {
                    options,
                    secret_data,
                    schema: String::new(),
                    domain_id: domain_id.to_owned(),
                };
                unary("DataSource/verify", timeout, c.verify(r)).await?;
            }
            PluginKind::MetricDataSource => {
                let mut c = client!(
                    pb::monitoring::data_source_client,
                    DataSourceClient,
                    self.channel
                );
                let r = pb::monitoring::PluginVerifyRequest {
                    options,
                    secret_data,
                    schema: String::new(),
                };
                unary("DataSource/verify", timeout, c.verify(r)).await?;
            }
        }
        Ok(())
    }

    /// An inventory collector's `Job.get_tasks`: each sub-task's `task_options`, or `None`
    /// when the plugin has no such service (older plugins), which means one `collect`.
    ///
    /// # Errors
    /// The call failed otherwise.
    pub async fn collector_tasks(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<Option<Vec<Map<String, Value>>>, CallError> {
        let mut c = client!(pb::inventory::job_client, JobClient, self.channel);
        let r = pb::inventory::GetTaskRequest {
            secret_data: Some(crate::value::from_json(secret)),
            options: Some(request_struct(options)),
            task_filter: Some(pb::inventory::TaskFilter::default()),
        };
        match unary("Job/get_tasks", UNARY_TIMEOUT, c.get_tasks(r)).await {
            Ok(tasks) => Ok(Some(
                tasks
                    .tasks
                    .into_iter()
                    .map(|t| to_json_or_empty(t.task_options))
                    .collect(),
            )),
            Err(CallError::Unsupported { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An inventory collector's `collect` stream.
    ///
    /// # Errors
    /// The call failed before the stream began.
    pub async fn collect(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        task_options: Option<&Value>,
    ) -> Result<Streaming<pb::inventory::ResourceInfo>, CallError> {
        let mut c = client!(
            pb::inventory::collector_client,
            CollectorClient,
            self.channel
        );
        let r = pb::inventory::CollectRequest {
            options: Some(request_struct(options)),
            secret_data: Some(crate::value::from_json(secret)),
            filter: Some(prost_types::Struct::default()),
            task_options: task_options.map(request_struct),
        };
        c.collect(r)
            .await
            .map(Response::into_inner)
            .map_err(|s| CallError::from_status("Collector/collect", &s))
    }

    /// A cost data source's `Job.get_tasks` from `start` (a zone-aware ISO 8601 time: the
    /// cost-explorer plugin compares it with aware times): the sub-tasks and the months they
    /// replace.
    ///
    /// # Errors
    /// The call failed.
    pub async fn cost_tasks(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        start: &str,
        domain_id: &str,
    ) -> Result<pb::cost::TasksInfo, CallError> {
        let mut c = client!(pb::cost::job_client, JobClient, self.channel);
        let r = pb::cost::GetTasksRequest {
            options: Some(request_struct(options)),
            secret_data: Some(crate::value::from_json(secret)),
            schema: String::new(),
            start: start.to_owned(),
            last_synchronized_at: String::new(),
            domain_id: domain_id.to_owned(),
            linked_accounts: Vec::new(),
        };
        unary("Job/get_tasks", UNARY_TIMEOUT, c.get_tasks(r)).await
    }

    /// A cost data source's `Cost.get_data` stream for one sub-task.
    ///
    /// # Errors
    /// The call failed before the stream began.
    pub async fn cost_data(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        task_options: &Value,
        domain_id: &str,
    ) -> Result<Streaming<pb::cost::CostsInfo>, CallError> {
        let mut c = client!(pb::cost::cost_client, CostClient, self.channel);
        let r = pb::cost::GetDataRequest {
            options: Some(request_struct(options)),
            secret_data: Some(crate::value::from_json(secret)),
            schema: String::new(),
            task_options: Some(request_struct(task_options)),
            domain_id: domain_id.to_owned(),
        };
        c.get_data(r)
            .await
            .map(Response::into_inner)
            .map_err(|s| CallError::from_status("Cost/get_data", &s))
    }

    /// A monitoring data source's `Metric.list` for one resource's `query` (the object at the
    /// plugin's `required_keys[0]` in the resource): each metric's key and query.
    ///
    /// # Errors
    /// The call failed.
    pub async fn metrics(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        query: &Map<String, Value>,
    ) -> Result<Vec<crate::monitoring::Listed>, CallError> {
        let mut c = client!(pb::monitoring::metric_client, MetricClient, self.channel);
        let r = pb::monitoring::MetricRequest {
            options: Some(request_struct(options)),
            secret_data: Some(crate::value::from_json(secret)),
            query: Some(crate::value::from_json(query)),
            schema: String::new(),
        };
        let listed = unary("Metric/list", UNARY_TIMEOUT, c.list(r)).await?;
        Ok(listed
            .metrics
            .into_iter()
            .map(|m| crate::monitoring::Listed {
                key: m.key,
                query: to_json_or_empty(m.metric_query),
            })
            .collect())
    }

    /// A monitoring data source's `Metric.get_data` of `metric` for the resources of
    /// `queries` (by resource id), from `start` to `end` (ISO 8601) every `period` seconds.
    ///
    /// # Errors
    /// The call failed.
    pub async fn metric_data(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
        metric: &str,
        queries: &Map<String, Value>,
        (start, end, period): (&str, &str, i32),
    ) -> Result<crate::monitoring::Data, CallError> {
        let mut c = client!(pb::monitoring::metric_client, MetricClient, self.channel);
        let r = pb::monitoring::MetricDataRequest {
            options: Some(request_struct(options)),
            secret_data: Some(crate::value::from_json(secret)),
            metric_query: Some(crate::value::from_json(queries)),
            metric: metric.to_owned(),
            start: start.to_owned(),
            end: end.to_owned(),
            period,
            stat: "AVERAGE".to_owned(),
            schema: String::new(),
        };
        let data = unary("Metric/get_data", UNARY_TIMEOUT, c.get_data(r)).await?;
        Ok(crate::monitoring::Data::of(data))
    }
}
