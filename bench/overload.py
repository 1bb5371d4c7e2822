"""Overload: drive the service past its admission bound (the driver: ocr_dev/overload.py, shared with the tests).

.venv/bin/python -m bench.overload            # prints the table docs/RELIABILITY.md quotes
"""

from ocr_dev.overload import main

if __name__ == "__main__":
    main()
