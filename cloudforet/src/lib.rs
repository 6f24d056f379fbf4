//! Cloudforet (SpaceONE) plugins, unchanged: Gleaner as the host of their gRPC protocol
//! (`../shared/reference/cloudforet-plugin-protocol.md` has the facts; docs/cloudforet.md the
//! user's side).
//!
//! - [`host`] starts and keeps the plugin processes, or reaches a plugin already serving;
//! - [`client`] calls their services with JSON in and out ([`value`] converts Structs);
//! - [`status`] reads their errors;
//! - [`inventory`] turns what a collector streams into Gleaner's items;
//! - [`cost`] decodes a cost data source's records, floats or doubles, into exact amounts.

pub mod client;
pub mod cost;
pub mod host;
pub mod inventory;
pub mod monitoring;
pub mod pb;
pub mod status;
pub mod value;

pub use client::Client;
pub use host::{Host, Lease, StartError};
pub use status::CallError;
pub use tonic::Streaming;
