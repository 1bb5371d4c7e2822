"""Sharing the engine fairly: page priorities, the jobs' share of the window, turns between jobs, per-key limits.

The rules are checked on their own (priorities, share, turns: no threads, no timing), then through the service: a
job paused between pages, a key's limits, the metrics by class, and, against the stand-in engine with a bounded batch
and vLLM's priority order, the order pages start in and jobs finish in while another key's book runs (orders, not
timings: bench/fairness.py measures the times).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocr_api.admission import INTERACTIVE, JOB, SENDER_STEP_MS, Admission, EnginePriorities, Sender, Share
from ocr_api.jobs.turns import Turns
from ocr_api.pipeline import PageStream, StreamPaused
from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import metric_samples, redis_server, serve_service, stand_in_engine, wait_until
from tests.fakes import FakeEngine, SlowEngine
from tests.test_jobs import KEY_A, KEY_B, pdf_bytes, stored_jobs
from tests.test_pipeline import _pages, _rules

A, B = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
FINISHED = ("succeeded", "partial", "failed", "cancelled")


def job_of(client: str, name: str = "j") -> Sender:
    return Sender(JOB, client, f"{client}-{name}")


# --- the priority each page is sent with


def test_a_persons_page_goes_before_a_job_page_sent_at_the_same_time_but_not_before_one_long_waiting():
    priorities = EnginePriorities(job_delay_s=30)
    now = 1_800_000_000.0
    job_page = priorities.sent(job_of("a"), now)
    assert priorities.sent(Sender(INTERACTIVE, "b", "r1"), now) < job_page
    assert priorities.sent(Sender(INTERACTIVE, "c", "r2"), now + 29) < job_page
    # Aged: a job page that has waited 31 s goes before a person's page sent now (no job page waits forever).
    assert priorities.sent(Sender(INTERACTIVE, "d", "r3"), now + 31) > job_page


def test_a_client_with_pages_at_the_engine_goes_after_one_with_none_and_even_again_once_answered():
    priorities = EnginePriorities(job_delay_s=30)
    now = 1_800_000_000.0
    book = job_of("a", "book")
    book_pages = [priorities.sent(book, now) for _ in range(8)]
    assert book_pages == [round(now * 1000) + 30_000 + step * SENDER_STEP_MS for step in range(8)]
    small_job = priorities.sent(job_of("b", "small"), now + 1)
    assert small_job < book_pages[2]  # sent later, it still goes before the book's third page and those after
    for _ in range(8):
        priorities.answered(book)
    assert priorities.sent(book, now + 2) == round((now + 2) * 1000) + 30_000  # none at the engine: no step
    # A person's pages count among their own class only: a key's book does not delay its owner's /ocr page.
    assert priorities.sent(Sender(INTERACTIVE, "a", "r"), now + 2) == round((now + 2) * 1000)


# --- the jobs' share of the window


def test_the_jobs_share_goes_to_the_key_holding_fewest_then_to_its_job_holding_fewest():
    share = Share(Admission(100), limit=4)
    book, small, book2 = job_of("a", "book"), job_of("b", "small"), job_of("a", "book2")
    assert all(share.try_take(book) for _ in range(4))
    assert not share.try_take(small)  # full: the small job waits, and is known to
    assert not share.keeps(book)  # the book's answered page gives its slot back instead of handing it on
    share.release(1, book)
    assert not share.try_take(book)  # the book cannot take it back: key b holds fewer and waits
    assert share.try_take(small)
    assert share.keeps(book)  # now even enough (a: 3 after this page, b: 1); b waits for nothing more
    share.release(1, book)
    assert share.try_take(small)  # b's second page: a holds 2... until b asks no more, then a takes what is free
    share.forget(small)
    share.release(1, book)
    assert share.try_take(book)
    # Within a key: its job holding fewest first.
    assert not share.try_take(book2)
    share.release(1, book)
    assert not share.try_take(book)
    assert share.try_take(book2)
    assert (share.holding(book), share.holding(book2), share.holding(small)) == (1, 1, 2)
    for sender, held in ((book, 1), (book2, 1), (small, 2)):
        share.release(held, sender)
    assert (share.in_flight, share.parent.in_flight) == (0, 0)  # and the process's gauge is back where it was


def test_nobody_waiting_a_job_takes_every_free_slot_of_the_share_and_no_more():
    parent = Admission(10)
    share = Share(parent, limit=3)
    book = job_of("a")
    assert [share.try_take(book) for _ in range(4)] == [True, True, True, False]
    assert share.keeps(book)
    assert parent.in_flight == 3
    share.release(3, book)
    assert (parent.in_flight, share.in_flight, share.holding(book)) == (0, 0, 0)


def test_a_job_waiting_for_the_share_wakes_when_a_slot_is_given_back():
    share = Share(Admission(10), limit=1)
    book = job_of("a")
    assert share.try_take(book)
    woke: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        share.wait_for_room(5.0)
        woke.append(time.monotonic() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    share.release(1, book)
    thread.join(timeout=5)
    assert woke
    assert woke[0] < 4.0  # woken by the release, not by the timeout


# --- turns between jobs in one consumer


class Queue:
    def __init__(self) -> None:
        self.owners: list[str] = []

    def __call__(self) -> list[str]:
        return list(self.owners)


def test_a_job_of_a_key_the_consumer_runs_more_of_goes_back_behind_another_keys():
    queue = Queue()
    turns = Turns(places=4, turn_s=10, waiting_owners=queue)
    turns.opened("a1", "a")
    queue.owners = ["a", "a"]
    assert not turns.defers("a")  # only a's jobs wait: a's next one runs
    queue.owners = ["a", "b"]
    assert turns.defers("a")  # b runs nothing here and waits: a's goes to the end
    assert not turns.defers("b")
    assert not turns.defers("c")  # a key with nothing running here goes back only for one served longer ago
    turns.closed("a1")
    assert turns.defers("a")  # nothing runs, but a had the last turn: b, never served, goes first
    turns.opened("b1", "b")
    turns.closed("b1")
    queue.owners = ["a"]
    assert turns.defers("b")  # and then a again


def test_the_job_longest_at_work_of_the_key_with_most_gives_its_place_when_every_place_is_taken_and_one_waits():
    queue = Queue()
    turns = Turns(places=3, turn_s=0.0, waiting_owners=queue)
    for job_id, owner in (("a1", "a"), ("b1", "b"), ("a2", "a")):
        turns.opened(job_id, owner)
        time.sleep(0.01)
    assert not any(turns.should_yield(job) for job in ("a1", "b1", "a2"))  # nobody waits
    queue.owners = ["c"]
    time.sleep(1.1)  # the queue is read at most once a second
    assert [turns.should_yield(job) for job in ("b1", "a2", "a1")] == [False, False, True]
    assert turns.should_yield("a1")  # it stays the one giving way until it has gone
    turns.closed("a1")
    turns.opened("c1", "c")
    # Once it has gone, the next to give way (c is still seen waiting): every key has one job now, so the longest
    # at work of them all.
    assert [turns.should_yield(job) for job in ("a2", "c1", "b1")] == [False, False, True]


def test_a_job_gives_its_place_only_after_its_turn_and_only_when_the_places_are_full():
    queue = Queue()
    queue.owners = ["b"]
    turns = Turns(places=2, turn_s=60, waiting_owners=queue)
    turns.opened("a1", "a")
    assert not turns.should_yield("a1")  # a place is free: the waiting job takes it
    turns.opened("a2", "a")
    assert not turns.should_yield("a1")  # places full, but no job has had its turn yet


# --- a stream paused between pages


def test_a_paused_stream_lets_its_pages_at_the_engine_finish_yields_them_and_sends_no_more():
    engine = SlowEngine(delay_s=0.1)
    admission = Admission(8)
    pause = threading.Event()
    stream = PageStream(engine, admission, _rules(window=1), lambda: False, should_pause=pause.is_set)
    finished = []

    def take_all() -> None:
        for key, _ in stream.finished(_pages(6)):
            finished.append(key)
            pause.set()  # after the first answer: the page sent on its slot finishes, nothing more goes

    with pytest.raises(StreamPaused):
        take_all()
    assert len(engine.requests) == 2  # the first, and the one sent the moment it was answered; then the pause
    assert len(finished) == 2
    assert engine.cancelled == 0
    assert admission.in_flight == 0  # every slot given back


def test_a_stream_paused_with_nothing_left_to_send_simply_ends():
    stream = PageStream(FakeEngine(), Admission(8), _rules(window=4), lambda: False, should_pause=lambda: False)
    assert len(stream.run(_pages(3))) == 3
    paused = PageStream(FakeEngine(), Admission(8), _rules(window=4), lambda: False, should_pause=lambda: True)
    with pytest.raises(StreamPaused):
        paused.run(_pages(3))  # paused before sending anything: nothing done, nothing lost


# --- the service: limits, metrics, turns


def test_a_key_past_its_unfinished_jobs_gets_429_with_retry_after_and_nothing_is_kept(make_jobs, settings):
    jobs_app = make_jobs(api_keys=f"{KEY_A},{KEY_B}", key_max_jobs=1)  # no consumer: jobs stay queued
    jobs_app.submit((pdf_bytes(2), "a.pdf"), headers=A)
    kept = stored_jobs(settings)
    refused = jobs_app.post("/jobs", (pdf_bytes(2), "b.pdf"), headers=A)
    assert (refused.status_code, refused.json["code"]) == (429, "too_many_jobs")
    assert refused.headers["Retry-After"] == "60"
    assert "KEY_MAX_JOBS=1" in refused.json["error"]
    assert stored_jobs(settings) == kept
    jobs_app.submit((pdf_bytes(2), "c.pdf"), headers=B)  # another key is not held back


def test_a_key_past_its_pages_gets_429_and_its_files_are_not_kept(make_jobs, settings):
    jobs_app = make_jobs(api_keys=f"{KEY_A},{KEY_B}", key_max_job_pages=5)
    jobs_app.submit((pdf_bytes(3), "a.pdf"), headers=A)
    kept = stored_jobs(settings)
    refused = jobs_app.post("/jobs", (pdf_bytes(3), "b.pdf"), headers=A)
    assert (refused.status_code, refused.json["code"]) == (429, "too_many_job_pages")
    assert "have 3 pages left" in refused.json["error"]
    assert refused.headers["Retry-After"] == "60"
    assert stored_jobs(settings) == kept
    jobs_app.submit((pdf_bytes(2), "c.pdf"), headers=A)  # within the bound: 3 + 2
    jobs_app.submit((pdf_bytes(5), "d.pdf"), headers=B)


def test_pages_sent_and_their_waits_are_counted_by_class(make_jobs):
    jobs_app = make_jobs()
    before = metric_samples(jobs_app.client.get("/metrics").get_data(as_text=True))
    jobs_app.start()
    jobs_app.wait(jobs_app.submit((pdf_bytes(3), "a.pdf"))["id"])
    page = {"file": (io.BytesIO(png_bytes((64, 48))), "p.png")}
    assert jobs_app.client.post("/ocr", data=page, content_type="multipart/form-data").status_code == 200
    after = metric_samples(jobs_app.client.get("/metrics").get_data(as_text=True))

    def grew(name: str, kind: str) -> float:
        key = (name, (("class", kind),))
        return after.get(key, 0) - before.get(key, 0)

    assert (grew("ocr_engine_pages_sent_total", "job"), grew("ocr_engine_pages_sent_total", "interactive")) == (3, 1)
    assert grew("ocr_admission_wait_seconds_count", "job") == 3
    assert grew("ocr_admission_wait_seconds_count", "interactive") == 1


def test_a_job_gives_its_place_to_a_waiting_one_and_finishes_later_with_every_page_once(make_jobs):
    engine = SlowEngine(delay_s=0.05)
    jobs_app = make_jobs(engine, api_keys=f"{KEY_A},{KEY_B}", job_workers=1, job_turn_s=0.3, job_pages_in_flight=2)
    jobs_app.start()
    book = jobs_app.submit((pdf_bytes(40), "book.pdf"), headers=A)["id"]
    wait_until(lambda: jobs_app.client.get(f"/jobs/{book}", headers=A).json["status"] == "running", timeout_s=10)
    small = jobs_app.submit((pdf_bytes(2), "small.pdf"), headers=B)["id"]
    views = []
    while (view := jobs_app.client.get(f"/jobs/{book}", headers=A).json)["status"] not in FINISHED:
        views.append(view)
        time.sleep(0.02)
    small_view = jobs_app.wait(small, headers=B)
    assert small_view["status"] == "succeeded"
    assert small_view["finished_at"] < view["finished_at"]  # the small job did not wait for the book
    assert any(v["status"] == "queued" and v.get("waiting_for") == "turn" for v in views), views[-3:]
    assert view["status"] == "succeeded"
    assert view["runs"] >= 2
    pages = jobs_app.client.get(f"/jobs/{book}/pages?limit=100", headers=A).json["pages"]
    assert [page["index"] for page in pages] == list(range(1, 41))  # every page, once, none lost on the way
    assert engine.cancelled == 0  # giving way aborts nothing: its pages at the engine finished first


def test_a_consumer_takes_the_queue_round_robin_by_key(make_jobs):
    """One place, key A's three jobs queued before key B's one: B's runs after A's first has had its turn, before A's
    second and third have run at all."""
    engine = SlowEngine(delay_s=0.05)
    jobs_app = make_jobs(engine, api_keys=f"{KEY_A},{KEY_B}", job_workers=1, job_turn_s=0.5, job_pages_in_flight=2)
    first, second, third = (jobs_app.submit((pdf_bytes(40), f"a{n}.pdf"), headers=A)["id"] for n in range(3))
    small = jobs_app.submit((pdf_bytes(2), "b.pdf"), headers=B)["id"]
    jobs_app.start()
    assert jobs_app.wait(small, headers=B)["status"] == "succeeded"
    views = {job: jobs_app.client.get(f"/jobs/{job}", headers=A).json for job in (first, second, third)}
    assert views[first]["progress"]["pages_done"] > 0
    assert [views[job]["progress"]["pages_done"] for job in (second, third)] == [0, 0], views
    for job in (first, second, third):
        assert jobs_app.wait(job, headers=A, timeout_s=60)["status"] == "succeeded"


# --- the service against the stand-in: priority at the engine, jobs side by side


@contextlib.contextmanager
def shared_service(tmp_path: Path, **overrides: object) -> Iterator[tuple[str, str]]:
    """The service (keys A and B) on the stand-in engine that decodes 2 pages at once (``max_batch``), in vLLM's
    priority order; the
    jobs' share of the window is 6 pages, so that a 60-page book holds it whole until its last few pages."""
    extra = ["--max-batch", str(overrides.pop("max_batch", 2)), "--scheduling-policy", "priority"]
    settings = {"api_keys": f"{KEY_A},{KEY_B}", "jobs_dir": str(tmp_path / "jobs"), "job_pages_in_flight": 6,
                **overrides}  # fmt: skip
    with contextlib.ExitStack() as services:
        engine_url = services.enter_context(stand_in_engine(step_ms=5, tokens_per_page=30, extra=extra))
        if "redis_url" in settings:  # a second service, its own consumer, on the same queue
            services.enter_context(serve_service(tmp_path / "second", engine_url, **settings))
        yield services.enter_context(serve_service(tmp_path / "first", engine_url, **settings)), engine_url


def submit(url: str, key: dict, pages: int) -> str:
    answer = requests.post(f"{url}/jobs", files={"file": ("f.pdf", make_pdf(pages, size=(200, 200)))}, headers=key,
                           timeout=30)  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def view(url: str, key: dict, job: str) -> dict:
    return requests.get(f"{url}/jobs/{job}", headers=key, timeout=10).json()


def book_and_small_job(url: str, engine_url: str) -> tuple[dict, dict]:
    """Key A's 60-page book, then, once the engine is busy with it, key B's 3-page job: both views when B's ends."""
    book = submit(url, A, 60)
    wait_until(lambda: view(url, A, book)["progress"]["pages_done"] >= 4, timeout_s=30)
    small = submit(url, B, 3)
    wait_until(lambda: view(url, B, small)["status"] in FINISHED, timeout_s=60, interval_s=0.05)
    return view(url, A, book), view(url, B, small)


@pytest.mark.slow
def test_a_small_job_finishes_while_another_keys_book_runs_and_a_persons_page_jumps_the_books(tmp_path):
    with shared_service(tmp_path) as (url, engine_url):
        book, small = book_and_small_job(url, engine_url)
        assert small["status"] == "succeeded"
        assert book["status"] == "running"
        assert book["progress"]["pages_done"] < 50, book["progress"]
        # A person's page while the book runs: it starts before book pages that reached the engine before it.
        answer = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes((200, 200)))}, headers=B, timeout=60)
        assert answer.status_code == 200, answer.text
        arrived = requests.get(f"{engine_url}/stand-in/request-ids", timeout=5).json()["request_ids"]
        started = requests.get(f"{engine_url}/stand-in/started", timeout=5).json()["request_ids"]
        # The remote engine names each call <request id>.<n>: this request sent one.
        page = next(name for name in arrived if name.startswith(answer.headers["X-Request-ID"] + "."))
        before_it = set(arrived[: arrived.index(page)])
        overtaken = [name for name in started[started.index(page) :] if name in before_it]
        assert overtaken, started[-10:]
        assert all(name.startswith("job:") for name in overtaken), overtaken


@pytest.mark.slow
def test_two_consumers_on_redis_share_the_same_way(tmp_path):
    with redis_server(tmp_path / "redis") as redis_url, shared_service(tmp_path, redis_url=redis_url) as (url, engine):
        book, small = book_and_small_job(url, engine)
        assert small["status"] == "succeeded"
        assert book["status"] == "running"
        assert book["progress"]["pages_done"] < 50, book["progress"]


@pytest.mark.slow
def test_a_jobs_page_is_not_starved_by_a_steady_stream_of_interactive_pages(tmp_path):
    """Three clients keep the engine (one page at a time) busy with /ocr pages; a job's pages still start once they
    have waited JOB_PRIORITY_DELAY_S (here 0.3 s) and the job finishes while the stream goes on."""
    keys = [KEY_A, KEY_B, "c" * 24, "d" * 24]
    stop = threading.Event()
    with shared_service(tmp_path, api_keys=",".join(keys), job_priority_delay_s=0.3, max_batch=1) as (url, _):

        def person(key: str) -> None:
            while not stop.is_set():
                answer = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes((200, 200)))},
                                       headers={"X-API-Key": key}, timeout=60)  # fmt: skip
                assert answer.status_code == 200, answer.text

        people = [threading.Thread(target=person, args=(key,)) for key in keys[1:]]
        for thread in people:
            thread.start()
        try:
            time.sleep(0.5)  # the stream is under way
            job = submit(url, A, 2)
            wait_until(lambda: view(url, A, job)["status"] in FINISHED, timeout_s=6, interval_s=0.05)
            still_streaming = all(thread.is_alive() for thread in people)
        finally:
            stop.set()
            for thread in people:
                thread.join(timeout=60)
        assert view(url, A, job)["status"] == "succeeded"
        assert still_streaming
