"""Matching by Tone Mapping (MTM): template matching invariant to any monotone or non-monotone tone map.

Hel-Or, Hel-Or & David, "Fast Template Matching in Non-Linear Tone-Mapped Images", ICCV 2011, and
"Matching by Tone Mapping: Photometric Invariant Template Matching", IEEE TPAMI 36(2), 2014.

MTM asks how well the window ``w`` can be explained by *some* tone mapping ``M`` of the pattern
``p``: ``D(p, w) = min_M ||M(p) - w||^2 / (m var(w))``. With a piecewise-constant ``M`` over ``k``
intensity bins of the pattern, ``M(p) = S beta`` where ``S = [p_1 ... p_k]`` is the ``m x k`` slice
matrix (``p_j`` the binary image of the pattern pixels falling in bin ``j``). The least-squares
``beta_j`` is the mean of ``w`` over the pixels of ``p_j``, which gives the closed form of the
pattern-to-window (P2W) distance (TPAMI 2014)::

    D(p, w) = ( ||w||^2 - sum_j (p_j . w)^2 / |p_j| ) / ( m var(w) )

``||w||^2`` and ``m var(w) = ||w||^2 - (sum w)^2 / m`` are box sums of ``w^2`` and ``w`` (integral
images), and ``p_j . w`` for every window is one correlation of the reference with the slice
image ``p_j``: the whole distance map costs ``k`` correlations plus two box filters.
"""

from __future__ import annotations

import cv2
import numpy as np

from matchenv.agents.baselines.base import Matcher, MatchResult, check_pair

#: Rough cost of MTM per reference pixel and intensity bin, one CPU thread (a correlation per bin;
#: measured: 0.7 s for 1000x1000 and a 28x28 query, 48 s for 6000x6000, where memory traffic dominates).
SECONDS_PER_PIXEL_BIN = 4e-8
#: Working memory per reference pixel: a dozen float64 maps (integral images, box sums, the bins'
#: correlations, the distance); measured 3.4 GB for 6000x6000.
BYTES_PER_PIXEL = 96


class MTMMatcher(Matcher):
    """Exhaustive MTM (pattern-to-window) matcher; minimises ``D(p, w)`` over every window.

    ``D`` lies in ``[0, 1]``: 0 when some tone map of the pattern reproduces the window exactly,
    1 when the best piecewise-constant tone map is no better than a constant (the window's mean).
    ``score`` is ``1 - D``.

    Degenerate cases are defined rather than divided by zero: empty bins contribute nothing
    (``|p_j| = 0`` also means ``p_j . w = 0``); a flat window (``var(w) = 0``) says nothing about the
    pattern and gets the worst distance, 1; a flat pattern (one bin) makes every window distance 1.

    Images are matched in grayscale (colour converted with ``cv2.COLOR_BGR2GRAY``).

    :param bins: number ``k`` of equal-width intensity bins spanning the pattern's own range
        ``[min p, max p]`` (the paper's slice transform). More bins fit finer tone maps but need
        more pattern pixels per bin; 32 is ample for a 28x28 (784-pixel) pattern.

    Cost: ``k`` correlations of the reference and about 100 bytes per reference pixel; a
    reference expected to take more than 30 s or 1 GiB (about 3000x3000 px) gets a
    :class:`~matchenv.agents.baselines.base.CostlyMatchWarning` first.
    """

    name = "mtm"

    def __init__(self, bins: int = 32) -> None:
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        self.bins = int(bins)

    def distance_map(self, query: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """MTM distance of every query-size window.

        :param query: ``(h, w[, C])`` uint8 pattern. :param reference: ``(H, W[, C])`` uint8 image.
        :return: ``(H - h + 1, W - w + 1)`` float64 ``D`` in ``[0, 1]``; entry ``[y, x]`` is the window
            whose top-left pixel is ``(x, y)``.
        """
        q, r = check_pair(query, reference)
        pattern, image = _gray(q).astype(np.float64), _gray(r).astype(np.float64)
        h, w = pattern.shape
        m = float(h * w)
        out_h, out_w = image.shape[0] - h + 1, image.shape[1] - w + 1
        self.warn_if_costly(q.shape, r.shape, *self.expected_cost(q.shape, r.shape), stride=False)

        # Box sums of w and w^2 for every window from integral images (exact in float64).
        s, sq = cv2.integral2(image, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        sum_w = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
        sum_w2 = sq[h:, w:] - sq[:-h, w:] - sq[h:, :-w] + sq[:-h, :-w]
        m_var = sum_w2 - sum_w**2 / m  # m * var(w)

        # Slice the pattern: bin index of every pixel over the pattern's own intensity range.
        lo, hi = float(pattern.min()), float(pattern.max())
        if hi > lo:
            index = np.minimum(((pattern - lo) / (hi - lo) * self.bins).astype(np.int64), self.bins - 1)
        else:
            index = np.zeros(pattern.shape, dtype=np.int64)
        explained = np.zeros((out_h, out_w))  # sum_j (p_j . w)^2 / |p_j|
        for j, count in enumerate(np.bincount(index.ravel(), minlength=self.bins)):
            if count == 0:
                continue  # an empty bin has p_j = 0: no term (and no 0/0)
            slice_j = (index == j).astype(np.float64)
            # filter2D is a correlation; with the anchor at the kernel's top-left corner, output
            # [y, x] is p_j . (window at top-left (x, y)). float64 keeps the subtraction below from
            # cancelling catastrophically (both terms are ~m * 255^2).
            corr = cv2.filter2D(image, cv2.CV_64F, slice_j, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
            explained += corr[:out_h, :out_w] ** 2 / count

        residual = np.clip(sum_w2 - explained, 0.0, None)  # round-off can push it a hair below 0
        # Relative threshold for "flat": var(w) below ~1e-9 of the window's energy is round-off.
        flat = m_var <= 1e-9 * np.maximum(sum_w2, 1.0)
        dist = np.ones_like(m_var)
        np.divide(residual, m_var, out=dist, where=~flat)
        return np.clip(dist, 0.0, 1.0)

    def expected_cost(self, query_shape: tuple[int, ...], reference_shape: tuple[int, ...]) -> tuple[int, float, float]:
        """Rough cost of matching a ``query_shape`` query in a ``reference_shape`` reference
        (``(h, w, ...)``, ``(H, W, ...)``): window positions, seconds on one CPU thread, bytes of
        working memory (:data:`SECONDS_PER_PIXEL_BIN`, :data:`BYTES_PER_PIXEL`)."""
        (h, w), (big_h, big_w) = query_shape[:2], reference_shape[:2]
        pixels = big_h * big_w
        return (big_h - h + 1) * (big_w - w + 1), SECONDS_PER_PIXEL_BIN * pixels * self.bins, BYTES_PER_PIXEL * pixels

    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        """Find ``query`` in ``reference``: the window of least MTM distance.

        :param query: ``(h, w)`` / ``(h, w, 1)`` grayscale or ``(h, w, 3)`` colour uint8 pattern.
        :param reference: ``(H, W[, C])`` uint8 image at least as large as the query.
        :return: box of the query's size in reference pixels, ``score = 1 - D`` in ``[0, 1]``,
            ``evaluated = (H - h + 1) * (W - w + 1)`` positions.
        """
        dist = self.distance_map(query, reference)
        y, x = np.unravel_index(int(np.argmin(dist)), dist.shape)
        h, w = query.shape[:2]
        return MatchResult(
            box=np.array([x, y, x + w, y + h], dtype=np.float64), score=float(1.0 - dist[y, x]), evaluated=int(dist.size)
        )

    def __repr__(self) -> str:
        return f"MTMMatcher(bins={self.bins})"


def _gray(image: np.ndarray) -> np.ndarray:
    """Channel-last uint8 ``(H, W, 1|3)`` -> ``(H, W)`` uint8 grayscale."""
    return image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
