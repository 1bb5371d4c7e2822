"""An OpenAI-compatible vLLM server as the engine: what every gunicorn worker uses in production.

The workers import neither torch nor vLLM; one vLLM server owns the GPU and batches every worker's requests
(continuous batching). Each page is one chat completion, sent the moment the service hands it over. The calls run on
one event loop thread (``loop_thread.py``) with aiohttp (``client.py``), so a call can be cancelled: its connection
is closed, and vLLM's server aborts a request whose client disconnected. That is how a timeout, or a client of ours
hanging up, stops the work at the engine. Which server gets a page is ``servers.py``'s.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from ocr_api import tracking
from ocr_api.engines.base import (
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    GuardCheck,
    TextSink,
    context_budget,
    without_credentials,
)
from ocr_api.engines.remote.client import CONNECT_TIMEOUT_S, EngineHttp, SentOnce, chat_body
from ocr_api.engines.remote.loop_thread import LoopThread
from ocr_api.engines.remote.servers import (
    HEALTH_TIMEOUT_S,
    METADATA_TIMEOUT_S,
    AlreadyStreamed,
    EngineServer,
    ServerPool,
    watch_health,
)
from ocr_api.guard import GuardSettings
from ocr_api.preparation import data_url
from ocr_api.profiles import ModelProfile

logger = logging.getLogger("ocr_api.engines.remote_engine")  # the name operators' log filters know

CHECK_TIMEOUT_S = HEALTH_TIMEOUT_S + CONNECT_TIMEOUT_S + METADATA_TIMEOUT_S  # health, then the model's facts
GUARD_WAIT_AT_START_S = 2.0


class RemoteEngine:
    """Talks to vLLM OpenAI servers: chat completions with the image as a data URL and the guard per request.

    With several servers (OCR_ENGINE_URL a list) each page goes to the healthy one with the fewest of this process's
    pages in flight; one that fails is left out until its health check passes again, and the page it failed is sent
    to another; only when every server has failed it does the page fail with EngineUnavailable (``servers.py``).
    ``require_guard=False`` (ALLOW_UNGUARDED_ENGINE) uses a server whatever its guard check found.
    """

    name = "remote"
    modes = ("gundam",)  # vLLM's DeepSeek-OCR processors hard-code it

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model_name: str = "",
        *,
        timeout_s: float = 240.0,
        connections: int = 64,
        api_key: str = "",
        image_format: str = "auto",
        require_guard: bool = True,
        guard_recheck_s: float = 60.0,
    ):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        http = EngineHttp(connections, api_key)
        self._pool = ServerPool(urls, http, model_name, require_guard, guard_recheck_s)
        self._timeout_s = timeout_s
        self._image_format = image_format
        self._call_numbers = itertools.count(1)
        self._calls = LoopThread("engine-calls")
        self._calls.close_at_stop(http.close)
        # An engine dropped without close() (a failed start, a test) still closes its session and its loop thread.
        self._stop = weakref.finalize(self, self._calls.stop)

    @property
    def servers(self) -> list[EngineServer]:
        return self._pool.servers

    @property
    def model_id(self) -> str:
        return self._pool.model.model_id

    @property
    def profile(self) -> ModelProfile:
        return self._pool.model.profile

    @property
    def context_length(self) -> int:
        return self._pool.model.context_length

    @property
    def whitelist_token_ids(self) -> frozenset[int]:
        return self._pool.model.whitelist_token_ids

    def load(self) -> None:
        """Ask every server's health, learn the served model from one, start their guard checks, and keep watching.

        An unreachable server is asked again every HEALTH_EVERY_S: /ready says 503 until one answers. Start-up waits
        for the first guard checks only GUARD_WAIT_AT_START_S: a slow one goes on while the service starts.
        """
        self._calls.run(self._pool.check_health(), timeout=CHECK_TIMEOUT_S)
        self._calls.run(self._pool.guard_checks_done(GUARD_WAIT_AT_START_S), timeout=GUARD_WAIT_AT_START_S + 1)
        if not self._pool.model.known:
            logger.warning("remote engine at %s not reachable yet; will retry", self._pool.urls())
        if not self._calls.running_tasks:
            # The watcher holds the pool only weakly, so that an engine nobody keeps is still collected.
            self._calls.keep_running(partial(watch_health, weakref.ref(self._pool)))

    def is_ready(self) -> bool:
        """True when some server passed its last health check (or call) and its guard check, and the model's facts
        are known."""
        return self._pool.model.known and any(self._pool.usable(server) for server in self.servers)

    def guard_checks(self) -> dict[str, GuardCheck]:
        return {without_credentials(server.url): server.guard for server in self.servers}

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        """Send one page as a chat completion; the call has its own ENGINE_TIMEOUT_S."""
        if not self._pool.model.known:
            self._calls.run(self._pool.check_health(), timeout=CHECK_TIMEOUT_S)
            if not self._pool.model.known:
                raise EngineUnavailable(f"no engine server answers ({self._pool.urls()})")
        # Encoded here, in the caller's thread, not on the loop thread all calls share. With one server the call holds
        # only the request's JSON bytes, and only until they are sent; with several it keeps them until the answer,
        # to send them again to another server if this one fails.
        chat = chat_body(self.model_id, request, data_url(request.image, self._image_format))
        if request.on_text is not None:
            chat.update(stream=True, stream_options={"include_usage": True})
        bodies = [json.dumps(chat).encode()]
        del chat
        # vLLM takes X-Request-Id as its own request's id (--enable-request-id-headers): unique per call.
        record = tracking.current_record()
        call_id = f"{record.request_id if record is not None else 'ocr'}.{next(self._call_numbers)}"
        # The calls keep what they need of the request, not the request: its image is not held while at the engine.
        max_tokens, guard, on_text = request.max_tokens, request.guard, request.on_text
        call: Callable[[EngineServer, SentOnce], Awaitable[EngineOutput]]
        if on_text is None:
            call = partial(self._complete, call_id=call_id, max_tokens=max_tokens, guard=guard)
        else:
            call = partial(self._stream, call_id=call_id, max_tokens=max_tokens, guard=guard, on_text=on_text)
        return self._calls.submit(self._pool.on_some_server(record, call, bodies))

    def close(self) -> None:
        self._stop()  # once: a second call, or the collection of a closed engine, does nothing

    async def _complete(
        self, server: EngineServer, body: SentOnce, *, call_id: str, max_tokens: int, guard: GuardSettings
    ) -> EngineOutput:
        async with self._pool.marking_down(server):
            status, payload = await self._pool.http.chat(server.url, body, call_id, self._timeout_s)
        if status != 200:
            await self._pool.raise_for(server, status, payload)
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        finish_reason = choice.get("finish_reason") or "stop"
        if finish_reason == "abort":
            raise EngineUnavailable(f"the engine at {server.url} aborted the request")
        return EngineOutput(
            text=choice["message"].get("content") or "",
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            max_tokens=context_budget(max_tokens, self.context_length, prompt_tokens),
            guard=guard,
        )

    async def _stream(
        self, server: EngineServer, body: SentOnce, *, call_id: str, max_tokens: int, guard: GuardSettings,
        on_text: TextSink,
    ) -> EngineOutput:  # fmt: skip
        """A streamed chat completion: each piece of content goes to ``on_text`` as vLLM sends it."""
        pieces: list[str] = []

        def keep(piece: str) -> None:
            pieces.append(piece)
            on_text(piece)

        try:
            async with self._pool.marking_down(server):
                status, answer = await self._pool.http.chat_stream(server.url, body, call_id, self._timeout_s, keep)
            if status != 200:
                await self._pool.raise_for(server, status, answer)
            finish_reason, usage = answer
            if finish_reason == "abort":
                raise EngineUnavailable(f"the engine at {server.url} aborted the request")
        except EngineUnavailable as exc:
            if pieces:  # text already handed on cannot be taken back: this page is not sent again
                raise AlreadyStreamed(str(exc)) from None
            raise
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        return EngineOutput(
            text="".join(pieces),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            max_tokens=context_budget(max_tokens, self.context_length, prompt_tokens),
            guard=guard,
        )
