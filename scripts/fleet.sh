#!/usr/bin/env bash
# The multi-process scale test: Gleaner's production shape on this machine under load and
# faults (gleaner-bench fleet, BENCHMARKS.md "The fleet"). It restarts the local RabbitMQ once
# (pass --no-broker-restart to leave it alone) and takes about 12 minutes:
#
#   bash scripts/fleet.sh                 # 1 api, 4 workers, 2 schedulers, 10 minutes
#   bash scripts/fleet.sh --seconds 120   # a shorter run; see --help for every knob
#   bash scripts/fleet.sh curve           # small tasks' throughput with 1, 2 and 4 workers
#
# It exits 1 when a check fails: a job lost, doubled or failed without a reason, a count off, a
# message left in a queue or dead-lettered without a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --release --bin gleaner-bench
bench=${CARGO_TARGET_DIR:-target}/release/gleaner-bench
if [[ "${1:-}" == "curve" ]]; then
  shift
  for workers in 1 2 4; do
    "$bench" tasks --tasks 3000 --workers "$workers" "$@"
  done
  exit 0
fi
exec "$bench" fleet "$@"
