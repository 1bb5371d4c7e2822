#!/usr/bin/env bash
# The API alone: gunicorn's workers on the remote engine (OCR_ENGINE_URL), listening on API_BIND (HOST:PORT or
# unix:PATH) for a front server. start_production.sh runs it behind its own nginx; deploy/compose.yaml's api service
# and deploy/systemd/deepseek-ocr-api.service run it as a process of its own, with scripts/start_front.sh as another.
# It ends in gunicorn itself (exec): SIGTERM drains for DRAIN_SECONDS (new requests 503 shutting_down at once), then
# stops it gracefully, in-flight requests finishing within GUNICORN_GRACEFUL_TIMEOUT; SIGQUIT stops it at once. Set TRUSTED_PROXIES to the proxies in front (1 behind scripts/start_front.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh

# start_production.sh hands over the environment it made (the vLLM one, when it runs the engine too).
if [ -z "${VENV:-}" ]; then
  use_environment remote
fi
export OCR_ENGINE=remote
"$VENV/bin/python" -m config --check || exit 1
log_dir="${LOG_DIR:-logs}"
mkdir -p uploads "$log_dir"
# SIGTERM drains first (ocr_api/gunicorn_hooks.py): for DRAIN_SECONDS new requests get 503 shutting_down while
# running ones go on. The drain's file is this process's own unless given ($$ is gunicorn's pid after the exec).
export DRAIN_FILE="${DRAIN_FILE:-${TMPDIR:-/tmp}/deepseek-ocr-api-draining.$$}"
# A drain left behind by a stop that never finished would refuse every request.
rm -f "$DRAIN_FILE"
# prometheus_client's multiprocess mode: the workers write their samples here and a scrape of /metrics adds them up.
# New for each run unless given, so that counters start at zero with the processes.
if [ -z "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  PROMETHEUS_MULTIPROC_DIR=$(mktemp -d "${TMPDIR:-/tmp}/deepseek-ocr-metrics.XXXXXX")
fi
export PROMETHEUS_MULTIPROC_DIR

# THREADS > 1 makes gunicorn use its gthread worker. A gthread worker accepts up to --worker-connections
# connections whatever its free threads, and a kept-alive connection stays with its worker: so each worker takes
# only as many connections as it has threads, one request each (the front server reconnects per request), and a
# request waits in the socket's backlog for whichever worker has a free thread instead of behind a busy one.
# THREADS=1 is a sync worker. The request line and header limits sit just above nginx's (8,000), so that nginx
# always answers an oversized request first, in JSON.
threads="${THREADS:-16}"
exec "$VENV/bin/gunicorn" \
  --config python:ocr_api.gunicorn_hooks \
  --workers "${WORKERS:-4}" \
  --threads "$threads" \
  --worker-connections "$threads" \
  --keep-alive 0 \
  --limit-request-line 8190 \
  --limit-request-field_size 8190 \
  --bind "${API_BIND:-127.0.0.1:5001}" \
  --timeout "${GUNICORN_TIMEOUT:-300}" \
  --graceful-timeout "${GUNICORN_GRACEFUL_TIMEOUT:-30}" \
  --logger-class ocr_api.logs.GunicornLogger \
  --access-logfile "$log_dir/access.log" \
  --access-logformat '%(t)s "%(r)s" %(s)s %(b)s %(M)sms worker=%(p)s' \
  --error-logfile "$log_dir/error.log" \
  --capture-output \
  "app:create_app()"
