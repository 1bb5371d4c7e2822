"""What a finished page says: one immutable reading, computed once from the engine's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ocr_api.engines.base import EngineOutput
from ocr_api.interpretation import Block, clean_text, looks_repetitive, parse_blocks, to_markdown


@dataclass(frozen=True)
class PageReading:
    """A page's text, markdown and layout (boxes in pixels of the page's own size), status and usage."""

    output: EngineOutput
    text: str
    markdown: str
    blocks: tuple[Block, ...]
    repetition_loop: bool

    @property
    def truncated(self) -> bool:
        return self.output.finish_reason == "length"

    @property
    def status(self) -> str:
        """truncated (token limit), repetitive (ends in a loop) or ok, in that priority."""
        if self.truncated:
            return "truncated"
        return "repetitive" if self.repetition_loop else "ok"

    def usage(self) -> dict[str, int]:
        return usage([self.output])


def read_page(output: EngineOutput, size: tuple[int, int]) -> PageReading:
    """Interpret one output for a page of ``size`` pixels (the source's, not the engine image's)."""
    text = clean_text(output.text)
    blocks = tuple(parse_blocks(output.text, *size))
    return PageReading(output, text, to_markdown(list(blocks)), blocks, looks_repetitive(text))


def usage(outputs: list[EngineOutput]) -> dict[str, int]:
    """Token counts summed over outputs, in OpenAI's shape."""
    prompt = sum(output.prompt_tokens for output in outputs)
    completion = sum(output.completion_tokens for output in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def blocks_as_dicts(blocks: tuple[Block, ...]) -> list[dict[str, Any]]:
    return [block.to_dict() for block in blocks]
