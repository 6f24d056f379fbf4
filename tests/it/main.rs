//! Integration tests on the real PostgreSQL and RabbitMQ: one binary, one module per area.

mod support;

mod collect;
mod collectors;
mod errors;
mod job_events;
mod merge;
mod metrics;
mod openapi;
mod plugins;
mod probes;
mod schedules;
mod service_accounts;
mod standalone;
