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
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp

from ocr_api.engines.base import (
    EngineFailure,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    PromptTooLong,
    context_budget,
)
from ocr_api.guard import GuardSettings
from ocr_api.models import ModelProfile, profile_for_checkpoint
from ocr_api.preparation import data_url

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
METADATA_TIMEOUT_S = 30.0
HEALTH_CACHE_S = 1.0  # readiness is asked on every request; one probe a second is plenty
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


class RemoteEngine:
    """Talks to a vLLM OpenAI server: chat completions with the image as a data URL and the guard per request."""

    name = "remote"
    modes = ("gundam",)  # vLLM's DeepSeek-OCR processors hard-code it

    def __init__(
        self,
        base_url: str,
        model_name: str = "",
        *,
        timeout_s: float = 240.0,
        connections: int = 64,
        api_key: str = "",
        image_format: str = "jpeg",
    ):
        self.base_url = base_url.rstrip("/")
        self.model_id = model_name
        self.profile: ModelProfile = profile_for_checkpoint(model_name)
        self.whitelist_token_ids: frozenset[int] = frozenset()
        self._requested_model = model_name
        self._timeout_s = timeout_s
        self._connections = connections
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._image_format = image_format
        self.context_length = self.profile.context_length
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-calls", daemon=True)
        self._thread.start()
        # Holds the one session once made (a list, so that the finalizer below sees it): an engine dropped without
        # close() (a failed start, a test) still closes its session and loop thread.
        self._sessions: list[aiohttp.ClientSession] = []
        self._shut_down = weakref.finalize(self, _shut_down, self._loop, self._thread, self._sessions)
        self._lock = threading.Lock()
        self._metadata_loaded = False
        self._healthy = False
        self._checked_at = 0.0

    def load(self) -> None:
        """Learn the served model, its context and the guard's whitelist; an unreachable server is retried later."""
        try:
            self._load_metadata()
        except EngineUnavailable as exc:
            # The server may still be starting or restarting: /ready says 503 until it answers.
            logger.warning("remote engine at %s not reachable yet (%s); will retry", self.base_url, exc)

    def is_ready(self) -> bool:
        """Return True when the server answers its health check (cached for a second) and metadata is known."""
        with self._lock:
            if time.monotonic() - self._checked_at < HEALTH_CACHE_S:
                return self._healthy and self._metadata_loaded
        healthy = self._probe_health()
        if healthy and not self._metadata_loaded:
            try:
                self._load_metadata()
            except (EngineUnavailable, EngineLoadError) as exc:
                logger.warning("remote engine metadata not available: %s", exc)
        with self._lock:
            self._healthy, self._checked_at = healthy, time.monotonic()
            return healthy and self._metadata_loaded

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        """Send one page as a chat completion; the call has its own ENGINE_TIMEOUT_S."""
        if not self._metadata_loaded:
            self._load_metadata()
        # Encoded here, in the caller's thread, not on the loop thread all calls share. The call holds only the
        # request's JSON bytes, and only until they are sent: a page waiting for its answer holds nothing.
        chat = self._chat_body(request, data_url(request.image, self._image_format))
        if request.on_text is None:
            return self._submit(self._complete(SentOnce(json.dumps(chat).encode()), request.max_tokens, request.guard))
        chat.update(stream=True, stream_options={"include_usage": True})
        return self._submit(self._stream(SentOnce(json.dumps(chat).encode()), request))

    def close(self) -> None:
        self._shut_down()  # once: a second call, or the collection of a closed engine, does nothing

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

    async def _complete(self, body: SentOnce, max_tokens: int, guard: GuardSettings) -> EngineOutput:
        # With its length given, aiohttp sends the body as it is, not chunked.
        headers = {"Content-Type": "application/json", "Content-Length": str(body.length)}
        status, payload = await self._call("POST", "/v1/chat/completions", self._timeout_s, data=body, headers=headers)
        if status != 200:
            await self._raise_for(status, payload)
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        finish_reason = choice.get("finish_reason") or "stop"
        if finish_reason == "abort":
            raise EngineUnavailable("the engine aborted the request")
        return EngineOutput(
            text=choice["message"].get("content") or "",
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            max_tokens=context_budget(max_tokens, self.context_length, prompt_tokens),
            guard=guard,
        )

    async def _stream(self, body: SentOnce, request: EngineRequest) -> EngineOutput:
        """A streamed chat completion: each piece of content goes to ``request.on_text`` as vLLM sends it."""
        assert request.on_text is not None
        headers = {"Content-Type": "application/json", "Content-Length": str(body.length)}
        pieces: list[str] = []
        finish_reason, usage = "stop", {}
        async with self._mapped_errors(self._timeout_s):
            timeout = aiohttp.ClientTimeout(total=self._timeout_s, sock_connect=CONNECT_TIMEOUT_S)
            url = f"{self.base_url}/v1/chat/completions"
            async with self._client().post(url, timeout=timeout, data=body, headers=headers) as response:
                if response.status != 200:
                    await self._raise_for(response.status, _json_or_text(await response.text()))
                async for line in response.content:  # server-sent events, one "data: {...}" line each
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
                            pieces.append(piece)
                            request.on_text(piece)
                        finish_reason = choice.get("finish_reason") or finish_reason
                    usage = chunk.get("usage") or usage
        if finish_reason == "abort":
            raise EngineUnavailable("the engine aborted the request")
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        return EngineOutput(
            text="".join(pieces),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            max_tokens=context_budget(request.max_tokens, self.context_length, prompt_tokens),
            guard=request.guard,
        )

    async def _call(self, method: str, path: str, timeout_s: float, **kwargs: Any) -> tuple[int, Any]:
        """Return the status and the JSON (or text) body; cancelling this coroutine closes the connection."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        url = f"{self.base_url}{path}"
        async with (
            self._mapped_errors(timeout_s),
            self._client().request(method, url, timeout=timeout, **kwargs) as response,
        ):
            return response.status, _json_or_text(await response.text())

    @contextlib.asynccontextmanager
    async def _mapped_errors(self, timeout_s: float) -> AsyncIterator[None]:
        """Network failures as the engine's own: unreachable is EngineUnavailable, too slow EngineTimeout."""
        try:
            yield
        except aiohttp.ConnectionTimeoutError:
            self._mark_unhealthy()
            raise EngineUnavailable(f"connecting to {self.base_url} timed out") from None
        except asyncio.TimeoutError:
            # Leaving the block closed the connection, which makes vLLM abort the request.
            raise EngineTimeout(f"the engine did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            self._mark_unhealthy()
            raise EngineUnavailable(f"cannot reach the engine at {self.base_url}: {type(exc).__name__}") from None

    async def _raise_for(self, status: int, payload: Any) -> None:
        message = _error_message(payload)
        if status == 400 and any(phrase in message.lower() for phrase in CONTEXT_ERRORS):
            raise PromptTooLong(message)
        if status in (502, 503, 504) or not await self._healthy_now():
            self._mark_unhealthy()
            raise EngineUnavailable(f"the engine answered {status}: {message}")
        raise EngineFailure(f"the engine answered {status}: {message}")

    async def _healthy_now(self) -> bool:
        try:
            status, _ = await self._call("GET", "/health", HEALTH_TIMEOUT_S)
        except EngineFailure:
            return False
        return status == 200

    def _probe_health(self) -> bool:
        return self._run(self._healthy_now(), timeout=HEALTH_TIMEOUT_S + CONNECT_TIMEOUT_S)

    def _mark_unhealthy(self) -> None:
        with self._lock:
            self._healthy, self._checked_at = False, time.monotonic()

    def _load_metadata(self) -> None:
        status, payload = self._run(self._call("GET", "/v1/models", METADATA_TIMEOUT_S), timeout=METADATA_TIMEOUT_S + 1)
        if status != 200 or not isinstance(payload, dict):
            raise EngineUnavailable(f"GET /v1/models answered {status}")
        served = payload.get("data") or []
        if not served:
            raise EngineLoadError(f"the engine at {self.base_url} serves no model")
        chosen = _choose_model(served, self._requested_model, self.base_url)
        self.model_id = chosen["id"]
        self.profile = profile_for_checkpoint(str(chosen.get("root") or chosen["id"]))
        self.context_length = int(chosen.get("max_model_len") or self.profile.context_length)
        token_ids = [self._single_token_id(token) for token in self.profile.whitelist_tokens]
        self.whitelist_token_ids = frozenset(token_id for token_id in token_ids if token_id is not None)
        self._metadata_loaded = True
        logger.info(
            "remote engine %s serves %s (%s, context %d)",
            self.base_url,
            self.model_id,
            self.profile.family,
            self.context_length,
        )

    def _single_token_id(self, token: str) -> int | None:
        body = {"model": self.model_id, "prompt": token, "add_special_tokens": False}
        status, payload = self._run(
            self._call("POST", "/tokenize", METADATA_TIMEOUT_S, json=body), timeout=METADATA_TIMEOUT_S + 1
        )
        if status != 200 or not isinstance(payload, dict):
            return None
        tokens = payload.get("tokens") or []
        return int(tokens[0]) if len(tokens) == 1 else None


def _shut_down(
    loop: asyncio.AbstractEventLoop, thread: threading.Thread, sessions: list[aiohttp.ClientSession]
) -> None:
    """Close the sessions, then stop the loop thread; safe from any thread, the loop's own included."""

    async def close_then_stop() -> None:
        for session in sessions:
            await session.close()
        loop.stop()

    if not thread.is_alive():
        return
    asyncio.run_coroutine_threadsafe(close_then_stop(), loop)
    if threading.current_thread() is not thread:  # a collection can run on the loop thread too: no waiting there
        thread.join(timeout=5)
        if not thread.is_alive():
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
