#!/usr/bin/env bash
# Start the service in the foreground with `python app.py` (development and single-machine use).
# Creates .venv and installs what this machine needs on first run. Settings come from the environment
# (docs/CONFIGURATION.md), for example: DEEPSEEK_MODEL_NAME=/models/deepseek-ocr-2 ./start_server.sh
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh
ensure_venv "$(engine_requirements)"
mkdir -p uploads logs
exec .venv/bin/python app.py
