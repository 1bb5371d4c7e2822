"""Service settings: read from the environment once, typed and validated at start-up."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import secrets
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

ENGINE_CHOICES = ("auto", "transformers", "vllm", "remote")
DEVICE_PREFIXES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
ENGINE_IMAGE_FORMATS = ("auto", "jpeg", "png")  # ocr_api.preparation.data_url encodes them
PAGE_SIZES = ("full", "fit")  # ocr_api.service.OcrService._fit
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MIN_API_KEY_CHARS = 16

# Pillow refuses images above twice this count as decompression bombs; our limit must stay below it.
PILLOW_BOMB_LIMIT = Image.MAX_IMAGE_PIXELS or 89_478_485


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


def setting(
    env: str,
    default: Any,
    help: str,
    secret: bool = False,
    *,
    within: tuple[float, float] | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[str, Any], None] | None = None,
) -> Any:
    """Declare a settings field read from the environment variable ``env``, with what it may be: a number
    ``within`` (low, high), one of ``choices``, or whatever ``check(env, value)`` accepts (it raises ConfigError).
    Secrets stay out of repr()."""
    rules = {"within": within, "choices": choices, "check": check}
    return field(default=default, repr=not secret, metadata={"env": env, "help": help, **rules})


# What a setting may be, beyond a range or a list of choices (see ``setting``): each raises ConfigError naming it.


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _check_engine_urls(name: str, raw: str) -> None:
    urls = [url.rstrip("/") for url in _split_list(raw)]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name}: every server must start with http:// or https://; got {url!r}")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{name} names the same server twice")


def _check_torch_device(name: str, value: str) -> None:
    if value.split(":", maxsplit=1)[0] not in DEVICE_PREFIXES:
        raise ConfigError(f"{name} must be one of auto, cpu, cuda, cuda:N, mps; got {value!r}")


def _check_redis_url(name: str, value: str) -> None:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL")


def _check_api_keys(name: str, raw: str) -> None:
    for key in _split_list(raw):
        if len(key) < MIN_API_KEY_CHARS:
            raise ConfigError(
                f"{name}: every key needs {MIN_API_KEY_CHARS} characters or more; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )


def _check_storage_uri(name: str, value: str) -> None:
    if "://" not in value:
        raise ConfigError(f"{name} must be a URI such as memory:// or redis://host:6379/0")


def _check_prompt(name: str, value: str) -> None:
    if "<image>" not in value:
        raise ConfigError(f"{name} must contain the <image> placeholder")


def _check_rate_limit(name: str, raw: str) -> None:
    if not raw:
        return
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} must look like 60/minute or 10/second;500/hour; got {raw!r}") from None


def _check_host(name: str, value: str) -> None:
    """An address to bind to: an IP address, or a name this machine resolves (localhost, its own hostname)."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(value, None)
    except (OSError, UnicodeError):
        raise ConfigError(f"{name}: {value!r} is neither an IP address nor a name this machine resolves") from None


def _check_networks(name: str, raw: str) -> None:
    for network in _split_list(raw):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {network!r} is not a network such as 10.0.0.0/8") from None


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; see docs/CONFIGURATION.md (checked against this class by the tests)."""

    model_name: str = setting(
        "DEEPSEEK_MODEL_NAME",
        "",
        "Hub id or local directory of the checkpoint. Empty: the engine's default "
        "(transformers: deepseek-community/DeepSeek-OCR-2).",
    )
    engine: str = setting(
        "OCR_ENGINE",
        "auto",
        "auto, transformers, vllm or remote. auto: remote when OCR_ENGINE_URL is set, else vllm where CUDA and "
        "vLLM are present, else transformers.",
        choices=ENGINE_CHOICES,
    )
    engine_url: str = setting(
        "OCR_ENGINE_URL",
        "",
        "remote engine: base URL of an OpenAI-compatible vLLM server, e.g. http://127.0.0.1:8000, or several, "
        "comma-separated: each page goes to the healthy one with the fewest pages in flight. "
        "start_production.sh sets it to the server it starts unless it is set already.",
        check=_check_engine_urls,
    )
    engine_api_key: str = setting(
        "OCR_ENGINE_API_KEY",
        "",
        "remote engine: bearer token the vLLM server expects (its --api-key), if any.",
        secret=True,
    )
    engine_timeout_s: float = setting(
        "ENGINE_TIMEOUT_S",
        240.0,
        "Seconds one page may take at the engine, from being sent to its answer, before the request is aborted "
        "with 504.",
        within=(1, 86_400),
    )
    client_timeout_s: float = setting(
        "CLIENT_TIMEOUT_S",
        30.0,
        "start_production.sh's front server (nginx): seconds a client may take to send its headers, and the longest "
        "pause while it sends its body or reads the answer. Slower clients are cut off before they reach a worker.",
        within=(1, 3600),
    )
    engine_connections: int = setting(
        "ENGINE_CONNECTIONS",
        64,
        "remote engine: connections one service process keeps to the engine; raised to MAX_PAGES_IN_FLIGHT when "
        "below it, as every page at the engine is one request on its own connection.",
        within=(1, 4096),
    )
    guard_recheck_s: float = setting(
        "GUARD_RECHECK_S",
        60.0,
        "remote engine: seconds between checks that a healthy server still applies the repetition guard (each server "
        "is also checked when it first answers and whenever it comes back). A server found without it gets no pages "
        "until a check finds it again.",
        within=(1, 86_400),
    )
    gpu_memory_utilization: float = setting(
        "GPU_MEMORY_UTILIZATION",
        0.9,
        "vLLM engine: share of each GPU's memory vLLM may take for weights, activations and its KV cache "
        "(--gpu-memory-utilization). Lower it when something else shares the GPU.",
        within=(0.05, 1.0),
    )
    tensor_parallel_size: int = setting(
        "TENSOR_PARALLEL_SIZE",
        1,
        "vLLM engine: GPUs one copy of the model is split across (--tensor-parallel-size). DeepSeek-OCR-2 fits one "
        "GPU; use DATA_PARALLEL_SIZE for more pages per second.",
        within=(1, 64),
    )
    data_parallel_size: int = setting(
        "DATA_PARALLEL_SIZE",
        1,
        "vLLM engine: copies of the model behind one vLLM server, one per GPU (--data-parallel-size); the server "
        "spreads pages over them. GPUs used: TENSOR_PARALLEL_SIZE x DATA_PARALLEL_SIZE.",
        within=(1, 64),
    )
    vllm_extra_args: str = setting(
        "VLLM_EXTRA_ARGS",
        "",
        "vLLM engine flags in `vllm serve` form, for the in-process engine and the sidecar alike, e.g. "
        "--tensor-parallel-size 2.",
    )
    secret_key: str = setting("SECRET_KEY", "", "Flask secret key. Empty: a random key per process.", secret=True)
    api_keys: str = setting(
        "API_KEYS",
        "",
        "Comma-separated API keys (16 characters or more each). When set, every route but /health, /ready and the "
        "web page's (/, /static, /docs, /openapi.json) needs one, sent as `Authorization: Bearer <key>` or "
        "`X-API-Key: <key>`. Empty: no keys.",
        secret=True,
        check=_check_api_keys,
    )
    cors_origins: str = setting(
        "CORS_ORIGINS",
        "",
        "Comma-separated origins whose browser pages may call the API (https://app.example.com), or `*`. "
        "Empty: CORS off (browsers refuse cross-origin calls).",
    )
    rate_limit: str = setting(
        "RATE_LIMIT",
        "",
        "Requests each client may make that ask for work (/ocr, /ocr/batch, /v1/..., POST and DELETE /jobs, a job's "
        "pictures: one budget for all of them), in Flask-Limiter notation such as `60/minute;1000/day`. Reading a "
        "job's progress is not counted. A client is its API key, else its address. Empty: no limit.",
        check=_check_rate_limit,
    )
    rate_limit_storage_uri: str = setting(
        "RATE_LIMIT_STORAGE_URI",
        "memory://",
        "Where rate-limit counters live. `memory://`: in each worker process, so N gunicorn workers let up to N "
        "times the limit through; `redis://host:6379/0`: shared by every worker and host.",
        secret=True,  # may carry a password
        check=_check_storage_uri,
    )
    trusted_proxies: int = setting(
        "TRUSTED_PROXIES",
        0,
        "Reverse proxies in front of the service whose X-Forwarded-For names the client (for rate limits). "
        "0: the peer address is the client.",
        within=(0, 10),
    )
    max_pages_in_flight: int = setting(
        "MAX_PAGES_IN_FLIGHT",
        64,
        "Admission bound of each service process: pages at the engine and not yet answered. A request that "
        "cannot send its first page gets 503 `overloaded` with Retry-After at once; one that has started goes on "
        "with the slots it holds. Also caps ENGINE_BATCH_PAGES.",
        within=(1, 100_000),
    )
    drain_file: str = setting(
        "DRAIN_FILE",
        "",
        "While this file exists, new OCR requests get 503 `shutting_down` and /ready answers 503; requests "
        "already running finish. start_production.sh creates it on SIGTERM. Empty: no drain.",
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL.", choices=LOG_LEVELS)
    log_format: str = setting(
        "LOG_FORMAT",
        "text",
        "text: one line per record, `time level logger [request id]: message`; json: one JSON object per line "
        "(time, level, logger, message, request_id, and each request's summary fields). See docs/DEPLOYMENT.md.",
        choices=LOG_FORMATS,
    )
    host: str = setting("HOST", "0.0.0.0", "Address `python app.py` and the start scripts bind to.", check=_check_host)
    port: int = setting("PORT", 5000, "Port `python app.py` and the start scripts listen on.", within=(1, 65535))
    max_upload_mb: int = setting(
        "MAX_UPLOAD_MB", 16, "Largest request body in MiB; larger ones get 413.", within=(1, 4096)
    )
    max_batch_files: int = setting("MAX_BATCH_FILES", 16, "Most files in one /ocr/batch request.", within=(1, 1000))
    max_image_pixels: int = setting(
        "MAX_IMAGE_PIXELS",
        40_000_000,
        f"Largest decoded image (width x height), checked before decoding; at most {PILLOW_BOMB_LIMIT}.",
        within=(1, PILLOW_BOMB_LIMIT),
    )
    prepare_timeout_s: float = setting(
        "PREPARE_TIMEOUT_S",
        30.0,
        "Seconds preparing one upload, or one PDF page, may take (decoding, checks, rendering) before it is refused "
        "with 422 `preparation_timeout`; checked between steps, as a decoder cannot be interrupted.",
        within=(0.1, 3600),
    )
    min_image_side: int = setting(
        "MIN_IMAGE_SIDE", 8, "Smallest width or height in pixels that is accepted.", within=(1, 10_000)
    )
    max_aspect_ratio: float = setting(
        "MAX_ASPECT_RATIO", 64.0, "Longest side over shortest side, at most.", within=(1, 1000)
    )
    upload_folder: str = setting("UPLOAD_FOLDER", "uploads", "Where uploads are stored while they are processed.")
    keep_uploads: bool = setting("KEEP_UPLOADS", False, "Keep stored uploads after the request (for debugging).")
    default_prompt: str = setting(
        "DEFAULT_PROMPT",
        "<image>\nFree OCR.",
        "Prompt used when a request names neither prompt nor task.",
        check=_check_prompt,
    )
    max_prompt_chars: int = setting(
        "MAX_PROMPT_CHARS", 2000, "Longest prompt accepted, in characters.", within=(16, 1_000_000)
    )
    max_tokens: int = setting(
        "MAX_TOKENS", 8192, "Most tokens generated per image; also bounded by the context the prompt leaves."
    )
    max_model_len: int = setting(
        "MAX_MODEL_LEN", 8192, "Context length (prompt, image and output tokens).", within=(256, 1_000_000)
    )
    ngram_size: int = setting(
        "NGRAM_SIZE",
        0,
        "No-repeat n-gram guard size. 0: the model's default (docs/CONFIGURATION.md).",
        within=(0, 1000),
    )
    ngram_window: int = setting(
        "NGRAM_WINDOW", 0, "Window of the n-gram guard in tokens. 0: the model's default.", within=(0, 100_000)
    )
    allow_unguarded_engine: bool = setting(
        "ALLOW_UNGUARDED_ENGINE",
        False,
        "DANGEROUS. Use an engine whose start-up check finds no repetition guard (a vLLM started without the guard's "
        "logits processor for its model runner) instead of refusing it: pages can "
        "then loop until the token limit. Off: such an engine is refused (in-process: the start fails; remote: "
        "/ready answers 503 engine_unguarded).",
    )
    runaway_retries: int = setting(
        "RUNAWAY_RETRIES",
        1,
        "Times a page that ran away (repetition loop, or the default token budget exhausted) is run again, "
        "each time with a stronger n-gram guard. 0: never.",
        within=(0, 3),
    )
    pdf_dpi: int = setting(
        "PDF_DPI", 144, "Resolution PDF pages are rendered at (the model authors use 144).", within=(36, 600)
    )
    max_pdf_pages: int = setting(
        "MAX_PDF_PAGES",
        100,
        "Most pages processed from one PDF per request; select others with pages=.",
        within=(1, 100_000),
    )
    engine_batch_pages: int = setting(
        "ENGINE_BATCH_PAGES",
        32,
        "Pages one request keeps at the engine at once (its window): the next is sent the moment one is answered. "
        "Also the transformers engine's largest batch. Memory does not grow with it: a page at the engine is held "
        "until the few hundred KB of its request are sent, and only a few pages are rendered ahead.",
        within=(1, 4096),
    )
    engine_image_format: str = setting(
        "ENGINE_IMAGE_FORMAT",
        "auto",
        "How the remote engine is sent each page: auto (lossless PNG up to 1 megapixel; JPEG quality 95 up to 3.6 "
        "megapixels, where the model's processor enlarges the page for its tiles; JPEG quality 90 above, where it "
        "shrinks it: at least 45 dB on every view the model sees), jpeg (quality 90 whatever the size) or png "
        "(lossless, compression level 1: several times the bytes and the CPU). See docs/QUALITY.md.",
        choices=ENGINE_IMAGE_FORMATS,
    )
    page_size: str = setting(
        "PAGE_SIZE",
        "full",
        "The size each page is made at for the engine: full (an upload as decoded and turned upright, a PDF page "
        "rendered at PDF_DPI, as the model authors' pipeline gives it) or fit (shrunk, box filter, to the smallest "
        "size from which the model's processor makes the same tile grid: fewer bytes and pixels held, but the "
        "model sees a page resampled twice, 27-38 dB on its views). See docs/QUALITY.md.",
        choices=PAGE_SIZES,
    )
    jobs_dir: str = setting(
        "JOBS_DIR",
        "jobs",
        "Where document jobs keep their uploads and, without REDIS_URL, their queue and state (one SQLite file, "
        "WAL). With REDIS_URL, a directory every API node and consumer shares.",
    )
    redis_url: str = setting(
        "REDIS_URL",
        "",
        "Redis for document jobs (redis://host:6379/0): their queue and state, shared by every API node and "
        "consumer. Empty: SQLite under JOBS_DIR, for one machine.",
        secret=True,  # may carry a password
        check=_check_redis_url,
    )
    job_max_upload_mb: int = setting(
        "JOB_MAX_UPLOAD_MB", 512, "Largest POST /jobs body in MiB; larger ones get 413.", within=(1, 65_536)
    )
    job_max_pages: int = setting(
        "JOB_MAX_PAGES", 5000, "Most pages one job processes, over all its files.", within=(1, 1_000_000)
    )
    job_max_files: int = setting(
        "JOB_MAX_FILES", 1000, "Most files in one job (a folder of scans).", within=(1, 100_000)
    )
    job_ttl: int = setting(
        "JOB_TTL",
        86_400,
        "Seconds a finished job (and its uploads and results) is kept; it is removed within the minute after (the "
        "sweep for expired jobs runs every 60 s).",
        within=(60, 365 * 86_400),
    )
    job_pages_in_flight: int = setting(
        "JOB_PAGES_IN_FLIGHT",
        32,
        "Pages all the jobs of one process keep at the engine at once, taken from MAX_PAGES_IN_FLIGHT where the "
        "consumer shares a process with requests (start_server.sh), so that synchronous requests keep the rest.",
        within=(1, 100_000),
    )
    job_workers: int = setting(
        "JOB_WORKERS",
        4,
        "Jobs one consumer holds open at once. They share JOB_PAGES_IN_FLIGHT fairly: by key, then by job. Each "
        "holds its open files and up to 4 rendered pages (36 M pixels at most). When more jobs wait, "
        "the one longest at work gives its turn (after JOB_TURN_S) and is queued again, so a new job starts "
        "within about a page's time.",
        within=(1, 64),
    )
    job_turn_s: float = setting(
        "JOB_TURN_S",
        10.0,
        "Least time a job runs before it gives its place to a job waiting in the queue (every consumer's place "
        "taken); its pages at the engine finish first, nothing is lost.",
        within=(0.0, 86_400.0),
    )
    job_priority_delay_s: float = setting(
        "JOB_PRIORITY_DELAY_S",
        30.0,
        "At the engine, a job's page gives way to interactive pages (/ocr, /ocr/batch, /v1/chat/completions) sent "
        "up to this many seconds after it, then goes before newer ones, so that no job page waits forever. "
        "Needs vLLM's --scheduling-policy priority (the project's engine starts with it).",
        within=(0.0, 86_400.0),
    )
    key_max_jobs: int = setting(
        "KEY_MAX_JOBS",
        1000,
        "Most unfinished (queued or running) jobs of one API key (of everyone, without keys); beyond it POST /jobs "
        "gets 429 `too_many_jobs` with Retry-After.",
        within=(1, 10_000_000),
    )
    key_max_job_pages: int = setting(
        "KEY_MAX_JOB_PAGES",
        200_000,
        "Most pages one API key's unfinished jobs may hold (of everyone, without keys); beyond it POST /jobs gets "
        "429 `too_many_job_pages` with Retry-After.",
        within=(1, 1_000_000_000),
    )
    job_engine_retries: int = setting(
        "JOB_ENGINE_RETRIES",
        3,
        "Times a job whose engine is unavailable or times out is run again (from the pages not yet done), "
        "JOB_RETRY_DELAY_S apart, before its remaining pages fail with the engine's error.",
        within=(0, 100),
    )
    job_retry_delay_s: int = setting(
        "JOB_RETRY_DELAY_S", 30, "Seconds between a job's runs after an engine failure.", within=(0, 86_400)
    )
    callback_secret: str = setting(
        "CALLBACK_SECRET",
        "",
        "Key of the HMAC-SHA256 signature on job callbacks (X-OCR-Signature). Empty: jobs cannot have a callback_url.",
        secret=True,
    )
    callback_allow_private: bool = setting(
        "CALLBACK_ALLOW_PRIVATE",
        False,
        "Let callback_url name loopback, private and link-local addresses (a receiver on the same network). Off: "
        "only public addresses, checked after DNS resolution.",
    )
    image_url_fetch: bool = setting(
        "IMAGE_URL_FETCH",
        False,
        "Let /v1/chat/completions fetch an image_url given as http(s):// (the service makes the request). Off: only "
        "data: URLs. Only public addresses are fetched, checked after DNS resolution and again on every redirect.",
    )
    image_url_allowed_networks: str = setting(
        "IMAGE_URL_ALLOWED_NETWORKS",
        "",
        "With IMAGE_URL_FETCH: networks inside yours that images may be fetched from although they are not public, "
        "comma-separated (10.20.0.0/16,127.0.0.1/32). Empty: public addresses only. Keep cloud metadata addresses "
        "(169.254.169.254) out of them.",
        check=_check_networks,
    )
    image_url_timeout_s: float = setting(
        "IMAGE_URL_TIMEOUT_S",
        10.0,
        "With IMAGE_URL_FETCH: seconds fetching one image may take in all, redirects included (its size is bounded "
        "by MAX_UPLOAD_MB).",
        within=(0.1, 600),
    )
    torch_device: str = setting(
        "TORCH_DEVICE", "auto", "transformers engine: auto, cpu, cuda, cuda:N or mps.", check=_check_torch_device
    )
    torch_dtype: str = setting(
        "TORCH_DTYPE",
        "auto",
        "transformers engine: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16.",
        choices=DTYPE_CHOICES,
    )

    def __post_init__(self) -> None:
        if not self.secret_key:
            object.__setattr__(self, "secret_key", secrets.token_hex(32))
        object.__setattr__(self, "log_level", self.log_level.upper())
        self._validate()

    def _validate(self) -> None:
        """Each setting against what it was declared to be, then the rules across settings."""
        for spec in dataclasses.fields(self):
            env, value, rules = spec.metadata["env"], getattr(self, spec.name), spec.metadata
            if rules["within"] is not None:
                _within(env, value, *rules["within"])
            if rules["choices"] is not None:
                _choice(env, value, rules["choices"])
            if rules["check"] is not None:
                rules["check"](env, value)
        if self.engine == "remote" and not self.engine_url:
            raise ConfigError("OCR_ENGINE=remote needs OCR_ENGINE_URL, the vLLM server's base URL")
        if self.engine == "remote" and not self.engine_urls:
            raise ConfigError("OCR_ENGINE_URL names no server; give one base URL or several, comma-separated")
        _within("MAX_TOKENS", self.max_tokens, 1, self.max_model_len)

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The accepted API keys; empty when keys are off."""
        return _split_list(self.api_keys)

    @property
    def engine_urls(self) -> tuple[str, ...]:
        """The vLLM servers of the remote engine, without trailing slashes; empty when none is set."""
        return tuple(url.rstrip("/") for url in _split_list(self.engine_url))

    @property
    def image_url_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The non-public networks images may be fetched from (IMAGE_URL_ALLOWED_NETWORKS)."""
        return tuple(ipaddress.ip_network(item, strict=False) for item in _split_list(self.image_url_allowed_networks))

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """The origins CORS answers for; empty when CORS is off."""
        return _split_list(self.cors_origins)

    @property
    def max_content_length(self) -> int:
        """Largest request body in bytes."""
        return self.max_upload_mb * 1024 * 1024

    @property
    def longest_request_s(self) -> int:
        """The longest a synchronous request may legitimately run: every engine call a full batch needs, each up
        to ENGINE_TIMEOUT_S, for the first attempt and each runaway retry. The front server waits that long."""
        pages = self.max_batch_files * self.max_pdf_pages
        per_call = min(self.engine_batch_pages, self.max_pages_in_flight)
        calls = -(-pages // per_call) * (1 + self.runaway_retries)
        return math.ceil(calls * self.engine_timeout_s) + 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset or empty ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = environ.get(spec.metadata["env"], "").strip()
            if raw:
                values[spec.name] = _parse(spec.metadata["env"], raw, type(spec.default))
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def documented_settings() -> list[tuple[str, Any, str]]:
    """Return (variable, default, help) for every setting, in declaration order."""
    return [(f.metadata["env"], f.default, f.metadata["help"]) for f in dataclasses.fields(Settings)]


def settings_table() -> str:
    """Render the settings as the Markdown table that docs/CONFIGURATION.md embeds (tests compare the two)."""
    rows = ["| Variable | Default | Allowed | Meaning |", "|---|---|---|---|"]
    for spec in dataclasses.fields(Settings):
        default = spec.default
        if isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif default == "":
            shown = "(empty)"
        else:
            shown = f"`{str(default).encode('unicode_escape').decode()}`"
        rows.append(f"| `{spec.metadata['env']}` | {shown} | {_allowed(spec.metadata)} | {spec.metadata['help']} |")
    return "\n".join(rows)


def _allowed(rules: Mapping[str, Any]) -> str:
    if rules["within"] is not None:
        low, high = (f"{bound:,}" if float(bound).is_integer() else f"{bound:g}" for bound in rules["within"])
        return f"{low} to {high}".replace(",", "\u2009")  # thin spaces group the digits
    if rules["choices"] is not None:
        return ", ".join(f"`{choice}`" for choice in rules["choices"])
    return ""


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false; got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a{'n integer' if kind is int else ' number'}; got {raw!r}") from None
    # A literal backslash-n in an env file means a newline, as it does in prompts.
    return raw.replace("\\n", "\n") if name == "DEFAULT_PROMPT" else raw


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _within(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}; got {value}")


DOCS_TABLE_START, DOCS_TABLE_END = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"


def update_docs(path: str = "docs/CONFIGURATION.md") -> None:
    """Rewrite the settings table embedded in the configuration doc."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    head, rest = text.split(DOCS_TABLE_START, 1)
    tail = rest.split(DOCS_TABLE_END, 1)[1]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{head}{DOCS_TABLE_START}{settings_table()}{DOCS_TABLE_END}{tail}")


def main(argv: list[str]) -> int:
    """`--check`: validate the environment's settings (one line, exit 1, when bad); `--update-docs`; else the table."""
    parser = argparse.ArgumentParser(
        prog="python -m config",
        description="The service's settings, read from the environment (docs/CONFIGURATION.md).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="validate this environment's settings: one line and "
                        "status 1 when one is wrong")  # fmt: skip
    action.add_argument("--update-docs", action="store_true", help="rewrite docs/CONFIGURATION.md's table")
    action.add_argument("--table", action="store_true", help="print every setting as a markdown table (the default)")
    args = parser.parse_args(argv)
    if args.check:
        try:
            Settings.from_env()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.update_docs:
        update_docs()
    else:
        print(settings_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
