#!/usr/bin/env bash
# Fault tests that restart the machine's RabbitMQ and PostgreSQL under a run (faults 2 and 3 of
# docs/operations.md). They disturb every other user of those services, so they are not part of
# the test command; run them alone:
#
#   bash scripts/faults.sh
#
# Override the restart commands with GLEANER_FAULT_RESTART_RABBITMQ / _POSTGRES if the
# services are managed otherwise (systemd, containers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --test it restarts -- --ignored --test-threads=1 "$@"
bash scripts/services.sh
