"""The small interface every OCR engine implements, and the values that cross it."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from PIL import Image

from ocr_api.guard import GuardSettings
from ocr_api.profiles import ModelProfile


class EngineLoadError(RuntimeError):
    """The engine could not start; the message says what was tried and what to do."""


class EngineFailure(RuntimeError):
    """The engine failed on a request that had passed validation."""


class PromptTooLong(EngineFailure):
    """Prompt and image tokens leave no room for output within the context length."""


class EngineUnavailable(EngineFailure):
    """The engine cannot be reached or has died; the request may succeed later."""


class EngineTimeout(EngineFailure):
    """The engine did not answer within the configured time; the request was aborted."""


# Asked while a request's pages are at the engine: True once nobody waits for the answer any more (the client hung
# up); the page stream then cancels their futures, which aborts them at the engine.
StopCheck = Callable[[], bool]
# Given each piece of a page's text as the engine generates it (a streamed chat completion), from the engine's thread.
TextSink = Callable[[str], None]
POLL_S = 0.2  # how often a waiting loop looks again (a StopCheck, a cancelled row)


@dataclass(frozen=True)
class EngineRequest:
    """One page image and its prompt, with the decoding budget and the guard for this attempt."""

    image: Image.Image
    prompt: str
    max_tokens: int
    guard: GuardSettings
    mode: str = "gundam"  # resolution mode (RESOLUTION_MODES); engines list what they honour in ``modes``
    on_text: TextSink | None = None  # streaming: every engine hands it the text as it comes, then the whole output
    # vLLM's request priority (lower first), as the service's EnginePriorities make it: a page waiting at the
    # engine goes before those with a higher number under vLLM's priority scheduling; fcfs ignores it.
    priority: int = 0


# How the page reaches the vision tower. gundam: a 1024 global view plus 2-6 tiles by aspect ratio (the model
# authors' default, and all vLLM's processors do); base: the page seen whole, no tiling (DeepSeek-OCR-2 under
# transformers: the 1024 global view plus one 768 view of the whole page; 411 instead of 1131 prompt tokens
# for an A4 page). Faster, for photos and small images; fine print on a full page needs gundam's tiles.
RESOLUTION_MODES = ("gundam", "base")


@dataclass(frozen=True)
class EngineOutput:
    """What the engine produced for one request."""

    text: str  # as generated, special tokens kept, end-of-sentence token left out
    finish_reason: str  # "stop" (end-of-sentence) or "length" (token limit)
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int  # the budget actually applied after bounding by the context left
    guard: GuardSettings
    token_ids: tuple[int, ...] = ()  # generated ids without the end-of-sentence token, where the engine has them


def context_budget(requested: int, context_length: int, prompt_tokens: int) -> int:
    """Return the output budget applied: the request's, bounded by the context the prompt leaves."""
    return max(0, min(requested, context_length - prompt_tokens))


GUARD_VERIFIED = "verified"  # the engine refused the probe as only the guard does: it is in effect
GUARD_MISSING = "missing"  # the engine answered the probe: it generates without the guard
GUARD_UNCHECKED = "unchecked"  # not known yet (the engine is down, or its answer said neither)


@dataclass(frozen=True)
class GuardCheck:
    """What the start-up check found of the repetition guard on one place pages are generated, and how."""

    state: str  # GUARD_VERIFIED, GUARD_MISSING or GUARD_UNCHECKED
    detail: str  # what was asked and what came back, for /health and the logs

    def to_dict(self) -> dict[str, str]:
        return {"state": self.state, "check": self.detail}


class GuardMissing(EngineLoadError):
    """The engine generates without the repetition guard, and ALLOW_UNGUARDED_ENGINE is not set."""


@runtime_checkable
class OcrEngine(Protocol):
    """An OCR engine: loads once, then takes one page at a time and answers each with a future.

    The service keeps a window of pages in flight and sends the next the moment one is answered; the engine batches
    whatever is in flight together (vLLM continuously, transformers by gathering what is queued).
    """

    name: str
    model_id: str
    profile: ModelProfile  # decoding defaults and image geometry of the loaded model; valid after load()
    modes: tuple[str, ...]  # the resolution modes this engine can honour
    context_length: int  # prompt plus output tokens the engine allows; valid after load()
    whitelist_token_ids: frozenset[int]  # ids the guard never bans (the table cell tags); valid after load()

    def load(self) -> None:
        """Load weights and tokenizer; raise EngineLoadError with an actionable message on failure."""

    def is_ready(self) -> bool:
        """Return True when the engine can serve requests now (a guard found missing counts as not ready, unless
        ALLOW_UNGUARDED_ENGINE)."""

    def guard_checks(self) -> dict[str, GuardCheck]:
        """Return what the guard's check found where pages are generated: per vLLM server URL, or "in-process".

        Checked when the engine loads, and for a server again each time it comes back after being down.
        """

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        """Start one page and return at once; the future holds its output or an EngineFailure.

        Cancelling the future aborts the page at the engine. Bounding the time a page may take is the engine's
        (ENGINE_TIMEOUT_S: the future fails with EngineTimeout); the service keeps a backstop beyond it.
        """

    def close(self) -> None:
        """Release what the engine holds."""


def run_batch(engine: OcrEngine, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
    """Submit every request and return the outputs in order: for tests, benchmarks and one-off scripts.

    A failed page is raised only once every page has ended, so no page is left running unseen.
    """
    futures = [engine.submit(request) for request in requests]
    concurrent.futures.wait(futures)
    failure = next((future.exception() for future in futures if future.exception() is not None), None)
    if failure is not None:
        raise failure
    return [future.result() for future in futures]


def without_credentials(url: str) -> str:
    """The URL without a user or password in it: how an engine server is named in /health, logs and metrics."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
    return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()
