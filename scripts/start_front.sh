#!/usr/bin/env bash
# The front server alone: nginx on HOST:PORT in front of the API at API_UPSTREAM (HOST:PORT or unix:PATH, where
# scripts/start_api.sh listens), buffering each request whole before a worker sees it, so that slow clients cost
# nginx a connection, not a worker a thread. start_production.sh runs it before its API; deploy/compose.yaml's front
# service and deploy/systemd/deepseek-ocr-front.service run it as a process of its own. It ends in nginx itself
# (exec), in the foreground: SIGQUIT stops it gracefully (what it is proxying finishes), SIGTERM at once. Its
# configuration, pid and buffers go in FRONT_RUN_DIR (a new temporary directory unless given), its error log through
# the service's redaction into $LOG_DIR/front-error.log.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh

ensure_nginx
# nginx reads NGINX from its environment as sockets inherited from an old binary ("[emerg] invalid socket number"):
# the binary's path goes on under another name, and nginx never sees the variable.
nginx_binary="$NGINX"
unset NGINX
if [ -z "${VENV:-}" ]; then
  use_environment remote
fi
log_dir="${LOG_DIR:-logs}"
mkdir -p "$log_dir"
log_dir=$(cd "$log_dir" && pwd)
run_dir="${FRONT_RUN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/deepseek-ocr-front.XXXXXX")}"
mkdir -p "$run_dir"
listen="${HOST:-0.0.0.0}:${PORT:-5000}"
"$VENV/bin/python" -m ocr_api.front_server --listen "$listen" --upstream "${API_UPSTREAM:-127.0.0.1:5001}" \
  --run-dir "$run_dir" --log-dir "$log_dir" >"$run_dir/nginx.conf" || exit 1
if ! "$nginx_binary" -t -q -p "$run_dir" -c "$run_dir/nginx.conf" -e stderr; then
  echo "start_front: error: nginx refused its configuration ($run_dir/nginx.conf); is $listen free?" >&2
  exit 1
fi
# The redactor reads nginx's error log until nginx exits; its pid is left beside nginx's, for whoever must wait
# until the last line is written (start_production.sh).
exec {errors}> >("$VENV/bin/python" -m ocr_api.logs redact >>"$log_dir/front-error.log")
echo "$!" >"$run_dir/redactor.pid"
echo "start_front: nginx on $listen in front of ${API_UPSTREAM:-127.0.0.1:5001}" >&2
exec "$nginx_binary" -p "$run_dir" -c "$run_dir/nginx.conf" -e stderr -g 'daemon off;' 2>&"$errors" {errors}>&-
