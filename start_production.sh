#!/usr/bin/env bash
# Production: one vLLM OpenAI server owns the GPU, bound to loopback, and gunicorn's workers reach it over HTTP
# with the remote engine, so no worker (nor the master) imports torch or touches CUDA, and every worker's
# requests are batched together inside the one engine. With OCR_ENGINE_URL set, that server is used instead
# and none is started. If the engine dies it is restarted (workers answer 503 meanwhile) up to
# ENGINE_MAX_RESTARTS times, then everything stops with status 1 for a supervisor. SIGTERM drains (new
# requests get 503 shutting_down for DRAIN_SECONDS while running ones go on), stops gunicorn gracefully, then
# the engine. See docs/DEPLOYMENT.md.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh

log_dir="${LOG_DIR:-logs}"
mkdir -p uploads "$log_dir"
engine_pid=""
gunicorn_pid=""
stopping=0
# While this file exists the workers refuse new OCR requests with 503 and /ready answers 503.
export DRAIN_FILE="${DRAIN_FILE:-$log_dir/draining}"
rm -f "$DRAIN_FILE"

say() { echo "start_production: $*" >&2; }

if [ "$(id -u)" = 0 ]; then
  say "warning: running as root; the documented deployment runs as an unprivileged user (docs/DEPLOYMENT.md)"
fi

start_gunicorn() {
  # THREADS > 1 makes gunicorn use its gthread worker; --worker-connections equal to THREADS stops a worker
  # from accepting connections it has no thread for while another worker idles. THREADS=1 is a sync worker.
  "$VENV/bin/gunicorn" \
    --workers "${WORKERS:-4}" \
    --threads "${THREADS:-16}" \
    --worker-connections "${THREADS:-16}" \
    --bind "${HOST:-0.0.0.0}:${PORT:-5000}" \
    --timeout "${GUNICORN_TIMEOUT:-300}" \
    --graceful-timeout "${GUNICORN_GRACEFUL_TIMEOUT:-30}" \
    --access-logfile "$log_dir/access.log" \
    --access-logformat '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms worker=%(p)s' \
    --error-logfile "$log_dir/error.log" \
    --capture-output \
    "app:create_app()" &
  gunicorn_pid=$!
}

port_is_free() {
  "$VENV/bin/python" -c 'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1]))).close()' "$1" \
    2>/dev/null
}

start_engine() {
  # Its own process group, so that stopping it also stops the engine-core processes it spawns.
  setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
    --host 127.0.0.1 --port "$engine_port" "${engine_flags[@]}" >>"$log_dir/vllm.log" 2>&1 &
  engine_pid=$!
  echo "$engine_pid" >"$log_dir/vllm.pid"
  say "vLLM server started (pid $engine_pid, http://127.0.0.1:$engine_port, log $log_dir/vllm.log)"
}

engine_is_healthy() {
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$OCR_ENGINE_URL/health" 2>/dev/null
}

wait_for_engine() {
  local deadline=$((SECONDS + ${VLLM_START_TIMEOUT:-1200}))
  until engine_is_healthy; do
    if ! kill -0 "$engine_pid" 2>/dev/null; then
      say "error: the vLLM server exited during start-up; the end of $log_dir/vllm.log:"
      tail -n 20 "$log_dir/vllm.log" >&2
      return 1
    fi
    if [ "$stopping" = 1 ] || [ "$SECONDS" -ge "$deadline" ]; then
      say "error: the vLLM server was not healthy within ${VLLM_START_TIMEOUT:-1200} s; see $log_dir/vllm.log"
      return 1
    fi
    sleep 2
  done
}

stop_engine() {
  [ -n "$engine_pid" ] || return 0
  kill -TERM -- "-$engine_pid" 2>/dev/null || true
  local waited=0
  while kill -0 -- "-$engine_pid" 2>/dev/null && [ "$waited" -lt 30 ]; do
    sleep 1
    waited=$((waited + 1))
  done
  kill -KILL -- "-$engine_pid" 2>/dev/null || true
  wait "$engine_pid" 2>/dev/null || true
  engine_pid=""
}

stop_gunicorn() {
  [ -n "$gunicorn_pid" ] || return 0
  # Drain first: for DRAIN_SECONDS new requests get 503 shutting_down (and load balancers see /ready 503) while
  # the port stays open; then gunicorn closes it and lets in-flight requests finish within
  # GUNICORN_GRACEFUL_TIMEOUT.
  touch "$DRAIN_FILE"
  say "draining for ${DRAIN_SECONDS:-5} s, then stopping gunicorn"
  sleep "${DRAIN_SECONDS:-5}"
  kill -TERM "$gunicorn_pid" 2>/dev/null || true
  wait "$gunicorn_pid" 2>/dev/null || true
  gunicorn_pid=""
  rm -f "$DRAIN_FILE"
}

if [ -n "${OCR_ENGINE_URL:-}" ]; then
  # An engine run elsewhere: this machine needs only the service itself.
  use_environment remote
  export OCR_ENGINE=remote
  say "using the engine at $OCR_ENGINE_URL"
  start_gunicorn
  trap 'stop_gunicorn; exit 0' TERM INT
  wait "$gunicorn_pid"
  exit $?
fi

use_environment vllm
engine_port="${VLLM_PORT:-8000}"
export OCR_ENGINE=remote OCR_ENGINE_URL="http://127.0.0.1:$engine_port"
# The same flags as the in-process engine, VLLM_EXTRA_ARGS included; settings are validated here, before
# anything starts.
flags_text=$("$VENV/bin/python" -m ocr_api.engines.vllm_flags)
mapfile -t engine_flags <<<"$flags_text"
if ! port_is_free "$engine_port"; then
  say "error: port $engine_port is in use; set VLLM_PORT to a free port for the vLLM server"
  exit 1
fi

trap 'stopping=1' TERM INT
start_engine
if ! wait_for_engine; then
  stop_engine
  [ "$stopping" = 1 ] && exit 0
  exit 1
fi
say "vLLM server healthy; starting gunicorn on ${HOST:-0.0.0.0}:${PORT:-5000}"
start_gunicorn

restarts=0
while true; do
  exited=""
  wait -n -p exited "$engine_pid" "$gunicorn_pid" || true
  if [ "$stopping" = 1 ]; then
    say "stopping: gunicorn first (in-flight requests finish), then the engine"
    stop_gunicorn
    stop_engine
    exit 0
  fi
  if [ "$exited" = "$gunicorn_pid" ]; then
    say "error: gunicorn exited; stopping the engine"
    gunicorn_pid=""
    stop_engine
    exit 1
  fi
  if [ "$exited" = "$engine_pid" ]; then
    stop_engine  # its engine-core processes may outlive it
    if [ "$restarts" -ge "${ENGINE_MAX_RESTARTS:-5}" ]; then
      say "error: the vLLM server exited and was restarted $restarts times already; stopping"
      stop_gunicorn
      exit 1
    fi
    restarts=$((restarts + 1))
    say "the vLLM server exited; restarting it ($restarts of ${ENGINE_MAX_RESTARTS:-5}); requests get 503 meanwhile"
    start_engine
  fi
done
