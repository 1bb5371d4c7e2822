"""Every JSON body the service answers, and the chat completion it reads, declared once as typed dicts.

The serializers (``results.py``, the jobs' views, the views' probes, ``http/chat.py``) are typed with these; the
OpenAPI components are generated from them (``http/openapi.py``, with pydantic's schema generator), and the tests
validate real answers against those components, closed: a field the code adds without a word here fails them.

Why typed dicts rather than pydantic models: the bodies are built as plain dicts on the hot path (a 5,000-page job's
pages), and a typed dict describes them without building a second object per page; pydantic validates them in the
tests (``tests/test_shapes.py``) and writes their JSON Schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, Required, TypeAliasType, TypedDict

CLOSED = ConfigDict(extra="forbid")  # a field not declared here fails validation

JobStatus = Literal["queued", "running", "succeeded", "partial", "failed", "cancelled"]
PageStatus = Literal["ok", "truncated", "repetitive", "failed"]
GuardState = Literal["verified", "missing", "unchecked"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
PAGE_STATUSES: tuple[str, ...] = get_args(PageStatus)
# What chat clients send that changes nothing here (decoding is greedy and deterministic); their types are checked.
SAMPLING_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")
# What a queued job waits for: a consumer's place, its turn again (it gave its place to a waiting job), the engine.
JobWaitingFor = Literal["consumer", "turn", "engine"]

Box = Annotated[list[int], Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels")]


def _text(description: str) -> Any:
    return Annotated[str, Field(description=description)]


# --- errors


@with_config(CLOSED)
class Error(TypedDict):
    """Every error of the native routes."""

    error: str
    code: str


@with_config(CLOSED)
class OpenAIErrorDetail(TypedDict):
    message: str
    type: str
    code: str
    param: str | None


@with_config(CLOSED)
class OpenAIError(TypedDict):
    """Every error under /v1/, in OpenAI's shape."""

    error: OpenAIErrorDetail


# --- a page's reading


@with_config(CLOSED)
class Usage(TypedDict, total=False):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@with_config(CLOSED)
class Guard(TypedDict, total=False):
    """The repetition guard the page was decoded with."""

    ngram_size: int
    window_size: int
    whitelist_token_ids: list[int]


@with_config(CLOSED)
class Block(TypedDict):
    label: str
    boxes: list[Box]
    text: str
    figure: NotRequired[int]


@with_config(CLOSED)
class Figure(TypedDict):
    figure: int
    box: Box
    image: NotRequired[_text("PNG data URL (/ocr)")]
    image_url: NotRequired[_text("A job's page: where the crop is made when fetched")]


@with_config(CLOSED)
class PageFields(TypedDict, total=False):
    """A page's own fields: an image's result holds them, and each entry of a document's ``pages``."""

    status: Annotated[PageStatus, Field(description="ok, truncated (the budget ran out), repetitive (a loop the "
                                                    "guard stopped), or failed")]  # fmt: skip
    text: _text("The page's text without the layout markup.")
    markdown: _text("The page as markdown: headings, tables, figure references.")
    blocks: list[Block]
    raw_output: _text("The model's output as it wrote it, markup included.")
    finish_reason: _text("stop, or length when the budget ran out")
    truncated: bool
    repetition_loop: bool
    attempts: int
    usage: Usage
    max_tokens: int
    guard: Guard
    figures: list[Figure]
    annotated_image: _text("The page with the boxes drawn (annotate=true), a PNG data URL (/ocr).")
    annotated_image_url: _text("A job's page: where its annotated page is made when fetched (annotate=true).")
    error: _text("Why the page failed (status failed).")
    code: str


@with_config(CLOSED)
class DocumentPage(PageFields, total=False):
    """A document's page: its fields, its number and its size in pixels (boxes are in these)."""

    page: Required[int]
    status: Required[PageStatus]  # type: ignore[misc]
    width: int
    height: int


# --- a file's result


@with_config(CLOSED)
class ResultHead(TypedDict, total=False):
    text: Required[_text("All the text; a document's pages joined with `\\n\\n<--- Page Split --->\\n\\n`.")]
    image_path: Required[_text("Where the service stored the upload.")]
    prompt: Required[_text("The prompt the model was given.")]
    task: str | None
    filename: str


@with_config(CLOSED)
class ResultTail(TypedDict, total=False):
    engine: str
    model: str
    timing: Annotated[dict[str, float], Field(description="milliseconds by stage")]


@with_config(CLOSED)
class ImageInfo(TypedDict, total=False):
    width: int
    height: int
    format: str
    mode: str
    frames: int


@with_config(CLOSED)
class ImageResult(ResultHead, PageFields, ResultTail, total=False):
    """An image's result: one page's fields at the top level, and what the image was."""

    status: Required[PageStatus]  # type: ignore[misc]
    image: Required[ImageInfo]


@with_config(CLOSED)
class DocumentResult(ResultHead, ResultTail, total=False):
    """A document's result: its pages, and their sums."""

    status: Required[  # type: ignore[misc]
        Annotated[
            PageStatus,
            Field(
                description="The worst of its pages' statuses: failed, then repetitive, then "
                "truncated, then ok (pages_failed, pages_repetitive, pages_truncated count them)."
            ),
        ]
    ]
    finish_reason: str
    truncated: bool
    pages_total: int
    pages_failed: int
    pages_truncated: int
    pages_repetitive: int
    pages_retried: int
    usage: Usage
    guard: Guard | None
    markdown: str
    document: Required[
        Annotated[
            dict[str, Any],
            Field(
                description="format, page_count, dpi; repaired (PyMuPDF repaired the file) and missing_pages (pages "
                "the file lost, failed with page_missing)"
            ),
        ]
    ]
    pages: Required[list[DocumentPage]]


OcrResult = TypeAliasType("OcrResult", ImageResult | DocumentResult)


@with_config(CLOSED)
class FileFailure(TypedDict):
    """A file of a batch that could not be read: the error it would have had alone."""

    filename: NotRequired[str]
    status: Literal["failed"]
    http_status: Annotated[int, Field(description="The status the file would have had alone (/ocr).")]
    text: NotRequired[Literal[""]]
    error: str
    code: str


@with_config(CLOSED)
class BatchResult(TypedDict):
    """One result or error per file, in upload order."""

    results: list[OcrResult | FileFailure]
    total: int
    succeeded: int
    failed: int


# --- probes


@with_config(CLOSED)
class GuardCheck(TypedDict):
    state: GuardState
    check: str


@with_config(CLOSED)
class GuardStatus(TypedDict):
    required: bool
    checks: Annotated[
        dict[str, GuardCheck],
        Field(description="Per vLLM server URL, or in-process: the start-up check of the repetition guard."),
    ]


@with_config(CLOSED)
class EngineState(TypedDict, total=False):
    """What the service says of its engine (``OcrService.describe``)."""

    engine: Required[str]
    model: str
    model_loaded: bool
    engine_state: str
    ready: Required[bool]
    draining: bool
    pages_in_flight: int
    max_pages_in_flight: int
    guard: GuardStatus


@with_config(CLOSED)
class Health(EngineState, total=False):
    status: Required[str]
    service: str
    timestamp: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


@with_config(CLOSED)
class Ready(EngineState, total=False):
    status: Required[str]


# --- document jobs


@with_config(CLOSED)
class JobProgress(TypedDict, total=False):
    pages_done: int
    pages_total: int
    fraction: float
    pages: dict[str, int]
    pages_retried: int
    pages_per_second: float | None
    seconds_left: float | None


@with_config(CLOSED)
class JobUrls(TypedDict, total=False):
    self: str
    result: str
    result_pdf: str  # a job made with output=pdf: its searchable PDF, once finished
    pages: str
    events: str


@with_config(CLOSED)
class Job(TypedDict, total=False):
    """A job's view: GET /jobs/<id>, the answer to POST /jobs, and its callback's body."""

    id: Required[str]
    status: Required[JobStatus]
    pages_total: Required[int]
    files_total: int
    progress: Required[JobProgress]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    runs: int
    queue_position: int | None
    waiting_for: JobWaitingFor
    error: dict[str, Any]
    callback: dict[str, Any]
    urls: Required[JobUrls]


@with_config(CLOSED)
class JobPage(PageFields, total=False):
    """A job's finished page: its fields, where it is in the job, and its size."""

    index: Required[int]
    file: Required[int]
    filename: str
    page: int | None
    status: Required[PageStatus]  # type: ignore[misc]
    width: int
    height: int


@with_config(CLOSED)
class JobPages(TypedDict, total=False):
    """GET /jobs/<id>/pages."""

    id: Required[str]
    status: JobStatus
    pages_total: int
    pages_ready: int
    after: int
    next_after: Required[int]
    pages: Required[list[JobPage]]
    error: Annotated[
        dict[str, Any],
        Field(description="Why the job waits or failed, as in its view (retrying: it will be run again)."),
    ]


# --- OpenAI's API


@with_config(CLOSED)
class Model(TypedDict, total=False):
    id: Required[str]
    object: Required[Literal["model"]]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int


@with_config(CLOSED)
class ModelList(TypedDict):
    object: Literal["list"]
    data: list[Model]


class ChatMessage(TypedDict):
    role: str
    content: str


class ChatChoice(TypedDict, total=False):
    index: int
    message: ChatMessage
    finish_reason: _text("stop or length")
    logprobs: None


class ChatCompletion(TypedDict, total=False):
    """A chat.completion: OpenAI's fields, and with ``"ocr": {"structured": true}`` the structured result."""

    id: Required[str]
    object: Required[Literal["chat.completion"]]
    created: int
    model: str
    choices: Required[list[ChatChoice]]
    usage: Required[Usage]
    ocr: Annotated[OcrResult, Field(description='The structured result, with "ocr": {"structured": true}.')]


class ImageUrl(TypedDict, total=False):
    url: _text("A data URL, or an http(s) URL")


class ContentPart(TypedDict, total=False):
    type: Required[Literal["text", "image_url"]]
    text: str
    image_url: ImageUrl


class RequestMessage(TypedDict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]


class StreamOptions(TypedDict, total=False):
    include_usage: bool


@with_config(CLOSED)
class ChatOcrOptions(TypedDict, total=False):
    """This service's extension: /ocr's fields, and ``structured`` for the whole result."""

    structured: bool
    pages: str
    password: str
    mode: str
    figures: bool
    annotate: bool


_IGNORED = Annotated[float, Field(description="Accepted and ignored: decoding is greedy.")]


class ChatRequest(TypedDict, total=False):
    """POST /v1/chat/completions: one image in a user message, and its prompt."""

    model: Required[_text("A model id from GET /v1/models.")]
    messages: Required[Annotated[list[RequestMessage], Field(min_length=1)]]
    max_tokens: Annotated[int, Field(ge=1, description="At most the service's MAX_TOKENS.")]
    max_completion_tokens: Annotated[int, Field(ge=1)]
    stream: bool
    stream_options: StreamOptions
    n: Literal[1]
    temperature: _IGNORED
    top_p: _IGNORED
    frequency_penalty: _IGNORED
    presence_penalty: _IGNORED
    seed: _IGNORED
    ocr: ChatOcrOptions


# The components of /openapi.json, by name.
COMPONENTS: dict[str, Any] = {
    "Error": Error,
    "OpenAIError": OpenAIError,
    "OcrResult": OcrResult,
    "BatchResult": BatchResult,
    "Health": Health,
    "Ready": Ready,
    "Job": Job,
    "JobPages": JobPages,
    "ModelList": ModelList,
    "ChatRequest": ChatRequest,
    "ChatCompletion": ChatCompletion,
}
