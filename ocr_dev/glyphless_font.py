"""Makes the glyphless font of searchable PDFs: a TrueType font with one empty glyph, for invisible text layers.

A searchable PDF's text is drawn invisibly (render mode 3), so its glyphs are never seen: what matters is that every
character maps to some glyph of known width, and that the font is embedded (viewers then substitute nothing and warn
of nothing). Tesseract's PDF renderer uses the same idea. The font is made with fontTools (which OCRmyPDF brings) and
committed, base64 in ``ocr_api/searchable_pdf.py`` (``GLYPHLESS_FONT``); ``tests/test_searchable.py`` checks that
this script still makes those bytes.

    python -m ocr_dev.glyphless_font   # prints the base64 to paste
"""

from __future__ import annotations

import base64
import io

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

UNITS_PER_EM = 1000
ADVANCE = 500  # every character half an em; the PDF's /W widens the East Asian ones
ASCENT, DESCENT = 800, -200  # a line's glyph box is exactly its font size high


def build() -> bytes:
    """The font's bytes (fixed timestamps, so the same every time)."""
    empty = TTGlyphPen(None).glyph()
    builder = FontBuilder(UNITS_PER_EM, isTTF=True)
    builder.setupGlyphOrder([".notdef", "blank"])
    builder.setupCharacterMap({0x20: "blank"})
    builder.setupGlyf({".notdef": empty, "blank": TTGlyphPen(None).glyph()})
    builder.setupHorizontalMetrics({".notdef": (ADVANCE, 0), "blank": (ADVANCE, 0)})
    builder.setupHorizontalHeader(ascent=ASCENT, descent=DESCENT)
    builder.setupNameTable({"familyName": "GlyphLess", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=ASCENT, sTypoDescender=DESCENT, usWinAscent=ASCENT, usWinDescent=-DESCENT)
    builder.setupPost()
    builder.updateHead(created=0, modified=0)
    builder.font["head"].checkSumAdjustment = 0
    output = io.BytesIO()
    builder.save(output)
    return output.getvalue()


def main() -> None:
    print(base64.b64encode(build()).decode())


if __name__ == "__main__":
    main()
