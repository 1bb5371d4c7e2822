"""The service's own CPU per page, one core: what the engine waits for while the service prepares and reads a page.

For each input (a 300-DPI A4 scan as JPEG and as PNG, a 4032x3024 phone photo, a 144-DPI PDF page) it measures,
in the same run, on one thread with ``time.process_time``:

- **floor**: a bare decode of the same file (Pillow open + convert to RGB; PyMuPDF's own render for the PDF page);
- **service**: what the service does to the page by default, in its own functions: decode or render it whole
  (PAGE_SIZE=full), encode it for the remote engine (ENGINE_IMAGE_FORMAT=auto), read a 3,000-token grounded
  output into text, markdown and blocks, and shape the JSON;
- **fit**: the same steps with the defaults before 2026-12-04 (PAGE_SIZE=fit: shrunk to the engine's size, box
  filter; ENGINE_IMAGE_FORMAT=jpeg, quality 90), for the before/after figure.

It also reports the bytes sent to the engine per page, and the prompt tokens the model gets (the tile grid is the
same whatever the size sent: ocr_api/tiling.py, checked against the processor in tests/test_tiling.py).

With ``--http`` the JPEG scan also goes through ``./start_server.sh`` against a stand-in engine, and the service's
CPU per page is read from the server process's own CPU time (``/proc``).

    .venv/bin/python -m bench.page_cost              # about a minute
    .venv/bin/python -m bench.page_cost --http       # plus about a minute
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pymupdf
import requests
from PIL import Image

from ocr_api.documents import PdfLimits, open_pdf, render_page
from ocr_api.engines.base import EngineOutput
from ocr_api.guard import GuardSettings
from ocr_api.pipeline import PageOutcome
from ocr_api.preparation import FitSize, ImageLimits, data_url, decode_image
from ocr_api.profiles import PROFILES
from ocr_api.reading import read_page
from ocr_api.results import FileResult, FinishedPage
from ocr_api.tiling import engine_size, tile_grid
from ocr_dev.inputs import A4_300_DPI, PHONE_PHOTO, scanned_page
from ocr_dev.servers import environment, running, stand_in_engine

PROFILE = PROFILES["deepseek-ocr-2"]
LIMITS = ImageLimits(max_pixels=40_000_000, min_side=8, max_aspect_ratio=20)
PDF_LIMITS = PdfLimits(dpi=144, max_pages=100, max_page_pixels=40_000_000)
FIT = lambda size: engine_size(size, PROFILE)  # noqa: E731 - the service's own fit, for the loaded model
GPU_MS_PER_PAGE = 430  # about an A100's time for one page (200,000 pages a day): the issue's yardstick


def grounded_output(tokens: int = 3000) -> EngineOutput:
    """A long grounded markdown answer, about ``tokens`` tokens (4 characters a token), as the model writes one."""
    blocks, size = [], 0
    while size < tokens * 4:
        x, y = len(blocks) % 9 * 100, len(blocks) // 9 % 9 * 100
        box = f"[[{x}, {y}, {x + 90}, {y + 80}]]"
        block = f"<|ref|>text<|/ref|><|det|>{box}<|/det|>\nTotal for item {len(blocks)}: 12.00 EUR, paid in full.\n\n"
        blocks.append(block)
        size += len(block)
    return EngineOutput("".join(blocks), "stop", 1131, tokens, 8192, GuardSettings(20, 90, frozenset({128821})))


OUTPUT = grounded_output()


def cpu_ms(work: Callable[[], object], repeats: int) -> float:
    """Median process CPU time of ``work`` over ``repeats`` runs, in ms."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


def respond(image: Image.Image, size: tuple[int, int]) -> str:
    """Read the long output for a page of ``size`` and shape the JSON, as the service does."""
    reading = read_page(OUTPUT, size)
    pages = (FinishedPage(None, PageOutcome(size, reading)),)
    result = FileResult("scan", "uploads/x", "<image>\nFree OCR.", None, {}, pages, False, "remote", "deepseek-ocr-2")
    return json.dumps(result.to_dict())


def image_row(name: str, data: bytes, repeats: int) -> dict[str, object]:
    def floor() -> None:
        with Image.open(io.BytesIO(data)) as opened:
            opened.convert("RGB")

    def service(fit: FitSize | None, image_format: str) -> Callable[[], int]:
        def run() -> int:
            prepared = decode_image(data, LIMITS, fit)
            sent = data_url(prepared.image, image_format)
            respond(prepared.image, prepared.source_size)
            return len(sent)

        return run

    size = Image.open(io.BytesIO(data)).size
    return measured(name, len(data), floor, service, repeats=repeats, size=size)


# A row's way of reading its input: given the fit (None: whole) and the engine's format, one page's work.
Service = Callable[[FitSize | None, str], Callable[[], int]]


def measured(
    name: str, file_bytes: int, floor: Callable[[], object], service: Service, *, repeats: int, size: tuple[int, int]
) -> dict[str, object]:
    """One row: the floor, the service now (full, auto) and before (fit, jpeg), in CPU ms and bytes sent."""
    return {
        "input": name,
        "file_mb": file_bytes / 1e6,
        "floor_ms": cpu_ms(floor, repeats),
        "service_ms": cpu_ms(service(None, "auto"), repeats),
        "fit_ms": cpu_ms(service(FIT, "jpeg"), repeats),
        "sent_mb": service(None, "auto")() / 1e6,
        "fit_sent_mb": service(FIT, "jpeg")() / 1e6,
        "fit_size": engine_size(size, PROFILE),
        "size": size,
        "grid": tile_grid(size, PROFILE),
    }


def pdf_row(repeats: int) -> dict[str, object]:
    document = pymupdf.open()
    page = document.new_page(width=595, height=842)
    for line in range(60):
        page.insert_text(
            (50, 40 + line * 13), "The quick brown fox jumps over the lazy dog; invoices, tables, totals." * 1
        )
    data = document.tobytes()
    opened = open_pdf(data)

    def floor() -> None:
        opened.load_page(0).get_pixmap(dpi=144, alpha=False)

    def service(fit: FitSize | None, image_format: str) -> Callable[[], int]:
        def run() -> int:
            rendered = render_page(opened, 0, PDF_LIMITS, fit)
            sent = data_url(rendered.image, image_format)
            respond(rendered.image, rendered.size)
            return len(sent)

        return run

    return measured("PDF page, A4 at 144 dpi", len(data), floor, service, repeats=repeats, size=(1190, 1684))


def server_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def over_http(data: bytes, pages: int) -> float:
    """Service CPU ms per page for ``data`` uploaded ``pages`` times to ./start_server.sh (one process)."""
    with stand_in_engine(step_ms=1, tokens_per_page=10) as engine_url, tempfile.TemporaryDirectory() as work:
        env = environment(Path(work), OCR_ENGINE_URL=engine_url, LOG_LEVEL="WARNING")
        with running("start_server.sh", env, Path(work) / "server.log", timeout_s=300) as process:
            url = f"http://127.0.0.1:{env['PORT']}/ocr"
            requests.post(url, files={"file": ("warm.jpg", data)}, timeout=120).raise_for_status()
            server = _python_child(process.pid)
            before = server_cpu_s(server)
            with requests.Session() as session:
                for _ in range(pages):
                    session.post(url, files={"file": ("scan.jpg", data)}, timeout=120).raise_for_status()
            return (server_cpu_s(server) - before) * 1000 / pages


def _python_child(pid: int) -> int:
    """The service process: the start script's python (the script execs it, or it is its child)."""
    for candidate in [pid, *_children(pid)]:
        if b"app.py" in Path(f"/proc/{candidate}/cmdline").read_bytes():
            return candidate
    return pid


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found += [int(entry.name), *_children(int(entry.name))]
            except (OSError, ValueError):
                continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--http", action="store_true", help="also through ./start_server.sh")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the figure is per core
    scan_jpeg = scanned_page(A4_300_DPI, "JPEG")
    rows = [
        image_row("300-dpi A4 scan, JPEG", scan_jpeg, args.repeats),
        image_row("300-dpi A4 scan, PNG", scanned_page(A4_300_DPI, "PNG"), args.repeats),
        image_row("phone photo 4032x3024, JPEG", scanned_page(PHONE_PHOTO, "JPEG", seed=1), args.repeats),
        pdf_row(args.repeats),
    ]
    print(f"one core; model profile {PROFILE.family} (1024 global view, tiles of {PROFILE.tile_size}); "
          f"median of {args.repeats}; the service's functions, no engine")  # fmt: skip
    print()
    print("| input | file MB | floor: bare decode ms | service ms (full, auto) | before: fit, jpeg ms | now / before | "
          "share of 430 ms GPU | sent MB | before: sent MB | size sent | before: size sent | tile grid |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for row in rows:
        size, fit_size = row["size"], row["fit_size"]
        print(
            f"| {row['input']} | {row['file_mb']:.2f} | {row['floor_ms']:.0f} | {row['service_ms']:.0f} | "
            f"{row['fit_ms']:.0f} | {row['service_ms'] / row['fit_ms']:.2f}x | "
            f"{row['service_ms'] / GPU_MS_PER_PAGE:.0%} | {row['sent_mb']:.2f} | {row['fit_sent_mb']:.2f} | "
            f"{size[0]}x{size[1]} | {fit_size[0]}x{fit_size[1]} | {row['grid']} |"
        )
    if args.http:
        per_page = over_http(scan_jpeg, pages=20)
        print()
        print(f"over HTTP (./start_server.sh, remote engine, stand-in): {per_page:.0f} ms of service CPU per page "
              "for the 300-dpi JPEG scan (the server process's own CPU time over 20 uploads)")  # fmt: skip


if __name__ == "__main__":
    main()
