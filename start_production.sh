#!/usr/bin/env bash
# Start the service under gunicorn. WORKERS processes each serve THREADS requests at a time.
# With the transformers engine every worker loads its own copy of the model, so keep WORKERS=1 on a GPU.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh
ensure_venv "$(engine_requirements)"
log_dir="${LOG_DIR:-logs}"
mkdir -p uploads "$log_dir"
exec .venv/bin/gunicorn \
  --workers "${WORKERS:-1}" \
  --threads "${THREADS:-8}" \
  --bind "${HOST:-0.0.0.0}:${PORT:-5000}" \
  --timeout "${GUNICORN_TIMEOUT:-300}" \
  --graceful-timeout "${GUNICORN_GRACEFUL_TIMEOUT:-30}" \
  --access-logfile "$log_dir/access.log" \
  --error-logfile "$log_dir/error.log" \
  --capture-output \
  "app:create_app()"
