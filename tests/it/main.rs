//! Integration tests on the real PostgreSQL and RabbitMQ: one binary, one module per area.

mod support;

mod collect;
mod collectors;
mod errors;
mod merge;
mod job_events;
mod openapi;
mod plugins;
mod probes;
mod service_accounts;
mod standalone;
