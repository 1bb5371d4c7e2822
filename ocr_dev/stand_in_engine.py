"""A STAND-IN for a vLLM OpenAI server: no model, only the timing of batched GPU decoding.

It answers the endpoints the remote engine uses (``/health``, ``/v1/models``, ``/tokenize``,
``/v1/chat/completions``, ``/v1/completions``, ``/metrics``) and models continuous batching: one decoding step every
``step_ms`` whatever the batch size up to ``max_batch`` requests, each running request gaining one token per step, a
page done after ``tokens_per_page`` tokens. Requests past the cap wait, as in vLLM: in arrival order (``fcfs``, vLLM's
default), or with ``--scheduling-policy priority`` by the request's ``priority`` (lower first; the
``X-Vllm-Priority`` header overrides the body's), then arrival, as vLLM's priority scheduler orders its waiting
queue (it accepts and ignores ``priority`` under fcfs). Its text is a fixed sentence.
With ``--median-tokens`` the pages' lengths follow a long tail instead, as real documents do: lognormal around that
median, and a share of them (``--runaway-share``) running to the request's ``max_tokens`` (a repetition loop,
answered ``finish_reason: length``); drawn from a seeded generator, in arrival order (``POST /stand-in/reset`` with
``{"seed": ...}`` starts the sequence again). With ``"stream": true`` the text comes as server-sent events, a word
at a time as its share of the page's tokens is decoded, as vLLM streams. It measures how well a client feeds an
engine, nothing about recognition or real GPU speed.

For tests: ``POST /stand-in/mode`` with ``{"mode": ...}`` switches on a fault: ``context_error`` (400 as vLLM
answers an over-long prompt), ``server_error`` (500), ``unhealthy`` (health and completions 503), ``refusing``
(completions 503, health 200: one request refused by a server that is up), ``slow``
(completions answer after ``seconds``, default 3); ``GET /stand-in/last`` returns the last completion request's
body; ``POST /stand-in/text`` with ``{"text": ...}`` makes every page's output that text (markup, hostile HTML:
whatever a test needs the service to interpret), ``{"text": null}`` the sentence again; ``POST /stand-in/answers``
with ``{"answers": [...]}`` makes the next completions answer those texts, one each, in order (then the text or the
sentence again); ``GET /stand-in/request-ids``
the X-Request-Id header of the last thousand completion requests, in arrival order, and ``GET /stand-in/started``
the same in the order they began decoding. As vLLM's server does,
a request whose client hangs up is aborted (counted in ``stand_in:aborted_total``).

Like a vLLM started with the DeepSeek recipe's ``NGramPerReqLogitsProcessor``, it refuses a request whose
``vllm_xargs`` carry a non-positive ``ngram_size`` (400, vLLM's message); started with ``--unguarded``, or after
``POST /stand-in/guard`` with ``{"guarded": false}``, it ignores ``vllm_xargs`` as a vLLM without the processor does;
``{"probe_delay_s": N}`` makes it answer ``/v1/completions`` (the service's guard probe) only after N seconds.

    python -m ocr_dev.stand_in_engine --port 8100 --step-ms 20 --tokens-per-page 100 --max-batch 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BANNER = "STAND-IN ENGINE (not vLLM, no model): simulated batched decoding"
WHITELIST = {"<td>": 128821, "</td>": 128822}
PROMPT_TOKENS = 300
LENGTH_SIGMA = 0.8  # the spread of the lognormal page lengths: a title page of 100 tokens beside a table of 3,000


@dataclass
class PageLengths:
    """Page lengths with a long tail: lognormal around a median, a share running to the budget."""

    median_tokens: int
    runaway_share: float
    seed: int = 0
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.reset(self.seed)

    def reset(self, seed: int) -> None:
        self._random = random.Random(seed)

    def draw(self, max_tokens: int) -> int:
        if self._random.random() < self.runaway_share:
            return max_tokens
        drawn = self._random.lognormvariate(math.log(self.median_tokens), LENGTH_SIGMA)
        return max(1, min(max_tokens, round(drawn)))


@dataclass
class Decoding:
    """One request inside the simulated engine."""

    tokens: int
    priority: int = 0
    arrival: int = 0  # the engine's count of requests when this one came
    name: str = ""  # its X-Request-Id
    generated: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False


class SimulatedEngine:
    """Continuous batching with a fixed per-step cost: the latency shape of GPU decoding."""

    def __init__(
        self,
        step_s: float,
        tokens_per_page: int,
        max_batch: int,
        lengths: PageLengths | None = None,
        policy: str = "fcfs",
    ):
        self.step_s = step_s
        self.policy = policy
        self.arrivals = 0
        self.started: deque[str] = deque(maxlen=1000)  # names of requests in the order they began decoding
        self.tokens_per_page = tokens_per_page
        self.lengths = lengths
        self.max_batch = max_batch
        self.waiting: list[Decoding] = []
        self.running: list[Decoding] = []
        self.pages_done = 0
        self.aborted = 0
        self.max_running = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._loop, name="stand-in-steps", daemon=True).start()

    def decode(self, max_tokens: int, client_gone: Callable[[], bool], priority: int = 0, name: str = "") -> Decoding:
        """Queue a page and block until it is decoded, or aborted because its client hung up."""
        request = self.start(max_tokens, priority, name)
        while not request.done.wait(0.05):
            if client_gone():
                self.abort(request)
                break
        return request

    def start(self, max_tokens: int, priority: int = 0, name: str = "") -> Decoding:
        """Queue a page and return at once; its ``generated`` grows a token a step until ``done`` is set."""
        with self._cond:
            tokens = self.lengths.draw(max_tokens) if self.lengths else min(self.tokens_per_page, max_tokens)
            self.arrivals += 1
            request = Decoding(tokens=tokens, priority=priority, arrival=self.arrivals, name=name)
            self.waiting.append(request)
            self._cond.notify()
        return request

    def abort(self, request: Decoding | None = None) -> None:
        """Drop a request from the batch (vLLM aborts a request whose HTTP client disconnected)."""
        with self._cond:
            if request is not None:
                request.aborted = True
                self.running = [r for r in self.running if r is not request]
                self.waiting = [r for r in self.waiting if r is not request]
            self.aborted += 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self.running:
                    self._cond.wait()
                room = self.max_batch - len(self.running)
                if self.policy == "priority":  # as vLLM's priority queue: (priority, arrival), lowest first
                    self.waiting.sort(key=lambda r: (r.priority, r.arrival))
                self.running.extend(self.waiting[:room])
                self.started.extend(r.name for r in self.waiting[:room])
                del self.waiting[:room]
                self.max_running = max(self.max_running, len(self.running))
            time.sleep(self.step_s)  # one forward pass, nearly flat in batch size
            with self._cond:
                for request in self.running:
                    request.generated += 1
                finished = [r for r in self.running if r.generated >= r.tokens]
                self.running = [r for r in self.running if r.generated < r.tokens]
                self.pages_done += len(finished)
            for request in finished:
                request.done.set()

    def started_names(self) -> list[str]:
        with self._cond:
            return list(self.started)

    def metrics(self) -> str:
        with self._cond:
            running, waiting, done, most = len(self.running), len(self.waiting), self.pages_done, self.max_running
            aborted = self.aborted
        return (
            "# stand-in engine, not vLLM\n"
            f'vllm:num_requests_running{{model_name="stand-in"}} {running}.0\n'
            f'vllm:num_requests_waiting{{model_name="stand-in"}} {waiting}.0\n'
            f"stand_in:pages_done_total {done}.0\n"
            f"stand_in:max_running {most}.0\n"
            f"stand_in:aborted_total {aborted}.0\n"
        )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server does
    engine: SimulatedEngine
    model = "stand-in/deepseek-ocr-2"
    mode = "normal"
    slow_s = 3.0
    text: str | None = None  # POST /stand-in/text: every page's output, instead of the sentence
    guarded = True  # POST /stand-in/guard: validates vllm_xargs as vLLM's NGramPerReqLogitsProcessor does
    probe_delay_s = 0.0  # POST /stand-in/guard: how long /v1/completions (the guard probe) takes to answer
    answers: list[str] = []  # noqa: RUF012 - POST /stand-in/answers: the next completions' texts, in order
    last_body: dict[str, Any] = {}  # noqa: RUF012 - shared on purpose: what tests inspect
    request_ids: list[str] = []  # noqa: RUF012 - the X-Request-Id of every completion request, as vLLM logs them

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: thousands of requests

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(503 if Handler.mode == "unhealthy" else 200, {})
        elif self.path == "/v1/models":
            self._send(200, {"data": [{"id": self.model, "root": self.model, "max_model_len": 8192}]})
        elif self.path == "/stand-in/last":
            self._send(200, Handler.last_body)
        elif self.path == "/stand-in/request-ids":
            self._send(200, {"request_ids": Handler.request_ids[-1000:]})
        elif self.path == "/stand-in/started":
            self._send(200, {"request_ids": self.engine.started_names()})
        elif self.path == "/metrics":
            self._send_text(200, self.engine.metrics())
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path.startswith("/stand-in/"):
            self._control(body)
        elif self.path == "/tokenize":
            self._send(200, {"tokens": [WHITELIST[body["prompt"]]] if body.get("prompt") in WHITELIST else [1, 2]})
        elif self.path == "/v1/chat/completions" and not self._refused_by_guard(body):
            self._complete(body)
        elif self.path == "/v1/completions":
            time.sleep(Handler.probe_delay_s)  # 0 unless a test asked for a slow guard probe
            if not self._refused_by_guard(body):
                self._send(200, {"object": "text_completion", "model": self.model,
                                 "choices": [{"index": 0, "text": "stand-in", "finish_reason": "length"}],
                                 "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})  # fmt: skip
        elif self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": "not found"}})

    def _control(self, body: dict[str, Any]) -> None:
        """The tests' switches, POST /stand-in/...: see the module's docstring."""
        if self.path == "/stand-in/reset" and self.engine.lengths is not None:
            self.engine.lengths.reset(int(body.get("seed", 0)))
            self._send(200, {"seed": int(body.get("seed", 0))})
        elif self.path == "/stand-in/mode":
            Handler.mode = body.get("mode", "normal")
            Handler.slow_s = float(body.get("seconds", 3.0))
            self._send(200, {"mode": Handler.mode})
        elif self.path == "/stand-in/text":
            Handler.text = body.get("text")
            self._send(200, {"text": Handler.text})
        elif self.path == "/stand-in/answers":
            Handler.answers = [str(answer) for answer in body.get("answers", [])]
            self._send(200, {"answers": len(Handler.answers)})
        elif self.path == "/stand-in/guard":
            Handler.guarded = bool(body.get("guarded", Handler.guarded))
            Handler.probe_delay_s = float(body.get("probe_delay_s", Handler.probe_delay_s))
            self._send(200, {"guarded": Handler.guarded, "probe_delay_s": Handler.probe_delay_s})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def _refused_by_guard(self, body: dict[str, Any]) -> bool:
        """Refuse (400) what NGramPerReqLogitsProcessor.validate_params refuses, when guarded; True when refused."""
        ngram_size = (body.get("vllm_xargs") or {}).get("ngram_size")
        if not Handler.guarded or ngram_size is None or (isinstance(ngram_size, int) and ngram_size > 0):
            return False
        message = f"`ngram_size` has to be a strictly positive integer, got {ngram_size}."
        self._send(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
        return True

    def _complete(self, body: dict[str, Any]) -> None:
        Handler.last_body = body
        Handler.request_ids.append(self.headers.get("X-Request-Id", ""))
        if Handler.mode == "slow":
            deadline = time.monotonic() + Handler.slow_s
            while time.monotonic() < deadline:
                if self._client_gone():
                    self.engine.abort()
                    return
                time.sleep(0.05)
        if Handler.mode == "context_error":
            message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."
            self._send(400, {"error": {"message": message, "type": "BadRequestError"}})
            return
        if Handler.mode in ("server_error", "unhealthy", "refusing"):
            self._send(500 if Handler.mode == "server_error" else 503, {"error": {"message": "stand-in fault"}})
            return
        max_tokens = int(body.get("max_tokens") or self.engine.tokens_per_page)
        priority = self._priority(body)
        if body.get("stream"):
            self._stream(max_tokens, priority)
            return
        decoding = self.engine.decode(max_tokens, self._client_gone, priority, self.headers.get("X-Request-Id", ""))
        if decoding.aborted:
            return
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": _text(decoding)},
                        "finish_reason": self._finish_reason(decoding, max_tokens),
                    }
                ],
                "usage": _usage(decoding),
                "stand_in": True,
            },
        )

    def _priority(self, body: dict[str, Any]) -> int:
        """The request's priority as vLLM's server reads it: X-Vllm-Priority if an integer, else the body's."""
        header = self.headers.get("X-Vllm-Priority")
        if header is not None:
            with contextlib.suppress(ValueError):
                return int(header)
        return int(body.get("priority") or 0)

    def _stream(self, max_tokens: int, priority: int = 0) -> None:
        """Answer as vLLM does with ``stream: true``: the text in pieces as its tokens are decoded, then usage."""
        decoding = self.engine.start(max_tokens, priority, self.headers.get("X-Request-Id", ""))
        pieces = re.findall(r"\S+\s*", _text(decoding))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._send_pieces(decoding, pieces, max_tokens)
        except OSError:  # the client hung up while a piece was written
            self.engine.abort(decoding)

    def _send_pieces(self, decoding: Decoding, pieces: list[str], max_tokens: int) -> None:
        sent = 0
        while sent < len(pieces):
            done = decoding.done.wait(0.01)
            due = len(pieces) if done else len(pieces) * decoding.generated // max(1, decoding.tokens)
            if self._client_gone():
                self.engine.abort(decoding)
                return
            for piece in pieces[sent:due]:
                self._event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]})
            sent = max(sent, due)
        finish = self._finish_reason(decoding, max_tokens)
        last = {"index": 0, "delta": {}, "finish_reason": finish}
        self._event({"object": "chat.completion.chunk", "choices": [last]})
        self._event({"object": "chat.completion.chunk", "choices": [], "usage": _usage(decoding)})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        """One piece of a chunked body (empty: the end), sent at once."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _finish_reason(self, decoding: Decoding, max_tokens: int) -> str:
        if self.engine.lengths is not None:
            return "length" if decoding.tokens >= max_tokens else "stop"
        return "length" if decoding.tokens < self.engine.tokens_per_page else "stop"

    def _client_gone(self) -> bool:
        """True when the client closed its connection (readable, and a peek reads nothing)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _send_text(self, status: int, text: str) -> None:
        self._send_bytes(status, text.encode(), "text/plain; version=0.0.4")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _text(decoding: Decoding) -> str:
    if Handler.answers:
        return Handler.answers.pop(0)
    if Handler.text is not None:
        return Handler.text
    return f"stand-in page text ({decoding.tokens} tokens)"


def _usage(decoding: Decoding) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": decoding.tokens,
        "total_tokens": PROMPT_TOKENS + decoding.tokens,
    }


class StandInServer(ThreadingHTTPServer):
    """A thread a connection, as before; a listen backlog like vLLM's server (uvicorn: 2048), not the default 5,
    which resets connections when dozens of clients connect at once."""

    daemon_threads = True
    request_queue_size = 2048


def serve(
    port: int,
    step_ms: float,
    tokens_per_page: int,
    max_batch: int,
    *,
    host: str = "127.0.0.1",
    lengths: PageLengths | None = None,
    policy: str = "fcfs",
) -> None:
    """Run the stand-in until killed."""
    Handler.engine = SimulatedEngine(step_ms / 1000, tokens_per_page, max_batch, lengths, policy)
    server = StandInServer((host, port), Handler)
    if lengths is None:
        pages_per_s = max_batch / (tokens_per_page * step_ms / 1000)
        shape = f"{tokens_per_page} tokens a page, at most {pages_per_s:.1f} pages/s"
    else:
        shape = f"page lengths lognormal around {lengths.median_tokens} tokens, {lengths.runaway_share:.0%} runaways"
    print(f"{BANNER}: step {step_ms:g} ms flat up to {max_batch} requests ({policy}), {shape}; http://{host}:{port}",
          flush=True)  # fmt: skip
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=BANNER)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--step-ms", type=float, default=20.0, help="time of one decoding step")
    parser.add_argument("--tokens-per-page", type=int, default=100)
    parser.add_argument("--max-batch", type=int, default=256, help="requests decoded together at most")
    parser.add_argument("--median-tokens", type=int, default=0, help="long-tailed page lengths around this median")
    parser.add_argument("--runaway-share", type=float, default=0.0, help="with --median-tokens: share at max_tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs",
                        help="the order waiting requests start in, as vLLM's flag")  # fmt: skip
    parser.add_argument("--unguarded", action="store_true", help="ignore vllm_xargs, as vLLM without the guard does")
    args = parser.parse_args()
    Handler.guarded = not args.unguarded
    lengths = PageLengths(args.median_tokens, args.runaway_share, args.seed) if args.median_tokens else None
    serve(args.port, args.step_ms, args.tokens_per_page, args.max_batch, lengths=lengths, policy=args.scheduling_policy)


if __name__ == "__main__":
    main()
