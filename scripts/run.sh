#!/usr/bin/env bash
# Runs Gleaner on this machine: the API, one worker and the scheduler against the local PostgreSQL, RabbitMQ
# and Redis (started first if installed but stopped). Ctrl-C stops both gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${GLEANER_SECRET_KEY:-}" ]]; then
  cat >&2 <<'MSG'
error: GLEANER_SECRET_KEY is not set. It encrypts service-account credentials at rest, so keep
the same key for the life of the database (a new key cannot read credentials stored before):
  export GLEANER_SECRET_KEY=$(openssl rand -hex 32)
MSG
  exit 2
fi
bash scripts/services.sh
cargo build --release --bin gleaner
bin=target/release/gleaner
"$bin" migrate
# The default domain's first admin key, on the first run only (owner-only file).
mkdir -p gleaner-data
"$bin" domain bootstrap --key-file gleaner-data/admin.key
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; }
trap stop INT TERM EXIT
"$bin" worker & pids+=($!)
"$bin" scheduler & pids+=($!)
"$bin" api & pids+=($!)
# Either process ending (a crash, or Ctrl-C) stops the other.
wait -n
