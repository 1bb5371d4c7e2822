"""The remote engine's servers: their health, their guard, the model they serve, and which one gets the next page.

Every server's /health is asked every HEALTH_EVERY_S by each process. A server that fails a call (unreachable,
502/503/504, an aborted request) or its health check is left out until its health check passes again, and the page
it failed is sent to another. A server gets pages only once it has proven that it applies the repetition guard: it
is checked when it is first healthy, each time it comes back after failing a health check, and every
``guard_recheck_s`` while it stays healthy (a URL that balances over several vLLMs, one restarted with other flags),
each check a task of its own, so that a slow one never holds up the health checks. Between checks a server keeps the
verdict of its last one: verified, it gets pages; found without the guard, it gets none until a check finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ocr_api import tracking
from ocr_api.engines.base import (
    GUARD_MISSING,
    GUARD_UNCHECKED,
    GUARD_VERIFIED,
    EngineFailure,
    EngineLoadError,
    EngineOutput,
    EngineUnavailable,
    GuardCheck,
    PromptTooLong,
)
from ocr_api.engines.remote.client import EngineHttp, SentOnce, Unreachable, error_message, is_context_error
from ocr_api.engines.vllm_flags import UNGUARDED_ADVICE
from ocr_api.guard import GUARD_PROBE_ARGS, GUARD_PROBE_PROMPT, probe_refused_by_guard
from ocr_api.profiles import ModelProfile, profile_for_checkpoint

logger = logging.getLogger("ocr_api.engines.remote_engine")  # the name operators' log filters know

HEALTH_TIMEOUT_S = 2.0
METADATA_TIMEOUT_S = 30.0
HEALTH_EVERY_S = 1.0  # how often every server's /health is asked, by each process

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
    guard_checked_at: float = -math.inf  # time.monotonic() of the last guard check that got an answer
    guard_check: asyncio.Task[None] | None = None  # the guard check in flight, if any

    def forget_guard(self) -> None:
        """A server that failed its health check may come back as another (restarted, other flags): check it then."""
        self.guard = NOT_CHECKED_YET
        self.guard_checked_at = -math.inf
        if self.guard_check is not None:
            self.guard_check.cancel()  # its answer would be about the server that went away
            self.guard_check = None


class AlreadyStreamed(EngineUnavailable):
    """The server failed after some of the page's text was handed on: the page cannot be sent elsewhere."""


@dataclass
class ServedModel:
    """The model the servers serve, as read from the first that answers (all must serve the same checkpoint)."""

    model_id: str
    profile: ModelProfile
    context_length: int
    whitelist_token_ids: frozenset[int] = frozenset()
    known: bool = False  # read from a server yet


class ServerPool:
    """The remote engine's servers, watched; ``on_some_server`` runs a call on the best one, then on the next."""

    def __init__(
        self, urls: list[str], http: EngineHttp, requested_model: str, require_guard: bool, guard_recheck_s: float
    ):
        self.servers = [EngineServer(url.rstrip("/")) for url in urls]
        self._guard_recheck_s = guard_recheck_s
        self.http = http
        profile = profile_for_checkpoint(requested_model)
        self.model = ServedModel(requested_model, profile, profile.context_length)
        self._requested_model = requested_model
        self._require_guard = require_guard

    def urls(self) -> str:
        return ", ".join(server.url for server in self.servers)

    def usable(self, server: EngineServer) -> bool:
        """A server that gets pages: healthy, and proven to apply the guard unless that is not required."""
        return server.healthy and (server.guard.state == GUARD_VERIFIED or not self._require_guard)

    async def call(
        self, server: EngineServer, method: str, path: str, timeout_s: float, **kwargs: Any
    ) -> tuple[int, Any]:
        """``http.call`` on this server; one that cannot be reached is marked down."""
        async with self.marking_down(server):
            return await self.http.call(server.url, method, path, timeout_s, **kwargs)

    @contextlib.asynccontextmanager
    async def marking_down(self, server: EngineServer) -> AsyncIterator[None]:
        try:
            yield
        except Unreachable:
            server.healthy = False
            raise

    async def check_health(self) -> None:
        """Ask every server's /health at once; learn the model's facts from the first healthy one if not yet known;
        start a guard check of every healthy server whose guard is unknown or last checked GUARD_RECHECK_S ago."""
        verdicts = await asyncio.gather(*(self.healthy_now(server) for server in self.servers))
        for server, healthy in zip(self.servers, verdicts, strict=True):
            if healthy != server.healthy:
                log = logger.info if healthy else logger.warning
                log("engine server %s is %s", server.url, "healthy" if healthy else "down")
            server.healthy = healthy
            if not healthy:
                server.forget_guard()
        if not self.model.known:
            await self._learn_model()
        if self.model.known:
            now = time.monotonic()
            for server in self.servers:
                if self._guard_check_due(server, now):
                    server.guard_check = asyncio.create_task(self._check_guard(server))

    async def _learn_model(self) -> None:
        for server in self.servers:
            if server.healthy:
                try:
                    await self._load_model(server)
                    return
                except EngineUnavailable as exc:
                    logger.warning("remote engine metadata not available from %s: %s", server.url, exc)

    def _guard_check_due(self, server: EngineServer, now: float) -> bool:
        if not server.healthy or (server.guard_check is not None and not server.guard_check.done()):
            return False
        return server.guard.state == GUARD_UNCHECKED or now - server.guard_checked_at >= self._guard_recheck_s

    async def guard_checks_done(self, timeout_s: float) -> None:
        """Wait until the guard checks in flight have answered, ``timeout_s`` at most (they go on after it)."""
        checks = [server.guard_check for server in self.servers if server.guard_check is not None]
        if checks:
            await asyncio.wait(checks, timeout=timeout_s)

    async def healthy_now(self, server: EngineServer) -> bool:
        try:
            status, _ = await self.call(server, "GET", "/health", HEALTH_TIMEOUT_S)
        except EngineFailure:
            return False
        return status == 200

    async def on_some_server(
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
                retryable = not isinstance(exc, AlreadyStreamed) and len(tried) < len(self.servers)
                if not retryable:
                    raise
                logger.warning("engine server %s failed a page (%s); sending it to another", server.url, exc)
            finally:
                server.in_flight -= 1

    async def raise_for(self, server: EngineServer, status: int, payload: Any) -> None:
        """Raise the engine's error for a call's answer other than 200."""
        message = error_message(payload)
        if is_context_error(status, message):
            raise PromptTooLong(message)
        # One request's answer does not take a server out for every request: its health check decides (an engine that
        # answers 503 to a request while its /health is fine is busy with that one, not down).
        healthy = await self.healthy_now(server)
        if not healthy:
            server.healthy = False
        if status in (502, 503, 504) or not healthy:
            raise EngineUnavailable(f"the engine at {server.url} answered {status}: {message}")
        raise EngineFailure(f"the engine answered {status}: {message}")

    def _pick(self, tried: list[EngineServer]) -> EngineServer:
        untried = [server for server in self.servers if server not in tried]
        # A server a call marked down may be back before its next health check: tried when no other is left, if its
        # guard held when last checked (a failed health check, as a restart makes, clears that).
        candidates = [server for server in untried if self.usable(server)] or [
            server for server in untried if server.guard.state == GUARD_VERIFIED or not self._require_guard
        ]
        if not candidates:
            raise EngineUnavailable(f"no engine server is both healthy and known to apply the guard ({self.urls()})")
        return min(candidates, key=lambda server: (server.in_flight, server.sent))

    async def _check_guard(self, server: EngineServer) -> None:
        """Send the probe (ocr_api/guard.py): a server with the guard refuses it, one without answers it. The server
        keeps its last verdict until this one answers; a change either way is logged."""
        body = {"model": self.model.model_id, "prompt": GUARD_PROBE_PROMPT, "max_tokens": 1, "temperature": 0.0,
                "vllm_xargs": dict(GUARD_PROBE_ARGS)}  # fmt: skip
        asked = f"POST /v1/completions with vllm_xargs {GUARD_PROBE_ARGS}"
        try:
            status, payload = await self.call(server, "POST", "/v1/completions", METADATA_TIMEOUT_S, json=body)
        except EngineFailure as exc:
            self._no_verdict(server, f"{asked} failed: {exc}")
            return
        before = server.guard.state
        message = error_message(payload) if status != 200 else ""
        if status not in (200, 400) or (status == 400 and not probe_refused_by_guard(message)):
            self._no_verdict(server, f"{asked} answered {status}: {message}; asked again")
            return
        server.guard_checked_at = time.monotonic()
        if status == 400:
            server.guard = GuardCheck(GUARD_VERIFIED, f"{asked} was refused by the guard's validation: {message}")
            if before != GUARD_VERIFIED:
                logger.info("engine server %s applies the repetition guard", server.url)
        else:
            server.guard = GuardCheck(GUARD_MISSING, f"{asked} was answered (200): the server loads no n-gram guard")
            if before != GUARD_MISSING:
                use = "using it anyway (ALLOW_UNGUARDED_ENGINE)" if not self._require_guard else "it gets no pages"
                logger.warning("engine server %s runs without the repetition guard; %s. %s", server.url, use,
                               UNGUARDED_ADVICE)  # fmt: skip

    @staticmethod
    def _no_verdict(server: EngineServer, detail: str) -> None:
        """A check that got no verdict: a server never checked stays unchecked (saying why), one checked before keeps
        its last verdict; either is asked again at the next health check."""
        if server.guard.state == GUARD_UNCHECKED:
            server.guard = GuardCheck(GUARD_UNCHECKED, detail)
        else:
            logger.warning("engine server %s: its guard check got no verdict (%s); it keeps the last one", server.url,
                           detail)  # fmt: skip

    async def _load_model(self, server: EngineServer) -> None:
        status, payload = await self.call(server, "GET", "/v1/models", METADATA_TIMEOUT_S)
        if status != 200 or not isinstance(payload, dict):
            raise EngineUnavailable(f"GET /v1/models answered {status}")
        served = payload.get("data") or []
        if not served:
            raise EngineLoadError(f"the engine at {server.url} serves no model")
        chosen = _choose_model(served, self._requested_model, server.url)
        model_id = chosen["id"]
        profile = profile_for_checkpoint(str(chosen.get("root") or chosen["id"]))
        self.model.model_id, self.model.profile = model_id, profile
        self.model.context_length = int(chosen.get("max_model_len") or profile.context_length)
        token_ids = [await self._single_token_id(server, token) for token in profile.whitelist_tokens]
        self.model.whitelist_token_ids = frozenset(token_id for token_id in token_ids if token_id is not None)
        self.model.known = True
        context = self.model.context_length
        logger.info("remote engine %s serves %s (%s, context %d)", server.url, model_id, profile.family, context)

    async def _single_token_id(self, server: EngineServer, token: str) -> int | None:
        body = {"model": self.model.model_id, "prompt": token, "add_special_tokens": False}
        status, payload = await self.call(server, "POST", "/tokenize", METADATA_TIMEOUT_S, json=body)
        if status != 200 or not isinstance(payload, dict):
            return None
        tokens = payload.get("tokens") or []
        return int(tokens[0]) if len(tokens) == 1 else None


async def watch_health(pool_ref: weakref.ReferenceType[ServerPool]) -> None:
    """Ask every server's health every HEALTH_EVERY_S until the pool is stopped or collected."""
    while True:
        await asyncio.sleep(HEALTH_EVERY_S)
        pool = pool_ref()
        if pool is None:
            return
        try:
            await pool.check_health()
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failed round
            logger.warning("engine health check failed: %s: %s", type(exc).__name__, exc)
        del pool  # not held while sleeping


def _choose_model(served: list[dict[str, Any]], requested: str, base_url: str) -> dict[str, Any]:
    if not requested:
        return served[0]
    for model in served:
        if requested in (model.get("id"), model.get("root")):
            return model
    names = ", ".join(str(model.get("id")) for model in served)
    raise EngineLoadError(f"the engine at {base_url} serves {names}, not DEEPSEEK_MODEL_NAME={requested}")
