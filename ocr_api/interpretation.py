"""Reading the model's output: what the caller gets as text besides the raw generation."""

from __future__ import annotations

END_OF_SENTENCE = "<｜end▁of▁sentence｜>"


def clean_text(raw_output: str) -> str:
    """Return the output without the end-of-sentence marker and surrounding blank space."""
    # Engines normally leave the marker out; a model that writes it mid-text still ends there.
    return raw_output.split(END_OF_SENTENCE, 1)[0].strip()
