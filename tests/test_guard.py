"""The no-repeat n-gram guard as a plain function."""

from __future__ import annotations

from ocr_api.guard import GuardSettings, banned_next_tokens, repeated_ngram


def test_bans_the_token_that_would_repeat_an_ngram():
    # Trigram (1, 2, 3) was seen; after (1, 2) again, 3 is banned.
    assert banned_next_tokens([1, 2, 3, 9, 1, 2], ngram_size=3, window_size=100) == {3}


def test_nothing_is_banned_before_an_ngram_fits():
    assert banned_next_tokens([1, 2], ngram_size=3, window_size=100) == set()


def test_only_ngrams_inside_the_window_count():
    tokens = [1, 2, 3, *range(10, 20), 1, 2]
    assert banned_next_tokens(tokens, ngram_size=3, window_size=100) == {3}
    assert banned_next_tokens(tokens, ngram_size=3, window_size=10) == set()


def test_whitelisted_tokens_may_repeat():
    td, end_td = 50, 51
    tokens = [td, 7, end_td, td, 7]
    assert banned_next_tokens(tokens, ngram_size=3, window_size=100) == {end_td}
    assert banned_next_tokens(tokens, ngram_size=3, window_size=100, whitelist={td, end_td}) == set()


def test_zero_size_switches_the_guard_off():
    assert banned_next_tokens([1, 1, 1, 1], ngram_size=0, window_size=100) == set()
    assert not GuardSettings(0, 90).enabled


def test_every_match_in_the_window_is_banned():
    assert banned_next_tokens([5, 1, 5, 2, 5], ngram_size=2, window_size=100) == {1, 2}


def test_repeated_ngram_detects_a_loop():
    assert repeated_ngram([1, 2, 3, 1, 2, 3], ngram_size=3, window_size=100)
    assert not repeated_ngram([1, 2, 3, 4, 5, 6], ngram_size=3, window_size=100)


def test_settings_serialise_with_sorted_whitelist():
    guard = GuardSettings(20, 90, frozenset({128822, 128821}))
    assert guard.to_dict() == {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


def test_vllm_extra_args_travel_only_when_the_guard_is_on():
    # vLLM's processor acts on any request carrying ngram_size, so "off" must mean "absent".
    assert GuardSettings(0, 90, frozenset({7})).vllm_extra_args() is None
    assert GuardSettings(20, 90, frozenset({7})).vllm_extra_args() == {
        "ngram_size": 20,
        "window_size": 90,
        "whitelist_token_ids": [7],
    }
