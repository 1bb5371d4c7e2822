"""An OpenAI-compatible vLLM server as the engine: what every gunicorn worker uses in production.

The workers import neither torch nor vLLM; one vLLM server owns the GPU and batches every worker's requests
(continuous batching). Each image is one chat completion; the images of a batch request are sent at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from requests.adapters import HTTPAdapter

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
from ocr_api.preparation import png_data_url

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
HEALTH_CACHE_S = 1.0  # readiness is asked on every request; one probe a second is plenty
# Phrases vLLM uses when prompt and image tokens do not fit the context.
CONTEXT_ERRORS = ("maximum model length", "maximum context length", "context length")


class RemoteEngine:
    """Talks to a vLLM OpenAI server: chat completions with the image as a data URL and the guard per request."""

    name = "remote"
    modes = ("gundam",)  # vLLM's DeepSeek-OCR processors hard-code it

    def __init__(
        self,
        base_url: str,
        model_name: str = "",
        timeout_s: float = 240.0,
        connections: int = 64,
        api_key: str = "",
    ):
        self.base_url = base_url.rstrip("/")
        self.model_id = model_name
        self.profile: ModelProfile = profile_for_checkpoint(model_name)
        self.whitelist_token_ids: frozenset[int] = frozenset()
        self._requested_model = model_name
        self._timeout = (CONNECT_TIMEOUT_S, timeout_s)
        self._context_length = self.profile.context_length
        self._session = requests.Session()
        # One pooled connection per request in flight, so concurrent requests never wait for a socket.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="engine-call")
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

    def generate(self, requests_: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Send every request at once (the server batches them) and return the outputs in order."""
        if not self._metadata_loaded:
            self._load_metadata()
        futures = [self._pool.submit(self._complete, request) for request in requests_]
        outputs: list[EngineOutput] = []
        failure: Exception | None = None
        for future in futures:  # wait for all, so no call is left running unseen, then report the first failure
            try:
                outputs.append(future.result())
            except Exception as exc:  # noqa: BLE001 - re-raised below, once every call has ended
                failure = failure or exc
        if failure is not None:
            raise failure
        return outputs

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    def _complete(self, request: EngineRequest) -> EngineOutput:
        guard = GuardSettings(request.ngram_size, request.window_size, self.whitelist_token_ids)
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_data_url(request.image)}},
                        # The prompt keeps its own <image>: vLLM then places the image there, not in front.
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": request.max_tokens,
            "skip_special_tokens": False,
        }
        xargs = guard.vllm_extra_args()
        if xargs is not None:
            body["vllm_xargs"] = xargs
        response = self._call("POST", "/v1/chat/completions", json=body)
        if response.status_code != 200:
            self._raise_for(response)
        payload = response.json()
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
            max_tokens=context_budget(request.max_tokens, self._context_length, prompt_tokens),
            guard=guard,
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(method, f"{self.base_url}{path}", timeout=self._timeout, **kwargs)
        except requests.Timeout as exc:
            # Closing the connection makes vLLM abort the request, so nothing keeps running for nobody.
            if isinstance(exc, requests.ConnectTimeout):
                self._mark_unhealthy()
                raise EngineUnavailable(f"connecting to {self.base_url} timed out") from None
            raise EngineTimeout(f"the engine did not answer within {self._timeout[1]:g} s") from None
        except requests.ConnectionError as exc:
            self._mark_unhealthy()
            raise EngineUnavailable(f"cannot reach the engine at {self.base_url}: {type(exc).__name__}") from None

    def _raise_for(self, response: requests.Response) -> None:
        message = _error_message(response)
        if response.status_code == 400 and any(phrase in message.lower() for phrase in CONTEXT_ERRORS):
            raise PromptTooLong(message)
        if response.status_code in (502, 503, 504) or not self._probe_health():
            self._mark_unhealthy()
            raise EngineUnavailable(f"the engine answered {response.status_code}: {message}")
        raise EngineFailure(f"the engine answered {response.status_code}: {message}")

    def _probe_health(self) -> bool:
        try:
            response = self._session.get(f"{self.base_url}/health", timeout=(HEALTH_TIMEOUT_S, HEALTH_TIMEOUT_S))
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _mark_unhealthy(self) -> None:
        with self._lock:
            self._healthy, self._checked_at = False, time.monotonic()

    def _load_metadata(self) -> None:
        response = self._call("GET", "/v1/models")
        if response.status_code != 200:
            raise EngineUnavailable(f"GET /v1/models answered {response.status_code}")
        served = response.json().get("data") or []
        if not served:
            raise EngineLoadError(f"the engine at {self.base_url} serves no model")
        chosen = _choose_model(served, self._requested_model, self.base_url)
        self.model_id = chosen["id"]
        self.profile = profile_for_checkpoint(str(chosen.get("root") or chosen["id"]))
        self._context_length = int(chosen.get("max_model_len") or self.profile.context_length)
        token_ids = [self._single_token_id(token) for token in self.profile.whitelist_tokens]
        self.whitelist_token_ids = frozenset(token_id for token_id in token_ids if token_id is not None)
        self._metadata_loaded = True
        logger.info(
            "remote engine %s serves %s (%s, context %d)",
            self.base_url,
            self.model_id,
            self.profile.family,
            self._context_length,
        )

    def _single_token_id(self, token: str) -> int | None:
        response = self._call(
            "POST", "/tokenize", json={"model": self.model_id, "prompt": token, "add_special_tokens": False}
        )
        if response.status_code != 200:
            return None
        tokens = response.json().get("tokens") or []
        return int(tokens[0]) if len(tokens) == 1 else None


def _choose_model(served: list[dict[str, Any]], requested: str, base_url: str) -> dict[str, Any]:
    if not requested:
        return served[0]
    for model in served:
        if requested in (model.get("id"), model.get("root")):
            return model
    names = ", ".join(str(model.get("id")) for model in served)
    raise EngineLoadError(f"the engine at {base_url} serves {names}, not DEEPSEEK_MODEL_NAME={requested}")


def _error_message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300]
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message", error))[:300]
    return str(error)[:300]
