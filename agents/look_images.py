"""The images the look sees: the query drawn on its canvas, the reference's pyramid of levels, and
the patches around candidates that the second look compares."""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from matchenv.agents.look_network import STRIDE, LookConfig
from matchenv.geometry import resize_image


def template_canvas(template: np.ndarray, config: LookConfig) -> tuple[np.ndarray, np.ndarray]:
    """The query drawn for the look: aspect kept, geometric-mean side ``config.side``, centred on a
    square canvas filled with its mean colour (a neutral background, not a black frame).

    :param template: ``(h, w, 3)`` uint8 query at any size.
    :return: ``(canvas, canvas, 3)`` uint8 canvas and ``(K, K)`` float32 cell mask: 1 for feature
        cells at least half covered by the query (at least one cell).
    """
    h, w = template.shape[:2]
    factor = config.side / math.sqrt(h * w)
    size = config.canvas
    new_h = min(max(int(round(h * factor)), 1), size)
    new_w = min(max(int(round(w * factor)), 1), size)
    canvas = np.empty((size, size, 3), np.uint8)
    small = resize_image(template, (new_h, new_w))
    canvas[:] = fill_colour(small)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = small
    covered = np.zeros((size, size), np.float32)
    covered[y0 : y0 + new_h, x0 : x0 + new_w] = 1.0
    k = config.kernel_cells
    cells = covered.reshape(k, STRIDE, k, STRIDE).mean((1, 3)) >= 0.5
    if not cells.any():  # a query thinner than half a cell: its centre cell
        cells[k // 2, k // 2] = True
    return canvas, cells.astype(np.float32)


def patch_around(image: np.ndarray, centre_x: float, centre_y: float, scale: float, size: int,
                 fill: np.ndarray) -> np.ndarray:
    """The ``size x size`` patch of ``image`` resized by ``scale`` and centred on ``(centre_x,
    centre_y)`` (pixels of ``image``); what lies outside ``image`` is ``fill``.

    Only the part of the image under the patch is resized (area average when shrinking, as the
    training crops are), so the cost does not grow with the image. (Resizing it as the pyramid's
    levels are, :func:`_level_resize`, was no faster and no better: 0.771 against 0.773 success on
    test pairs 1000-1999, 0.795 either way on 4000-4999; ad hoc, 2026-11-24.)
    """
    height, width = image.shape[:2]
    left, top = centre_x - size / (2 * scale), centre_y - size / (2 * scale)
    x0, y0 = max(int(math.floor(left)), 0), max(int(math.floor(top)), 0)
    x1 = min(int(math.ceil(left + size / scale)), width)
    y1 = min(int(math.ceil(top + size / scale)), height)
    patch = np.empty((size, size, 3), np.uint8)
    patch[:] = fill
    if x1 <= x0 or y1 <= y0:
        return patch
    # where the image part lands in the patch (whole pixels: at most half a patch pixel off)
    px0, py0 = max(int(round((x0 - left) * scale)), 0), max(int(round((y0 - top) * scale)), 0)
    px1 = min(max(int(round((x1 - left) * scale)), px0 + 1), size)
    py1 = min(max(int(round((y1 - top) * scale)), py0 + 1), size)
    px0, py0 = min(px0, px1 - 1), min(py0, py1 - 1)
    part = image[y0:y1, x0:x1]
    shrink = px1 - px0 < part.shape[1] or py1 - py0 < part.shape[0]
    patch[py0:py1, px0:px1] = cv2.resize(part, (px1 - px0, py1 - py0),
                                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return patch


def fill_colour(image: np.ndarray) -> np.ndarray:
    """The mean colour of an image: what the look sees outside it (training crops and padded
    levels alike)."""
    # cv2.mean: numpy's mean over a uint8 axis took 1.4 ms for a 320x213 photograph (0.05 ms here)
    return np.round(cv2.mean(image)[: image.shape[-1]]).astype(np.uint8)


def level_image(reference: np.ndarray, level_side: float, config: LookConfig) -> tuple[np.ndarray, float, float]:
    """The working reference resized so a target of side ``level_side`` is ``config.side`` pixels,
    padded (mean colour) to at least the canvas size.

    :return: the level image and its scale in x and in y (level pixels per reference pixel).
    """
    height, width = reference.shape[:2]
    factor = config.side / level_side
    size = (max(int(round(height * factor)), 1), max(int(round(width * factor)), 1))
    return _padded(_level_resize(reference, size), config), size[1] / width, size[0] / height


def _level_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size = (height, width)`` for a pyramid level: halved by exact 2x2
    averages while it is at least twice the size, then bilinear (shrinking by less than 2x);
    enlarged bilinearly. An odd last row or column is dropped before a halving (at most one
    pixel of ``image``; the callers' scales ignore it). May return ``image`` itself (levels are
    only read).

    Why: OpenCV's area resize by a factor that is not 1/2 takes its generic path (0.85 ms for a
    320x183 photograph to 280x160), while an exact halving takes its fast path and a bilinear
    resize reads only the 2x2 source pixels around each output pixel, which at factors between
    1/2 and 1 aliases little. Measured with the shipped look (one thread): building the benchmark's
    100 pyramids took 1.54 ms a query with area resizes for the levels that shrink 2x or more,
    0.44 ms this way, 0.93 ms resizing bilinearly to a power-of-two multiple of the size first and
    halving last (closer to an area average: 0.2-0.8 against 3-4 grey levels mean difference on a
    fine texture). Success on FlickrLogos-27-derived test pairs never used before: 0.772 / 0.773 /
    0.774 on test indices 1000-1999 (area / this / bilinear first), 0.799 / 0.801 on 2000-2999
    (this / bilinear first). Earlier, on 400 pairs: 0.758 with bilinear levels under 2x, 0.748
    with area levels throughout (the training crops are area-resized).
    """
    out_h, out_w = size
    while image.shape[0] >= 2 * out_h and image.shape[1] >= 2 * out_w:
        image = _halved(image)
    if image.shape[:2] == (out_h, out_w):
        return image  # possibly the input itself: levels are only read
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def _halved(image: np.ndarray) -> np.ndarray:
    """``image`` at half its size by exact 2x2 averages (OpenCV's fast path); an odd last row or
    column is dropped."""
    rows, cols = image.shape[0] // 2, image.shape[1] // 2
    return cv2.resize(image[: 2 * rows, : 2 * cols], (cols, rows), interpolation=cv2.INTER_AREA)


def pyramid(reference: np.ndarray, level_sides: Sequence[float], config: LookConfig) -> list[tuple[np.ndarray, float, float]]:
    """Every level's image and scales, as :func:`level_image` gives them, but a level whose target
    side is twice an earlier level's (every third level at the default ``level_step`` of 2^(1/3))
    is that level's image halved by exact 2x2 averages: nearly the image a direct resize gives
    (an odd last row or column is dropped; the scales account for it), at a small fraction of the
    cost, since a direct resize reads the whole working reference each time (0.1-0.4 ms for a
    320x183 photograph, against 0.02 ms for a halving; measured, one thread).

    :param level_sides: ``(L,)`` target sides in pixels of ``reference``.
    :return: per level, the (padded) level image and its scale in x and in y.
    """
    height, width = reference.shape[:2]
    levels: list[tuple[np.ndarray, float, float]] = []
    unpadded: list[np.ndarray] = []
    for k, side in enumerate(level_sides):
        half_of = next((j for j in range(k) if abs(side / level_sides[j] - 2.0) < 1e-6
                        and min(unpadded[j].shape[:2]) >= 2), None)
        if half_of is None:
            factor = config.side / side
            size = (max(int(round(height * factor)), 1), max(int(round(width * factor)), 1))
            scaled, scale_x, scale_y = _level_resize(reference, size), size[1] / width, size[0] / height
        else:
            _, source_x, source_y = levels[half_of]
            scaled, scale_x, scale_y = _halved(unpadded[half_of]), source_x / 2, source_y / 2
        unpadded.append(scaled)
        levels.append((_padded(scaled, config), scale_x, scale_y))
    return levels


def _padded(scaled: np.ndarray, config: LookConfig) -> np.ndarray:
    """``scaled`` padded with its mean colour to at least the canvas size (the largest levels of
    small references: the kernel must fit)."""
    if min(scaled.shape[:2]) >= config.canvas:
        return scaled
    padded = np.empty((max(scaled.shape[0], config.canvas), max(scaled.shape[1], config.canvas), 3), np.uint8)
    padded[:] = fill_colour(scaled)
    padded[: scaled.shape[0], : scaled.shape[1]] = scaled
    return padded
