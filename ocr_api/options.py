"""A request's options: read from the form once, every field checked before a byte of any file is decoded."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ocr_api.engines.base import RESOLUTION_MODES
from ocr_api.errors import ApiError, BadRequest, UnprocessableFile
from ocr_api.prompts import resolve_prompt

_RANGE = re.compile(r"^\s*([0-9]{1,6})\s*(?:-\s*([0-9]{1,6})\s*)?$")  # ASCII digits: ١ is not 1


@dataclass(frozen=True)
class PageSelection:
    """The pages a request asks of each document (``pages=1-3,7``), as 1-based inclusive ranges; empty: all."""

    ranges: tuple[tuple[int, int], ...] = ()
    spec: str = ""

    @classmethod
    def parse(cls, spec: str | None) -> PageSelection:
        """Check the syntax now, before any work; the bounds wait for each document's page count."""
        if not spec or not spec.strip():
            return cls()
        ranges = []
        for part in spec.split(","):
            match = _RANGE.match(part)
            if not match:
                raise BadRequest(f"pages must look like 1-3,7; got {spec[:50]!r}.", code="invalid_pages")
            first, last = int(match[1]), int(match[2] or match[1])
            if not 1 <= first <= last:
                raise BadRequest(f"pages {part.strip()} runs backwards or starts at 0.", code="invalid_pages")
            ranges.append((first, last))
        return cls(tuple(ranges), spec)

    def indices(self, page_count: int, max_pages: int) -> list[int]:
        """Return the 0-based pages of a document of ``page_count`` pages, in the order asked."""
        if not self.ranges:
            chosen = list(range(page_count))
        else:
            chosen = []
            for first, last in self.ranges:
                if last > page_count:
                    shown = f"{first}-{last}" if first != last else str(first)
                    raise BadRequest(f"Page {shown} is outside the document's pages 1-{page_count}." if first == last
                                     else f"Pages {shown} are outside the document's pages 1-{page_count}.",
                                     code="invalid_pages")  # fmt: skip
                chosen.extend(range(first - 1, last))
                if len(chosen) > max_pages:
                    break
        if len(chosen) > max_pages:
            raise UnprocessableFile(
                f"The request selects {'more than ' if self.ranges else ''}{len(chosen)} pages; at most {max_pages} "
                "are processed per request. Send a page range with pages=, for example pages=1-50.",
                code="too_many_pages",
            )
        return chosen


@dataclass(frozen=True)
class OcrOptions:
    """Validated per-request options: what the service takes, never the form itself."""

    prompt: str
    task: str | None
    max_tokens: int
    pages: PageSelection = field(default_factory=PageSelection)
    mode: str = "gundam"
    figures: bool = False  # return image regions cropped from the page, inline
    annotate: bool = False  # return a copy of the page with the boxes drawn, inline
    password: str | None = field(default=None, repr=False)  # for encrypted PDFs; never logged
    output: str = "json"  # json; pdf (the searchable PDF); hocr (the lines and words placed, as hOCR)

    @property
    def wants_pictures(self) -> bool:
        return self.figures or self.annotate


@dataclass(frozen=True)
class OptionRules:
    """What the settings and the engine allow: the defaults and bounds the form is checked against."""

    default_prompt: str
    max_prompt_chars: int
    max_tokens: int
    engine_name: str
    engine_modes: tuple[str, ...]


WrongType = Callable[[str, object], ApiError]

# The form fields the OCR endpoints read; parse_options reads each of them, and a repeated one is refused.
FORM_FIELDS = ("prompt", "task", "phrase", "max_tokens", "pages", "password", "mode", "figures", "annotate", "output")
# What the answer may be: the JSON result, the searchable PDF, or hOCR (/ocr; jobs: json and pdf).
OUTPUTS = ("json", "pdf", "hocr")


FLAG_FIELDS = ("figures", "annotate")
NUMBER_FIELDS = ("max_tokens",)


def form_from_json(values: Mapping[str, Any], names: Iterable[str], wrong_type: WrongType) -> dict[str, list[str]]:
    """The fields ``names`` of a JSON object as the form would have carried them, for parse_options: strings as they
    are, flags and whole numbers written out; absent or null fields left out. The one adapter from JSON to the form,
    for /ocr's JSON body and a chat completion's ``ocr`` extension; ``wrong_type(name, value)`` is the error for a
    value of another type (each route words it its own way)."""
    form: dict[str, list[str]] = {}
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) and name in FLAG_FIELDS:
            form[name] = ["true" if value else "false"]
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name in NUMBER_FIELDS:
            if isinstance(value, float) and not value.is_integer():
                raise wrong_type(name, value)
            form[name] = [str(int(value))]  # JSON has one kind of number: 100.0 is 100, 1e400 out of range
        elif isinstance(value, str):
            form[name] = [value]
        else:
            raise wrong_type(name, value)
    return form


def parse_options(form: Mapping[str, list[str]], rules: OptionRules) -> OcrOptions:
    """Return the options a form asks for; raise BadRequest naming the first field that is wrong."""
    repeated = [name for name in FORM_FIELDS if len(form.get(name) or []) > 1]
    if repeated:  # which of two values was meant cannot be told; taking the first would hide the mistake
        raise BadRequest(f"The field '{repeated[0]}' was sent more than once; send it once.", code="duplicate_field")
    value = {name: (form.get(name) or [None])[0] for name in FORM_FIELDS}
    prompt, task = resolve_prompt(
        value["prompt"], value["task"], value["phrase"], rules.default_prompt, rules.max_prompt_chars
    )
    return OcrOptions(
        prompt=prompt,
        task=task,
        max_tokens=_parse_max_tokens(value["max_tokens"], rules.max_tokens),
        pages=PageSelection.parse(value["pages"]),
        mode=_parse_mode(value["mode"], rules),
        figures=_parse_flag("figures", value["figures"]),
        annotate=_parse_flag("annotate", value["annotate"]),
        password=value["password"] or None,
        output=_parse_output(value["output"]),
    )


def _parse_output(raw: str | None) -> str:
    output = (raw or "json").strip().lower()
    if output not in OUTPUTS:
        raise BadRequest(f"Unknown output {output[:20]!r}; use one of: {', '.join(OUTPUTS)}.", code="unknown_output")
    return output


def _parse_mode(raw: str | None, rules: OptionRules) -> str:
    mode = (raw or "gundam").strip().lower()
    if mode not in RESOLUTION_MODES:
        raise BadRequest(f"Unknown mode {mode[:20]!r}; use one of: {', '.join(RESOLUTION_MODES)}.", code="unknown_mode")
    if mode not in rules.engine_modes:
        raise BadRequest(
            f"The {rules.engine_name} engine cannot honour mode={mode}: vLLM's DeepSeek-OCR processor always "
            "uses gundam (a 1024 global view plus up to 6 tiles). Other modes need OCR_ENGINE=transformers.",
            code="mode_not_supported",
        )
    return mode


def _parse_flag(name: str, raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise BadRequest(f"{name} must be true or false; got {(raw or '')[:20]!r}.", code="invalid_flag")


def _parse_max_tokens(raw: str | None, limit: int) -> int:
    if raw is None or not raw.strip():
        return limit
    text = raw.strip()
    if not re.fullmatch(r"-?[0-9]+", text):  # int() would also read 1_000 and other scripts' digits
        raise BadRequest(f"max_tokens must be an integer; got {raw[:20]!r}.", code="invalid_max_tokens")
    value = int(text) if len(text) <= 20 else limit + 1  # longer: out of range, however many digits
    if not 1 <= value <= limit:
        raise BadRequest(f"max_tokens must be between 1 and {limit}.", code="invalid_max_tokens")
    return value
