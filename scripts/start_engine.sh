#!/usr/bin/env bash
# The vLLM OpenAI server alone, with the service's recipe, GPU settings and repetition guard
# (ocr_api/engines/vllm_flags.py): what start_production.sh, the engine container (deploy/Dockerfile.engine) and
# deploy/systemd/deepseek-ocr-engine.service run, the last two on a GPU host whose API nodes name it in
# OCR_ENGINE_URL. Listens on VLLM_HOST:VLLM_PORT (127.0.0.1:8000); OCR_ENGINE_API_KEY, when set, is the key it asks
# for. It ends by exec'ing vLLM, so its process id is the server's.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh

if [ -n "${ENGINE_PYTHON:-}" ]; then
  python="$ENGINE_PYTHON"  # an interpreter that has vLLM already (the engine image's, start_production.sh's)
else
  "${PYTHON:-python3}" -m ocr_api.profiles check vllm || exit 1  # before installing vLLM for it
  use_environment vllm
  python="$VENV/bin/python"
fi
# The flags, with the guard's processor for the model runner this vLLM will run (vLLM's own decision: DeepSeek's
# class under Model Runner V1, the project's ocr_guard under V2; docs/DEPLOYMENT.md).
flags_text=$("$python" -m ocr_api.engines.vllm_flags)
mapfile -t flags <<<"$flags_text"
if [ -n "${OCR_ENGINE_API_KEY:-}" ]; then
  flags+=(--api-key "$OCR_ENGINE_API_KEY")
fi
# vLLM imports the guard by name in each of its processes: ocr_guard/ (this folder) goes on their PYTHONPATH.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
host="${VLLM_HOST:-127.0.0.1}" port="${VLLM_PORT:-8000}"
echo "start_engine: vLLM server on $host:$port" >&2
# VLLM_HOST, VLLM_PORT and VLLM_EXTRA_ARGS are the service's settings, not vLLM's: vLLM warns of unknown VLLM_
# variables, and reads VLLM_PORT as the first port of its own internal connections.
exec env -u VLLM_HOST -u VLLM_PORT -u VLLM_EXTRA_ARGS "$python" -m vllm.entrypoints.openai.api_server \
  --host "$host" --port "$port" "${flags[@]}"
