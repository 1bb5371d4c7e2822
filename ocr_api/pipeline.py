"""The page stream: every page of a request flows through one loop that keeps the engine fed.

A window of pages is at the engine at once; the moment one is answered the next is sent. Pages are rendered a
bounded number (and pixels) ahead of the engine, so a request holds a few pages' pixels whatever its length (pages at
the engine hold only what the engine keeps: the remote engine, their encoded request until it is sent). A page
seen to run away is sent again at once with a stronger guard, ahead of the pages not yet sent. Each page's slot
is counted by the process's admission bound while the page is at the engine.

    files ─> StreamPage ... ─> render (≤ render_ahead ready) ─> submit (≤ window at the engine) ─> read_page
                                    ^                                                              │
                                    └──────────── ran away: again, stronger guard ─────────────────┘
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ocr_api.admission import INTERACTIVE, Admission, EnginePriorities, Sender
from ocr_api.engines.base import (
    POLL_S,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    OcrEngine,
    PromptTooLong,
    StopCheck,
)
from ocr_api.errors import (
    ApiError,
    ClientGone,
    EngineNotReady,
    GatewayTimeout,
    InferenceFailed,
    UnprocessableFile,
)
from ocr_api.metrics import ADMISSION_WAIT_SECONDS, PAGES_SENT
from ocr_api.preparation import RenderedPage
from ocr_api.reading import PageReading, read_page
from ocr_api.tracking import count_engine_answer, count_page

logger = logging.getLogger(__name__)

# Past ENGINE_TIMEOUT_S the engine fails the page itself; this much later the stream stops waiting regardless.
BACKSTOP_S = 10.0


@dataclass(frozen=True)
class StreamPage:
    """One page of one file, and how to make its pixels (as often as needed)."""

    key: tuple[int, int]  # (file's position in the request, page's position in the file)
    render: Callable[[], RenderedPage]


@dataclass(frozen=True)
class PageOutcome:
    """A finished page: its reading, or the error that ended it; how many attempts it took; pictures if asked."""

    size: tuple[int, int] = (0, 0)
    reading: PageReading | None = None
    error: ApiError | None = None
    attempts: int = 1
    pictures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamRules:
    """How a request's stream behaves; built by the service from the settings and the request's options."""

    window: int  # pages of this request at the engine at once
    render_ahead: int  # pages rendered and waiting for a slot, at most
    render_ahead_pixels: int  # and no more rendered ahead once those hold this many pixels
    attempts: int  # 1 + RUNAWAY_RETRIES
    timeout_s: float  # ENGINE_TIMEOUT_S, per page
    # a page's key, its pixels, the attempt's number and the page's priority -> what the engine gets
    build_request: Callable[[tuple[int, int], Image.Image, int, int], EngineRequest]
    ran_away: Callable[[PageReading], bool]
    draw: Callable[[Image.Image, PageReading], dict[str, Any]] | None = None  # pictures asked for, else None
    wait_for_room: bool = False  # a document job waits for a free slot; a request is refused (503) when it has none


class StreamPaused(Exception):
    """The stream was asked to pause (a job giving its turn to a waiting one): the pages it had at the engine have
    finished and were yielded; none more was sent."""


@dataclass
class _Sending:
    """A page at the engine: which, its attempt, when it was sent."""

    entry: StreamPage
    attempt: int
    size: tuple[int, int]
    sent_at: float


class PageStream:
    """Runs one request's pages through the engine; ``run`` returns every page's outcome by its key."""

    def __init__(
        self,
        engine: OcrEngine,
        admission: Admission,
        rules: StreamRules,
        should_stop: StopCheck,
        *,
        sender: Sender | None = None,
        priorities: EnginePriorities | None = None,
        should_pause: StopCheck | None = None,
    ):
        self._engine = engine
        self._admission = admission
        self._rules = rules
        self._should_stop = should_stop
        self._sender = sender  # whose pages these are: their class, client and stream, for sharing and priorities
        self._kind = sender.kind if sender is not None else INTERACTIVE
        self._priorities = priorities or EnginePriorities(job_delay_s=0)
        self._should_pause = should_pause or (lambda: False)
        self._ready: deque[tuple[StreamPage, RenderedPage, int]] = deque()  # rendered, waiting for a slot
        self._again: deque[tuple[StreamPage, int]] = deque()  # ran away: to send again, before anything else
        self._at_engine: dict[concurrent.futures.Future[EngineOutput], _Sending] = {}
        self._slots = 0  # admission slots this request holds: its pages at the engine, and one being handed on
        self._outcomes: dict[tuple[int, int], PageOutcome] = {}
        self._rendered_all = False  # every page has been rendered once (or failed to)
        self._waiting_since: float | None = None  # when a page ready to send first found the process full
        self.engine_ms = 0.0  # from the first page sent to the last answered

    def run(self, pages: Iterable[StreamPage]) -> dict[tuple[int, int], PageOutcome]:
        """Every page's outcome by its key, once all are finished."""
        return dict(self.finished(pages))

    def finished(self, pages: Iterable[StreamPage]) -> Iterator[tuple[tuple[int, int], PageOutcome]]:
        """Yield each page's key and outcome as it finishes (in the order pages finish, not their own)."""
        pending = iter(pages)
        started: float | None = None
        try:
            while True:
                if self._should_stop():
                    raise ClientGone()
                pausing = self._should_pause()  # a job giving its place: nothing more is sent or rendered
                if not pausing:
                    self._send(pending)
                if started is None and self._at_engine:
                    started = time.perf_counter()
                while self._outcomes:
                    yield self._outcomes.popitem()
                if not (self._at_engine or self._ready or self._again) and self._rendered_all:
                    break
                if pausing and not self._at_engine:  # what was at the engine has finished; the rest waits
                    raise StreamPaused()
                self._render_ahead_or_wait(pending, pausing)
            while self._outcomes:
                yield self._outcomes.popitem()
        finally:
            self._abandon()
            if started is not None:
                self.engine_ms = round((time.perf_counter() - started) * 1000, 1)

    def _render_ahead_or_wait(self, pending: Iterator[StreamPage], pausing: bool) -> None:
        if not pausing and self._may_render_ahead():
            self._render_next(pending)  # ahead of the engine, while it works
            self._collect(timeout=0)
        else:  # nothing to do but wait for an answer (or, for a document job, for a free slot)
            self._collect(timeout=POLL_S)
        self._check_deadlines()

    def _may_render_ahead(self) -> bool:
        """Whether another page may be rendered before the engine has room for it: few pages, few pixels held."""
        if self._rendered_all or len(self._ready) >= self._rules.render_ahead:
            return False
        sizes = [page.image.width * page.image.height for _, page, _ in self._ready]
        # The next page is taken to be the size of the last: one more may be rendered if both fit (or none is held).
        return not sizes or sum(sizes) + sizes[-1] <= self._rules.render_ahead_pixels

    def _send(self, pending: Iterator[StreamPage]) -> None:
        """Send pages while the window has room: runaways first, then rendered pages, then the next pages."""
        while len(self._at_engine) < self._rules.window:
            if self._again:
                entry, attempt = self._again.popleft()
                page = self._render(entry)
                if page is None:
                    continue
            elif self._ready:
                entry, page, attempt = self._ready.popleft()
            elif self._rendered_all:
                break
            else:
                self._render_next(pending)
                continue  # rendered into _ready (or failed): take it on the next turn
            if not self._take_slot():
                self._ready.appendleft((entry, page, attempt))
                break
            if self._should_stop():  # asked again before each page: none is sent once the request is stopped
                self._ready.appendleft((entry, page, attempt))
                raise ClientGone()
            self._submit(entry, page, attempt)
            del page  # sent: its pixels are not held while the next page renders
        if not (self._again or self._ready) and self._rendered_all:
            self._give_back_spare_slots()

    def _take_slot(self) -> bool:
        if self._slots > len(self._at_engine):  # the slot of a page just answered, handed on
            if self._admission.keeps(self._sender):
                return True
            self._admission.release(1, self._sender)  # the jobs' share: a job holding fewer waits for it
            self._slots -= 1
        if self._admission.try_take(self._sender):
            self._slots += 1
            waited = time.monotonic() - self._waiting_since if self._waiting_since is not None else 0.0
            ADMISSION_WAIT_SECONDS.labels(self._kind).observe(waited)
            self._waiting_since = None
            return True
        if self._slots == 0 and not self._rules.wait_for_room:  # not one page sent, and none can be: refused
            raise self._admission.refusal()
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        return False  # the process is full; this request goes on with the slots it has (a document job waits for one)

    def _give_back_spare_slots(self) -> None:
        spare = self._slots - len(self._at_engine)
        if spare > 0:
            self._admission.release(spare, self._sender)
            self._slots -= spare

    def _render_next(self, pending: Iterator[StreamPage]) -> None:
        """Render the next page into the ready queue (or record its failure), or note that there are no more."""
        entry = next(pending, None)
        if entry is None:
            self._rendered_all = True
            return
        page = self._render(entry)
        if page is not None:
            self._ready.append((entry, page, 1))

    def _render(self, entry: StreamPage) -> RenderedPage | None:
        try:
            return entry.render()
        except ApiError as error:  # this page alone fails; the request's other pages go on
            self._done(entry.key, PageOutcome(error=error))
            return None

    def _submit(self, entry: StreamPage, page: RenderedPage, attempt: int) -> None:
        priority = self._priorities.sent(self._sender)
        request = self._rules.build_request(entry.key, page.image, attempt, priority)
        try:
            future = self._engine.submit(request)
        except Exception as exc:  # noqa: BLE001 - mapped as any engine failure is
            self._priorities.answered(self._sender)
            raise _request_error(exc, self._engine.name) from None
        PAGES_SENT.labels(self._kind).inc()
        self._at_engine[future] = _Sending(entry, attempt, page.size, time.monotonic())

    def _collect(self, timeout: float) -> None:
        """Take the answers that have come (waiting up to ``timeout`` for the first)."""
        if not self._at_engine:
            self._admission.wait_for_room(timeout)  # only a job waiting for its first slot gets here with a timeout
            return
        done, _ = concurrent.futures.wait(self._at_engine, timeout=timeout, return_when="FIRST_COMPLETED")
        for future in [future for future in self._at_engine if future in done]:  # in the order they were sent
            sending = self._at_engine.pop(future)
            self._priorities.answered(self._sender)
            try:
                output = future.result()
            except PromptTooLong as exc:  # this page's image and prompt leave no room: the page fails
                error = UnprocessableFile(str(exc), code="prompt_too_long_for_context")
                self._done(sending.entry.key, PageOutcome(sending.size, error=error, attempts=sending.attempt))
                continue
            except Exception as exc:  # noqa: BLE001 - the engine itself failed: the whole request does
                raise _request_error(exc, self._engine.name) from None
            count_engine_answer(time.monotonic() - sending.sent_at, output.prompt_tokens, output.completion_tokens)
            self._finish(sending, output)

    def _finish(self, sending: _Sending, output: EngineOutput) -> None:
        reading = read_page(output, sending.size)
        if sending.attempt < self._rules.attempts and self._rules.ran_away(reading):
            logger.info("page %s ran away (%s); again with a stronger guard", sending.entry.key, reading.status)
            count_page("retried")
            self._again.append((sending.entry, sending.attempt + 1))
            return
        pictures: dict[str, Any] = {}
        if self._rules.draw is not None:
            # The pixels were not kept while the page was at the engine. Rendered once, should it fail now (its time
            # is up), the reading stands without pictures.
            with contextlib.suppress(ApiError):
                pictures = self._rules.draw(sending.entry.render().image, reading)
        self._done(sending.entry.key, PageOutcome(sending.size, reading, attempts=sending.attempt, pictures=pictures))

    def _done(self, key: tuple[int, int], outcome: PageOutcome) -> None:
        """A page's last word: kept until yielded, and counted (its status; failed when it has an error)."""
        self._outcomes[key] = outcome
        count_page(outcome.reading.status if outcome.reading is not None else "failed")

    def _check_deadlines(self) -> None:
        limit = self._rules.timeout_s + BACKSTOP_S
        now = time.monotonic()
        if any(now - sending.sent_at > limit for sending in self._at_engine.values()):
            logger.warning("a page got no answer from the %s engine within %g s", self._engine.name, limit)
            raise GatewayTimeout()

    def _abandon(self) -> None:
        """Cancel what is still at the engine (the engine aborts it) and give every slot back."""
        if self._at_engine:
            logger.info("%d page(s) aborted at the %s engine", len(self._at_engine), self._engine.name)
        for future in self._at_engine:
            future.cancel()
            self._priorities.answered(self._sender)
        self._at_engine.clear()
        self._ready.clear()
        self._admission.release(self._slots, self._sender)
        if self._sender is not None:
            self._admission.forget(self._sender)
        self._slots = 0


def _request_error(exc: BaseException, engine_name: str) -> ApiError:
    """Map an engine failure that ends the whole request to its API error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptTooLong):
        return UnprocessableFile(str(exc), code="prompt_too_long_for_context")
    if isinstance(exc, EngineUnavailable):
        logger.warning("engine %s unavailable: %s", engine_name, exc)
        return EngineNotReady(
            "The OCR engine is unavailable (restarting or overloaded); try again shortly.", code="engine_unavailable"
        )
    if isinstance(exc, EngineTimeout):
        logger.warning("engine %s timed out on a page: %s", engine_name, exc)
        return GatewayTimeout()
    logger.error("engine %s failed on a page", engine_name, exc_info=exc)
    return InferenceFailed()
