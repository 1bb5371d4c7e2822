"""The service's settings, where the earlier service kept them: `python -m config --check` validates the environment's,
`python config.py --update-docs` rewrites docs/CONFIGURATION.md's table. They live in ocr_api/settings.py."""

from __future__ import annotations

import sys

from ocr_api.settings import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
