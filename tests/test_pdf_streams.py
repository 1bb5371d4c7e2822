"""Measuring what a PDF page would decode before MuPDF renders it: every filter, everything the page reaches."""

from __future__ import annotations

import base64
import binascii
import tracemalloc
import zlib
from collections.abc import Callable

import pymupdf
import pytest

from ocr_api.documents import open_pdf
from ocr_api.pdf_streams import (
    MAX_PAGE_OBJECTS,
    DecodeBudget,
    PageTooLarge,
    check_page,
    decoded_pieces,
    reachable_streams,
)
from tests.hostile import assemble_pdf, pdf_page, stream_object

MiB = 1 << 20
PIXELS = 40_000_000
TEXT = b"BT /Helvetica 24 Tf 72 720 Td (Hello filters) Tj ET "


def lzw(data: bytes) -> bytes:
    """LZWDecode data with 9-bit codes only: the table is cleared before it would need wider codes."""
    clear, end = 256, 257
    codes, table, word = [clear], {}, b""
    for value in data:
        candidate = word + bytes((value,))
        if len(candidate) == 1 or candidate in table:
            word = candidate
            continue
        codes.append(table[word] if len(word) > 1 else word[0])
        if len(table) == 250:  # the next codes would reach 511, where the decoder widens them to 10 bits
            codes.append(clear)
            table.clear()
        else:
            table[candidate] = 258 + len(table)
        word = bytes((value,))
    codes += [table[word] if len(word) > 1 else word[0], end] if word else [end]
    bits = "".join(f"{code:09b}" for code in codes)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def run_length(data: bytes) -> bytes:
    """RunLengthDecode data: repeat runs where a byte repeats, one-byte literal runs elsewhere."""
    out, index = bytearray(), 0
    while index < len(data):
        repeat = 1
        while repeat < 128 and index + repeat < len(data) and data[index + repeat] == data[index]:
            repeat += 1
        # A repeat run (257 - n: the next byte n times), or a literal run of one byte (0: the next 1 byte).
        out += bytes((257 - repeat, data[index])) if repeat > 1 else bytes((0, data[index]))
        index += repeat
    return bytes(out + b"\x80")


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "/FlateDecode": zlib.compress,
    "/Fl": zlib.compress,
    "/ASCIIHexDecode": lambda data: binascii.hexlify(data) + b">",
    "/ASCII85Decode": lambda data: base64.a85encode(data, adobe=True)[2:],  # PDF has no leading "<~"
    "/LZWDecode": lzw,
    "/RunLengthDecode": run_length,
}


def encoded_page(content: bytes, filters: list[str]) -> bytes:
    """A one-page PDF whose drawing instructions are ``content`` stored through ``filters`` (decoded in order)."""
    data = content
    for name in reversed(filters):
        data = ENCODERS[name](data)
    return assemble_pdf(pdf_page(data, b"/Filter [%s]" % " ".join(filters).encode()))


def _check(data: bytes, max_decoded_bytes: int) -> None:
    document = open_pdf(data)
    check_page(document, document.load_page(0).xref, PIXELS, max_decoded_bytes)


CHAINS = [
    ["/FlateDecode"],
    ["/FlateDecode", "/FlateDecode"],
    ["/FlateDecode", "/ASCIIHexDecode"],
    ["/ASCII85Decode", "/FlateDecode"],
    ["/FlateDecode", "/ASCII85Decode"],
    ["/LZWDecode"],
    ["/LZWDecode", "/FlateDecode"],
    ["/RunLengthDecode"],
    ["/RunLengthDecode", "/FlateDecode"],
    ["/ASCIIHexDecode", "/Fl"],
]


@pytest.mark.parametrize("filters", CHAINS, ids=" ".join)
def test_each_filter_decodes_exactly_as_mupdf_does(filters):
    # A real page: MuPDF reads its text, and what this module decodes is byte for byte what MuPDF decodes.
    content = TEXT * 200
    document = open_pdf(encoded_page(content, filters))
    page = document.load_page(0)
    assert "Hello filters" in page.get_text()
    (xref,) = page.get_contents()
    measured = b"".join(decoded_pieces(document, xref, DecodeBudget(64 * MiB)))
    assert measured == document.xref_stream(xref) == content
    check_page(document, page.xref, PIXELS, 64 * MiB)  # a real page passes


@pytest.mark.parametrize("text_filter", ["/ASCIIHexDecode", "/ASCII85Decode"])
def test_text_filters_decode_exactly_across_pieces(text_filter):
    # Flate hands the text filter 1 MiB pieces that split its groups anywhere; the text has line breaks, as
    # real files do, and the zeros make ASCII85 write "z".
    content = (TEXT + bytes(8)) * 50_000
    encoded = ENCODERS[text_filter](content)
    wrapped = b"\n".join(encoded[start : start + 75] for start in range(0, len(encoded), 75))
    data = assemble_pdf(pdf_page(zlib.compress(wrapped), b"/Filter [/FlateDecode %s]" % text_filter.encode()))
    document = open_pdf(data)
    (xref,) = document.load_page(0).get_contents()
    pieces = list(decoded_pieces(document, xref, DecodeBudget(64 * MiB)))
    assert len(pieces) > 2
    assert b"".join(pieces) == document.xref_stream(xref) == content


@pytest.mark.parametrize(
    ("encoded", "text_filter"),
    [
        (b"48656C6C6F207>", "/ASCIIHexDecode"),  # an odd last digit: as if followed by 0
        (b"48656C6C6F207", "/ASCIIHexDecode"),  # no ">"
        (b"4865 6c6c\n6f>20", "/ASCIIHexDecode"),  # whitespace skipped, nothing read after ">"
        (b'87cURD]i,"Ebo80~>', "/ASCII85Decode"),  # a short last group
        (b"z!!~>", "/ASCII85Decode"),
    ],
)
def test_text_filter_endings_decode_as_mupdf_decodes_them(encoded, text_filter):
    document = open_pdf(assemble_pdf(pdf_page(encoded, b"/Filter %s" % text_filter.encode())))
    (xref,) = document.load_page(0).get_contents()
    assert b"".join(decoded_pieces(document, xref, DecodeBudget(MiB))) == document.xref_stream(xref)


@pytest.mark.parametrize(
    ("text", "text_filter"), [(b"20>" + b"20" * MiB, "/ASCIIHexDecode"), (b"+9~>" + b"+<VdL" * MiB, "/ASCII85Decode")]
)
def test_nothing_after_the_end_of_the_text_is_decoded_even_pieces_later(text, text_filter):
    data = assemble_pdf(pdf_page(zlib.compress(text), b"/Filter [/FlateDecode %s]" % text_filter.encode()))
    document = open_pdf(data)
    (xref,) = document.load_page(0).get_contents()
    assert b"".join(decoded_pieces(document, xref, DecodeBudget(64 * MiB))) == document.xref_stream(xref) == b" "


@pytest.mark.parametrize("filters", CHAINS, ids=" ".join)
def test_each_filter_is_measured_against_the_budget(filters):
    data = encoded_page(b" " * (2 * MiB), filters)
    _check(data, 8 * MiB)  # every stage counts, so a budget a few times the content is needed
    with pytest.raises(PageTooLarge, match="decodes to more than 1 MiB"):
        _check(data, 1 * MiB)


def test_ascii85_zeros_are_measured_by_what_they_decode_to():
    # "z" stands for four zero bytes: 1 MiB of text decodes to 4 MiB.
    data = assemble_pdf(pdf_page(b"z" * MiB + b"~>", b"/Filter /ASCII85Decode"))
    with pytest.raises(PageTooLarge):
        _check(data, 3 * MiB)
    _check(data, 5 * MiB)


def test_a_filter_it_does_not_decode_ends_the_measurement_after_what_came_before():
    data = assemble_pdf(pdf_page(zlib.compress(b" " * (2 * MiB)), b"/Filter [/FlateDecode /DCTDecode]"))
    with pytest.raises(PageTooLarge):
        _check(data, 1 * MiB)
    _check(data, 3 * MiB)


def test_corrupt_compressed_data_ends_the_stream_quietly():
    content = TEXT * 20_000  # about 1 MiB: most of it decodes before the damage at the end
    data = assemble_pdf(pdf_page(zlib.compress(content)[:-8] + b"garbage!", b"/Filter /FlateDecode"))
    document = open_pdf(data)
    (xref,) = document.load_page(0).get_contents()
    budget = DecodeBudget(64 * MiB)
    decoded = b"".join(decoded_pieces(document, xref, budget))  # no exception: the stream just ends
    assert decoded[:100_000] == content[:100_000]  # what came before the damage, exactly
    assert len(decoded) < 2 * len(content)  # and then it stopped
    with pytest.raises(PageTooLarge):  # and it counted: what it decoded is measured against the bound
        _check(data, len(decoded) // 2)
    _check(data, 2 * MiB)


def _form(content: bytes, resources: bytes = b"") -> bytes:
    return stream_object(
        zlib.compress(content), b"/Type /XObject /Subtype /Form /BBox [0 0 100 100] /Filter /Fl " + resources
    )


BIG = b" " * (2 * MiB)


def test_a_form_inside_a_form_is_measured():
    page = pdf_page(b"/Fm0 Do", resources=b"/Resources << /XObject << /Fm0 5 0 R >> >>")
    outer = _form(b"/Fm1 Do", b"/Resources << /XObject << /Fm1 6 0 R >> >>")
    with pytest.raises(PageTooLarge):
        _check(assemble_pdf([*page, outer, _form(BIG)]), 1 * MiB)


def test_resources_inherited_from_the_page_tree_are_measured():
    page = pdf_page(b"/Fm0 Do", inherited=b"/Resources << /XObject << /Fm0 5 0 R >> >>")
    with pytest.raises(PageTooLarge):
        _check(assemble_pdf([*page, _form(BIG)]), 1 * MiB)


def test_a_pattern_and_an_annotation_appearance_are_measured():
    pattern = stream_object(
        zlib.compress(BIG),
        b"/PatternType 1 /PaintType 1 /TilingType 1 /BBox [0 0 10 10] /XStep 10 /YStep 10 /Filter /Fl",
    )
    page = pdf_page(b"", resources=b"/Resources << /Pattern << /P0 5 0 R >> >>")
    with pytest.raises(PageTooLarge):
        _check(assemble_pdf([*page, pattern]), 1 * MiB)
    annotated = pdf_page(b"", resources=b"/Annots [5 0 R]")
    annotation = b"<< /Type /Annot /Subtype /Square /Rect [0 0 100 100] /AP << /N 6 0 R >> >>"
    with pytest.raises(PageTooLarge):
        _check(assemble_pdf([*annotated, annotation, _form(BIG)]), 1 * MiB)


def test_an_image_is_judged_by_its_declared_size_wherever_the_page_reaches_it():
    # An image inside a form: the declared size decides, its (small) data is never decoded here.
    page = pdf_page(b"/Fm0 Do", resources=b"/Resources << /XObject << /Fm0 5 0 R >> >>")
    form = _form(b"/Im0 Do", b"/Resources << /XObject << /Im0 6 0 R >> >>")
    image = stream_object(
        zlib.compress(b"\0" * 100),
        b"/Type /XObject /Subtype /Image /Width 10000 /Height 10000 /ColorSpace /DeviceGray /BitsPerComponent 8 "
        b"/Filter /Fl",
    )
    with pytest.raises(PageTooLarge, match="embeds an image of 10000x10000 pixels"):
        _check(assemble_pdf([*page, form, image]), 64 * MiB)


def test_another_page_is_not_this_pages_business():
    # Page 1 links to page 2, whose drawing instructions are large: page 1 is measured alone.
    document = pymupdf.open()
    document.new_page()
    second = document.new_page()
    second.insert_text((72, 72), "x" * 100)
    document.load_page(0).insert_link({"kind": pymupdf.LINK_GOTO, "page": 1, "from": pymupdf.Rect(0, 0, 50, 50)})
    document = open_pdf(document.tobytes())
    first, second = (document.load_page(index) for index in (0, 1))
    assert set(second.get_contents()).isdisjoint(reachable_streams(document, first.xref))
    assert set(second.get_contents()) <= set(reachable_streams(document, second.xref))


def test_form_fields_lead_to_other_pages_widgets_which_are_not_measured_for_this_page():
    # One text field with a widget on each page; the second widget's appearance is large. The first page reaches
    # the field through its widget's /Parent, and the field names both widgets.
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [5 0 R] >> >>",
        b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Annots [6 0 R] >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Annots [7 0 R] >>",
        b"<< /FT /Tx /T (name) /Kids [6 0 R 7 0 R] >>",
        b"<< /Type /Annot /Subtype /Widget /Parent 5 0 R /P 3 0 R /Rect [0 0 100 20] /AP << /N 8 0 R >> >>",
        b"<< /Type /Annot /Subtype /Widget /Parent 5 0 R /P 4 0 R /Rect [0 0 100 20] /AP << /N 9 0 R >> >>",
        _form(b""),
        _form(BIG),
    ]
    document = open_pdf(assemble_pdf(objects))
    check_page(document, document.load_page(0).xref, PIXELS, 1 * MiB)
    with pytest.raises(PageTooLarge):
        check_page(document, document.load_page(1).xref, PIXELS, 1 * MiB)


def test_an_object_that_is_a_back_pointer_and_an_appearance_too_is_measured():
    # The annotation names the large form as its /P and as its appearance: dropping the back-pointer must not
    # drop the appearance.
    page = pdf_page(b"", resources=b"/Annots [5 0 R]")
    annotation = b"<< /Type /Annot /Subtype /Square /P 6 0 R /Rect [0 0 100 100] /AP << /N 6 0 R >> >>"
    with pytest.raises(PageTooLarge):
        _check(assemble_pdf([*page, annotation, _form(BIG)]), 1 * MiB)


def test_a_page_reaching_too_many_objects_is_refused_without_walking_them_all():
    count = MAX_PAGE_OBJECTS + 10
    array = b"[" + b" ".join(b"%d 0 R" % (6 + index) for index in range(count)) + b"]"
    objects = [*pdf_page(b"", resources=b"/PieceInfo 5 0 R"), array, *([b"<< /A 1 >>"] * count)]
    with pytest.raises(PageTooLarge, match=f"refers to more than {MAX_PAGE_OBJECTS} objects"):
        _check(assemble_pdf(objects), 64 * MiB)


def test_an_inline_image_header_split_between_two_pieces_is_still_seen():
    # The header starts just before a 1 MiB boundary of the decoded drawing instructions.
    header = b"BI /W 10000 /H 10000 /CS /G /BPC 8 ID "
    content = b" " * (MiB - 10) + header + b"\0" * 16 + b" EI"
    data = assemble_pdf(pdf_page(zlib.compress(content), b"/Filter /FlateDecode"))
    with pytest.raises(PageTooLarge, match="inline image of 10000x10000"):
        _check(data, 64 * MiB)


def test_unfiltered_drawing_instructions_count_as_they_are():
    data = assemble_pdf(pdf_page(b" " * (2 * MiB)))
    with pytest.raises(PageTooLarge):
        _check(data, 1 * MiB)
    _check(data, 3 * MiB)


@pytest.mark.parametrize("filters", [["/LZWDecode"], ["/RunLengthDecode"]], ids=" ".join)
def test_pypdf_decoders_stop_at_what_the_page_has_left(filters):
    # 2 MiB of output against a 256 KiB budget: the decoder stops near the budget instead of decoding it all.
    document = open_pdf(encoded_page(b" " * (2 * MiB), filters))
    tracemalloc.start()
    try:
        with pytest.raises(PageTooLarge):
            check_page(document, document.load_page(0).xref, PIXELS, 256 << 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB
