"""The no-repeat n-gram guard DeepSeek-OCR's authors decode with, as a plain function.

While generating, a token is banned when it would complete an n-gram that already occurs among the last
``window_size`` generated tokens, unless it is whitelisted (the table cell tags). vLLM ships the same rule
as ``NGramPerReqLogitsProcessor``; the transformers engine applies this function as a logits processor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# The start-up check's request: vLLM's NGramPerReqLogitsProcessor refuses a non-positive ``ngram_size`` when it
# admits a request (its validate_params), and a vLLM without the processor ignores the request's extra arguments and
# answers. So a refusal naming ``ngram_size`` proves the guard is loaded, and an answer proves it is not.
GUARD_PROBE_ARGS: dict[str, object] = {"ngram_size": 0}
GUARD_PROBE_PROMPT = "guard check"


def probe_refused_by_guard(message: str) -> bool:
    """True when an error answering the probe is the guard's refusal of its ``ngram_size``."""
    return "ngram_size" in message


@dataclass(frozen=True)
class GuardSettings:
    """What the guard needs for one request; ``ngram_size`` 0 switches it off."""

    ngram_size: int
    window_size: int
    whitelist_token_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def enabled(self) -> bool:
        return self.ngram_size > 0

    def to_dict(self) -> dict[str, object]:
        return {
            "ngram_size": self.ngram_size,
            "window_size": self.window_size,
            "whitelist_token_ids": sorted(self.whitelist_token_ids),
        }

    def vllm_extra_args(self) -> dict[str, object] | None:
        """Return what vLLM's NGramPerReqLogitsProcessor reads from a request; None when the guard is off.

        The processor acts only on requests that carry ``ngram_size``, so leaving it out is how "off" is said.
        """
        return self.to_dict() if self.enabled else None


def banned_next_tokens(
    generated: Sequence[int], ngram_size: int, window_size: int, whitelist: Iterable[int] = ()
) -> set[int]:
    """Return the tokens that would repeat an n-gram seen in the window of ``generated``."""
    if ngram_size <= 0 or len(generated) < ngram_size:
        return set()
    prefix = tuple(generated[len(generated) - ngram_size + 1 :])
    start = max(0, len(generated) - window_size)
    stop = len(generated) - ngram_size + 1
    banned = {
        generated[i + ngram_size - 1] for i in range(start, stop) if tuple(generated[i : i + ngram_size - 1]) == prefix
    }
    return banned.difference(whitelist)


def repeated_ngram(tokens: Sequence[int], ngram_size: int, window_size: int, whitelist: Iterable[int] = ()) -> bool:
    """Return True when ``tokens`` breaks the guard's rule anywhere (for tests and diagnostics)."""
    allowed = set(whitelist)
    return any(
        tokens[end] in banned_next_tokens(tokens[:end], ngram_size, window_size, allowed)
        for end in range(ngram_size, len(tokens))
    )
