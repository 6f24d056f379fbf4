//! The `aws` inventory collector.
//!
//! A collection asks STS who the credentials are, discovers the account's enabled regions
//! (DescribeRegions), then lists every resource type in every region at once: one unit of work
//! per type and region, each following its pagination to the end, with the calls in flight
//! bounded per collection ([`Session::call`]). A unit the credentials may not run (a missing
//! permission, a region not enabled) becomes an item error naming its region and call, and the
//! others go on; the task then ends FAILURE, which keeps every resource it did not see.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use gleaner_common::access::Access;
use gleaner_common::config::AwsSettings;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_common::provider::is_aws_region;
use gleaner_worker::plugin::{
    CollectRequest, Item, ItemError, ItemSender, Plugin, PluginError, ResourceItem,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{Failure, classify};
use crate::json::name_tag;
use crate::session::{Endpoint, Identity, Session, open_checked};

/// Runs a paginated call to its end, holding a call permit while each page is fetched, and
/// runs `$body` on each page. (Defined before the modules below, which use it.)
macro_rules! each_page {
    ($scope:expr, $call:literal, $pages:expr, |$page:ident| $body:block) => {{
        let mut pages = $pages;
        loop {
            let next = {
                let _permit = $scope.session.call().await;
                pages.next().await
            };
            let Some(next) = next else { break };
            let $page = next.map_err(|e| $scope.failed($call, e))?;
            $body
        }
    }};
}

mod ec2;
mod iam;
mod s3;
mod services;

/// A resource type the collector reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ec2Instance,
    Ec2Volume,
    Vpc,
    Subnet,
    SecurityGroup,
    S3Bucket,
    IamUser,
    IamRole,
    DbInstance,
    LambdaFunction,
    LoadBalancer,
    AutoScalingGroup,
    DynamoTable,
    EksCluster,
    SqsQueue,
    SnsTopic,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::Ec2Instance,
        Kind::Ec2Volume,
        Kind::Vpc,
        Kind::Subnet,
        Kind::SecurityGroup,
        Kind::S3Bucket,
        Kind::IamUser,
        Kind::IamRole,
        Kind::DbInstance,
        Kind::LambdaFunction,
        Kind::LoadBalancer,
        Kind::AutoScalingGroup,
        Kind::DynamoTable,
        Kind::EksCluster,
        Kind::SqsQueue,
        Kind::SnsTopic,
    ];

    /// The resource type's name in Gleaner.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Ec2Instance => "aws.ec2.instance",
            Kind::Ec2Volume => "aws.ec2.volume",
            Kind::Vpc => "aws.ec2.vpc",
            Kind::Subnet => "aws.ec2.subnet",
            Kind::SecurityGroup => "aws.ec2.security_group",
            Kind::S3Bucket => "aws.s3.bucket",
            Kind::IamUser => "aws.iam.user",
            Kind::IamRole => "aws.iam.role",
            Kind::DbInstance => "aws.rds.db_instance",
            Kind::LambdaFunction => "aws.lambda.function",
            Kind::LoadBalancer => "aws.elbv2.load_balancer",
            Kind::AutoScalingGroup => "aws.autoscaling.group",
            Kind::DynamoTable => "aws.dynamodb.table",
            Kind::EksCluster => "aws.eks.cluster",
            Kind::SqsQueue => "aws.sqs.queue",
            Kind::SnsTopic => "aws.sns.topic",
        }
    }

    /// Listed once per account, from the home region, instead of once per region.
    #[must_use]
    pub const fn global(self) -> bool {
        matches!(self, Kind::S3Bucket | Kind::IamUser | Kind::IamRole)
    }

    fn named(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The options of an `aws` collector.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryOptions {
    /// Collect only these regions (default: every region enabled for the account).
    pub regions: Option<Vec<String>>,
    /// Collect only these types (default: all).
    pub resource_types: Option<Vec<String>>,
    /// One endpoint for every service (a private endpoint, a local AWS).
    pub endpoint_url: Option<String>,
}

/// A region's name, as AWS spells them.
pub const REGION: &str = "^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$";

/// The schema of `endpoint_url`, shared by both plugins.
pub(crate) fn endpoint_schema() -> Value {
    json!({"type": "string", "minLength": 1, "x-gleaner-access": "endpoint",
        "description": "one endpoint for every AWS service, e.g. a private endpoint or a local AWS (http://127.0.0.1:5000); S3 is then addressed path-style. Must be one of GLEANER_NETWORK__ALLOW_ENDPOINTS"})
}

/// The `aws` inventory collector.
pub struct AwsInventory {
    info: PluginInfo,
    access: Arc<Access>,
    settings: AwsSettings,
}

impl AwsInventory {
    /// The plugin, calling only the endpoints `access` allows.
    #[must_use]
    pub fn new(access: Arc<Access>, settings: AwsSettings) -> Self {
        let types: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        Self {
            access,
            settings,
            info: PluginInfo {
                id: "aws".into(),
                name: "AWS inventory".into(),
                description: "EC2, EBS, VPC, S3, IAM, RDS, Lambda, ELBv2, Auto Scaling, DynamoDB, EKS, SQS and SNS resources of every enabled region, on the AWS SDK for Rust.".into(),
                kind: PluginKind::Collector,
                provider: "aws".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: types.iter().map(|t| (*t).to_owned()).collect(),
                metrics: Vec::new(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "regions": {"type": "array", "items": {"type": "string", "pattern": REGION}, "minItems": 1, "uniqueItems": true,
                            "description": "collect only these regions (default: every region enabled for the account)"},
                        "resource_types": {"type": "array", "items": {"enum": types}, "minItems": 1, "uniqueItems": true,
                            "description": "collect only these resource types (default: all)"},
                        "endpoint_url": endpoint_schema()
                    },
                    "additionalProperties": false
                }),
            },
        }
    }
}

#[async_trait]
impl Plugin for AwsInventory {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        let (_, session): (InventoryOptions, _) =
            open_checked(&self.info, &self.access, &self.settings, options, secret).await?;
        session.identity().await.map(drop)
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let (opts, session): (InventoryOptions, _) = open_checked(
            &self.info,
            &self.access,
            &self.settings,
            &request.options,
            &request.secret,
        )
        .await?;
        let work = async {
            let me = session.identity().await?;
            let regions = regions(&session, &opts, &out).await?;
            let kinds: Vec<Kind> = match &opts.resource_types {
                Some(names) => names.iter().filter_map(|n| Kind::named(n)).collect(),
                None => Kind::ALL.to_vec(),
            };
            tracing::info!(
                account = %me.account,
                regions = regions.len(),
                types = kinds.len(),
                "collecting AWS"
            );
            let limit = opts.regions.as_deref().map(|_| regions.as_slice());
            let mut scopes = Vec::new();
            for &kind in &kinds {
                let at: Vec<&str> = if kind.global() {
                    vec![session.home()]
                } else {
                    regions.iter().map(String::as_str).collect()
                };
                for region in at {
                    scopes.push(Scope {
                        kind,
                        session: &session,
                        me: &me,
                        region,
                        limit,
                        out: &out,
                    });
                }
            }
            // Every unit at once: the session bounds the calls in flight.
            let mut units: FuturesUnordered<_> = scopes.iter().map(unit).collect();
            while let Some((scope, done)) = units.next().await {
                match done {
                    Ok(()) => {}
                    Err(Stop::Plugin(e)) => return Err(e),
                    Err(Stop::Call {
                        call,
                        failure: Failure::Transient(words),
                    }) => {
                        return Err(PluginError::Transient(format!(
                            "{}: {call}: {words}",
                            scope.region
                        )));
                    }
                    Err(e @ Stop::Call { .. }) => scope.report(None, e).await?,
                }
            }
            Ok(())
        };
        tokio::select! {
            done = work => done,
            () = request.cancel.cancelled() => Err(PluginError::Stopped),
        }
    }
}

/// Runs one unit: a resource type in a region.
async fn unit<'a>(scope: &'a Scope<'a>) -> (&'a Scope<'a>, Result<(), Stop>) {
    (scope, list(scope).await)
}

async fn list(scope: &Scope<'_>) -> Result<(), Stop> {
    match scope.kind {
        Kind::Ec2Instance => ec2::instances(scope).await,
        Kind::Ec2Volume => ec2::volumes(scope).await,
        Kind::Vpc => ec2::vpcs(scope).await,
        Kind::Subnet => ec2::subnets(scope).await,
        Kind::SecurityGroup => ec2::security_groups(scope).await,
        Kind::S3Bucket => s3::buckets(scope).await,
        Kind::IamUser => iam::users(scope).await,
        Kind::IamRole => iam::roles(scope).await,
        Kind::DbInstance => services::db_instances(scope).await,
        Kind::LambdaFunction => services::functions(scope).await,
        Kind::LoadBalancer => services::load_balancers(scope).await,
        Kind::AutoScalingGroup => services::auto_scaling_groups(scope).await,
        Kind::DynamoTable => services::tables(scope).await,
        Kind::EksCluster => services::clusters(scope).await,
        Kind::SqsQueue => services::queues(scope).await,
        Kind::SnsTopic => services::topics(scope).await,
    }
}

/// The regions to collect: the account's enabled ones (regions not opted in are left out), or
/// those of the `regions` option, each of which must be enabled.
///
/// # Errors
/// DescribeRegions still failing transiently; the worker stopped reading.
pub async fn regions(
    session: &Session,
    opts: &InventoryOptions,
    out: &ItemSender,
) -> Result<Vec<String>, PluginError> {
    let home = session.home();
    let ec2 = session.ec2(home);
    let answer = {
        let _permit = session.call().await;
        ec2.describe_regions().send().await
    };
    let enabled: Vec<String> = match answer {
        Ok(found) => found
            .regions()
            .iter()
            .filter(|r| r.opt_in_status() != Some("not-opted-in"))
            .filter_map(|r| {
                r.region_name()
                    .filter(|n| is_aws_region(n))
                    .map(str::to_owned)
            })
            .collect(),
        Err(e) => match classify(e) {
            Failure::Transient(words) => {
                return Err(PluginError::Transient(format!(
                    "{home}: ec2:DescribeRegions: {words}"
                )));
            }
            failure => {
                // Without the list, what was asked for (or the home region) is collected, and
                // the task says what it could not do.
                let fallback = opts
                    .regions
                    .clone()
                    .unwrap_or_else(|| vec![home.to_owned()]);
                out.send(Item::Error(ItemError {
                    resource_type: None,
                    resource_key: None,
                    message: format!(
                        "{home}: ec2:DescribeRegions: {}; collected {} only",
                        failure.words(),
                        fallback.join(", ")
                    ),
                }))
                .await?;
                return Ok(fallback);
            }
        },
    };
    let Some(wanted) = &opts.regions else {
        let mut enabled = enabled;
        enabled.sort();
        return Ok(enabled);
    };
    let mut chosen = Vec::new();
    for region in wanted {
        if enabled.contains(region) {
            chosen.push(region.clone());
        } else {
            out.send(Item::Error(ItemError {
                resource_type: None,
                resource_key: None,
                message: format!(
                    "{region}: not collected: the region is not enabled for this account (not opted in, or no such region)"
                ),
            }))
            .await?;
        }
    }
    Ok(chosen)
}

/// Why a unit stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// An AWS call failed, after the SDK's retries.
    Call {
        call: &'static str,
        failure: Failure,
    },
    /// The worker stopped reading.
    Plugin(PluginError),
}

impl From<PluginError> for Stop {
    fn from(e: PluginError) -> Self {
        Stop::Plugin(e)
    }
}

/// What one unit collects, and where.
pub(crate) struct Scope<'a> {
    kind: Kind,
    session: &'a Session,
    me: &'a Identity,
    /// Where the calls go.
    region: &'a str,
    /// The regions the user limited the collection to, if they did: global resources (buckets)
    /// elsewhere are left out.
    limit: Option<&'a [String]>,
    out: &'a ItemSender,
}

impl Scope<'_> {
    /// An ARN of this account in this region.
    fn arn(&self, service: &str, resource: &str) -> String {
        self.me.arn(service, self.region, resource)
    }

    fn wants_region(&self, region: &str) -> bool {
        self.limit.is_none_or(|l| l.iter().any(|r| r == region))
    }

    /// Names a failed call.
    fn failed<E>(&self, call: &'static str, e: SdkError<E, HttpResponse>) -> Stop
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Stop::Call {
            call,
            failure: classify(e),
        }
    }

    /// Makes one call, holding a call permit.
    async fn send<T, E>(
        &self,
        call: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, Stop>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let _permit = self.session.call().await;
        request.await.map_err(|e| self.failed(call, e))
    }

    /// A call that failed for a reason retrying cannot fix, for one resource, reported (or, if
    /// the resource is gone, skipped), so that the unit goes on with the others; anything else
    /// is passed on.
    async fn tolerate<T>(&self, about: &str, done: Result<T, Stop>) -> Result<Option<T>, Stop> {
        match done {
            Ok(v) => Ok(Some(v)),
            Err(Stop::Call {
                failure: Failure::Gone(_),
                ..
            }) => Ok(None),
            Err(
                e @ Stop::Call {
                    failure: Failure::Denied(_) | Failure::Other(_),
                    ..
                },
            ) => {
                self.report(Some(about), e).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reports a failed call as an item error naming the region and the call (and the
    /// resource, when the call was about one).
    async fn report(&self, about: Option<&str>, stop: Stop) -> Result<(), PluginError> {
        let Stop::Call { call, failure } = stop else {
            return Ok(());
        };
        self.out
            .send(Item::Error(ItemError {
                resource_type: Some(self.kind.name().to_owned()),
                resource_key: about.map(str::to_owned),
                message: format!("{}: {call}: {}", self.region, failure.words()),
            }))
            .await
    }

    /// Sends a resource of this region; its name is its `Name` tag, else `own_name`.
    async fn emit(&self, key: String, own_name: &str, data: Value) -> Result<(), Stop> {
        self.emit_at(key, own_name, Some(self.region), data).await
    }

    /// [`Scope::emit`] for a resource of another region than the call's (a bucket), or of
    /// none (IAM).
    async fn emit_at(
        &self,
        key: String,
        own_name: &str,
        region: Option<&str>,
        data: Value,
    ) -> Result<(), Stop> {
        let name = name_tag(&data).or_else(|| (!own_name.is_empty()).then(|| own_name.to_owned()));
        self.out
            .send(Item::Resource(ResourceItem {
                resource_type: self.kind.name().to_owned(),
                resource_key: key,
                name,
                region: region.map(str::to_owned),
                data,
            }))
            .await
            .map_err(Stop::Plugin)
    }
}

impl Endpoint for InventoryOptions {
    fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref()
    }
}
