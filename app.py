"""DeepSeek-OCR API, started as the earlier service was: `python app.py` serves with Flask's threaded server, and
gunicorn serves `'app:create_app()'`. The application factory lives in ocr_api/http/app.py.

Nothing is imported here but the factory's module, which imports Flask only inside create_app(): vLLM starts its
engine processes by re-importing the main module (spawn), and they need none of the service.
"""

from __future__ import annotations

import sys

from ocr_api.http.app import create_app, main

__all__ = ["create_app", "main"]

if __name__ == "__main__":
    sys.exit(main())
