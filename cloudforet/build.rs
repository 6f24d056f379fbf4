//! Compiles the vendored Cloudforet plugin protocol (`proto/`, see its README) into the client
//! stubs of `src/pb.rs`. protox parses the files, so no `protoc` is needed.

use std::path::PathBuf;

const PROTOS: [&str; 8] = [
    "spaceone/api/core/v1/server_info.proto",
    "spaceone/api/inventory/plugin/collector.proto",
    "spaceone/api/inventory/plugin/job.proto",
    "spaceone/api/cost_analysis/plugin/data_source.proto",
    "spaceone/api/cost_analysis/plugin/job.proto",
    "spaceone/api/cost_analysis/plugin/cost.proto",
    "spaceone/api/monitoring/plugin/data_source.proto",
    "spaceone/api/monitoring/plugin/metric.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let files = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        // Decoded by hand: older plugins send its amounts as floats (src/cost.rs).
        .extern_path(
            ".spaceone.api.cost_analysis.plugin.CostInfo",
            "crate::cost::CostInfo",
        )
        .compile_fds(files)?;
    Ok(())
}
