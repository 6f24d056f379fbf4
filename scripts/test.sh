#!/usr/bin/env bash
# The test command: starts the local services if needed, then runs every test of the
# workspace (unit tests and the integration tests against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --all-targets "$@"
