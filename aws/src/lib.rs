//! Gleaner's official AWS plugins, on the AWS SDK for Rust: `aws`, the inventory collector,
//! `aws-cost-explorer`, the cost data source, and `aws-cloudwatch`, the metric data source of
//! the collector's EC2 instances and EBS volumes.
//!
//! They are a crate of their own so that the SDK's crates, the biggest of the build, are
//! compiled once and not again with every change to the worker.

use std::sync::Arc;

use gleaner_common::access::Access;
use gleaner_common::config::AwsSettings;
use gleaner_worker::plugin::Plugin;

pub mod cloudwatch;
pub mod cost;
pub mod error;
pub mod inventory;
pub mod json;
pub mod session;

/// The three plugins, calling only the endpoints `access` allows.
#[must_use]
pub fn plugins(access: &Arc<Access>, settings: &AwsSettings) -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(inventory::AwsInventory::new(
            access.clone(),
            settings.clone(),
        )),
        Arc::new(cost::CostExplorer::new(access.clone(), settings.clone())),
        Arc::new(cloudwatch::CloudWatch::new(
            access.clone(),
            settings.clone(),
        )),
    ]
}
