#!/usr/bin/env bash
# The wheels bench/gpu_transformers.py needs on a lent GPU machine (the device tool), downloaded here into .whl/
# (ignored by git): that machine has PyTorch and transformers 5.17 but reaches no registry, and the engine is tested
# with the pinned transformers (requirements-transformers.txt). Its Python is 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
transformers_pin=$(grep -E '^transformers==' requirements-transformers.txt)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$transformers_pin"
ls -l .whl
