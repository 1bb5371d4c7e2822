"""A Python client of the DeepSeek-OCR API and its command line, ``deepseek-ocr`` (ocr_client/cli.py)."""

from ocr_client.client import ApiError, Client

__all__ = ["ApiError", "Client"]
