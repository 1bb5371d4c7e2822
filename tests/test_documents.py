"""PDFs: detection, page selection, encryption, damage, the pixel budget, per-page results and bounded memory."""

from __future__ import annotations

import base64
import concurrent.futures
import gc
import io
import threading
import time
import weakref
from dataclasses import replace

import numpy as np
import pymupdf
import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from ocr_api import documents
from ocr_api.documents import PdfLimits, is_pdf, open_pdf, render_page
from ocr_api.engines import EngineOutput, EngineRequest
from ocr_api.errors import ApiError
from ocr_api.options import PageSelection
from ocr_api.preparation import Deadline
from ocr_dev.inputs import make_pdf, png_bytes, scanned_page, text_page_pdf
from tests.conftest import CORPUS
from tests.fakes import FakeEngine, SteppingClock
from tests.hostile import pdf_content_bomb

LIMITS = PdfLimits(dpi=144, max_pages=100, max_page_pixels=40_000_000)


def _post(client, files, path="/ocr", field="file", **form):
    # Encoded here, as HTTP clients do: the test client's own encoder spools large bodies to an unclosed file.
    body, content_type = encode_multipart_formdata([*form.items(), *((field, (n, c)) for n, c in files)])
    return client.post(path, data=body, content_type=content_type)


# --- the documents module ---


def test_pdfs_are_told_by_their_bytes():
    assert is_pdf(make_pdf(1))
    assert is_pdf(b"\xef\xbb\xbf  junk before the header %PDF-1.4\n")
    assert not is_pdf(png_bytes())
    assert not is_pdf(b"%PDF" + b"-" * 0 + b" no dash")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("", list(range(10))),
        ("1-3,7", [0, 1, 2, 6]),
        (" 10 ", [9]),
        ("2,1", [1, 0]),
    ],
)
def test_page_selection(spec, expected):
    assert PageSelection.parse(spec).indices(page_count=10, max_pages=100) == expected


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ("0", "invalid_pages"),
        ("11", "invalid_pages"),
        ("3-1", "invalid_pages"),
        ("1-", "invalid_pages"),
        ("a", "invalid_pages"),
        ("1;2", "invalid_pages"),
    ],
)
def test_bad_page_selections_are_400(spec, code):
    with pytest.raises(ApiError) as caught:
        PageSelection.parse(spec).indices(page_count=10, max_pages=100)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_a_malformed_selection_is_refused_before_any_document_is_seen():
    with pytest.raises(ApiError) as caught:
        PageSelection.parse("1-")
    assert caught.value.code == "invalid_pages"
    assert PageSelection.parse("7").ranges == ((7, 7),)  # in range or not: that waits for the document


def test_the_page_cap_refuses_rather_than_cuts():
    with pytest.raises(ApiError) as caught:
        PageSelection().indices(page_count=500, max_pages=100)
    assert (caught.value.status, caught.value.code) == (422, "too_many_pages")
    assert "pages=" in caught.value.message
    assert len(PageSelection.parse("401-500").indices(page_count=500, max_pages=100)) == 100


def test_encrypted_pdf_needs_its_password():
    data = make_pdf(2, password="s3cret")
    for password, code in [(None, "pdf_password_required"), ("wrong", "pdf_password_incorrect")]:
        with pytest.raises(ApiError) as caught:
            open_pdf(data, password)
        assert (caught.value.status, caught.value.code) == (422, code)
    assert open_pdf(data, "s3cret").page_count == 2


def test_a_damaged_pdf_is_repaired_and_garbage_is_refused():
    data = make_pdf(2)
    damaged = data.replace(b"startxref", b"startxerf")  # the cross-reference table can no longer be found
    assert open_pdf(damaged).page_count == 2
    with pytest.raises(ApiError) as caught:
        open_pdf(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    assert (caught.value.status, caught.value.code) == (422, "corrupt_pdf")


def test_pages_render_at_the_configured_dpi_on_white():
    document = open_pdf(make_pdf(1))
    page = render_page(document, 0, LIMITS)
    assert page.image.mode == "RGB"
    assert page.size == page.image.size == ((595 * 2), (842 * 2))  # 144 dpi: twice the PDF's 72 points per inch
    assert page.image.getpixel((5, 5)) == (255, 255, 255)


def test_a_huge_page_is_refused_before_rendering():
    document = open_pdf(make_pdf(1, size=(14_400, 14_400)))
    started = time.perf_counter()
    with pytest.raises(ApiError) as caught:
        render_page(document, 0, LIMITS)
    assert (caught.value.status, caught.value.code) == (422, "page_too_large")
    assert time.perf_counter() - started < 1


def test_a_page_past_its_preparation_budget_is_422_preparation_timeout():
    document = open_pdf(pdf_content_bomb(8 << 20))
    with pytest.raises(ApiError) as caught:
        # Each reading of this clock is 20 s later: the walk through the page's streams finds 30 s spent.
        render_page(document, 0, LIMITS, deadline=Deadline(30, clock=SteppingClock(20)))
    assert (caught.value.status, caught.value.code) == (422, "preparation_timeout")
    assert render_page(document, 0, LIMITS, deadline=Deadline(30, clock=SteppingClock(0))).image.mode == "RGB"


def _drawn(pdf: bytes, dpi: int, rotation: int = 0) -> Image.Image:
    document = open_pdf(pdf)
    document[0].set_rotation(rotation)
    return render_page(document, 0, replace(LIMITS, dpi=dpi)).image


def _whole_and_banded(monkeypatch, pdf: bytes, dpi: int, rotation: int = 0) -> tuple[np.ndarray, np.ndarray]:
    whole = _drawn(pdf, dpi, rotation)
    monkeypatch.setattr(documents, "DRAWN_WHOLE_UP_TO_PIXELS", 0)
    monkeypatch.setattr(documents, "BAND_PIXELS", 97 * whole.width)  # bands of 97 rows: edges cross lines of text
    banded = _drawn(pdf, dpi, rotation)
    assert banded.size == whole.size
    return np.asarray(whole, dtype=np.float64), np.asarray(banded, dtype=np.float64)


def _db(whole: np.ndarray, banded: np.ndarray) -> float:
    error = float(np.mean((whole - banded) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


@pytest.mark.parametrize(("dpi", "rotation"), [(144, 0), (199, 90), (300, 270)])
def test_a_large_text_page_is_drawn_in_bands_identical_to_the_whole_page(monkeypatch, dpi, rotation):
    whole, banded = _whole_and_banded(monkeypatch, text_page_pdf(), dpi, rotation)
    assert np.array_equal(whole, banded)


def test_drawings_and_images_in_bands_differ_by_a_few_levels_at_most(monkeypatch):
    document = pymupdf.open()
    page = document.new_page(width=612, height=792)
    page.insert_text((72, 100), "Base-14 Helvetica, drawn by MuPDF itself. " * 2, fontsize=9)
    page.draw_circle((300, 400), 120, color=(1, 0, 0), fill=(0, 0, 1))
    page.draw_line((50, 700), (560, 90), width=0.7)
    whole, banded = _whole_and_banded(monkeypatch, document.tobytes(), 144)
    assert _db(whole, banded) > 55  # a glyph of a base-14 font, where a band's edge crosses it
    document = pymupdf.open()
    page = document.new_page(width=612, height=792)
    page.insert_image(pymupdf.Rect(30, 40, 580, 760), stream=scanned_page((1700, 2200), "JPEG", seed=3))
    whole, banded = _whole_and_banded(monkeypatch, document.tobytes(), 295)  # the scan enlarged 1.3x
    assert _db(whole, banded) > 50  # MuPDF scales an image by the region it draws


def test_the_preparation_budget_is_checked_between_bands(monkeypatch):
    reads = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    monkeypatch.setattr(documents, "DRAWN_WHOLE_UP_TO_PIXELS", 0)
    page = render_page(open_pdf(make_pdf(1)), 0, LIMITS, deadline=Deadline(30, clock=clock)).image
    banded_reads = len(reads)
    monkeypatch.setattr(documents, "DRAWN_WHOLE_UP_TO_PIXELS", 10**9)
    reads.clear()
    render_page(open_pdf(make_pdf(1)), 0, LIMITS, deadline=Deadline(30, clock=clock))
    bands = -(-page.height // max(1, documents.BAND_PIXELS // page.width))
    assert banded_reads - len(reads) == bands


# --- through the API, with the fake engine ---


def test_the_50_page_corpus_pdf_gives_50_ordered_pages_in_pixels(client, fake_engine):
    data = (CORPUS / "pdfs" / "joined.pdf").read_bytes()
    response = _post(client, [("joined.pdf", data)], task="markdown")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["document"] == {"format": "PDF", "page_count": 50, "dpi": 144, "repaired": False, "missing_pages": []}
    assert [page["page"] for page in body["pages"]] == list(range(1, 51))
    assert (body["pages_total"], body["pages_failed"]) == (50, 0)
    first = body["pages"][0]
    assert first["status"] == "ok"
    assert (first["width"], first["height"]) == (1191, 1684)  # A4 (595.28 x 841.89 pt) at 144 dpi
    # The fake engine answers one block covering [[0, 0, 999, 999]]: the whole page, in pixels.
    assert first["blocks"][0]["boxes"] == [[0, 0, 1191, 1684]]
    assert "<|" not in first["markdown"]
    assert body["text"].count("<--- Page Split --->") == 49
    assert len(fake_engine.requests) == 50
    assert body["image_path"].endswith(".pdf")


def test_page_selection_through_the_api(client):
    body = _post(client, [("doc.pdf", make_pdf(10))], pages="1-3,7").get_json()
    assert [page["page"] for page in body["pages"]] == [1, 2, 3, 7]
    assert body["document"]["page_count"] == 10


def test_a_document_with_a_bad_page_returns_the_good_ones(client):
    data = make_pdf(3, p2=(14_400, 14_400))
    response = _post(client, [("poster.pdf", data)])
    assert response.status_code == 200
    body = response.get_json()
    assert [page["status"] for page in body["pages"]] == ["ok", "failed", "ok"]
    assert body["pages"][1]["code"] == "page_too_large"
    assert body["pages_failed"] == 1


def test_encrypted_pdf_through_the_api(client):
    data = make_pdf(1, password="pw")
    response = _post(client, [("locked.pdf", data)])
    assert (response.status_code, response.get_json()["code"]) == (422, "pdf_password_required")
    assert _post(client, [("locked.pdf", data)], password="pw").status_code == 200


def test_a_batch_mixes_images_and_pdfs_in_upload_order(client, fake_engine):
    files = [("a.png", png_bytes((64, 48))), ("b.pdf", make_pdf(2)), ("c.txt", b"text")]
    body = _post(client, files, path="/ocr/batch", field="files").get_json()
    assert [r["filename"] for r in body["results"]] == ["a.png", "b.pdf", "c.txt"]
    image, document, text = body["results"]
    assert "pages" not in image
    assert image["blocks"][0]["boxes"] == [[0, 0, 64, 48]]
    assert len(document["pages"]) == 2
    assert text["code"] == "unsupported_media_type"
    # One stream for the whole request, in upload order.
    assert [r.image.size for r in fake_engine.requests] == [(64, 48), (1190, 1684), (1190, 1684)]


def test_the_corpus_pdf_with_broken_fonts_is_served(client):
    data = (CORPUS / "pdfs" / "has-bad-fonts.pdf").read_bytes()
    response = _post(client, [("has-bad-fonts.pdf", data)])
    assert response.status_code == 200
    assert response.get_json()["pages_total"] == 1


def test_too_many_pages_and_bad_selection_are_clear_errors(make_client):
    client = make_client(max_pdf_pages=5)
    response = _post(client, [("long.pdf", make_pdf(6))])
    assert (response.status_code, response.get_json()["code"]) == (422, "too_many_pages")
    response = _post(client, [("long.pdf", make_pdf(6))], pages="7")
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_pages")


class FullWindowEngine(FakeEngine):
    """Answers a page only once ``window`` pages are at it (the oldest first), and the rest once all ``pages`` came.

    A service that waited for a group's slowest page would never fill the window again; so that such a service
    fails the test instead of hanging it, the engine answers everything it holds when no page has come for
    ``STALL_SECONDS`` and counts that in ``stalls``. It keeps no image; ``alive_at_submit`` says how many images of
    pages already answered the service still held each time a page arrived.
    """

    STALL_SECONDS = 5.0

    def __init__(self, window: int, pages: int) -> None:
        super().__init__()
        self.window = window
        self.pages = pages
        self.stalls = 0
        self.at_engine: list[tuple[concurrent.futures.Future, EngineOutput, weakref.ref]] = []
        self.at_engine_when_sent: list[int] = []
        self.answered: list[weakref.ref] = []
        self.alive_at_submit: list[int] = []
        self.last_sent = time.monotonic()
        self._held = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._answer_a_stall, daemon=True).start()

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        gc.collect()
        future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()
        with self._held:
            self.alive_at_submit.append(sum(ref() is not None for ref in self.answered))
            self.at_engine_when_sent.append(len(self.at_engine))
            self.at_engine.append((future, self.answer(request), weakref.ref(request.image)))
            self.last_sent = time.monotonic()
            if len(self.at_engine_when_sent) == self.pages:
                self._answer_all()
            elif len(self.at_engine) == self.window:
                self._answer_oldest()
        return future

    def _answer_oldest(self) -> None:
        future, output, image = self.at_engine.pop(0)
        self.answered.append(image)
        future.set_result(output)

    def _answer_all(self) -> None:
        while self.at_engine:
            self._answer_oldest()

    def _answer_a_stall(self) -> None:
        while not self._stop.wait(0.1):
            with self._held:
                if self.at_engine and time.monotonic() - self.last_sent > self.STALL_SECONDS:
                    self.stalls += 1
                    self._answer_all()

    def close(self) -> None:
        self._stop.set()


def test_the_engine_always_has_a_full_window_and_no_answered_page_stays_in_memory(make_client):
    engine = FullWindowEngine(window=4, pages=40)
    client = make_client(engine=engine, max_pdf_pages=200, engine_batch_pages=4)
    response = _post(client, [("long.pdf", make_pdf(40))])
    engine.close()
    assert response.status_code == 200
    assert len(response.get_json()["pages"]) == 40
    # The next page is sent the moment one is answered: after the first four, always three others at the engine,
    # and the service never stopped sending while pages were at the engine.
    assert (engine.at_engine_when_sent, engine.stalls) == ([0, 1, 2] + [3] * 37, 0)
    # The service drops a page's pixels once it is sent: no answered page's image is ever still alive.
    assert engine.alive_at_submit == [0] * 40
    assert client.application.extensions["ocr_service"].admission.in_flight == 0


class ScriptedEngine(FakeEngine):
    """Answers the pages, in the order they are sent, with the scripts' (text, finish_reason) pairs in turn."""

    def __init__(self, *scripts: list[tuple[str, str]]) -> None:
        super().__init__()
        self.answers = [pair for script in scripts for pair in script]

    def answer(self, request: EngineRequest) -> EngineOutput:
        text, finish = self.answers.pop(0)
        return replace(super().answer(request), text=text, finish_reason=finish)


LOOP = "Total: 12.00\n" + "| 0 | 0 |\n" * 40


def test_every_page_reports_truncation_and_repetition_loops(make_client):
    engine = ScriptedEngine([("A clean page.", "stop"), (LOOP, "stop"), ("cut off mid-sent", "length")])
    body = _post(make_client(engine=engine, runaway_retries=0), [("doc.pdf", make_pdf(3))]).get_json()
    assert [page["status"] for page in body["pages"]] == ["ok", "repetitive", "truncated"]
    assert [page["repetition_loop"] for page in body["pages"]] == [False, True, False]
    assert [page["truncated"] for page in body["pages"]] == [False, False, True]
    assert [page["attempts"] for page in body["pages"]] == [1, 1, 1]
    assert (body["pages_repetitive"], body["pages_truncated"], body["finish_reason"]) == (1, 1, "length")


def test_runaway_pages_are_retried_with_a_stronger_guard(make_client):
    engine = ScriptedEngine(
        [("A clean page.", "stop"), (LOOP, "stop"), ("cut off mid-sent", "length")],
        [("Page two, read properly.", "stop"), ("Page three, complete.", "stop")],
    )
    body = _post(make_client(engine=engine), [("doc.pdf", make_pdf(3))]).get_json()
    assert [page["status"] for page in body["pages"]] == ["ok", "ok", "ok"]
    assert [page["attempts"] for page in body["pages"]] == [1, 2, 2]
    assert body["pages_retried"] == 2
    assert body["pages"][1]["text"] == "Page two, read properly."
    guards = [(r.guard.ngram_size, r.guard.window_size) for r in engine.requests]
    assert guards == [(20, 90)] * 3 + [(10, 180)] * 2  # halved n-gram, doubled window


def test_a_runaway_page_goes_again_at_once_ahead_of_the_pages_not_yet_sent(make_client):
    engine = ScriptedEngine([(LOOP, "stop"), ("Page one, read properly.", "stop"), ("Two.", "stop"), ("3.", "stop")])
    client = make_client(engine=engine, engine_batch_pages=1)  # one page at the engine at a time: order is plain
    body = _post(client, [("doc.pdf", make_pdf(3))]).get_json()
    assert [page["attempts"] for page in body["pages"]] == [2, 1, 1]
    assert [r.guard.ngram_size for r in engine.requests] == [20, 10, 20, 20]  # page 1, page 1 again, 2, 3


def test_a_page_that_still_runs_away_is_marked_not_dropped(make_client):
    engine = ScriptedEngine([(LOOP, "stop")], [(LOOP, "length")])
    body = _post(make_client(engine=engine), [("doc.pdf", make_pdf(1))]).get_json()
    (page,) = body["pages"]
    assert (page["status"], page["attempts"], page["repetition_loop"]) == ("truncated", 2, True)
    assert page["text"].startswith("Total: 12.00")


def test_a_budget_the_caller_lowered_is_not_retried(make_client):
    engine = ScriptedEngine([("cut off by request", "length")])
    body = _post(make_client(engine=engine), [("scan.png", png_bytes())], max_tokens="7").get_json()
    assert (body["truncated"], body["attempts"]) == (True, 1)
    assert engine.answers == []


def test_an_image_reports_a_repetition_loop_too(make_client):
    engine = ScriptedEngine([("row\n" * 100, "stop")])
    body = _post(make_client(engine=engine, runaway_retries=0), [("scan.png", png_bytes())]).get_json()
    assert (body["repetition_loop"], body["truncated"]) == (True, False)


def _decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_figures_are_cropped_and_the_page_annotated_in_pixels(make_client):
    page = Image.new("RGB", (400, 300), "white")
    page.paste((255, 0, 0), (100, 100, 300, 200))  # the figure, where the model will say it is
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    grounded = (
        "<|ref|>image<|/ref|><|det|>[[250, 333, 750, 666]]<|/det|>\n"
        "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 100]]<|/det|>\nHi"
    )
    engine = ScriptedEngine([(grounded, "stop")])
    client = make_client(engine=engine)
    body = _post(client, [("page.png", buffer.getvalue())], task="markdown", figures="true", annotate="1").get_json()
    (figure,) = body["figures"]
    assert (figure["figure"], figure["box"]) == (1, [100, 100, 300, 200])
    crop = _decode_data_url(figure["image"])
    assert crop.size == (200, 100)
    assert crop.convert("RGB").getcolors() == [(200 * 100, (255, 0, 0))]
    annotated = _decode_data_url(body["annotated_image"]).convert("RGB")
    assert annotated.size == (400, 300)
    assert annotated.getpixel((100, 150)) == (0x1F, 0x77, 0xB4)  # the image block's box edge, in its colour
    assert annotated.getpixel((200, 150)) == (255, 0, 0)  # inside the box the page is untouched
    assert "![figure 1](#figure-1)" in body["markdown"]


def test_pictures_are_only_made_when_asked_and_flags_are_checked(client):
    body = _post(client, [("page.png", png_bytes())]).get_json()
    assert "figures" not in body
    assert "annotated_image" not in body
    response = _post(client, [("page.png", png_bytes())], figures="maybe")
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_flag")


def test_pdf_pages_carry_their_own_figures(make_client):
    grounded = "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>"
    engine = ScriptedEngine([(grounded, "stop"), (grounded, "stop")])
    body = _post(make_client(engine=engine), [("doc.pdf", make_pdf(2))], figures="yes").get_json()
    for page in body["pages"]:
        (figure,) = page["figures"]
        assert _decode_data_url(figure["image"]).size == (round(499 / 999 * 1190), round(499 / 999 * 1684))
        assert "annotated_image" not in page


def test_a_pdf_page_is_checked_as_an_uploaded_image_would_be(client, fake_engine):
    # 1 x 1 pt renders as 2 x 2 pixels; 14,400 x 8 pt as 28,800 x 16: the same sizes uploaded as images get 422.
    data = make_pdf(3, p1=(1, 1), p3=(14_400, 8))
    body = _post(client, [("odd.pdf", data)]).get_json()
    assert [page["status"] for page in body["pages"]] == ["failed", "ok", "failed"]
    assert [body["pages"][0]["code"], body["pages"][2]["code"]] == ["image_too_small", "image_aspect_ratio"]
    assert "Page 1 at 144 dpi is 2x2 pixels" in body["pages"][0]["error"]
    assert len(fake_engine.requests) == 1  # only the good page reached the engine
    for size in [(2, 2), (28_800, 16)]:
        image = _post(client, [("same.png", png_bytes(size))])
        assert image.status_code == 422


def test_a_pdf_cut_short_reads_the_pages_it_holds_and_never_the_ones_its_repair_made_up(make_client, fake_engine):
    whole = make_pdf(20)
    cut = whole[: len(whole) // 2]  # `head -c` of the file: its page tree names 20 pages, 12 of which are left
    body = _post(make_client(), [("cut.pdf", cut)], pages="1-20").get_json()
    assert body["document"]["repaired"] is True
    assert body["document"]["missing_pages"] == list(range(13, 21))
    statuses = [page["status"] for page in body["pages"]]
    assert statuses == ["ok"] * 12 + ["failed"] * 8
    assert {page["code"] for page in body["pages"][12:]} == {"page_missing"}
    assert "not in the file" in body["pages"][12]["error"]
    assert body["pages_failed"] == 8
    assert len(fake_engine.requests) == 12  # the made-up blank pages never reached the engine
    # Only lost pages asked for: the file is refused with their error.
    refused = _post(make_client(), [("cut.pdf", cut)], pages="13-20")
    assert (refused.status_code, refused.get_json()["code"]) == (422, "page_missing")
    # A whole file is not marked.
    whole_body = _post(make_client(), [("whole.pdf", whole)], pages="1-2").get_json()
    assert (whole_body["document"]["repaired"], whole_body["document"]["missing_pages"]) == (False, [])


def test_a_figures_box_is_in_the_pages_own_pixels_like_its_block_when_the_page_was_shrunk(make_client):
    grounded = "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>"
    engine = ScriptedEngine([(grounded, "stop")])
    big = Image.new("RGB", (4000, 3000), "white")  # sent to the engine at a smaller size (PAGE_SIZE=fit)
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    client = make_client(engine=engine, page_size="fit")
    body = _post(client, [("big.png", buffer.getvalue())], figures="true").get_json()
    (figure,) = body["figures"]
    (block,) = body["blocks"]
    assert figure["box"] == block["boxes"][0] == [0, 0, round(499 / 999 * 4000), round(499 / 999 * 3000)]
    sent = engine.requests[0].image.size
    assert sent[0] < 4000
    assert _decode_data_url(figure["image"]).size == (round(499 / 999 * sent[0]), round(499 / 999 * sent[1]))
