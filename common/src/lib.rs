//! Gleaner's shared core: identifiers, domain vocabulary, the message envelope, configuration,
//! telemetry, retries, credentials encryption, SeaORM entities, store functions and the broker
//! seam.
//!
//! - [`id`]: typed ids. [`model`]: kinds, states, values with rules.
//! - [`envelope`]: what travels on the broker. [`broker`]: publishing and topology.
//! - [`lifecycle`]: the life of a job and its tasks, every change of their state.
//! - [`entity`]: tables. [`store`]: every other read and write of rows. [`outbox`]: the relay.
//! - [`config`], [`telemetry`], [`retry`], [`crypto`], [`db`], [`provider`], [`plugin`].
//! - [`metrics`]: the Prometheus recorder and the names and helpers of every metric.

pub mod access;
pub mod billing;
pub mod broker;
pub mod calendar;
pub mod config;
pub mod crypto;
pub mod db;
pub mod entity;
pub mod envelope;
pub mod events;
pub mod external;
pub mod id;
pub mod lifecycle;
pub mod metric;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod plugin;
pub mod provider;
pub mod retry;
pub mod store;
pub mod telemetry;
