"""olmOCR-Bench's own scorer (``olmocr.bench.benchmark``, from PyPI), with its browser pointed at Debian's Chromium.

The scorer renders each math test's LaTeX with KaTeX in Chromium through Playwright, and launches Playwright's own
download of Chromium, which a machine with no route out does not have. This runs the scorer unchanged, in the
environment that has it (``.venv-quality``, scripts/bootstrap.sh: ensure_quality_venv), with every Playwright launch
given the Chromium that CHROMIUM names (default /usr/bin/chromium) and the flags a headless machine needs:

    .venv-quality/bin/python -m ocr_dev.olmocr_scorer --dir DIR [the scorer's own options]
"""

from __future__ import annotations

import os
import runpy
import shutil
from typing import Any

# Chromium flags for a machine with no display, no GPU and no route out (as tests/test_web_page.py's).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def main() -> None:
    from playwright.sync_api import BrowserType

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    launch = BrowserType.launch

    def launch_debian_chromium(self: BrowserType, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("executable_path", chromium)
        kwargs.setdefault("args", CHROMIUM_ARGS)
        return launch(self, *args, **kwargs)

    BrowserType.launch = launch_debian_chromium  # type: ignore[method-assign]
    runpy.run_module("olmocr.bench.benchmark", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
