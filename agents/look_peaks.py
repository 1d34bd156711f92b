"""From the look's score maps to boxes: positions' centres and boxes, the best distinct local
maxima (candidates), and sub-position refinement of a maximum by a parabola."""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from matchenv.agents.look_network import STRIDE
from matchenv.geometry import iou_of_floats


def refine_peak(before: float, peak: float, after: float) -> float:
    """Offset in ``[-1/2, 1/2]`` of the vertex of the parabola through three equally spaced
    samples whose middle one is the largest: sub-step precision for a maximum on a grid."""
    curvature = before - 2.0 * peak + after
    if not curvature < 0.0:  # flat or not a maximum: stay on the grid point
        return 0.0
    return float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


def box_at(centre_x: float, centre_y: float, side: float, aspect: float) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of geometric-mean side ``side`` and aspect (width / height) ``aspect``."""
    width, height = side * math.sqrt(aspect), side / math.sqrt(aspect)
    return np.array([centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2])


def clip_to_reference(boxes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(..., 4)`` boxes ``(x0, y0, x1, y1)`` clipped to the reference (a query of extreme aspect
    drawn at a large level reaches past its edges; clipping never lowers the IoU with a box
    inside it)."""
    height, width = np.shape(reference)[:2]
    return np.clip(boxes, 0.0, np.array([width, height, width, height], np.float64))


def position_centre(scale: tuple[float, float], row: float, col: float, canvas: int) -> tuple[float, float]:
    """Working-pixel centre of position ``(row, col)`` of a level's score map.

    :param scale: the level's scale in x and in y (level pixels per working pixel).
    :param canvas: side of the query's canvas, in pixels (:attr:`~matchenv.agents.look_network.LookConfig.canvas`).
    """
    scale_x, scale_y = scale
    half = canvas / 2
    return (col * STRIDE + half) / scale_x, (row * STRIDE + half) / scale_y


def grid_boxes(levels: np.ndarray, rows: np.ndarray, cols: np.ndarray, sides: np.ndarray, scales,
               aspect: float, canvas: int) -> np.ndarray:
    """Working-pixel boxes of the query's aspect at many positions at once: ``(N,)`` levels, rows
    and columns -> ``(N, 4)``.

    :param sides: ``(L,)`` target side of each level, working pixels. :param scales: ``L`` scales
        in x and in y. :param aspect: the query's width / height. :param canvas: see
        :func:`position_centre`.
    """
    centres = (np.stack([cols, rows], axis=1) * STRIDE + canvas / 2) / np.asarray(scales, np.float64)[levels]
    extent = sides[levels, None] * np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)]) / 2
    return np.concatenate([centres - extent, centres + extent], axis=1)


def score_near(score_map: np.ndarray, scale: tuple[float, float], centre: tuple[float, float], canvas: int) -> float:
    """The best score of a level's ``score_map`` within one position of where ``centre`` (working
    pixels) falls (``scale``: that level's; ``canvas``: see :func:`position_centre`)."""
    scale_x, scale_y = scale
    half = canvas / 2
    col = int(round((centre[0] * scale_x - half) / STRIDE))
    row = int(round((centre[1] * scale_y - half) / STRIDE))
    rows = slice(min(max(row - 1, 0), score_map.shape[0] - 1), min(max(row + 2, 1), score_map.shape[0]))
    cols = slice(min(max(col - 1, 0), score_map.shape[1] - 1), min(max(col + 2, 1), score_map.shape[1]))
    return float(score_map[rows, cols].max())


def has_close_rival(maps: Sequence[np.ndarray], sides: np.ndarray, scales, aspect: float, canvas: int,
                    best: Sequence[float], level: int, row: int, col: int, gap: float) -> bool:
    """Whether any position scores within ``gap`` of the best (``(row, col)`` of ``level``) and has
    a box that overlaps the best's by IoU under 0.3.

    Why: the runner-up :func:`distinct_peaks` finds is such a position, so where there is none the
    second look cannot run and :func:`distinct_peaks` (every level's local maxima: 0.3-0.8 ms) is
    skipped. All levels at once: about a third of that (0.09 against 0.30 ms on the
    benchmark's first pairs, one thread).

    :param maps: every level's ``(P, Q)`` scores. :param best: each level's best score.
        Others: see :func:`grid_boxes`.
    """
    top = box_at(*position_centre(scales[level], row, col, canvas), sides[level], aspect)
    floor = best[level] - gap - 1e-9  # the same comparison as LookSearcher.locate's, less rounding
    starts = np.cumsum([0] + [m.size for m in maps])
    close = np.flatnonzero(np.concatenate([m.ravel() for m in maps]) >= floor)  # flat indices, level-major
    levels = np.searchsorted(starts, close, side="right") - 1
    rows, cols = np.divmod(close - starts[levels], np.array([m.shape[1] for m in maps])[levels])
    x0, y0, x1, y1 = grid_boxes(levels, rows, cols, sides, scales, aspect, canvas).T
    # their IoU with the best's box, written out: geometry.iou's checks cost more than the arithmetic here
    inter = (np.maximum(np.minimum(x1, top[2]) - np.maximum(x0, top[0]), 0.0)
             * np.maximum(np.minimum(y1, top[3]) - np.maximum(y0, top[1]), 0.0))
    union = (x1 - x0) * (y1 - y0) + (top[2] - top[0]) * (top[3] - top[1]) - inter
    return bool(np.any(inter < (0.3 + 1e-9) * union))


def distinct_peaks(maps: Sequence[np.ndarray], sides: np.ndarray, scales, aspect: float, canvas: int,
                   count: int) -> list[tuple[float, int, int, int]]:
    """Up to ``count`` ``(score, level, row, col)``, best first: the local maxima of every level's
    scores (3x3), greedily kept when their box overlaps no better one's by IoU 0.3 or more
    (neighbouring levels see the same object).

    :param maps: every level's ``(P, Q)`` scores. Others: see :func:`grid_boxes`.
    """
    found = []
    for level, score_map in enumerate(maps):
        rows, cols = np.nonzero(score_map >= cv2.dilate(score_map, np.ones((3, 3), np.uint8)))
        found.append(np.stack([score_map[rows, cols], np.full(len(rows), level), rows, cols], axis=1))
    peaks = np.concatenate(found)
    # the best few dozen are plenty to find a few that do not overlap; their boxes at once
    peaks = peaks[np.argsort(-peaks[:, 0], kind="stable")[: 16 * count]]
    levels = peaks[:, 1].astype(int)
    boxes = grid_boxes(levels, peaks[:, 2], peaks[:, 3], sides, scales, aspect, canvas)
    kept: list[int] = []
    corners = boxes.tolist()
    for i, box in enumerate(corners):  # plain floats: a handful of boxes, numpy calls would cost more
        if all(iou_of_floats(*box, *corners[j]) < 0.3 for j in kept):
            kept.append(i)
            if len(kept) == count:
                break
    return [(float(peaks[i, 0]), int(levels[i]), int(peaks[i, 2]), int(peaks[i, 3])) for i in kept]
