#!/usr/bin/env bash
# Makes sure PostgreSQL, RabbitMQ and Redis answer on their local ports: starts any that is
# installed but stopped, and fails with a clear message for any that is missing.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "error: $1 did not start listening on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

ensure() { # name port start-command install-hint
  local name=$1 port=$2 start=$3 hint=$4
  if port_open "$port"; then return 0; fi
  local bin=${start%% *}
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "error: $name is not running on 127.0.0.1:$port and is not installed ($hint)" >&2
    return 1
  fi
  echo "starting $name ..." >&2
  bash -c "$start" >/dev/null 2>&1 || true
  wait_port "$name" "$port" 60
}

ensure PostgreSQL 5432 \
  "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | head -n1) main start" \
  "e.g. apt-get install postgresql; trust auth for user root on 127.0.0.1"
ensure Redis 6379 \
  "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log" \
  "e.g. apt-get install redis-server"
ensure RabbitMQ 5672 "rabbitmq-server -detached" "e.g. apt-get install rabbitmq-server"
# RabbitMQ opens its port before it accepts AMQP sessions; give it a moment to finish booting.
if command -v rabbitmqctl >/dev/null 2>&1; then
  timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
