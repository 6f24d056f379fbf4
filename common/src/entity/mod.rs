//! SeaORM entities, one module per table. Store functions convert `Model`s into domain types:
//! a `Model` never reaches an API handler or a message.

pub mod api_key;
pub mod audit;
pub mod catalog_entry;
pub mod collector;
pub mod domain;
pub mod idempotency_key;
pub mod job;
pub mod job_task;
pub mod outbox;
pub mod plugin;
pub mod project;
pub mod resource;
pub mod resource_change;
pub mod resource_source;
pub mod schedule;
pub mod schedule_fire;
pub mod secret;
pub mod service_account;
