"""Document jobs in one process: the Flask test client, a fake engine, Huey's SQLite queue and a consumer in threads."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pymupdf
import pytest
from PIL import Image

from ocr_api.engines import EngineOutput, EngineRequest, EngineUnavailable
from ocr_api.http.state import jobs_of
from ocr_api.jobs import callbacks
from ocr_api.jobs.queue import STALE_S
from ocr_api.settings import Settings
from ocr_dev.servers import wait_until
from tests.conftest import CORPUS
from tests.fakes import FakeEngine, JobsApp, SlowEngine

KEY_A, KEY_B = "a" * 24, "b" * 24


def pdf_bytes(pages: int, password: str | None = None) -> bytes:
    document = pymupdf.open()
    for number in range(pages):
        document.new_page().insert_text((72, 72), f"page {number + 1}")
    if password:
        return document.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw=password, user_pw=password)
    return document.tobytes()


def stored_jobs(settings: Settings) -> list[str]:
    files = Path(settings.jobs_dir) / "files"
    return sorted(entry.name for entry in files.iterdir()) if files.exists() else []


def test_a_pdf_job_is_accepted_at_once_and_its_result_is_what_ocr_returns(make_jobs, settings):
    jobs_app = make_jobs()
    document = pdf_bytes(5)
    job = jobs_app.submit((document, "report.pdf"), task="markdown")
    assert job["status"] == "queued"
    assert job["pages_total"] == 5
    assert job["queue_position"] == 1
    assert set(job["urls"]) == {"self", "result", "pages", "events"}
    assert jobs_app.client.get(f"/jobs/{job['id']}/result").status_code == 202  # not finished: its status
    jobs_app.start()
    view = jobs_app.wait(job["id"])
    assert view["status"] == "succeeded"
    assert view["progress"]["pages_done"] == 5
    assert view["progress"]["pages"]["ok"] == 5
    result = jobs_app.client.get(f"/jobs/{job['id']}/result")
    direct = jobs_app.client.post("/ocr", data={"file": (io.BytesIO(document), "report.pdf"), "task": "markdown"})
    assert result.status_code == 200
    assert direct.status_code == 200
    different = {"timing", "image_path"}
    assert {k: v for k, v in result.json.items() if k not in different} == {
        k: v for k, v in direct.json.items() if k not in different
    }
    # Where the job keeps the file, not its place on this server (that is JOBS_DIR's business).
    assert result.json["image_path"] == f"jobs/{job['id']}/00000.pdf"
    assert (Path(jobs_app.jobs.settings.jobs_dir) / "files" / job["id"] / "uploads" / "00000.pdf").is_file()


def test_a_pdf_cut_short_as_a_job_is_partial_and_its_lost_pages_failed(make_jobs):
    jobs_app = make_jobs()
    whole = pdf_bytes(20)
    job = jobs_app.submit((whole[: len(whole) // 2], "cut.pdf"))
    jobs_app.start()
    view = jobs_app.wait(job["id"])
    assert view["status"] == "partial"  # not "succeeded": pages the file lost are not read
    result = jobs_app.client.get(f"/jobs/{job['id']}/result").json
    assert result["document"]["repaired"] is True
    lost = [page["page"] for page in result["pages"] if page["status"] == "failed"]
    assert lost == result["document"]["missing_pages"]
    assert lost
    assert {page["code"] for page in result["pages"] if page["status"] == "failed"} == {"page_missing"}
    assert len(jobs_app.engine.requests) == 20 - len(lost)


class FigureEngine(FakeEngine):
    """Says every page holds one figure, in its top-left quarter, and a text block."""

    def answer(self, request: EngineRequest) -> EngineOutput:
        text = "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n<|ref|>text<|/ref|><|det|>[[0, 600, 999, 700]]"
        text += "<|/det|>\nHi"
        return EngineOutput(text, "stop", 300, 12, request.max_tokens, request.guard)


def test_a_jobs_pictures_are_links_made_when_fetched_as_ocr_makes_them_never_stored_inline(make_jobs):
    jobs_app = make_jobs(FigureEngine(), api_keys=f"{KEY_A},{KEY_B}")
    owner = {"X-API-Key": KEY_A}
    document = pdf_bytes(3)
    job = jobs_app.submit((document, "doc.pdf"), headers=owner, annotate="true", figures="true")
    jobs_app.start()
    assert jobs_app.wait(job["id"], headers=owner)["status"] == "succeeded"
    pages = jobs_app.client.get(f"/jobs/{job['id']}/pages", headers=owner).json["pages"]
    result = jobs_app.client.get(f"/jobs/{job['id']}/result", headers=owner)
    assert "data:image" not in result.get_data(as_text=True)  # the result and the pages carry links, not pictures
    assert "data:image" not in json.dumps(pages)
    direct = jobs_app.client.post("/ocr", headers=owner, data={"file": (io.BytesIO(document), "doc.pdf"),
                                                              "annotate": "true", "figures": "true"}).json  # fmt: skip
    for number, (page, inline) in enumerate(zip(pages, direct["pages"], strict=True), start=1):
        base = f"http://localhost/jobs/{job['id']}/pages/{number}"
        assert page["annotated_image_url"] == f"{base}/annotated.png"
        (figure,) = page["figures"]
        assert (figure["figure"], figure["box"], figure["image_url"]) == (1, inline["figures"][0]["box"],
                                                                        f"{base}/figures/1.png")  # fmt: skip
        for url, data_url in ((page["annotated_image_url"], inline["annotated_image"]),
                              (figure["image_url"], inline["figures"][0]["image"])):  # fmt: skip
            served = jobs_app.client.get(url, headers=owner)
            assert (served.status_code, served.mimetype) == (200, "image/png")
            assert "immutable" in served.headers["Cache-Control"]
            made = Image.open(io.BytesIO(served.data))
            expected = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
            assert (made.size, made.convert("RGB").tobytes()) == (expected.size, expected.convert("RGB").tobytes())
            again = jobs_app.client.get(url, headers={**owner, "If-None-Match": served.headers["ETag"]})
            assert (again.status_code, again.data) == (304, b"")
            other = jobs_app.client.get(url, headers={"X-API-Key": KEY_B})  # behind the same keys as the job
            assert (other.status_code, other.json["code"]) == (404, "job_not_found")
    missing = jobs_app.client.get(f"/jobs/{job['id']}/pages/1/figures/2.png", headers=owner)
    assert (missing.status_code, missing.json["code"]) == (404, "picture_not_found")
    beyond = jobs_app.client.get(f"/jobs/{job['id']}/pages/9/annotated.png", headers=owner)
    assert (beyond.status_code, beyond.json["code"]) == (404, "picture_not_found")


def test_a_picture_that_does_not_exist_is_404_whatever_the_headers(make_jobs):
    jobs_app = make_jobs(FigureEngine())
    job = jobs_app.submit((pdf_bytes(2), "doc.pdf"), annotate="true", figures="true")
    jobs_app.start()
    assert jobs_app.wait(job["id"])["status"] == "succeeded"
    base = f"/jobs/{job['id']}/pages"
    for path, tag in ((f"{base}/3/annotated.png", f'"{job["id"]}-3-annotated-0"'),
                      (f"{base}/1/figures/9.png", f'"{job["id"]}-1-figure-9"'),
                      (f"{base}/1/figures/2.png", "*")):  # fmt: skip
        for headers in ({}, {"If-None-Match": tag}, {"If-None-Match": "*"}):
            answer = jobs_app.client.get(path, headers=headers)
            assert (answer.status_code, answer.json["code"]) == (404, "picture_not_found"), (path, headers)
    # Page numbers are ASCII digits: Arabic-Indic ١ is no page 1.
    answer = jobs_app.client.get(f"{base}/\u0661/figures/1.png")
    assert (answer.status_code, answer.json["code"]) == (404, "not_found")
    assert jobs_app.client.get(f"{base}/1/figures/1.png").status_code == 200


def test_a_jobs_picture_is_made_once_at_a_bounded_size_by_a_bounded_number_of_threads(make_jobs, monkeypatch):
    from ocr_api.jobs import service as job_service

    jobs_app = make_jobs(FigureEngine())
    job = jobs_app.submit((pdf_bytes(2), "doc.pdf"), annotate="true", figures="true")
    jobs_app.start()
    assert jobs_app.wait(job["id"])["status"] == "succeeded"
    drawn: list[tuple[int, int]] = []
    at_once, most = [0], [0]
    lock = threading.Lock()
    original = job_service.picture_png

    def counted(page, *args, **kwargs):
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        drawn.append(page.size)
        time.sleep(0.2)  # long enough for the other threads to arrive while it draws
        with lock:
            at_once[0] -= 1
        return original(page, *args, **kwargs)

    monkeypatch.setattr(job_service, "picture_png", counted)
    monkeypatch.setattr(job_service, "PICTURE_MAX_PIXELS", 50_000)
    names = ("annotated.png", "figures/1.png")
    urls = [f"/jobs/{job['id']}/pages/{index}/{name}" for index in (1, 2) for name in names]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(jobs_app.client.get, urls * 4))
    assert {answer.status_code for answer in answers} == {200}
    assert most[0] == job_service.PICTURES_AT_ONCE  # the others waited for a slot
    assert len(drawn) == len(urls)  # each made once, then read from the job's files
    assert all(width * height <= 50_000 for width, height in drawn)
    for url in urls:  # the same bytes every time
        assert len({answer.data for answer, asked in zip(answers, urls * 4, strict=True) if asked == url}) == 1
    # Every slot taken for longer than PICTURE_WAIT_S: 503 with Retry-After, as at capacity.
    monkeypatch.setattr(job_service, "PICTURE_WAIT_S", 0.1)
    slots = jobs_of(jobs_app.client.application)._picture_slots
    for _ in range(job_service.PICTURES_AT_ONCE):
        slots.acquire()
    try:
        kept = jobs_app.client.get(f"/jobs/{job['id']}/pages/1/annotated.png")
        assert kept.status_code == 200  # made already: read from the job's files, no slot needed
        other = jobs_app.submit((pdf_bytes(1), "other.pdf"), annotate="true")
        assert jobs_app.wait(other["id"])["status"] == "succeeded"
        busy = jobs_app.client.get(f"/jobs/{other['id']}/pages/1/annotated.png")
        assert (busy.status_code, busy.json["code"], busy.headers["Retry-After"]) == (503, "overloaded", "5")
    finally:
        for _ in range(job_service.PICTURES_AT_ONCE):
            slots.release()


def test_a_jobs_result_times_what_ocrs_times(make_jobs):
    jobs_app = make_jobs()
    job = jobs_app.submit((pdf_bytes(2), "doc.pdf"))
    jobs_app.start()
    assert jobs_app.wait(job["id"])["status"] == "succeeded"
    timing = jobs_app.client.get(f"/jobs/{job['id']}/result").json["timing"]
    direct = jobs_app.client.post("/ocr", data={"file": (io.BytesIO(pdf_bytes(2)), "doc.pdf")}).json["timing"]
    assert set(timing) == set(direct) == {"preparation_ms", "inference_ms", "total_ms"}
    assert timing["preparation_ms"] > 0


def test_a_job_that_asked_for_no_pictures_serves_none(make_jobs):
    jobs_app = make_jobs(FigureEngine())
    job = jobs_app.submit((pdf_bytes(1), "doc.pdf"))
    jobs_app.start()
    jobs_app.wait(job["id"])
    (page,) = jobs_app.client.get(f"/jobs/{job['id']}/pages").json["pages"]
    assert "annotated_image_url" not in page
    assert "figures" not in page
    answer = jobs_app.client.get(f"/jobs/{job['id']}/pages/1/annotated.png")
    assert (answer.status_code, answer.json["code"]) == (404, "picture_not_found")


def test_the_location_header_names_the_job(make_jobs):
    jobs_app = make_jobs()
    response = jobs_app.client.post("/jobs", data={"file": (io.BytesIO(pdf_bytes(1)), "a.pdf")})
    assert response.status_code == 202
    assert response.headers["Location"].endswith(f"/jobs/{response.json['id']}")


def test_a_job_of_several_files_answers_as_a_batch(make_jobs):
    jobs_app = make_jobs()
    jobs_app.start()
    png = sorted((CORPUS / "images").glob("*.png"))[0].read_bytes()
    job = jobs_app.submit((pdf_bytes(3), "a.pdf"), (png, "scan.png"), (pdf_bytes(2), "b.pdf"))
    assert job["pages_total"] == 6
    assert job["files_total"] == 3
    jobs_app.wait(job["id"])
    body = jobs_app.client.get(f"/jobs/{job['id']}/result").json
    assert body["total"] == 3
    assert body["succeeded"] == 3
    assert body["failed"] == 0
    assert [result["filename"] for result in body["results"]] == ["a.pdf", "scan.png", "b.pdf"]
    assert body["results"][0]["pages_total"] == 3
    assert "image" in body["results"][1]
    pages = jobs_app.client.get(f"/jobs/{job['id']}/pages").json["pages"]
    assert [(page["index"], page["filename"], page["page"]) for page in pages] == [
        (1, "a.pdf", 1), (2, "a.pdf", 2), (3, "a.pdf", 3), (4, "scan.png", None), (5, "b.pdf", 1), (6, "b.pdf", 2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        (b"just some text, not a document", {}, 415, "unsupported_media_type"),
        (pdf_bytes(2, password="secret-word"), {}, 422, "pdf_password_required"),
        (pdf_bytes(2, password="secret-word"), {"password": "wrong"}, 422, "pdf_password_incorrect"),
        (pdf_bytes(3), {"pages": "2-9"}, 400, "invalid_pages"),
        (pdf_bytes(1), {"task": "no-such-task"}, 400, "unknown_task"),
        (b"%PDF-1.7\n garbage that is not a PDF at all", {}, 422, "corrupt_pdf"),
    ],
)
def test_a_bad_file_gets_the_same_error_as_on_ocr_at_once_and_leaves_nothing(make_jobs, settings, case):
    content, fields, status, code = case
    jobs_app = make_jobs()
    response = jobs_app.client.post("/jobs", data={"file": (io.BytesIO(content), "x.pdf"), **fields})
    direct = jobs_app.client.post("/ocr", data={"file": (io.BytesIO(content), "x.pdf"), **fields})
    assert (response.status_code, response.json["code"]) == (status, code)
    assert (direct.status_code, direct.json["code"]) == (status, code)
    assert stored_jobs(settings) == []


def test_in_a_job_of_several_files_the_bad_one_is_named(make_jobs, settings):
    jobs_app = make_jobs()
    data = {"files": [(io.BytesIO(pdf_bytes(1)), "good.pdf"), (io.BytesIO(b"not an image"), "bad.txt")]}
    response = jobs_app.client.post("/jobs", data=data)
    assert response.status_code == 415
    assert response.json["error"].startswith("bad.txt: ")
    assert stored_jobs(settings) == []


def test_jobs_have_their_own_larger_limits(make_jobs, settings):
    jobs_app = make_jobs(max_upload_mb=1, max_pdf_pages=2, job_max_upload_mb=3, job_max_pages=40)
    big = pdf_bytes(30) + b"%" + b"x" * (1536 * 1024)  # 30 pages and 1.5 MiB: over both synchronous limits
    assert jobs_app.post("/ocr/batch", (big, "big.pdf")).status_code == 413
    assert jobs_app.submit((big, "big.pdf"))["pages_total"] == 30
    too_many = jobs_app.post("/jobs", (pdf_bytes(30), "a.pdf"), (pdf_bytes(30), "b.pdf"))
    assert (too_many.status_code, too_many.json["code"]) == (422, "too_many_pages")
    too_big = jobs_app.post("/jobs", (b"%PDF-" + b"x" * (4 << 20), "huge.pdf"))
    assert (too_big.status_code, too_big.json["code"]) == (413, "payload_too_large")
    # Each route's 413 names its own limits: 3 MiB and 2 x JOB_MAX_FILES + 16 parts here, 1 MiB and 48 for /ocr.
    assert too_big.json["error"].startswith("The request is larger than the upload limit of 3 MiB, has more than "
                                            f"{2 * settings.job_max_files + 16} form parts")  # fmt: skip
    parts = {f"field{index}": "x" for index in range(2 * settings.job_max_files + 20)}
    too_many_parts = jobs_app.client.post("/jobs", data={"file": (io.BytesIO(pdf_bytes(1)), "a.pdf"), **parts})
    assert (too_many_parts.status_code, too_many_parts.json["error"]) == (413, too_big.json["error"])
    on_ocr = jobs_app.post("/ocr/batch", (big, "big.pdf")).json["error"]
    assert on_ocr.startswith(f"The request is larger than the upload limit of 1 MiB, has more than "
                             f"{2 * settings.max_batch_files + 16} form parts")  # fmt: skip
    assert len(stored_jobs(settings)) == 1  # only the accepted one


def test_a_request_without_a_file_is_refused(make_jobs):
    jobs_app = make_jobs()
    response = jobs_app.client.post("/jobs", data={"task": "markdown"}, content_type="multipart/form-data")
    assert (response.status_code, response.json["code"]) == (400, "missing_file")
    response = jobs_app.client.post("/jobs", json={"image": "x"})
    assert (response.status_code, response.json["code"]) == (415, "not_multipart")


def test_unknown_jobs_and_bad_parameters_are_clear_errors(make_jobs):
    jobs_app = make_jobs()
    for path in ("/jobs/0123456789abcdef0123456789abcdef", "/jobs/nope/result", "/jobs/../../etc/pages"):
        response = jobs_app.client.get(path)
        assert response.status_code == 404, path
    assert jobs_app.client.get("/jobs/0123456789abcdef0123456789abcdef").json["code"] == "job_not_found"
    job = jobs_app.submit((pdf_bytes(1), "a.pdf"))
    response = jobs_app.client.get(f"/jobs/{job['id']}/pages?after=-1")
    assert (response.status_code, response.json["code"]) == (400, "invalid_parameter")


def test_pages_come_in_page_order_after_a_cursor(make_jobs):
    jobs_app = make_jobs()
    jobs_app.start()
    job = jobs_app.submit((pdf_bytes(12), "a.pdf"))
    jobs_app.wait(job["id"])
    first = jobs_app.client.get(f"/jobs/{job['id']}/pages?limit=5").json
    assert [page["index"] for page in first["pages"]] == [1, 2, 3, 4, 5]
    assert first["next_after"] == 5
    rest = jobs_app.client.get(f"/jobs/{job['id']}/pages?after={first['next_after']}").json
    assert [page["page"] for page in rest["pages"]] == list(range(6, 13))
    assert rest["pages_ready"] == 12
    # limit=0, as its error message allows: the status and counts alone.
    counts = jobs_app.client.get(f"/jobs/{job['id']}/pages?limit=0").json
    assert (counts["pages"], counts["next_after"], counts["pages_ready"]) == ([], 0, 12)


def parse_events(stream: str) -> list[dict]:
    events = []
    for block in stream.strip().split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def test_events_give_every_page_once_and_a_reconnect_misses_nothing(make_jobs):
    jobs_app = make_jobs(SlowEngine(delay_s=0.02))
    job = jobs_app.submit((pdf_bytes(8), "a.pdf"))
    jobs_app.start()
    events = parse_events(jobs_app.client.get(f"/jobs/{job['id']}/events").get_data(as_text=True))
    pages = [event for event in events if event["event"] == "page"]
    assert [event["id"] for event in pages] == [str(number) for number in range(1, 9)]
    assert [event["data"]["page"] for event in pages] == list(range(1, 9))
    assert events[-1]["event"] == "end"
    assert events[-1]["data"]["status"] == "succeeded"
    progress = [event["data"]["progress"]["pages_done"] for event in events if event["event"] == "progress"]
    assert progress == sorted(progress)
    assert progress[-1] == 8
    # A client that got pages 1..5 reconnects with Last-Event-ID: 5 and gets 6..8, then the end.
    again = parse_events(
        jobs_app.client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "5"}).get_data(as_text=True)
    )
    assert [event["id"] for event in again if event["event"] == "page"] == ["6", "7", "8"]
    assert again[-1]["event"] == "end"


def test_a_queued_job_is_cancelled_and_its_files_removed(make_jobs, settings):
    jobs_app = make_jobs()
    job = jobs_app.submit((pdf_bytes(3), "a.pdf"))
    uploads = Path(settings.jobs_dir) / "files" / job["id"] / "uploads"
    assert any(uploads.iterdir())
    response = jobs_app.client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json["status"] == "cancelled"
    assert not uploads.exists()
    after = jobs_app.submit((pdf_bytes(2), "b.pdf"))  # queued behind it: once it is done, the first was passed over
    jobs_app.start()
    assert jobs_app.wait(after["id"])["status"] == "succeeded"
    view = jobs_app.client.get(f"/jobs/{job['id']}").json
    assert (view["status"], view["finished_at"] is not None) == ("cancelled", True)
    assert response.json["finished_at"] is not None
    assert len(jobs_app.engine.requests) == 2  # the second job's pages alone: the consumer never ran the first
    assert (jobs_app.client.get(f"/jobs/{job['id']}/result").json["code"]) == "job_cancelled"


def test_a_running_job_is_cancelled_and_its_pages_at_the_engine_aborted(make_jobs, settings):
    engine = SlowEngine(delay_s=0.3)
    jobs_app = make_jobs(engine, engine_batch_pages=4)
    job = jobs_app.submit((pdf_bytes(40), "a.pdf"))
    jobs_app.start()
    wait_until(lambda: len(engine.requests) >= 8, timeout_s=10)  # running, its second window of pages out
    cancelled = jobs_app.client.delete(f"/jobs/{job['id']}").json
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None  # cancelled is finished, from the answer on
    submitted = len(engine.requests)
    # The consumer ends its run (the record finished by it, not by the API) with its pages aborted at the engine.
    wait_until(lambda: jobs_app.jobs.store.get(job["id"]).finished_at is not None, timeout_s=10)
    wait_until(lambda: engine.at_engine == 0, timeout_s=10)
    # No page reached the engine once the DELETE had answered, but the one being handed over at that moment.
    assert len(engine.requests) - submitted <= 1
    assert len(engine.requests) < 40
    assert engine.cancelled > 0
    assert not (Path(settings.jobs_dir) / "files" / job["id"] / "uploads").exists()
    assert jobs_app.jobs.service.job_admission.in_flight == 0
    assert jobs_app.jobs.service.admission.in_flight == 0
    # /pages of a cancelled job ends the documented loop: its pages are gone, and next_after says so.
    pages = jobs_app.client.get(f"/jobs/{job['id']}/pages?after=0").json
    assert (pages["status"], pages["pages"]) == ("cancelled", [])
    assert pages["next_after"] == pages["pages_ready"]


def test_a_finished_job_is_deleted_whole(make_jobs, settings):
    jobs_app = make_jobs()
    jobs_app.start()
    job = jobs_app.submit((pdf_bytes(2), "a.pdf"))
    jobs_app.wait(job["id"])
    assert jobs_app.client.delete(f"/jobs/{job['id']}").status_code == 204
    assert jobs_app.client.get(f"/jobs/{job['id']}").status_code == 404
    assert stored_jobs(settings) == []


def test_with_api_keys_a_job_belongs_to_the_key_that_made_it(make_jobs):
    jobs_app = make_jobs(api_keys=f"{KEY_A},{KEY_B}")
    job = jobs_app.submit((pdf_bytes(1), "a.pdf"), headers={"Authorization": f"Bearer {KEY_A}"})
    for path in ("", "/result", "/pages", "/events"):
        assert jobs_app.client.get(f"/jobs/{job['id']}{path}", headers={"X-API-Key": KEY_A}).status_code in (200, 202)
        other = jobs_app.client.get(f"/jobs/{job['id']}{path}", headers={"X-API-Key": KEY_B})
        assert (other.status_code, other.json["code"]) == (404, "job_not_found"), path
        assert jobs_app.client.get(f"/jobs/{job['id']}{path}").status_code == 401
    assert jobs_app.client.delete(f"/jobs/{job['id']}", headers={"X-API-Key": KEY_B}).status_code == 404


def test_a_job_whose_engine_stays_down_fails_its_pages_after_its_retries(make_jobs, caplog):
    engine = FakeEngine(fail_with=EngineUnavailable("connection refused"))
    jobs_app = make_jobs(engine, job_engine_retries=2, job_retry_delay_s=0)
    jobs_app.start()
    caplog.set_level("INFO")
    job = jobs_app.submit((pdf_bytes(3), "a.pdf"))
    view = jobs_app.wait(job["id"])
    assert view["status"] == "failed"
    assert view["runs"] == 3
    # Each planned retry is one WARNING naming the job, the cause and when it runs again; no error, no traceback.
    retries = [record for record in caplog.records if "waits for the engine" in record.getMessage()]
    assert [(record.levelname, record.getMessage()) for record in retries] == [
        ("WARNING", f"job {job['id']} waits for the engine (engine_unavailable): it runs again in 0 s, 2 retries left"),
        ("WARNING", f"job {job['id']} waits for the engine (engine_unavailable): it runs again in 0 s, 1 retry left"),
    ]
    assert not [record for record in caplog.records if record.name.startswith("huey") and record.exc_info]
    assert "Unhandled exception" not in caplog.text
    assert view["error"]["code"] == "engine_unavailable"
    assert view["progress"]["pages"]["failed"] == 3
    pages = jobs_app.client.get(f"/jobs/{job['id']}/pages").json["pages"]
    assert [page["code"] for page in pages] == ["engine_unavailable"] * 3
    result = jobs_app.client.get(f"/jobs/{job['id']}/result")
    assert (result.status_code, result.json["code"]) == (503, "engine_unavailable")


def test_a_stopped_consumer_leaves_the_job_queued_and_the_next_one_finishes_it(make_jobs):
    engine = SlowEngine(delay_s=0.1)
    jobs_app = make_jobs(engine, engine_batch_pages=4)
    job = jobs_app.submit((pdf_bytes(30), "a.pdf"))
    jobs_app.start()
    deadline = time.monotonic() + 20
    while jobs_app.client.get(f"/jobs/{job['id']}").json["progress"]["pages_done"] < 8:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    jobs_app.stop()
    view = jobs_app.client.get(f"/jobs/{job['id']}").json
    assert view["status"] == "queued"
    assert 8 <= view["progress"]["pages_done"] < 30
    done_before = view["progress"]["pages_done"]
    jobs_app.start()
    view = jobs_app.wait(job["id"])
    assert view["status"] == "succeeded"
    assert view["runs"] == 2
    assert view["progress"]["pages_done"] == 30
    pages = jobs_app.client.get(f"/jobs/{job['id']}/pages").json["pages"]
    assert [page["page"] for page in pages] == list(range(1, 31))
    # Pages stored before the stop were not sent again: at most the window was lost in flight.
    assert len(engine.requests) <= 30 + 4
    assert len(engine.requests) >= 30
    assert done_before > 0


def test_a_disk_that_fills_mid_job_stops_the_run_frees_its_slots_and_the_job_goes_on_later(make_jobs, monkeypatch):
    engine = SlowEngine(delay_s=0.02)
    jobs_app = make_jobs(engine, engine_batch_pages=4, job_engine_retries=1, job_retry_delay_s=0)
    store = jobs_app.jobs.store
    save_page, calls = store.save_page, []

    def full_once(job_id: str, index: int, page: dict) -> None:
        calls.append(index)
        if len(calls) == 5:  # the disk is full for this one write, then space comes back
            raise sqlite3.OperationalError("database or disk is full")
        save_page(job_id, index, page)

    monkeypatch.setattr(store, "save_page", full_once)
    job = jobs_app.submit((pdf_bytes(12), "a.pdf"))
    jobs_app.start()
    view = jobs_app.wait(job["id"])
    assert view["status"] == "succeeded"
    assert view["runs"] == 2  # the failed write ended the first run; Huey ran it again
    pages = jobs_app.client.get(f"/jobs/{job['id']}/pages").json["pages"]
    assert [page["page"] for page in pages] == list(range(1, 13))
    assert jobs_app.jobs.service.job_admission.in_flight == 0
    assert jobs_app.jobs.service.admission.in_flight == 0


def orphan(jobs_app: JobsApp, job_id: str, heartbeat_at: float) -> None:
    """Leave what a consumer killed mid-job leaves: its task taken from the queue, the job running, its lock held."""
    store, queue = jobs_app.jobs.store, jobs_app.jobs.queue
    record = store.get(job_id)
    queue.huey.flush()
    record.status, record.heartbeat_at = "running", heartbeat_at
    store.save(record)
    queue.huey.put_if_empty(f"{queue.huey.name}.lock.job-{job_id}", "1")


def test_the_warden_runs_again_a_job_whose_consumer_died(make_jobs):
    jobs_app = make_jobs()
    job = jobs_app.submit((pdf_bytes(4), "a.pdf"))
    queue = jobs_app.jobs.queue
    orphan(jobs_app, job["id"], heartbeat_at=time.time() - STALE_S - 1)
    assert queue.sweep()["restarted"] == [job["id"]]
    assert queue.sweep()["restarted"] == []  # once per stale heartbeat, whoever sweeps
    jobs_app.start()
    assert jobs_app.wait(job["id"])["status"] == "succeeded"


def test_a_restarted_sole_consumer_takes_up_its_orphaned_job_at_once(make_jobs):
    jobs_app = make_jobs()
    job = jobs_app.submit((pdf_bytes(3), "a.pdf"))
    orphan(jobs_app, job["id"], heartbeat_at=time.time())  # killed a moment ago: the heartbeat is fresh
    jobs_app.start()  # it holds JOBS_DIR's consumer lock: no other consumer can be running that job
    view = jobs_app.wait(job["id"], timeout_s=STALE_S / 2)
    assert view["status"] == "succeeded"
    assert view["runs"] == 1


def test_a_restarted_consumer_queues_its_orphans_again_before_any_worker_takes_a_job(make_jobs, monkeypatch):
    """Else a worker could take a job queued at the last stop and mark it running, and the recovery that follows
    would take that for an orphan and run it a second time beside the first (seen with four workers)."""
    jobs_app = make_jobs(job_workers=4)
    queue = jobs_app.jobs.queue
    workers_at_recovery: list[object] = []
    recover = queue.recover

    def noting_recover(*args, **kwargs):
        workers_at_recovery.append(queue._consumer)
        return recover(*args, **kwargs)

    monkeypatch.setattr(queue, "recover", noting_recover)
    jobs_app.start()
    assert workers_at_recovery[:1] == [None]


def test_finished_jobs_expire_after_the_ttl(make_jobs, settings):
    jobs_app = make_jobs(job_ttl=60)
    jobs_app.start()
    job = jobs_app.submit((pdf_bytes(2), "a.pdf"))
    jobs_app.wait(job["id"])
    queue = jobs_app.jobs.queue
    assert queue.sweep()["expired"] == []
    assert queue.sweep(now=time.time() + 61)["expired"] == [job["id"]]
    assert jobs_app.client.get(f"/jobs/{job['id']}").status_code == 404
    assert stored_jobs(settings) == []
    assert jobs_app.jobs.store.page(job["id"], 1) is None


def test_synchronous_requests_get_through_while_a_job_fills_its_share(make_jobs, tmp_path):
    engine = SlowEngine(delay_s=0.05)
    jobs_app = make_jobs(engine, max_pages_in_flight=6, job_pages_in_flight=4, engine_batch_pages=32)
    job = jobs_app.submit((pdf_bytes(60), "a.pdf"))
    jobs_app.start()
    jobs_app.wait(job["id"], statuses=("running",))
    answered = []
    while jobs_app.client.get(f"/jobs/{job['id']}").json["status"] == "running":
        response = jobs_app.client.post("/ocr", data={"file": (io.BytesIO(pdf_bytes(2)), "a.pdf")})
        answered.append(response.status_code)
    assert answered
    assert set(answered) == {200}
    assert jobs_app.jobs.service.job_admission.in_flight == 0
    assert engine.most_at_engine <= 6
    assert jobs_app.wait(job["id"])["status"] == "succeeded"


def test_jobs_dir_unwritable_is_503_and_nothing_is_queued(make_jobs, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where JOBS_DIR's files directory should be")
    jobs_app = make_jobs(jobs_dir=str(tmp_path / "jobs"))
    (tmp_path / "jobs" / "files").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "jobs" / "files").write_text("in the way")
    response = jobs_app.client.post("/jobs", data={"file": (io.BytesIO(pdf_bytes(1)), "a.pdf")})
    assert (response.status_code, response.json["code"]) == (503, "jobs_storage_unavailable")
    assert jobs_app.jobs.queue.queue_depth() == 0


def test_a_jobs_dir_that_cannot_be_made_is_503_on_every_job_route(make_jobs, tmp_path):
    (tmp_path / "a-file").write_text("JOBS_DIR would have to be made inside this file")
    jobs_app = make_jobs(jobs_dir=str(tmp_path / "a-file" / "jobs"))
    response = jobs_app.post("/jobs", (pdf_bytes(1), "a.pdf"))
    assert (response.status_code, response.json["code"]) == (503, "jobs_storage_unavailable")
    assert "Retry-After" in response.headers
    response = jobs_app.client.get("/jobs/0123456789abcdef0123456789abcdef")
    assert (response.status_code, response.json["code"]) == (503, "jobs_storage_unavailable")
    assert jobs_app.client.get("/health").status_code == 200  # the rest of the service is unaffected


def test_an_unreachable_redis_is_503_and_leaves_no_files(make_jobs, tmp_path):
    from ocr_dev.servers import free_port

    jobs_app = make_jobs(redis_url=f"redis://127.0.0.1:{free_port()}/0", jobs_dir=str(tmp_path / "shared"))
    response = jobs_app.post("/jobs", (pdf_bytes(2), "a.pdf"))
    assert (response.status_code, response.json["code"]) == (503, "jobs_storage_unavailable")
    files = tmp_path / "shared" / "files"
    assert not files.exists() or list(files.iterdir()) == []


FULL_DISK_SCRIPT = """
import io, resource, signal, sys
sys.path.insert(0, sys.argv[1])
from ocr_api.http.app import create_app
from ocr_api.settings import Settings
from ocr_api.service import OcrService
from tests.fakes import FakeEngine, JobsApp, SlowEngine
from ocr_api.http.state import jobs_of
settings = Settings(upload_folder=sys.argv[2] + "/uploads", jobs_dir=sys.argv[2] + "/jobs")
service = OcrService(settings, FakeEngine())
service.start()
app = create_app(service=service)
client = app.test_client()
jobs_of(app)  # the queue's database is made before the disk fills
# The kernel now refuses to let this process write a file past 64 KiB (EFBIG), as a full disk refuses (ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
response = client.post("/jobs", data={"file": (io.BytesIO(sys.stdin.buffer.read()), "a.pdf")})
print(response.status_code, response.json["code"], jobs_of(app).queue.queue_depth())
"""


def test_a_full_disk_is_507_and_leaves_no_job(tmp_path):
    document = pdf_bytes(40) + b"%" + b"x" * (256 * 1024)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(  # noqa: PLW1510 - the status is asserted below, with the child's stderr
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(repo), str(tmp_path)],
        input=document, capture_output=True, timeout=60, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["507", "jobs_storage_full", "0"]
    files = tmp_path / "jobs" / "files"
    assert not files.exists() or list(files.iterdir()) == []


class Receiver(BaseHTTPRequestHandler):
    """A client's callback endpoint on loopback: records each POST, fails the first ``failures`` of them."""

    received: ClassVar[list[tuple[dict, bytes]]] = []
    failures = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        failing = len(type(self).received) <= type(self).failures
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("OneReceiver", (Receiver,), {"received": [], "failures": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook?job=1", handler
    server.shutdown()
    server.server_close()


def test_a_finished_job_calls_back_once_signed(make_jobs, receiver):
    url, handler = receiver
    handler.failures = 1  # the first delivery fails: Huey delivers it again
    secret = "callback-secret-0123456789"
    jobs_app = make_jobs(callback_secret=secret, callback_allow_private=True)
    jobs_app.start()
    job = jobs_app.submit((pdf_bytes(2), "a.pdf"), callback_url=url)
    jobs_app.wait(job["id"])
    deadline = time.monotonic() + 20
    while jobs_app.client.get(f"/jobs/{job['id']}").json["callback"].get("delivered") is not True:
        assert time.monotonic() < deadline, jobs_app.client.get(f"/jobs/{job['id']}").json["callback"]
        time.sleep(0.1)
    assert len(handler.received) == 2
    headers, body = handler.received[-1]
    assert callbacks.verify(secret, body, headers[callbacks.SIGNATURE_HEADER])
    assert not callbacks.verify("another-secret", body, headers[callbacks.SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["id"] == job["id"]
    assert payload["status"] == "succeeded"
    assert "callback" not in payload  # how its own delivery goes cannot be known while it is being sent
    assert jobs_app.client.get(f"/jobs/{job['id']}").json["callback"]["attempts"] == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "http://user:pass@8.8.8.8/hook",
        "not a url",
    ],
)
def test_callbacks_to_inside_addresses_or_odd_urls_are_refused(make_jobs, settings, url):
    jobs_app = make_jobs(callback_secret="callback-secret-0123456789")
    response = jobs_app.client.post("/jobs", data={"file": (io.BytesIO(pdf_bytes(1)), "a.pdf"), "callback_url": url})
    assert (response.status_code, response.json["code"]) == (400, "callback_url_refused")
    assert stored_jobs(settings) == []


def test_a_public_address_is_a_valid_callback_target():
    target = callbacks.check_url("https://8.8.8.8:8443/hooks/ocr?x=1", allow_private=False)
    assert (target.scheme, target.address, target.port, target.path) == ("https", "8.8.8.8", 8443, "/hooks/ocr?x=1")


def test_without_a_secret_callbacks_are_refused(make_jobs):
    jobs_app = make_jobs()
    data = {"file": (io.BytesIO(pdf_bytes(1)), "a.pdf"), "callback_url": "https://8.8.8.8/hook"}
    response = jobs_app.client.post("/jobs", data=data)
    assert (response.status_code, response.json["code"]) == (400, "callbacks_disabled")


def test_a_service_that_never_sees_a_job_creates_no_jobs_dir(client, settings):
    assert client.get("/health").status_code == 200
    assert not os.path.exists(settings.jobs_dir)
