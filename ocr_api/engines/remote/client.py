"""The remote engine's HTTP client: vLLM's OpenAI-compatible endpoints over one pooled aiohttp session.

It knows the wire (the chat completion's body, server-sent events, vLLM's error payloads) and maps network failures
to the engine's errors; which server to call, and what a failure says about that server, is ``servers.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ocr_api.engines.base import EngineFailure, EngineRequest, EngineTimeout, EngineUnavailable, TextSink

CONNECT_TIMEOUT_S = 5.0
REQUEST_ID = "X-Request-Id"
# Phrases vLLM uses when prompt and image tokens do not fit the context.
CONTEXT_ERRORS = ("maximum model length", "maximum context length", "context length")


class Unreachable(EngineUnavailable):
    """The server could not be reached (refused, reset, the connection timed out): it is taken to be down."""


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


class EngineHttp:
    """One aiohttp session (made on the loop thread, where aiohttp wants it), one pooled connection per call."""

    def __init__(self, connections: int, api_key: str = ""):
        self._connections = connections
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sessions: list[aiohttp.ClientSession] = []

    async def call(self, url: str, method: str, path: str, timeout_s: float, **kwargs: Any) -> tuple[int, Any]:
        """Return the status and the JSON (or text) body; cancelling this coroutine closes the connection."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        async with (
            mapped_errors(url, timeout_s),
            self._session().request(method, f"{url}{path}", timeout=timeout, **kwargs) as response,
        ):
            return response.status, json_or_text(await response.text())

    async def chat(self, url: str, body: SentOnce, call_id: str, timeout_s: float) -> tuple[int, Any]:
        """POST a chat completion; its status and answer."""
        headers = _headers(body, call_id)
        return await self.call(url, "POST", "/v1/chat/completions", timeout_s, data=body, headers=headers)

    async def chat_stream(
        self, url: str, body: SentOnce, call_id: str, timeout_s: float, on_text: TextSink
    ) -> tuple[int, Any]:
        """POST a streamed chat completion, each piece of content to ``on_text`` as it comes: (200, (finish reason,
        usage)), or another status and the error's body."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        async with (
            mapped_errors(url, timeout_s),
            self._session().post(
                f"{url}/v1/chat/completions", timeout=timeout, data=body, headers=_headers(body, call_id)
            ) as response,
        ):
            if response.status != 200:
                return response.status, json_or_text(await response.text())
            return 200, await read_events(response.content, on_text)

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()

    def _session(self) -> aiohttp.ClientSession:
        if not self._sessions:
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._sessions.append(aiohttp.ClientSession(connector=connector, headers=self._headers))
        return self._sessions[0]


def _headers(body: SentOnce, call_id: str) -> dict[str, str]:
    # With its length given, aiohttp sends the body as it is, not chunked. vLLM takes X-Request-Id as its own
    # request's id (--enable-request-id-headers).
    return {"Content-Type": "application/json", "Content-Length": str(body.length), REQUEST_ID: call_id}


@contextlib.asynccontextmanager
async def mapped_errors(url: str, timeout_s: float) -> AsyncIterator[None]:
    """Network failures as the engine's own: unreachable is Unreachable, too slow EngineTimeout."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise Unreachable(f"connecting to {url} timed out") from None
    except asyncio.TimeoutError:
        # Leaving the block closed the connection, which makes vLLM abort the request.
        raise EngineTimeout(f"the engine did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise Unreachable(f"cannot reach the engine at {url}: {type(exc).__name__}") from None


def chat_body(model_id: str, request: EngineRequest, image_url: str) -> dict[str, Any]:
    """The chat completion one page is: the image, then the prompt (with its own <image>), greedy, its priority, the
    guard's arguments in vllm_xargs."""
    body: dict[str, Any] = {
        "model": model_id,
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
        # Its place in vLLM's waiting queue under --scheduling-policy priority; accepted and ignored under fcfs.
        "priority": request.priority,
    }
    xargs = request.guard.vllm_extra_args()
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return body


async def read_events(lines: AsyncIterator[bytes], on_text: TextSink) -> tuple[str, dict[str, Any]]:
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
            raise EngineFailure(f"the engine failed mid-stream: {error_message(chunk)}")
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                on_text(piece)
            finish_reason = choice.get("finish_reason") or finish_reason
        usage = chunk.get("usage") or usage
    return finish_reason, usage


def is_context_error(status: int, message: str) -> bool:
    """vLLM's 400 for prompt and image tokens that do not fit the context."""
    return status == 400 and any(phrase in message.lower() for phrase in CONTEXT_ERRORS)


def json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def error_message(payload: Any) -> str:
    """The message of vLLM's error payload (or of whatever else answered), at most 300 characters."""
    if isinstance(payload, str):
        return payload[:300]
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message", error))[:300]
    return str(error)[:300]
