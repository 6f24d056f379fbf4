#!/usr/bin/env bash
# Scaling curves (BENCHMARKS.md, "Scaling curves"): time against size, each run beside its
# baseline of the same run, so a bend shows whether Gleaner's cost or the machine's changed.
#
#   bash scripts/curves.sh ingest   # one big account: 100,000 / 200,000 / 1,000,000 / 5,000,000
#                                   # resources beside a raw COPY (about 25 minutes, ~15 GB of disk)
#   bash scripts/curves.sh tasks    # small tasks: 1,000 / 6,000 / 24,000 beside pgbench (~6 minutes)
#   bash scripts/curves.sh ingest 100000 200000   # other sizes
#
# Each size runs in a fresh schema that is dropped after it.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-}
shift || true
case "$kind" in
ingest) sizes=("${@:-100000 200000 1000000 5000000}") ;;
tasks) sizes=("${@:-1000 6000 24000}") ;;
*)
  echo "usage: bash scripts/curves.sh ingest|tasks [SIZE ...]" >&2
  exit 2
  ;;
esac
bash scripts/services.sh
cargo build --release --bin gleaner-bench
bench=${CARGO_TARGET_DIR:-target}/release/gleaner-bench
# shellcheck disable=SC2068 # the default sizes are one word to split
for size in ${sizes[@]}; do
  echo "== $kind $size"
  if [[ "$kind" == ingest ]]; then
    "$bench" ingest --resources "$size" --accounts 1
  else
    "$bench" tasks --tasks "$size" --pgbench-seconds 10
  fi
done
