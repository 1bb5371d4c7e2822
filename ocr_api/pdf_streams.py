"""What a PDF page would make MuPDF decode, measured before it renders the page.

PDF bombs hide in what a page decodes, not in its size: a 1.5 kB file can hold a 20,000 x 20,000 image, or drawing
instructions that inflate to gigabytes (flate inside flate, or behind a harmless last filter such as ASCIIHex), and
MuPDF decodes all of it while rendering: images whole in memory, drawing instructions for as long as they last.

So every stream a page can reach (its contents, forms inside forms, patterns, fonts, annotation appearances,
resources inherited from the page tree; never another page) is checked: images by their declared size, every other
stream by decoding it here through its filters in bounded pieces, counting the output of every filter stage and
keeping none of it. Flate, ASCIIHex and ASCII85 are decoded with the standard library; LZW and RunLength with pypdf's
decoders, which stop at their own output limit. A filter not listed (image codecs, which do not belong in drawing
instructions) ends the measurement of that stream at the bytes before it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import pymupdf
from pypdf import apply_configuration
from pypdf.errors import LimitReachedError
from pypdf.filters import LZWDecode, RunLengthDecode

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Real pages reach hundreds to a few thousand objects; walking one takes about 30 us, so this bounds the walk at
# well under a second (a page referring to an array of 200,000 objects took 5.8 s before the bound).
MAX_PAGE_OBJECTS = 20_000
_BACK_POINTERS = ("Parent", "P", "IRT")
_REFERENCE = re.compile(r"(\d+) \d+ R\b")
_FILTER_NAME = re.compile(r"/[^\s/\[\]<>()]+")
_INLINE_IMAGE = re.compile(rb"\bBI\s(.{0,400}?)\bID\s", re.DOTALL)
_INLINE_SIZE = re.compile(rb"/(W|Width|H|Height)\s+(\d{1,9})")
_INLINE_HEADER_BYTES = 512  # kept from the previous piece, so a header split between two pieces is still seen
_ASCII85_GROUPS = re.compile(rb"(?:z|[!-u]{5}){1,200000}")  # at most 800 kB decoded at a time
_PDF_WHITESPACE = b" \t\n\r\f\0"


class PageTooLarge(Exception):
    """The page would decode beyond a limit; the message says what was found."""


class _BudgetSpent(Exception):
    pass


class DecodeBudget:
    """Bytes a page's streams may still decode to, counted at every filter stage."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, piece: bytes) -> bytes:
        self.left -= len(piece)
        if self.left < 0:
            raise _BudgetSpent
        return piece


def check_page(
    document: pymupdf.Document,
    page_xref: int,
    max_image_pixels: int,
    max_decoded_bytes: int,
    check_time: Callable[[], None] = lambda: None,
) -> None:
    """Raise PageTooLarge when an image the page reaches, or what its other streams decode to, passes the limits.

    ``check_time`` is called before each stream, to stop a walk that outlasts the page's preparation budget.
    """
    budget = DecodeBudget(max_decoded_bytes)
    try:
        for xref in reachable_streams(document, page_xref):
            check_time()
            if _key(document, xref, "Subtype") == "/Image":
                width, height = _int_key(document, xref, "Width"), _int_key(document, xref, "Height")
                if width * height > max_image_pixels:
                    raise PageTooLarge(f"embeds an image of {width}x{height} pixels")
                continue
            _check_inline_images(decoded_pieces(document, xref, budget), max_image_pixels)
    except _BudgetSpent:
        raise PageTooLarge(f"decodes to more than {max_decoded_bytes >> 20} MiB") from None


def reachable_streams(document: pymupdf.Document, page_xref: int) -> Iterator[int]:
    """Yield the xref of every stream the page refers to, directly or not, without entering other pages."""
    seen = {page_xref}
    todo = [page_xref]
    while todo:
        xref = todo.pop()
        try:
            source = document.xref_object(xref, compressed=True)
            # Another page, named by a link or an article bead, is its own business. (Reading a key costs twice
            # as much as reading the whole object, so keys are read only where the text holds their name.)
            if xref != page_xref and "/Page" in source and _key(document, xref, "Type") == "/Page":
                continue
            references = _references(document, xref, source)
            if xref == page_xref:
                references.update(_inherited_resources(document, page_xref))
            if document.xref_is_stream(xref):
                yield xref
        except Exception as exc:  # noqa: BLE001 - an object MuPDF cannot read: it will not draw it either
            logger.debug("skipping unreadable PDF object %d: %s", xref, exc)
            continue
        for reference, count in references.items():
            if count > 0 and reference not in seen and 0 < reference < document.xref_length():
                if len(seen) == MAX_PAGE_OBJECTS:
                    raise PageTooLarge(f"refers to more than {MAX_PAGE_OBJECTS} objects")
                seen.add(reference)
                todo.append(reference)


def _references(document: pymupdf.Document, xref: int, source: str) -> Counter[int]:
    """The objects this one refers to, with how often, less its back-pointers.

    Back-pointers (an annotation's page, a form field's parent) lead to the rest of the document, not to anything
    this page draws. Each is taken off once, so an object also named elsewhere in the dictionary is still followed.
    """
    references = Counter(int(found) for found in _REFERENCE.findall(source))
    for key in _BACK_POINTERS:
        if f"/{key}" in source:
            kind, value = document.xref_get_key(xref, key)
            if kind == "xref":
                references[int(value.split()[0])] -= 1
    return references


def _inherited_resources(document: pymupdf.Document, page_xref: int) -> Counter[int]:
    """The objects named by the /Resources of the page tree nodes above the page, which the page inherits."""
    found: Counter[int] = Counter()
    xref, seen = page_xref, set()
    while xref not in seen:
        seen.add(xref)
        kind, parent = document.xref_get_key(xref, "Parent")
        if kind != "xref":
            break
        xref = int(parent.split()[0])
        found.update(int(number) for number in _REFERENCE.findall(document.xref_get_key(xref, "Resources")[1]))
    return found


def decoded_pieces(document: pymupdf.Document, xref: int, budget: DecodeBudget) -> Iterator[bytes]:
    """Decode the stream through its filters lazily; stop at the first filter this module does not decode."""
    try:
        pieces: Iterator[bytes] = iter([document.xref_stream_raw(xref)])
        kind, value = document.xref_get_key(xref, "Filter")
    except Exception:  # noqa: BLE001 - a stream MuPDF cannot read is one it will not draw
        return iter(())
    names = _FILTER_NAME.findall(value) if kind in ("name", "array") else []
    if not names:  # drawn as it is: it counts as it is
        return iter([budget.spend(next(pieces))])
    for name in names:
        decoder = _DECODERS.get(name)
        if decoder is None:
            break
        pieces = decoder(pieces, budget)
    return pieces


def _check_inline_images(pieces: Iterator[bytes], max_image_pixels: int) -> None:
    previous_tail = b""
    for piece in pieces:
        for match in _INLINE_IMAGE.finditer(previous_tail + piece):
            sizes = {key[:1]: int(value) for key, value in _INLINE_SIZE.findall(match[1])}
            width, height = sizes.get(b"W", 0), sizes.get(b"H", 0)
            if width * height > max_image_pixels:
                raise PageTooLarge(f"holds an inline image of {width}x{height} pixels")
        previous_tail = piece[-_INLINE_HEADER_BYTES:]


def _inflate(pieces: Iterator[bytes], budget: DecodeBudget) -> Iterator[bytes]:
    """FlateDecode, at most CHUNK_BYTES out at a time whatever the ratio; corrupt data ends the stream quietly."""
    inflater = zlib.decompressobj()
    for piece in pieces:
        data = piece
        while data:  # input is left over only when the output was full, so this loop always ends
            try:
                out = inflater.decompress(data, CHUNK_BYTES)
            except zlib.error:
                return
            data = inflater.unconsumed_tail
            if out:
                yield budget.spend(out)


def _unhex(pieces: Iterator[bytes], budget: DecodeBudget) -> Iterator[bytes]:
    """ASCIIHexDecode, piece by piece; an odd digit waits for the next piece, ">" ends the data."""
    carry = b""
    for piece in pieces:
        text, end, _ = piece.partition(b">")
        digits = carry + text.translate(None, _PDF_WHITESPACE)
        if end:  # a last odd digit counts as if followed by 0
            digits += b"0" * (len(digits) % 2)
        whole = len(digits) - len(digits) % 2
        carry = digits[whole:]
        try:
            yield budget.spend(binascii.unhexlify(digits[:whole]))
        except binascii.Error:  # a character outside hex: MuPDF stops there too
            return
        if end:
            return


def _un85(pieces: Iterator[bytes], budget: DecodeBudget) -> Iterator[bytes]:
    """ASCII85Decode, piece by piece in whole groups; a 'z' stands for 4 bytes, so it can outgrow its input."""
    carry = b""
    for piece in pieces:
        text, end, _ = piece.partition(b"~>")
        text = carry + text.translate(None, _PDF_WHITESPACE).removeprefix(b"<~")
        position = 0
        while groups := _ASCII85_GROUPS.match(text, position):
            yield budget.spend(base64.a85decode(groups[0]))
            position = groups.end()
        carry = text[position:]
        if end or len(carry) > 4:  # the end, or a character outside ASCII85 (MuPDF stops there too)
            break
    try:
        yield budget.spend(base64.a85decode(carry[:4]))  # a short last group, padded as the format says
    except ValueError:
        return


def _with_pypdf(decode: Callable[[bytes], bytes]) -> Callable[[Iterator[bytes], DecodeBudget], Iterator[bytes]]:
    """A stage decoding with pypdf, whose output limit is set to what the page has left."""

    def stage(pieces: Iterator[bytes], budget: DecodeBudget) -> Iterator[bytes]:
        limits = {"lzw_maximum_output_length": budget.left, "run_length_maximum_output_length": budget.left}
        try:
            with apply_configuration(**limits):  # a context variable: other threads keep their own
                out = decode(b"".join(pieces))
        except LimitReachedError:
            raise _BudgetSpent from None
        except Exception:  # noqa: BLE001 - corrupt data: what was not decoded is not counted, as with flate
            return
        yield budget.spend(out)

    return stage


_DECODERS: dict[str, Callable[[Iterator[bytes], DecodeBudget], Iterator[bytes]]] = {
    "/FlateDecode": _inflate,
    "/Fl": _inflate,
    "/ASCIIHexDecode": _unhex,
    "/AHx": _unhex,
    "/ASCII85Decode": _un85,
    "/A85": _un85,
    "/LZWDecode": _with_pypdf(LZWDecode.decode),
    "/LZW": _with_pypdf(LZWDecode.decode),
    "/RunLengthDecode": _with_pypdf(RunLengthDecode.decode),
    "/RL": _with_pypdf(RunLengthDecode.decode),
}


def _key(document: pymupdf.Document, xref: int, key: str) -> str:
    kind, value = document.xref_get_key(xref, key)
    return value if kind == "name" else ""


def _int_key(document: pymupdf.Document, xref: int, key: str) -> int:
    kind, value = document.xref_get_key(xref, key)
    return int(value) if kind == "int" and value.isascii() and value.isdigit() else 0
