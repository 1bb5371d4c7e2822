"""The real transformers engine on a tiny random DeepSeek-OCR-2: batching, budgets, the guard, threads, loading.

Random weights prove the wiring (shapes, token counts, guard, finish reasons), not recognition quality.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest
from PIL import Image

from ocr_api.engines import EngineLoadError, EngineRequest, EngineTimeout, PromptTooLong, run_batch
from ocr_api.engines.transformers_engine import TransformersEngine
from ocr_api.guard import GuardSettings, repeated_ngram

pytestmark = pytest.mark.slow

FREE_OCR = "<image>\nFree OCR."
GLOBAL_VIEW_TOKENS = 256 + 1  # 1024 view at 16 px patches, 4x downsampled, plus the view separator
TILE_TOKENS = 144  # one 768 tile


def _request(size=(128, 128), prompt=FREE_OCR, max_tokens=8, ngram_size=20, window_size=90, *, mode="gundam"):
    guard = GuardSettings(ngram_size, window_size, frozenset({128821, 128822}))
    return EngineRequest(Image.new("RGB", size, "white"), prompt, max_tokens, guard, mode)


def test_prompt_tokens_follow_the_models_image_token_layout(tiny_engine):
    small, page = run_batch(tiny_engine, [_request((128, 128)), _request((800, 1100))])
    text_tokens = len(b"\nFree OCR.")  # the tiny tokenizer is byte-level
    assert small.prompt_tokens == GLOBAL_VIEW_TOKENS + text_tokens
    # An A4-shaped page is tiled 2x3 at 768 px: 6 tiles besides the global view.
    assert page.prompt_tokens == GLOBAL_VIEW_TOKENS + 6 * TILE_TOKENS + text_tokens


def test_base_mode_sees_the_page_whole_and_mixed_modes_keep_their_order(tiny_engine):
    gundam, base, again = run_batch(
        tiny_engine, [_request((800, 1100)), _request((800, 1100), mode="base"), _request((800, 1100))]
    )
    text_tokens = len(b"\nFree OCR.")
    assert gundam.prompt_tokens == again.prompt_tokens == GLOBAL_VIEW_TOKENS + 6 * TILE_TOKENS + text_tokens
    assert base.prompt_tokens == GLOBAL_VIEW_TOKENS + TILE_TOKENS + text_tokens  # one view instead of six tiles


def test_batch_outputs_come_back_in_request_order(tiny_engine):
    prompts = [FREE_OCR, "<image>\n<|grounding|>Convert the document to markdown.", "<image>\nParse the figure."]
    outputs = run_batch(tiny_engine, [_request(prompt=p) for p in prompts])
    expected = [GLOBAL_VIEW_TOKENS + len(p.removeprefix("<image>").encode()) for p in prompts]
    # Special tokens such as <|grounding|> are one token each.
    expected[1] -= len("<|grounding|>") - 1
    assert [o.prompt_tokens for o in outputs] == expected


def test_token_limit_is_reported_as_length(tiny_engine):
    (output,) = run_batch(tiny_engine, [_request(max_tokens=5, ngram_size=0)])
    assert output.finish_reason in ("length", "stop")
    if output.finish_reason == "length":
        assert output.completion_tokens == 5
        assert len(output.token_ids) == 5
    assert output.max_tokens == 5


def test_special_tokens_are_kept_in_the_raw_text(tiny_engine):
    (output,) = run_batch(tiny_engine, [_request(max_tokens=40, ngram_size=0)])
    tokenizer = tiny_engine._processor.tokenizer
    assert output.text == tokenizer.decode(list(output.token_ids), skip_special_tokens=False)


def test_the_guard_stops_repeated_ngrams_that_greedy_decoding_produces(tiny_engine):
    unguarded, guarded = run_batch(
        tiny_engine,
        [
            _request(max_tokens=150, ngram_size=0, window_size=60),
            _request(max_tokens=150, ngram_size=3, window_size=60),
        ],
    )
    # The random model loops when left alone, so the guarded run below is a real test of the guard.
    assert repeated_ngram(unguarded.token_ids, 3, 60)
    assert not repeated_ngram(guarded.token_ids, 3, 60, tiny_engine.whitelist_token_ids)
    assert guarded.guard.to_dict()["ngram_size"] == 3
    assert unguarded.guard.enabled is False


def test_guard_whitelist_comes_from_the_tokenizer(tiny_engine):
    tokenizer = tiny_engine._processor.tokenizer
    expected = {tokenizer.convert_tokens_to_ids("<td>"), tokenizer.convert_tokens_to_ids("</td>")}
    assert tiny_engine.whitelist_token_ids == expected
    assert tiny_engine.context_length == 8192  # the protocol's facts, valid after load()


def test_max_tokens_is_bounded_by_the_context_left(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir), device="cpu", max_model_len=280)
    engine.load()
    (output,) = run_batch(engine, [_request(max_tokens=8192)])
    assert output.max_tokens == 280 - output.prompt_tokens
    with pytest.raises(PromptTooLong):
        run_batch(engine, [_request((800, 1100))])


def test_a_generation_past_the_timeout_is_stopped_and_reported(tiny_model_dir):
    # 3 s: far beyond one short request even on a loaded CI machine (0.5 s was not), far below 8,000 tokens.
    engine = TransformersEngine(str(tiny_model_dir), device="cpu", timeout_s=3)
    engine.load()
    started = time.monotonic()
    with pytest.raises(EngineTimeout, match="generation was stopped"):
        run_batch(engine, [_request(max_tokens=8000, ngram_size=0)])  # random weights never stop by themselves
    assert time.monotonic() - started < 3 + 5
    assert len(run_batch(engine, [_request(max_tokens=2)])) == 1  # and the engine serves the next request
    engine.close()


def test_a_cancelled_page_stops_its_row_and_a_queued_one_never_runs(tiny_engine, monkeypatch):
    lengths: list[int] = []
    started = threading.Event()
    generate = tiny_engine._model.generate

    def recording_generate(**kwargs):
        started.set()
        sequences = generate(**kwargs)
        lengths.append(sequences.shape[1] - kwargs["input_ids"].shape[1])
        return sequences

    monkeypatch.setattr(tiny_engine._model, "generate", recording_generate)
    running = tiny_engine.submit(_request(max_tokens=8000, ngram_size=0))
    assert started.wait(timeout=30)
    # A page queued behind the running one (it started before this was sent) and cancelled before its turn is
    # never generated.
    queued = tiny_engine.submit(_request(max_tokens=8000, ngram_size=0))
    assert queued.cancel()
    time.sleep(0.3)
    assert running.cancel()  # a page's future stays pending while its row runs, so it can be cancelled
    (after,) = run_batch(tiny_engine, [_request(max_tokens=2)])  # the engine serves the next request
    assert after.completion_tokens <= 2
    assert len(lengths) == 2  # the cancelled row, then the next request: the queued page never ran
    assert 0 < lengths[0] < 8000  # stopped where it was cancelled, not at the token limit


def test_pages_wait_for_the_model_in_vllms_priority_order(tiny_engine, monkeypatch):
    """Pages queued while the model is busy start lowest priority first, as vLLM's priority scheduler starts them."""
    batches: list[list[int]] = []
    run, generate = tiny_engine._run, tiny_engine._model.generate
    started = threading.Event()

    def recording_run(batch):
        batches.append([item.request.priority for item in batch])
        return run(batch)

    def noting_generate(**kwargs):
        started.set()
        return generate(**kwargs)

    monkeypatch.setattr(tiny_engine, "_run", recording_run)
    monkeypatch.setattr(tiny_engine._model, "generate", noting_generate)
    running = tiny_engine.submit(_request(max_tokens=8000, ngram_size=0))
    assert started.wait(timeout=30)
    waiting = [tiny_engine.submit(dataclasses.replace(_request(max_tokens=2), priority=p)) for p in (30, 10, 20)]
    assert running.cancel()
    assert all(future.result(timeout=120).completion_tokens <= 2 for future in waiting)
    assert batches[-1] == [10, 20, 30]  # arrival order was 30, 10, 20


def test_concurrent_callers_from_threads_are_all_served(tiny_engine):
    results: list = []
    errors: list = []

    def call(size):
        try:
            results.append(run_batch(tiny_engine, [_request(size, max_tokens=4)])[0])
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=call, args=((100 + 10 * i, 120),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 4


def test_small_and_extreme_images_within_policy_do_not_break_the_engine(tiny_engine):
    outputs = run_batch(tiny_engine, [_request((8, 8)), _request((8, 512)), _request((2000, 40))])
    assert len(outputs) == 3
    (after,) = run_batch(tiny_engine, [_request()])
    assert after.prompt_tokens == GLOBAL_VIEW_TOKENS + len(b"\nFree OCR.")


def test_missing_local_directory_says_what_was_tried(tmp_path):
    engine = TransformersEngine(str(tmp_path / "missing"))
    with pytest.raises(EngineLoadError) as caught:
        engine.load()
    message = str(caught.value)
    assert "does not exist" in message
    assert "DEEPSEEK_MODEL_NAME" in message


def test_a_checkpoint_of_another_model_is_refused_clearly(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(EngineLoadError, match="'gpt2' checkpoint"):
        TransformersEngine(str(tmp_path)).load()


def test_streamed_rows_hand_on_their_text_as_it_is_generated(tiny_engine):
    """Rows of one batch stream each to its own sink, piece by piece; the pieces are the text, less at most the last
    bytes of a character not yet complete (the service sends those with the page's end)."""
    pieces: dict[int, list[str]] = {0: [], 2: []}
    requests = [
        dataclasses.replace(_request(max_tokens=24, ngram_size=0), on_text=pieces[0].append),
        _request(max_tokens=24, ngram_size=0),
        dataclasses.replace(_request((300, 200), max_tokens=12, ngram_size=0), on_text=pieces[2].append),
    ]
    outputs = run_batch(tiny_engine, requests)
    for row in (0, 2):
        assert len(pieces[row]) > 1  # piece by piece, not the whole text at the end
        streamed = "".join(pieces[row])
        assert outputs[row].text.startswith(streamed)
        assert len(outputs[row].text) - len(streamed) <= 3
    assert len(outputs[2].token_ids) <= 12


def test_the_engine_says_its_guard_was_checked_and_refuses_to_load_when_the_check_fails(tiny_model_dir, monkeypatch):
    from ocr_api.engines import GuardMissing, transformers_engine

    engine = TransformersEngine(str(tiny_model_dir), "cpu")
    engine.load()
    assert engine.guard_checks()["in-process"].state == "verified"
    engine.close()
    monkeypatch.setattr(transformers_engine, "banned_next_tokens", lambda *args, **kwargs: set())
    with pytest.raises(GuardMissing, match="guard check failed"):
        TransformersEngine(str(tiny_model_dir), "cpu").load()
    unguarded = TransformersEngine(str(tiny_model_dir), "cpu", require_guard=False)
    unguarded.load()  # ALLOW_UNGUARDED_ENGINE: it loads, and says so
    assert unguarded.guard_checks()["in-process"].state == "unchecked"
    unguarded.close()


def test_the_hubs_and_transformers_log_lines_go_through_the_service_once(tmp_path):
    """Each library adds a raw stream handler of its own at import: every hub retry was printed twice, once raw."""
    import logging

    from ocr_api.engines import EngineLoadError
    from ocr_api.engines.transformers_engine import TransformersEngine

    with pytest.raises(EngineLoadError):
        TransformersEngine(str(tmp_path / "no-such-model"), "cpu").load()
    for name in ("huggingface_hub", "transformers"):
        library = logging.getLogger(name)
        assert (library.handlers, library.propagate) == ([], True), name
