"""A streamed chat completion: the request's pages run on a thread of their own, and their text goes out as OpenAI's
``chat.completion.chunk`` events as the engine generates it.

The pages of a PDF may finish in any order; their text goes out in page order, each page's pieces live while it is
the page being written and held until its turn otherwise, the pages joined by the page separator, so the chunks'
contents add up to the non-streamed answer's content. A client that hangs up stops the work: its pages at the
engine are aborted.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ocr_api.engines.base import StopCheck
from ocr_api.errors import ApiError, InferenceFailed
from ocr_api.http.chat import ChatRequest, Completion, finish_reason
from ocr_api.pipeline import PageOutcome
from ocr_api.results import PAGE_SEPARATOR, FileError, FileResult
from ocr_api.service import PageListener

logger = logging.getLogger(__name__)

KEEP_ALIVE_S = 15.0  # a comment line this often while nothing comes, so that no proxy times the stream out
DONE = "data: [DONE]\n\n"

# Runs the request's pages, telling the listener of them, until done or until the check answers True.
RunPages = Callable[[PageListener, StopCheck], "FileResult | FileError"]


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class StreamedCompletion:
    """One streamed answer: ``start`` waits for its first piece (an error before it is a plain HTTP error), then
    ``events`` yields the server-sent events."""

    def __init__(self, run: RunPages, completion: Completion, chat: ChatRequest, client_gone: StopCheck):
        self._run = run
        self._completion = completion
        self._chat = chat
        self._client_gone = client_gone
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stopped = threading.Event()
        self._first: tuple[Any, ...] | None = None
        self._current = 0  # the page being written
        self._written: dict[int, str] = {}  # text of each page sent so far
        self._held: dict[int, list[str]] = {}  # pieces of later pages, until their turn
        self._finished: dict[int, PageOutcome] = {}

    def start(self) -> None:
        """Start the pages; raise the request's error if it fails before its first piece of text."""
        # In a copy of this context: the pages' log lines and counts belong to this request (ocr_api/tracking.py).
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._work,), name="chat-stream", daemon=True).start()
        first = self._events.get()
        if first[0] == "end":
            failure = first[1].error if isinstance(first[1], FileError) else first[1]
            if isinstance(failure, ApiError):
                raise failure
        self._first = first

    def events(self) -> Iterator[str]:
        """The answer's events; leaving early (the client hung up) stops the pages."""
        try:
            yield event(self._completion.chunk({"role": "assistant", "content": ""}))
            item = self._first
            while True:
                if item is None:
                    yield ": keep-alive\n\n"
                elif item[0] == "text":
                    yield from self._text(item[1], item[2])
                elif item[0] == "page":
                    yield from self._page_finished(item[1], item[2])
                else:
                    yield from self._end(item[1])
                    return
                try:
                    item = self._events.get(timeout=KEEP_ALIVE_S)
                except queue.Empty:
                    item = None
        finally:
            self._stopped.set()

    # -- told by the page stream (PageListener), from the engine's and the request's threads

    def text(self, key: tuple[int, int], piece: str) -> None:
        self._events.put(("text", key[1], piece))

    def finished(self, key: tuple[int, int], outcome: PageOutcome) -> None:
        self._events.put(("page", key[1], outcome))

    # -- the worker

    def _work(self) -> None:
        try:
            result: FileResult | FileError | ApiError = self._run(self, self._should_stop)
        except ApiError as error:
            result = error
        except Exception:
            logger.exception("streamed completion failed")
            result = InferenceFailed()
        self._events.put(("end", result))

    def _should_stop(self) -> bool:
        return self._stopped.is_set() or self._client_gone()

    # -- writing the pages in order

    def _text(self, index: int, piece: str) -> Iterator[str]:
        if index != self._current:
            self._held.setdefault(index, []).append(piece)
            return
        yield from self._write(index, piece)

    def _page_finished(self, index: int, outcome: PageOutcome) -> Iterator[str]:
        self._finished[index] = outcome
        while self._current in self._finished:
            page = self._finished.pop(self._current)
            full = page.reading.output.text if page.reading is not None else ""
            written = self._written.get(self._current, "")
            if full.startswith(written):
                yield from self._write(self._current, full[len(written) :])  # what the engine held back, if any
            else:
                logger.warning("page %d's streamed text differs from its final text", self._current)
            self._current += 1
            held = self._held.pop(self._current, [])
            if held:
                yield from self._write(self._current, "".join(held))

    def _write(self, index: int, piece: str) -> Iterator[str]:
        if index > 0 and index not in self._written:  # a later page starts: the separator first
            self._written[index] = ""
            yield event(self._completion.chunk({"content": PAGE_SEPARATOR}))
        self._written[index] = self._written.get(index, "") + piece
        if piece:
            yield event(self._completion.chunk({"content": piece}))

    def _end(self, result: FileResult | FileError | ApiError) -> Iterator[str]:
        if not isinstance(result, FileResult):
            error = result.error if isinstance(result, FileError) else result
            yield event(error.to_openai())
            yield DONE
            return
        extra = {"ocr": result.to_dict()} if self._chat.structured else {}
        yield event(self._completion.chunk({}, finish_reason(result), **extra))
        if self._chat.include_usage:
            yield event(self._completion.usage_chunk(result))
        yield DONE
