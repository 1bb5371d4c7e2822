#!/usr/bin/env bash
# A tiny DeepSeek-OCR-2 with random weights, written to DIR: it answers noise, but exercises everything, for trying
# the service without weights. Installs what it needs into .venv first (what start_server.sh installs for the
# transformers engine), so it works on a fresh clone:
#   ./scripts/tiny_model.sh /tmp/tiny-ocr && DEEPSEEK_MODEL_NAME=/tmp/tiny-ocr ./start_server.sh
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: scripts/tiny_model.sh DIR   (then: DEEPSEEK_MODEL_NAME=DIR ./start_server.sh)" >&2
  exit 2
fi
target="$1"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac  # the caller's folder, before the cd below
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh
ensure_venv requirements-transformers.txt
.venv/bin/python -m ocr_dev.tiny_model "$target"
echo "tiny_model: a random DeepSeek-OCR-2 in $target; start the service with DEEPSEEK_MODEL_NAME=$target ./start_server.sh" >&2
