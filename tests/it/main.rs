//! Integration tests on the real PostgreSQL and RabbitMQ: one binary, one module per area.

mod support;

mod access;
mod auth;
mod aws;
mod billing;
mod broker_limits;
mod cli;
mod cloudforet;
mod cloudwatch;
mod collect;
mod collectors;
mod console;
mod contract;
mod deploy;
mod errors;
mod faults;
mod job_events;
mod key_rotation;
mod lifecycle;
mod limits;
mod merge;
mod metrics;
mod monitoring;
mod openapi;
mod plugins;
mod probes;
mod prometheus;
mod requests;
mod restarts;
mod schedules;
mod service_accounts;
mod standalone;
mod verify;
