"""``python -m ocr_client``: the same command as ``deepseek-ocr``."""

import sys

from ocr_client.cli import main

sys.exit(main())
