"""An OpenAI-compatible vLLM server as the engine: what every gunicorn worker uses in production.

The workers import neither torch nor vLLM; one vLLM server owns the GPU and batches every worker's requests
(continuous batching). Each page is one chat completion, sent the moment the service hands it over.
The calls run on one event loop thread with aiohttp, so a call can be cancelled: its connection is closed, and
vLLM's server aborts a request whose client disconnected. That is how a timeout, or a client of ours hanging up,
stops the work at the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp

from ocr_api import tracking
from ocr_api.engines.base import (
    GUARD_MISSING,
    GUARD_UNCHECKED,
    GUARD_VERIFIED,
    EngineFailure,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    GuardCheck,
    PromptTooLong,
    TextSink,
    context_budget,
    without_credentials,
)
from ocr_api.guard import GUARD_PROBE_ARGS, GUARD_PROBE_PROMPT, UNGUARDED_ADVICE, GuardSettings, probe_refused_by_guard
from ocr_api.preparation import data_url
from ocr_api.profiles import ModelProfile, profile_for_checkpoint

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
METADATA_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = HEALTH_TIMEOUT_S + CONNECT_TIMEOUT_S + METADATA_TIMEOUT_S  # health, then the model's facts
HEALTH_EVERY_S = 1.0  # how often every server's /health is asked, by each process
REQUEST_ID = "X-Request-Id"
# Phrases vLLM uses when prompt and image tokens do not fit the context.
CONTEXT_ERRORS = ("maximum model length", "maximum context length", "context length")


class SentOnce:
    """A request body aiohttp reads once and no one keeps: sent, its bytes are freed while the answer is awaited.

    The remote engine never sends a body twice (no retry, no redirect of a POST), so nothing needs it afterwards;
    with hundreds of pages at the engine this is most of what a process would otherwise hold for them.
    """

    def __init__(self, data: bytes):
        self.length = len(data)
        self._data = [data]

    def __aiter__(self) -> SentOnce:
        return self

    async def __anext__(self) -> bytes:
        if not self._data:
            raise StopAsyncIteration
        return self._data.pop()


NOT_CHECKED_YET = GuardCheck(GUARD_UNCHECKED, "not checked yet: checked once the server answers its health check")


@dataclass(eq=False)  # compared by identity: its counts change while it is in lists
class EngineServer:
    """One vLLM server of the remote engine: its health as last seen, its guard as last checked, and the pages this
    process has there."""

    url: str
    healthy: bool = False
    guard: GuardCheck = NOT_CHECKED_YET  # checked again each time the server comes back from a failed health check
    in_flight: int = 0
    sent: int = 0  # pages ever sent: between servers equally busy, the one sent fewer gets the next


class RemoteEngine:
    """Talks to vLLM OpenAI servers: chat completions with the image as a data URL and the guard per request.

    With several servers (OCR_ENGINE_URL a list) each page goes to the healthy one with the fewest of this process's
    pages in flight. A server that fails a call (unreachable, 502/503/504, an aborted request) or its health check
    is left out until its health check passes again (each server is asked every HEALTH_EVERY_S), and the page it
    failed is sent to another; only when every server has failed it does the page fail with EngineUnavailable.
    All servers must serve the same checkpoint: its facts are read from the first that answers.

    A server gets pages only once it has proven that it applies the repetition guard (``_check_guard``), when it is
    first healthy and again each time it comes back after failing a health check; ``require_guard=False``
    (ALLOW_UNGUARDED_ENGINE) uses it whatever the check found.
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
    ):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.servers = [EngineServer(url.rstrip("/")) for url in urls]
        self.model_id = model_name
        self.profile: ModelProfile = profile_for_checkpoint(model_name)
        self.whitelist_token_ids: frozenset[int] = frozenset()
        self._requested_model = model_name
        self._timeout_s = timeout_s
        self._connections = connections
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._image_format = image_format
        self._require_guard = require_guard
        self._call_numbers = itertools.count(1)
        self.context_length = self.profile.context_length
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=_run_until_stopped, args=(self._loop,), name="engine-calls", daemon=True)
        self._thread.start()
        # Holds the one session once made and the health watcher (lists, so that the finalizer below sees them): an
        # engine dropped without close() (a failed start, a test) still closes its session and loop thread.
        self._sessions: list[aiohttp.ClientSession] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._shut_down = weakref.finalize(self, _shut_down, self._loop, self._thread, self._sessions, self._tasks)
        self._metadata_loaded = False

    def load(self) -> None:
        """Ask every server's health, learn the served model from one, and keep watching their health.

        An unreachable server is asked again every HEALTH_EVERY_S: /ready says 503 until one answers.
        """
        self._run(self._check_health(), timeout=CHECK_TIMEOUT_S)
        if not self._metadata_loaded:
            logger.warning("remote engine at %s not reachable yet; will retry", self._urls())
        if not self._tasks:
            self._loop.call_soon_threadsafe(self._start_watching)

    def is_ready(self) -> bool:
        """True when some server passed its last health check (or call) and its guard check, and the model's facts
        are known."""
        return self._metadata_loaded and any(self._usable(server) for server in self.servers)

    def guard_checks(self) -> dict[str, GuardCheck]:
        return {without_credentials(server.url): server.guard for server in self.servers}

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        """Send one page as a chat completion; the call has its own ENGINE_TIMEOUT_S."""
        if not self._metadata_loaded:
            self._run(self._check_health(), timeout=CHECK_TIMEOUT_S)
            if not self._metadata_loaded:
                raise EngineUnavailable(f"no engine server answers ({self._urls()})")
        # Encoded here, in the caller's thread, not on the loop thread all calls share. With one server the call holds
        # only the request's JSON bytes, and only until they are sent; with several it keeps them until the answer,
        # to send them again to another server if this one fails.
        chat = self._chat_body(request, data_url(request.image, self._image_format))
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
        return self._submit(self._on_some_server(record, call, bodies))

    def close(self) -> None:
        self._shut_down()  # once: a second call, or the collection of a closed engine, does nothing

    def _urls(self) -> str:
        return ", ".join(server.url for server in self.servers)

    def _submit(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _run(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        return self._submit(coroutine).result(timeout=timeout)

    def _client(self) -> aiohttp.ClientSession:
        # Created on the loop thread, where aiohttp wants it; one pooled connection per request in flight.
        if not self._sessions:
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._sessions.append(aiohttp.ClientSession(connector=connector, headers=self._headers))
        return self._sessions[0]

    def _start_watching(self) -> None:
        # The watcher holds the engine only weakly, so that an engine nobody keeps is still collected.
        self._tasks.append(self._loop.create_task(_watch_health(weakref.ref(self))))

    async def _check_health(self) -> None:
        """Ask every server's /health at once; learn the model's facts from the first healthy one if not yet known;
        check the guard of every healthy server whose guard is not known."""
        verdicts = await asyncio.gather(*(self._healthy_now(server) for server in self.servers))
        for server, healthy in zip(self.servers, verdicts, strict=True):
            if healthy != server.healthy:
                log = logger.info if healthy else logger.warning
                log("engine server %s is %s", server.url, "healthy" if healthy else "down")
            server.healthy = healthy
            if not healthy:  # it may come back as another server (restarted, other flags): checked again then
                server.guard = NOT_CHECKED_YET
        if not self._metadata_loaded:
            for server in self.servers:
                if server.healthy:
                    try:
                        await self._load_metadata(server)
                        break
                    except EngineUnavailable as exc:
                        logger.warning("remote engine metadata not available from %s: %s", server.url, exc)
        if self._metadata_loaded:
            unknown = [server for server in self.servers if server.healthy and server.guard.state == GUARD_UNCHECKED]
            await asyncio.gather(*(self._check_guard(server) for server in unknown))

    async def _check_guard(self, server: EngineServer) -> None:
        """Send the probe (ocr_api/guard.py): a server with the guard refuses it, one without answers it."""
        body = {"model": self.model_id, "prompt": GUARD_PROBE_PROMPT, "max_tokens": 1, "temperature": 0.0,
                "vllm_xargs": dict(GUARD_PROBE_ARGS)}  # fmt: skip
        asked = f"POST /v1/completions with vllm_xargs {GUARD_PROBE_ARGS}"
        try:
            status, payload = await self._call(server, "POST", "/v1/completions", METADATA_TIMEOUT_S, json=body)
        except EngineFailure as exc:
            server.guard = GuardCheck(GUARD_UNCHECKED, f"{asked} failed: {exc}")
            return
        message = _error_message(payload) if status != 200 else ""
        if status == 400 and probe_refused_by_guard(message):
            server.guard = GuardCheck(GUARD_VERIFIED, f"{asked} was refused by the guard's validation: {message}")
            logger.info("engine server %s applies the repetition guard", server.url)
        elif status == 200:
            server.guard = GuardCheck(GUARD_MISSING, f"{asked} was answered (200): the server loads no n-gram guard")
            use = "using it anyway (ALLOW_UNGUARDED_ENGINE)" if not self._require_guard else "it gets no pages"
            logger.warning("engine server %s runs without the repetition guard; %s. %s", server.url, use,
                           UNGUARDED_ADVICE)  # fmt: skip
        else:
            server.guard = GuardCheck(GUARD_UNCHECKED, f"{asked} answered {status}: {message}; asked again")

    def _usable(self, server: EngineServer) -> bool:
        """A server that gets pages: healthy, and proven to apply the guard unless that is not required."""
        return server.healthy and (server.guard.state == GUARD_VERIFIED or not self._require_guard)

    async def _on_some_server(
        self,
        record: tracking.RequestRecord | None,
        call: Callable[[EngineServer, SentOnce], Awaitable[EngineOutput]],
        bodies: list[bytes],
    ) -> EngineOutput:
        """``call`` on the healthy server with the fewest pages in flight; on EngineUnavailable, on the next.

        It runs for ``record``'s request, so that what the engine thread logs names the request. It is given the body
        in a list: with one server the body is taken out, so that once sent nothing holds it.
        """
        tracking.adopt(record)  # in this call's own task context
        tried: list[EngineServer] = []
        keep = len(self.servers) > 1
        while True:
            server = self._pick(tried)
            tried.append(server)
            server.in_flight += 1
            server.sent += 1
            try:
                return await call(server, SentOnce(bodies[0] if keep else bodies.pop()))
            except EngineUnavailable as exc:
                retryable = not isinstance(exc, _AlreadyStreamed) and len(tried) < len(self.servers)
                if not retryable:
                    raise
                logger.warning("engine server %s failed a page (%s); sending it to another", server.url, exc)
            finally:
                server.in_flight -= 1

    def _pick(self, tried: list[EngineServer]) -> EngineServer:
        untried = [server for server in self.servers if server not in tried]
        # A server a call marked down may be back before its next health check: tried when no other is left, if its
        # guard held when last checked (a failed health check, as a restart makes, clears that).
        candidates = [server for server in untried if self._usable(server)] or [
            server for server in untried if server.guard.state == GUARD_VERIFIED or not self._require_guard
        ]
        if not candidates:
            raise EngineUnavailable(f"no engine server is both healthy and known to apply the guard ({self._urls()})")
        return min(candidates, key=lambda server: (server.in_flight, server.sent))

    def _chat_body(self, request: EngineRequest, image_url: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_url}},
                        # The prompt keeps its own <image>: vLLM then places the image there, not in front.
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": request.max_tokens,
            "skip_special_tokens": False,
        }
        xargs = request.guard.vllm_extra_args()
        if xargs is not None:
            body["vllm_xargs"] = xargs
        return body

    async def _complete(
        self, server: EngineServer, body: SentOnce, *, call_id: str, max_tokens: int, guard: GuardSettings
    ) -> EngineOutput:
        # With its length given, aiohttp sends the body as it is, not chunked.
        headers = {"Content-Type": "application/json", "Content-Length": str(body.length), REQUEST_ID: call_id}
        status, payload = await self._call(
            server, "POST", "/v1/chat/completions", self._timeout_s, data=body, headers=headers
        )
        if status != 200:
            await self._raise_for(server, status, payload)
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
        headers = {"Content-Type": "application/json", "Content-Length": str(body.length), REQUEST_ID: call_id}
        pieces: list[str] = []

        def keep(piece: str) -> None:
            pieces.append(piece)
            on_text(piece)

        try:
            async with self._mapped_errors(server, self._timeout_s):
                timeout = aiohttp.ClientTimeout(total=self._timeout_s, sock_connect=CONNECT_TIMEOUT_S)
                url = f"{server.url}/v1/chat/completions"
                async with self._client().post(url, timeout=timeout, data=body, headers=headers) as response:
                    if response.status != 200:
                        await self._raise_for(server, response.status, _json_or_text(await response.text()))
                    finish_reason, usage = await _read_events(response.content, keep)
            if finish_reason == "abort":
                raise EngineUnavailable(f"the engine at {server.url} aborted the request")
        except EngineUnavailable as exc:
            if pieces:  # text already handed on cannot be taken back: this page is not sent again
                raise _AlreadyStreamed(str(exc)) from None
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

    async def _call(
        self, server: EngineServer, method: str, path: str, timeout_s: float, **kwargs: Any
    ) -> tuple[int, Any]:
        """Return the status and the JSON (or text) body; cancelling this coroutine closes the connection."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        url = f"{server.url}{path}"
        async with (
            self._mapped_errors(server, timeout_s),
            self._client().request(method, url, timeout=timeout, **kwargs) as response,
        ):
            return response.status, _json_or_text(await response.text())

    @contextlib.asynccontextmanager
    async def _mapped_errors(self, server: EngineServer, timeout_s: float) -> AsyncIterator[None]:
        """Network failures as the engine's own: unreachable is EngineUnavailable, too slow EngineTimeout."""
        try:
            yield
        except aiohttp.ConnectionTimeoutError:
            server.healthy = False
            raise EngineUnavailable(f"connecting to {server.url} timed out") from None
        except asyncio.TimeoutError:
            # Leaving the block closed the connection, which makes vLLM abort the request.
            raise EngineTimeout(f"the engine did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            server.healthy = False
            raise EngineUnavailable(f"cannot reach the engine at {server.url}: {type(exc).__name__}") from None

    async def _raise_for(self, server: EngineServer, status: int, payload: Any) -> None:
        message = _error_message(payload)
        if status == 400 and any(phrase in message.lower() for phrase in CONTEXT_ERRORS):
            raise PromptTooLong(message)
        # One request's answer does not take a server out for every request: its health check decides (an engine that
        # answers 503 to a request while its /health is fine is busy with that one, not down).
        healthy = await self._healthy_now(server)
        if not healthy:
            server.healthy = False
        if status in (502, 503, 504) or not healthy:
            raise EngineUnavailable(f"the engine at {server.url} answered {status}: {message}")
        raise EngineFailure(f"the engine answered {status}: {message}")

    async def _healthy_now(self, server: EngineServer) -> bool:
        try:
            status, _ = await self._call(server, "GET", "/health", HEALTH_TIMEOUT_S)
        except EngineFailure:
            return False
        return status == 200

    async def _load_metadata(self, server: EngineServer) -> None:
        status, payload = await self._call(server, "GET", "/v1/models", METADATA_TIMEOUT_S)
        if status != 200 or not isinstance(payload, dict):
            raise EngineUnavailable(f"GET /v1/models answered {status}")
        served = payload.get("data") or []
        if not served:
            raise EngineLoadError(f"the engine at {server.url} serves no model")
        chosen = _choose_model(served, self._requested_model, server.url)
        self.model_id = chosen["id"]
        self.profile = profile_for_checkpoint(str(chosen.get("root") or chosen["id"]))
        self.context_length = int(chosen.get("max_model_len") or self.profile.context_length)
        token_ids = [await self._single_token_id(server, token) for token in self.profile.whitelist_tokens]
        self.whitelist_token_ids = frozenset(token_id for token_id in token_ids if token_id is not None)
        self._metadata_loaded = True
        logger.info(
            "remote engine %s serves %s (%s, context %d)",
            server.url,
            self.model_id,
            self.profile.family,
            self.context_length,
        )

    async def _single_token_id(self, server: EngineServer, token: str) -> int | None:
        body = {"model": self.model_id, "prompt": token, "add_special_tokens": False}
        status, payload = await self._call(server, "POST", "/tokenize", METADATA_TIMEOUT_S, json=body)
        if status != 200 or not isinstance(payload, dict):
            return None
        tokens = payload.get("tokens") or []
        return int(tokens[0]) if len(tokens) == 1 else None


async def _read_events(lines: AsyncIterator[bytes], on_text: TextSink) -> tuple[str, dict[str, Any]]:
    """Hand on each piece of a chat completion's server-sent events; return its finish reason and usage."""
    finish_reason, usage = "stop", {}
    async for line in lines:  # one "data: {...}" line per event
        if not line.startswith(b"data:"):
            continue  # blank lines between events, keep-alive comments
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise EngineFailure(f"the engine failed mid-stream: {_error_message(chunk)}")
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                on_text(piece)
            finish_reason = choice.get("finish_reason") or finish_reason
        usage = chunk.get("usage") or usage
    return finish_reason, usage


class _AlreadyStreamed(EngineUnavailable):
    """The server failed after some of the page's text was handed on: the page cannot be sent elsewhere."""


async def _watch_health(engine_ref: weakref.ReferenceType[RemoteEngine]) -> None:
    """Ask every server's health every HEALTH_EVERY_S until the engine is closed or collected."""
    while True:
        await asyncio.sleep(HEALTH_EVERY_S)
        engine = engine_ref()
        if engine is None:
            return
        try:
            await engine._check_health()
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failed round
            logger.warning("engine health check failed: %s: %s", type(exc).__name__, exc)
        del engine  # not held while sleeping


def _shut_down(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    sessions: list[aiohttp.ClientSession],
    tasks: list[asyncio.Task[None]],
) -> None:
    """Stop the health watcher, close the sessions, then stop the loop thread; safe from any thread."""

    async def close_then_stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in sessions:
            await session.close()
        loop.stop()

    if not thread.is_alive():
        return
    asyncio.run_coroutine_threadsafe(close_then_stop(), loop)
    if threading.current_thread() is not thread:  # a collection can run on the loop thread too: no waiting there
        thread.join(timeout=5)


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: run the calls until the loop is stopped, then close it here, whoever stopped it (the
    engine may be collected on this very thread, when the health watcher lets go of it)."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def _choose_model(served: list[dict[str, Any]], requested: str, base_url: str) -> dict[str, Any]:
    if not requested:
        return served[0]
    for model in served:
        if requested in (model.get("id"), model.get("root")):
            return model
    names = ", ".join(str(model.get("id")) for model in served)
    raise EngineLoadError(f"the engine at {base_url} serves {names}, not DEEPSEEK_MODEL_NAME={requested}")


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_message(payload: Any) -> str:
    if isinstance(payload, str):
        return payload[:300]
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message", error))[:300]
    return str(error)[:300]
