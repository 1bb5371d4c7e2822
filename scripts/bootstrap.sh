#!/usr/bin/env bash
# Sourced by start_server.sh, start_production.sh and scripts/run_tests.sh: creates .venv when it is
# missing and installs the requirement files given, again only when their contents change.

# ensure_venv FILE... : make .venv hold everything the requirement files name.
ensure_venv() {
  local venv=".venv" python="${PYTHON:-python3}" stamp digest
  if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $python" >&2
    "$python" -m venv "$venv" || return 1
  fi
  digest=$(cat "$@" | sha256sum | cut -c1-16)
  stamp="$venv/.installed-$digest"
  if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing $*" >&2
    local args=()
    for file in "$@"; do args+=(-r "$file"); done
    "$venv/bin/python" -m pip install --quiet "${args[@]}" || return 1
    touch "$stamp"
  fi
}

# engine_requirements : the requirement file for this machine's engine.
engine_requirements() {
  echo "requirements-transformers.txt"
}
