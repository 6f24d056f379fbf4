//! Gleaner's official AWS plugins, on the AWS SDK for Rust: `aws`, the inventory collector,
//! and `aws-cost-explorer`, the cost data source.
//!
//! They are a crate of their own so that the SDK's crates, the biggest of the build, are
//! compiled once and not again with every change to the worker.

use std::sync::Arc;

use gleaner_common::access::Access;
use gleaner_common::config::AwsSettings;
use gleaner_worker::plugin::Plugin;

pub mod cost;
pub mod error;
pub mod inventory;
pub mod json;
pub mod session;

/// Both plugins, calling only the endpoints `access` allows.
#[must_use]
pub fn plugins(access: &Arc<Access>, settings: &AwsSettings) -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(inventory::AwsInventory::new(
            access.clone(),
            settings.clone(),
        )),
        Arc::new(cost::CostExplorer::new(access.clone(), settings.clone())),
    ]
}
