#!/usr/bin/env bash
# A job consumer alone (python -m ocr_api.jobs.consumer) on the remote engine, for layouts where jobs run apart
# from the API nodes: the consumer container of deploy/compose.yaml and deploy/systemd/deepseek-ocr-consumer.service.
# It needs OCR_ENGINE_URL, and REDIS_URL and JOBS_DIR shared with the API nodes. SIGTERM stops each running job at
# its next page; it is queued again and goes on where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh

use_environment remote
export OCR_ENGINE=remote
"$VENV/bin/python" -m config --check || exit 1
exec "$VENV/bin/python" -m ocr_api.jobs.consumer
