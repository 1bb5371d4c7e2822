"""How DeepSeek-OCR's processors cut a page into views, and so the smallest image worth sending the engine.

Both generations see a page as one global view (padded to ``base_size``, 1024) and, in gundam mode, a grid of
tiles: the page is resized to ``columns x tile_size`` by ``rows x tile_size`` (640 for DeepSeek-OCR, 768 for
DeepSeek-OCR-2), the grid of 2 to 6 tiles whose aspect ratio is closest to the page's. A page no side of which
exceeds the tile is not tiled. Pixels beyond what those resizes keep never reach the model, so the service
shrinks each page once, keeping its aspect ratio, to the smallest size from which every view is still made by
shrinking (never by enlarging): the tile grid, the image token count and the views' sources stay the same.
This is the arithmetic of vLLM's ``deepseek_ocr`` processor and transformers' ``DeepseekOcr2ImageProcessor``.
"""

from __future__ import annotations

import math

from ocr_api.profiles import ModelProfile

Size = tuple[int, int]


def tile_grid(size: Size, profile: ModelProfile, mode: str = "gundam") -> Size | None:
    """Return the (columns, rows) of tiles the processor cuts a page of ``size`` into; None when it does not tile."""
    width, height = size
    if max(width, height) <= profile.tile_size:
        return None
    low, high = (profile.min_tiles, profile.max_tiles) if mode == "gundam" else (1, 1)
    sides = range(1, high + 1)
    grids = sorted(
        ((columns, rows) for columns in sides for rows in sides if low <= columns * rows <= high),
        key=lambda grid: grid[0] * grid[1],
    )
    aspect = width / height
    best, best_difference = grids[0], math.inf
    for columns, rows in grids:
        difference = abs(aspect - columns / rows)
        if difference < best_difference:
            best, best_difference = (columns, rows), difference
        elif difference == best_difference and width * height > 0.5 * profile.tile_size**2 * columns * rows:
            best = (columns, rows)  # both processors break ties towards more tiles this way
    return best


def engine_size(size: Size, profile: ModelProfile, mode: str = "gundam") -> Size:
    """Return the smallest size, same aspect ratio, from which the processor makes the same views as from ``size``.

    A page already at or below it is left as it is: the service never enlarges.
    """
    width, height = size
    grid = tile_grid(size, profile, mode)
    needed = profile.base_size / max(width, height)
    if grid is not None:
        columns, rows = grid
        needed = max(needed, columns * profile.tile_size / width, rows * profile.tile_size / height)
    if needed >= 1:
        return size
    # Rounded up, so that no view is made by enlarging, even by one pixel.
    target = (min(width, math.ceil(width * needed - 1e-9)), min(height, math.ceil(height * needed - 1e-9)))
    if tile_grid(target, profile, mode) != grid:  # rounding moved the aspect ratio across a grid boundary
        return size
    return target
