"""Building blocks of the DeepSeek-OCR API: errors, preparation, prompts, engines, HTTP routes."""
