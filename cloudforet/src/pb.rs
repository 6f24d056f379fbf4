//! The client stubs compiled from the vendored protos (`proto/`).

#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

pub mod core {
    pub mod v1 {
        tonic::include_proto!("spaceone.api.core.v1");
    }
}

/// `spaceone.api.inventory.plugin`: inventory collectors.
pub mod inventory {
    tonic::include_proto!("spaceone.api.inventory.plugin");
}

/// `spaceone.api.cost_analysis.plugin`: cost data sources.
pub mod cost {
    tonic::include_proto!("spaceone.api.cost_analysis.plugin");
}

/// `spaceone.api.monitoring.plugin`: monitoring data sources.
pub mod monitoring {
    tonic::include_proto!("spaceone.api.monitoring.plugin");
}
