"""Prompts: the task presets of DeepSeek-OCR and the normalisation of caller-supplied prompts."""

from __future__ import annotations

from ocr_api.errors import BadRequest

IMAGE_PLACEHOLDER = "<image>"

# Instructions after "<image>\n", as the model's authors use them (../shared/reference/deepseek-ocr.md).
TASKS: dict[str, str] = {
    "free": "Free OCR.",
    "markdown": "<|grounding|>Convert the document to markdown.",
    "ocr": "<|grounding|>OCR this image.",
    "figure": "Parse the figure.",
    "describe": "Describe this image in detail.",
    "locate": "Locate <|ref|>{phrase}<|/ref|> in the image.",
}
MAX_PHRASE_CHARS = 200


def task_prompt(task: str, phrase: str | None = None) -> str:
    """Return the full prompt of a preset task; ``locate`` needs the phrase to find."""
    if task not in TASKS:
        raise BadRequest(f"Unknown task {task[:40]!r}; use one of: {', '.join(TASKS)}.", code="unknown_task")
    if task != "locate":
        if phrase:
            raise BadRequest("The phrase field is only used with task=locate.", code="unexpected_phrase")
        return f"{IMAGE_PLACEHOLDER}\n{TASKS[task]}"
    phrase = (phrase or "").strip()
    if not phrase:
        raise BadRequest("task=locate needs a phrase field: the text to find.", code="missing_phrase")
    if len(phrase) > MAX_PHRASE_CHARS:
        raise BadRequest(f"The phrase is longer than {MAX_PHRASE_CHARS} characters.", code="phrase_too_long")
    if "<|" in phrase or "|>" in phrase or IMAGE_PLACEHOLDER in phrase:
        raise BadRequest("The phrase may not contain model markup such as <|ref|> or <image>.", code="invalid_phrase")
    return f"{IMAGE_PLACEHOLDER}\n{TASKS['locate'].format(phrase=phrase)}"


def normalize_prompt(prompt: str, max_chars: int) -> str:
    """Return ``prompt`` with ``<image>`` exactly once at the start and literal ``\\n`` made newlines."""
    # curl -F 'prompt=<image>\nFree OCR.' sends a backslash and an n, not a newline.
    prompt = prompt.replace("\r\n", "\n").replace("\\n", "\n").strip()
    if not prompt:
        raise BadRequest("The prompt is empty.", code="invalid_prompt")
    if len(prompt) > max_chars:
        raise BadRequest(f"The prompt is longer than {max_chars} characters.", code="prompt_too_long")
    if "\x00" in prompt:
        raise BadRequest("The prompt contains a NUL character.", code="invalid_prompt")
    if not prompt.startswith(IMAGE_PLACEHOLDER):
        prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        raise BadRequest(
            "The prompt must contain <image> once, at the start (one image per prompt).", code="invalid_prompt"
        )
    return prompt


def resolve_prompt(
    prompt: str | None, task: str | None, phrase: str | None, default_prompt: str, max_chars: int
) -> tuple[str, str | None]:
    """Return the prompt to send and the task it came from (None for a free-form or default prompt)."""
    if prompt and task:
        raise BadRequest("Send either prompt or task, not both.", code="conflicting_fields")
    if task:
        return task_prompt(task.strip().lower(), phrase), task.strip().lower()
    if phrase:
        raise BadRequest("The phrase field is only used with task=locate.", code="unexpected_phrase")
    return normalize_prompt(prompt if prompt else default_prompt, max_chars), None
