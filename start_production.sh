#!/usr/bin/env bash
# Production on one machine, in one command: one vLLM OpenAI server owns the GPU, bound to loopback, and gunicorn's
# workers (scripts/start_api.sh) reach it over HTTP with the remote engine, so no worker (nor the master) imports
# torch or touches CUDA, and every worker's requests are batched together inside the one engine. With
# OCR_ENGINE_URL set, that server is used instead and none is started. Clients reach nginx (scripts/start_front.sh)
# on HOST:PORT, which buffers each request whole before a worker sees it; gunicorn listens on a socket in a private
# run directory. If the engine dies it is restarted (workers answer 503 meanwhile) up to ENGINE_MAX_RESTARTS times,
# then everything stops with status 1 for a supervisor; so does nginx or gunicorn exiting. SIGTERM drains (new
# requests get 503 shutting_down for DRAIN_SECONDS while running ones go on), stops nginx and gunicorn gracefully,
# then the engine. deploy/ runs the same pieces as services of their own instead. See docs/DEPLOYMENT.md.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh

log_dir="${LOG_DIR:-logs}"
mkdir -p uploads "$log_dir"
log_dir=$(cd "$log_dir" && pwd)
engine_pid=""
engine_restarts=0
api_pid=""
consumer_pid=""
consumer_restarts=0
front_pid=""
stopping=0
# gunicorn's socket, nginx's configuration, pid and buffers: private to this run, removed when it ends.
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/deepseek-ocr.XXXXXX")
trap 'rm -rf "$run_dir"' EXIT
# While this file exists the workers refuse new OCR requests with 503 and /ready answers 503.
export DRAIN_FILE="${DRAIN_FILE:-$log_dir/draining}"
rm -f "$DRAIN_FILE"
# prometheus_client's multiprocess mode: the workers and the consumer write their samples here, and a scrape of
# /metrics from any worker adds them up. New with each run, so counters start at zero with the processes. Not
# given to vLLM, which keeps its own metrics (its /metrics on VLLM_PORT).
metrics_dir="$run_dir/metrics"
mkdir -p "$metrics_dir"

say() { echo "start_production: $*" >&2; }

if [ "$(id -u)" = 0 ]; then
  say "warning: running as root; the documented deployment runs as an unprivileged user (docs/DEPLOYMENT.md)"
fi

check_settings() {
  # Every setting is validated before anything starts or binds a port: one line and status 1 when one is bad.
  "$VENV/bin/python" -m config --check || exit 1
}

start_api() {
  # gunicorn on a socket only nginx reaches; the script execs it, so this pid is gunicorn's.
  PROMETHEUS_MULTIPROC_DIR="$metrics_dir" API_BIND="unix:$run_dir/gunicorn.sock" LOG_DIR="$log_dir" VENV="$VENV" \
    scripts/start_api.sh &
  api_pid=$!
}

start_consumer() {
  # Document jobs run here, beside the workers and on the same engine; SIGTERM stops each at its next page and
  # queues it again, so the next start goes on where it stopped.
  PROMETHEUS_MULTIPROC_DIR="$metrics_dir" "$VENV/bin/python" -m ocr_api.jobs.consumer >>"$log_dir/jobs.log" 2>&1 &
  consumer_pid=$!
  say "job consumer started (pid $consumer_pid, log $log_dir/jobs.log)"
}

stop_consumer() {
  [ -n "$consumer_pid" ] || return 0
  kill -TERM "$consumer_pid" 2>/dev/null || true
  kill_after "$consumer_pid" 60
  wait "$consumer_pid" 2>/dev/null || true
  consumer_pid=""
  say "job consumer stopped"
}

within_restarts() {
  # within_restarts WHAT TIMES: fails, saying so, once WHAT has been restarted ENGINE_MAX_RESTARTS times.
  if [ "$2" -ge "${ENGINE_MAX_RESTARTS:-5}" ]; then
    say "error: $1 exited and was restarted $2 times already; stopping"
    return 1
  fi
}

restart_consumer() {
  # A consumer that died (killed, out of memory) leaves its job running; the new one's warden takes it up.
  consumer_pid=""
  within_restarts "the job consumer" "$consumer_restarts" || return 1
  consumer_restarts=$((consumer_restarts + 1))
  say "the job consumer exited; restarting it ($consumer_restarts of ${ENGINE_MAX_RESTARTS:-5})"
  start_consumer
}

start_front() {
  # nginx in the foreground; the script execs it, so this pid is nginx's. A configuration nginx refuses ends it at
  # once with one line, and the loop below stops everything.
  FRONT_RUN_DIR="$run_dir" API_UPSTREAM="unix:$run_dir/gunicorn.sock" LOG_DIR="$log_dir" VENV="$VENV" NGINX="$NGINX" \
    scripts/start_front.sh &
  front_pid=$!
  say "front server (nginx, pid $front_pid) on ${HOST:-0.0.0.0}:${PORT:-5000}; gunicorn on unix:$run_dir/gunicorn.sock"
}

kill_after() {
  # Give process $1 (or process group -N) $2 seconds to exit, then SIGKILL it, so that a stop never hangs.
  # It does not reap: callers `wait` for their own jobs (see stop_front for why not for every process).
  local waited=0
  while kill -0 -- "$1" 2>/dev/null && [ "$waited" -lt "$2" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  kill -KILL -- "$1" 2>/dev/null || true
}

stop_front() {
  [ -n "$front_pid" ] || return 0
  # QUIT: nginx stops accepting, lets the requests it is proxying finish (gunicorn is still serving them), then
  # exits; the redactor of its error log ends with it.
  kill -QUIT "$front_pid" 2>/dev/null || true
  kill_after "$front_pid" "$((${GUNICORN_GRACEFUL_TIMEOUT:-30} + 5))"
  wait "$front_pid" 2>/dev/null || true
  # The redactor of its error log is not our child: it is only watched until it has written the last line (it ends
  # at EOF once nginx is gone).
  [ ! -f "$run_dir/redactor.pid" ] || kill_after "$(cat "$run_dir/redactor.pid")" 5
  front_pid=""
  say "nginx stopped"
}

start_service() {
  start_api
  # JOB_CONSUMER=0: jobs run elsewhere (a consumer of their own, sharing REDIS_URL and JOBS_DIR).
  [ "${JOB_CONSUMER:-1}" = 0 ] || start_consumer
  # nginx once gunicorn listens: a request before would find no socket ("[crit] connect() ... failed" in its log,
  # and 502); until then the port refuses connections, which a load balancer reads as not ready.
  wait_for_api_socket
  start_front
}

wait_for_api_socket() {
  local waited=0
  while [ ! -S "$run_dir/gunicorn.sock" ] && kill -0 "$api_pid" 2>/dev/null && [ "$waited" -lt 600 ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
}

watched_pids() {
  # The processes the main loop waits on: the engine and the job consumer only where this script runs them.
  watched=("$api_pid" "$front_pid")
  [ -z "$engine_pid" ] || watched+=("$engine_pid")
  [ -z "$consumer_pid" ] || watched+=("$consumer_pid")
}

port_is_free() {
  "$VENV/bin/python" -c 'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1]))).close()' "$1" \
    2>/dev/null
}

start_engine() {
  # Its own process group, so that stopping it also stops the engine-core processes it spawns. The server is
  # scripts/start_engine.sh's, as on a GPU host of its own: the same flags and environment (it execs vLLM in the end,
  # so the process id is the server's).
  setsid env ENGINE_PYTHON="$VENV/bin/python" VLLM_HOST=127.0.0.1 VLLM_PORT="$engine_port" scripts/start_engine.sh \
    >>"$log_dir/vllm.log" 2>&1 &
  engine_pid=$!
  # Written whole, then renamed: whoever reads the file never sees it empty.
  echo "$engine_pid" >"$log_dir/vllm.pid.new" && mv -f "$log_dir/vllm.pid.new" "$log_dir/vllm.pid"
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
  kill_after "-$engine_pid" 30
  wait "$engine_pid" 2>/dev/null || true
  say "vLLM server stopped (pid $engine_pid)"
  engine_pid=""
}

restart_engine() {
  stop_engine  # its engine-core processes may outlive it
  within_restarts "the vLLM server" "$engine_restarts" || return 1
  engine_restarts=$((engine_restarts + 1))
  say "the vLLM server exited; restarting it ($engine_restarts of ${ENGINE_MAX_RESTARTS:-5}); requests get 503 meanwhile"
  start_engine
}

stop_service() {
  # Drain first: for DRAIN_SECONDS new requests get 503 shutting_down (and load balancers see /ready 503) while
  # the port stays open; then nginx closes it and finishes what it proxies, then gunicorn stops, letting
  # anything still running finish within GUNICORN_GRACEFUL_TIMEOUT.
  if [ -n "$api_pid" ] && [ -n "$front_pid" ]; then
    touch "$DRAIN_FILE"
    say "draining for ${DRAIN_SECONDS:-5} s, then stopping nginx and gunicorn"
    sleep "${DRAIN_SECONDS:-5}"
  fi
  stop_front
  if [ -n "$api_pid" ]; then
    kill -TERM "$api_pid" 2>/dev/null || true
    wait "$api_pid" 2>/dev/null || true
    api_pid=""
    say "gunicorn stopped"
  fi
  stop_consumer
  rm -f "$DRAIN_FILE"
}

stop_everything() {
  # Everything this script started, the engine last; then exit with status $1.
  [ -z "$engine_pid" ] || [ "$1" != 0 ] ||
    say "stopping: nginx and gunicorn first (in-flight requests finish), then the engine"
  stop_service
  stop_engine
  exit "$1"
}

ensure_nginx
# nginx is a proxy in front: the service counts its X-Forwarded-For entry as the client (rate limits).
export TRUSTED_PROXIES=$((${TRUSTED_PROXIES:-0} + 1))

# SIGQUIT is graceful too, as for nginx: the same drain and stop as SIGTERM.
trap 'stopping=1' TERM INT QUIT
if [ -n "${OCR_ENGINE_URL:-}" ]; then
  # An engine run elsewhere: this machine needs only the service itself.
  use_environment remote
  ensure_project_installed "$VENV"  # the deepseek-ocr command, beside the service
  export OCR_ENGINE=remote
  check_settings
  say "using the engine at $OCR_ENGINE_URL"
else
  # A checkpoint vLLM cannot load is refused before vLLM (about 6 GB) is installed.
  "${PYTHON:-python3}" -m ocr_api.profiles check vllm || exit 1
  use_environment vllm
  ensure_project_installed "$VENV"  # the deepseek-ocr command, beside the service
  engine_port="${VLLM_PORT:-8000}"
  export OCR_ENGINE=remote OCR_ENGINE_URL="http://127.0.0.1:$engine_port"
  check_settings
  # The engine's flags are checked before anything starts: a checkpoint vLLM cannot load, or VLLM_EXTRA_ARGS that
  # cannot be split, is one line and status 1 here rather than in vllm.log.
  "$VENV/bin/python" -m ocr_api.engines.vllm_flags --check || exit 1
  if ! port_is_free "$engine_port"; then
    say "error: port $engine_port is in use; set VLLM_PORT to a free port for the vLLM server"
    exit 1
  fi
  start_engine
  if ! wait_for_engine; then
    stop_engine
    [ "$stopping" = 1 ] && exit 0
    exit 1
  fi
  say "vLLM server healthy; starting gunicorn and nginx"
fi
start_service

# One loop for both: whichever watched process exits decides. The engine and the consumer are restarted within
# ENGINE_MAX_RESTARTS; nginx or gunicorn exiting stops everything with status 1; SIGTERM stops everything with 0.
while true; do
  exited=""
  watched_pids
  wait -n -p exited "${watched[@]}" || true
  if [ "$stopping" = 1 ]; then
    stop_everything 0
  fi
  if [ -n "$consumer_pid" ] && [ "$exited" = "$consumer_pid" ]; then
    restart_consumer && continue
    stop_everything 1
  fi
  if [ -n "$engine_pid" ] && [ "$exited" = "$engine_pid" ]; then
    restart_engine && continue
    stop_everything 1
  fi
  [ "$exited" = "$api_pid" ] && api_pid="" && say "error: gunicorn exited; stopping"
  [ "$exited" = "$front_pid" ] && front_pid="" && say "error: nginx exited; stopping"
  stop_everything 1
done
