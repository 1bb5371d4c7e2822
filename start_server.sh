#!/usr/bin/env bash
# Start the service in the foreground with `python app.py` (development and single-machine use).
# Creates the virtual environment and installs what the engine needs on first run: transformers on a CPU
# machine, vLLM on a CUDA machine (OCR_ENGINE picks another). Settings come from the environment
# (docs/CONFIGURATION.md), for example: DEEPSEEK_MODEL_NAME=/models/deepseek-ocr-2 ./start_server.sh
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh
# The engine, and whether it can load the checkpoint's layout, decided before anything is installed.
engine=$(resolve_engine)
use_environment "$engine"
ensure_project_installed "$VENV"  # the deepseek-ocr command, beside the service
mkdir -p uploads logs
exec "$VENV/bin/python" app.py
