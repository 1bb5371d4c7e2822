#!/usr/bin/env bash
# The vLLM OpenAI server alone, with the service's recipe, GPU settings and environment
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
  use_environment vllm
  python="$VENV/bin/python"
fi
flags_text=$("$python" -m ocr_api.engines.vllm_flags)
mapfile -t flags <<<"$flags_text"
if [ -n "${OCR_ENGINE_API_KEY:-}" ]; then
  flags+=(--api-key "$OCR_ENGINE_API_KEY")
fi
# VLLM_USE_V2_MODEL_RUNNER=0 and the like: the model runner that applies the repetition guard (docs/DEPLOYMENT.md).
env_text=$("$python" -m ocr_api.engines.vllm_flags --env)
mapfile -t engine_env <<<"$env_text"
echo "start_engine: vLLM server on ${VLLM_HOST:-127.0.0.1}:${VLLM_PORT:-8000} (${engine_env[*]})" >&2
exec env "${engine_env[@]}" "$python" -m vllm.entrypoints.openai.api_server \
  --host "${VLLM_HOST:-127.0.0.1}" --port "${VLLM_PORT:-8000}" "${flags[@]}"
