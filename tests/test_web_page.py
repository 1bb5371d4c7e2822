"""The web page at / in a real browser: Debian's Chromium, headless, driven by Playwright.

The service runs in-process on a loopback port with the remote engine on the stand-in (no model: its output is
whatever the test sets through POST /stand-in/text), one page at a time so that a document's pages finish one by
one. Screenshots of the result views go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pymupdf
import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import REPO, serve_service, stand_in_engine

pytestmark = pytest.mark.slow

KEY = "web-key-0123456789abcdef"
ARTIFACTS = REPO / "test-artifacts" / "browser"
GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[100,100,500,200]]<|/det|>\n# Quarterly report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100,300,900,600]]<|/det|>\nRevenue grew in every region.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100,650,900,950]]<|/det|>"
)
BOXES = [(100, 100, 500, 200), (100, 300, 900, 600), (100, 650, 900, 950)]  # on the model's 0-999 scale
HOSTILE = (
    "<|ref|>text<|/ref|><|det|>[[50,50,950,950]]<|/det|>\n"
    "Hostile <script>window.__pwned = 'script'</script> output "
    '<img src="x" onerror="window.__pwned = \'onerror\'"> '
    "<svg onload=\"window.__pwned = 'svg'\"></svg> "
    "[markdown link](javascript:window.__pwned='markdown-link') "
    '<a id="html-link" href="javascript:window.__pwned=\'html-link\'">html link</a> '
    "<iframe src=\"javascript:window.__pwned='iframe'\"></iframe>"
)
# Chromium flags for a machine with no display, no GPU and no route out.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    # One page at a time, 0.6 s each: a document's pages arrive one by one.
    with stand_in_engine(step_ms=20, tokens_per_page=30, extra=["--max-batch", "1"]) as url:
        yield url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, stand_in: str) -> Iterator[str]:
    # A job whose engine is down is run again 2 s later (not 30): the page's notice is seen, then the job finishes.
    with serve_service(tmp_path_factory.mktemp("web"), stand_in, api_keys=KEY, job_retry_delay_s=2) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, served: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{served}/")
    page.wait_for_selector("body[data-ready]")
    yield page
    context.close()


def model_output(stand_in: str, text: str | None) -> None:
    requests.post(f"{stand_in}/stand-in/text", json={"text": text}, timeout=5).raise_for_status()


def read(page: Page, files: list[Path], key: str = KEY) -> None:
    """Fill the form as a person does and wait until every file has its answer."""
    page.fill("#api-key", key)
    page.set_input_files("#files", [str(path) for path in files])
    page.evaluate("delete document.body.dataset.finished")
    page.click("#run")
    page.wait_for_selector("body[data-finished]", timeout=60_000)


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {"image": tmp_path / "scan.png", "pdf": tmp_path / "report.pdf"}
    paths["image"].write_bytes(png_bytes((800, 600)))
    paths["pdf"].write_bytes(make_pdf(3))
    return paths


def boxes_on_screen(page: Page, card: str) -> list[dict]:
    """Each drawn box of a page card as fractions of the page image it lies on."""
    return page.evaluate(
        """(card) => [...document.querySelectorAll(card + ' .stage rect.box')].map((rect) => {
            const image = rect.closest('.stage').querySelector('img').getBoundingClientRect();
            const box = rect.getBoundingClientRect();
            return {block: Number(rect.dataset.block), x1: (box.left - image.left) / image.width,
                    y1: (box.top - image.top) / image.height, x2: (box.right - image.left) / image.width,
                    y2: (box.bottom - image.top) / image.height};
        })""",
        card,
    )


def test_an_image_and_a_three_page_pdf_read_with_text_boxes_and_downloads(
    page: Page, stand_in: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    model_output(stand_in, GROUNDED)
    page.select_option("#task", "markdown")
    page.check("#figures")
    page.fill("#api-key", KEY)
    page.set_input_files("#files", [str(inputs["image"]), str(inputs["pdf"])])
    page.click("#run")
    # The document is a job: its pages appear one by one, with the progress bar, before it is done.
    pdf = '.file[data-filename="report.pdf"]'
    page.wait_for_function(
        f"""() => {{ const card = document.querySelector('{pdf}');
            return card && card.querySelectorAll('.page').length === 1 && card.dataset.state !== 'done'
                   && card.querySelector('progress').value === 1 && card.querySelector('progress').max === 3; }}""",
        timeout=30_000,
    )
    page.wait_for_selector("body[data-finished]", timeout=60_000)
    assert page.locator(".file .error:not([hidden])").count() == 0
    assert page.get_attribute(f"{pdf}", "data-state") == "done"
    assert page.locator(f"{pdf} .page .title").all_inner_texts() == ["Page 1", "Page 2", "Page 3"]
    image = '.file[data-filename="scan.png"]'
    assert page.locator(f"{image} .page").count() == 1
    # The markdown rendered, the raw text as the model wrote it.
    for card in (image, pdf):
        assert page.locator(f"{card} .page .markdown h1").first.inner_text() == "Quarterly report"
        assert "Revenue grew in every region." in page.locator(f"{card} .page .markdown").first.inner_text()
    page.locator(f"{image} .tabs button[data-view=raw]").click()
    assert page.locator(f"{image} .raw").inner_text() == GROUNDED
    # The boxes: drawn over the page image where the blocks say (the model's 0-999 scale: 100/999 of the width).
    for card in (image, f"{pdf} .page:nth-of-type(2)"):
        drawn = sorted(boxes_on_screen(page, card), key=lambda box: box["block"])
        assert len(drawn) == 3
        for box, expected in zip(drawn, BOXES, strict=True):
            for name, value in zip(("x1", "y1", "x2", "y2"), expected, strict=True):
                assert box[name] == pytest.approx(value / 999, abs=0.01), (card, box)
    assert page.locator(f"{image} .stage img").get_attribute("src").startswith("data:image/png;base64,")
    # figures=true: the image block's crop, shown with the markdown.
    assert page.locator(f"{image} .markdown img.figure").get_attribute("src").startswith("data:image/png;base64,")
    # Hovering a block's text highlights its box, and the other way round.
    page.locator(f"{image} .tabs button[data-view=blocks]").click()
    page.locator(f"{image} .blocks li[data-block='1']").hover()
    assert "hot" in page.locator(f"{image} rect.box[data-block='1']").get_attribute("class")
    assert "hot" not in page.locator(f"{image} rect.box[data-block='0']").get_attribute("class")
    page.locator(f"{image} rect.box[data-block='0']").hover(force=True)
    assert "hot" in page.locator(f"{image} .blocks li[data-block='0']").get_attribute("class")
    screenshot(page, "results.png")
    # Downloads: the document's markdown and its JSON, the very result of GET /jobs/<id>/result.
    with page.expect_download() as markdown_download:
        page.locator(f"{pdf} .downloads a", has_text="report.md").click()
    markdown = Path(markdown_download.value.path()).read_text()
    assert markdown.count("# Quarterly report") == 3
    assert "<--- Page Split --->" in markdown
    with page.expect_download() as json_download:
        page.locator(f"{pdf} .downloads a", has_text="report.json").click()
    result = json.loads(Path(json_download.value.path()).read_text())
    assert result["filename"] == "report.pdf"
    assert result["pages_total"] == 3
    assert result["markdown"] == markdown
    assert [box for block in result["pages"][1]["blocks"] for box in block["boxes"]] == [
        [round(value * result["pages"][1]["width"] / 999) if axis % 2 == 0 else
         round(value * result["pages"][1]["height"] / 999) for axis, value in enumerate(box)]
        for box in BOXES
    ]  # fmt: skip
    # The document's searchable PDF: its three pages, fetched with the key when clicked.
    with page.expect_download() as searchable:
        page.locator(f"{pdf} .downloads a", has_text="report-searchable.pdf").click()
    made = pymupdf.open(searchable.value.path())
    assert made.page_count == 3
    assert page.locator(f"{image} .downloads a", has_text="searchable").count() == 0  # an image read by /ocr
    # Each page offers its annotated picture beside its title: a job's is fetched by URL with the key (a blob).
    assert page.locator(f"{pdf} .page .stage img").first.get_attribute("src").startswith("blob:")
    with page.expect_download() as annotated:
        page.locator(f"{pdf} .page .page-download a", has_text="report-page-2.png").click()
    assert Path(annotated.value.path()).read_bytes().startswith(b"\x89PNG")


def test_an_image_s_searchable_pdf_when_asked(page: Page, stand_in: str, inputs: dict[str, Path]) -> None:
    model_output(stand_in, GROUNDED)
    page.fill("#api-key", KEY)
    page.check("#searchable")
    page.set_input_files("#files", [str(inputs["image"])])
    page.click("#run")
    page.wait_for_selector("body[data-finished]", timeout=60_000)
    with page.expect_download() as searchable:
        page.locator('.file[data-filename="scan.png"] .downloads a', has_text="scan-searchable.pdf").click()
    made = pymupdf.open(searchable.value.path())
    assert made.page_count == 1
    assert "Quarterly report" in made[0].get_text()


def test_hostile_model_output_stays_inert(page: Page, stand_in: str, inputs: dict[str, Path]) -> None:
    model_output(stand_in, HOSTILE)
    try:
        read(page, [inputs["image"]])
    finally:
        model_output(stand_in, None)
    rendered = page.locator(".page .markdown")
    assert "Hostile" in rendered.inner_text()
    assert "output" in rendered.inner_text()
    # Follow every link the rendered output holds, as a curious person would.
    for link in rendered.locator("a").all():
        link.click(modifiers=["Control"])  # a new tab at most; never this page
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    found = page.evaluate(
        """() => { const results = document.getElementById('results');
            const all = [...results.querySelectorAll('*')];
            return {scripts: results.querySelectorAll('script, iframe, object, embed').length,
                    handlers: all.flatMap((node) => [...node.attributes].map((a) => a.name))
                                 .filter((name) => name.startsWith('on')),
                    javascript: all.flatMap((node) => [node.getAttribute('href'), node.getAttribute('src')])
                                   .filter((url) => url && url.trim().toLowerCase().startsWith('javascript:'))}; }"""
    )
    assert found == {"scripts": 0, "handlers": [], "javascript": []}
    # The raw text shows what the model wrote, as text.
    page.locator(".tabs button[data-view=raw]").click()
    assert "<script>window.__pwned = 'script'</script>" in page.locator(".raw").inner_text()
    screenshot(page, "hostile.png")


def test_errors_show_the_api_message_and_code(page: Page, inputs: dict[str, Path], tmp_path: Path) -> None:
    assert page.locator("#key-field").is_visible()  # keys are on: the page asks for one
    read(page, [inputs["image"]], key="")
    error = page.locator(".file .error")
    assert "(missing_api_key, HTTP 401)" in error.inner_text()
    assert "'API key' field above" in error.inner_text()  # this page's field, not the API's headers
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not an image")
    read(page, [not_an_image])
    assert "(unsupported_media_type, HTTP 415)" in error.inner_text()
    assert page.get_attribute(".file", "data-state") == "failed"
    screenshot(page, "error.png")


def test_the_api_docs_page_lists_every_operation(browser: Browser, served: str) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{served}/docs")
        spec = requests.get(f"{served}/openapi.json", timeout=10).json()
        operations = [operation["operationId"] for methods in spec["paths"].values() for operation in methods.values()]
        assert page.locator("section.operation").evaluate_all("(nodes) => nodes.map((n) => n.id)") == operations
        # /ocr's form fields, each with its description, as the options module reads them.
        form = page.locator("#ocr_ocr table.fields").first.inner_text()
        assert "annotate" in form
        assert "PNG data URL" in form
    finally:
        page.close()


def test_read_with_no_file_says_so(page: Page) -> None:
    page.evaluate("delete document.body.dataset.finished")
    page.click("#run")
    page.wait_for_selector("body[data-finished]")
    assert page.locator("#form-message").is_visible()
    assert "Choose one or more images or PDFs" in page.locator("#form-message").inner_text()
    assert page.locator(".file").count() == 0


def test_an_encrypted_pdf_asks_for_the_pages_own_password_field(page: Page, stand_in: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(make_pdf(2, password="s3cret"))
    read(page, [locked])
    error = page.locator(".file .error")
    assert "(pdf_password_required, HTTP 422)" in error.inner_text()
    assert "'PDF password' field above" in error.inner_text()
    page.fill("#password", "s3cret")
    read(page, [locked])
    assert page.get_attribute(".file", "data-state") == "done"
    assert page.locator(".file .page").count() == 2


def test_a_long_document_shows_ten_pages_at_a_time(page: Page, stand_in: str, tmp_path: Path) -> None:
    model_output(stand_in, GROUNDED)
    long = tmp_path / "long.pdf"
    long.write_bytes(make_pdf(23, size=(200, 280)))
    requests.post(f"{stand_in}/stand-in/mode", json={"mode": "normal"}, timeout=5)
    try:
        read(page, [long])
    finally:
        model_output(stand_in, None)
    card = '.file[data-filename="long.pdf"]'
    assert page.get_attribute(card, "data-state") == "done"
    titles = page.locator(f"{card} .page .title")
    assert titles.all_inner_texts() == [f"Page {number}" for number in range(1, 11)]
    assert page.locator(f"{card} .pager .shown").inner_text() == "Pages 1-10 of 23"
    assert page.locator(f"{card} .page-download a").count() <= 10  # no more links than pages shown
    page.click(f"{card} .pager .next")
    page.click(f"{card} .pager .next")
    assert titles.all_inner_texts() == [f"Page {number}" for number in range(21, 24)]
    assert page.locator(f"{card} .pager .shown").inner_text() == "Pages 21-23 of 23"
    assert page.locator(f"{card} .pager .next").is_disabled()
    page.wait_for_function(f"() => document.querySelector('{card} .page .stage img').src.startsWith('blob:')")


def test_a_job_waiting_for_the_engine_says_why(page: Page, stand_in: str, inputs: dict[str, Path]) -> None:
    requests.post(f"{stand_in}/stand-in/mode", json={"mode": "unhealthy"}, timeout=5).raise_for_status()
    page.fill("#api-key", KEY)
    page.set_input_files("#files", [str(inputs["pdf"])])
    page.evaluate("delete document.body.dataset.finished")
    page.click("#run")
    try:
        notice = page.locator(".file .notice")
        notice.wait_for(state="visible", timeout=30_000)
        assert "it will be tried again" in notice.inner_text()
        assert "engine" in notice.inner_text().lower()
    finally:
        requests.post(f"{stand_in}/stand-in/mode", json={"mode": "normal"}, timeout=5).raise_for_status()
    page.wait_for_selector("body[data-finished]", timeout=60_000)
    assert page.get_attribute(".file", "data-state") == "done"
    assert page.locator(".file .notice").is_hidden()
