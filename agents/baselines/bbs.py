"""Best-Buddies Similarity (BBS) template matching, exhaustive and vectorised.

Dekel, Oron, Rubinstein, Avidan & Freeman, "Best-Buddies Similarity for Robust Template
Matching", CVPR 2015; Oron, Dekel, Xue, Freeman & Avidan, "Best-Buddies Similarity - Robust
Template Matching using Mutual Nearest Neighbors", TPAMI 40(8), 2018.

The template and every candidate window are point sets. A point is one of the non-overlapping
``gamma x gamma`` patches (``gamma = 3``) tiling the window: its ``gamma^2 * C`` intensity/colour
values, scaled to ``[0, 1]``, together with its ``(x, y)`` position inside the window, divided by
the window width/height so that it lies in ``[0, 1)``. The distance between two points is::

    d(p, q) = ||p_app - q_app||^2 + lam * ||p_xy - q_xy||^2           (lam = 2, the papers' value)

A *best-buddies pair* is a template point and a window point that are each other's nearest
neighbour, and ``BBS(window) = #pairs / min(N, M)`` with ``N = M`` = points per set, so BBS is in
``[0, 1]`` and an exact copy of the template scores 1 (for ``lam > 0``).

Differences from the authors' MATLAB code, on purpose: positions are normalised by the window size
(the code multiplies pixel coordinates by 1/256, i.e. the same for a ~256 px window); the code's
3x3 Gaussian weighting of each patch (sigma 0.6) is left out; and every window position is scored
(``stride=1``) instead of only those on the patch grid. Rows/columns of the query beyond the last
whole patch (``h mod 3``, ``w mod 3``) are not used, but the returned box has the full query size.

**Caching (the papers' complexity section).** The appearance part of ``d`` between template
patch ``i`` and the reference patch whose top-left pixel is ``(u, v)`` does not depend on which
window that reference patch belongs to; only the spatial part does, and it depends only on the
two points' *slots* in their grids. So one dense map ``A[i, u, v]`` (every pixel as a patch corner,
i.e. all ``gamma x gamma`` phases of the patch grid at once) is computed with a single GEMM, and
the ``N x N`` distance matrix of the window at ``(y, x)`` is ``A[i, y + 3a, x + 3b] + S[i, (a, b)]``
with ``S`` a fixed table. :func:`best_buddies` runs the mutual-NN test on all windows of a tile at
once by looping over the ``N`` window slots ``(a, b)``, each a strided view of ``A``.

**Cost.** Time ``O(H W N gamma^2 C)`` for ``A`` plus ``O(n_windows * N^2)`` for the mutual-NN tests,
with ``N = (h // 3) * (w // 3)`` (81 for a 28x28 query). Memory: the image as float32 and the
score map (``O(H W C)``), the ``N x N`` spatial table, and ``O(chunk_elements)`` working memory
whatever the image size (the reference is processed in tiles whose appearance map fits the budget).
Measured on one CPU thread (28x28 query): 100x100 reference ~0.15 s, 400x400 ~4 s, 1000x1000 ~26 s
(linear in the number of windows; ~0.2 GB above the interpreter at 1000x1000).

Appearance distances are exact in float32 (integer grey levels, see :func:`_appearance`) and the
rest is the same elementwise float32 sum for every window, so the scores are reproducible bit for
bit and equal those of a direct per-window implementation, ties included.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from matchenv.agents.baselines.base import ScoreMapMatcher, check_pair

#: Distances are computed in squared grey levels (intensities 0..255, exact integers, see
#: :func:`_appearance`) instead of the papers' [0, 1] units: the spatial term is multiplied by
#: 255^2 instead, which scales every distance by the same positive factor (same NNs, same BBS).
_APP_SCALE = 255.0 * 255.0
#: Points x windows per call of :func:`best_buddies`: small enough for its working tensors to stay
#: in cache, large enough to amortise the per-slot overhead (measured: ~20% faster than one tile).
_CACHE_ELEMENTS = 2**18
#: Rough cost of one window's mutual-NN test per pair of points (``N^2`` per window), one CPU
#: thread: 26 s for 1000x1000 and a 28x28 query (``N = 81``, the module docstring).
SECONDS_PER_WINDOW_PAIR = 4e-9


class BBS(ScoreMapMatcher):
    """Best-Buddies Similarity matcher (exhaustive over window positions).

    :param lam: weight of the squared spatial distance against the squared appearance distance,
        with intensities in ``[0, 1]`` and positions in ``[0, 1)`` (fraction of the window side).
        The papers use 2. ``0`` ignores positions (BBS of bags of patches).
    :param gamma: side of the non-overlapping patches, in pixels (the papers' 3).
    :param stride: distance in pixels between scored window positions, in x and in y.
    :param chunk_elements: upper bound on the number of float32 elements of one working tensor
        (default ``2**23``: 32 MiB); lower it to use less memory, results do not change.

    A pair expected to take more than 30 s or 1 GiB (the number of windows times the work per
    window: :meth:`expected_cost`, the module docstring's **Cost**) gets a
    :class:`~matchenv.agents.baselines.base.CostlyMatchWarning` first, once per matcher; the scores are the same.
    """

    name = "bbs"

    def __init__(self, lam: float = 2.0, gamma: int = 3, stride: int = 1, chunk_elements: int = 2**23) -> None:
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if int(gamma) != gamma or gamma < 1:
            raise ValueError(f"gamma (patch side) must be a positive integer, got {gamma}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
        self.lam = float(lam)
        self.gamma = int(gamma)
        self.stride = int(stride)
        self.chunk_elements = int(chunk_elements)

    # ------------------------------------------------------------------ public API
    def score_map(self, query: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """BBS of every scored window.

        :return: ``(ny, nx)`` float64 array, ``ny = (H - h) // stride + 1`` (likewise ``nx``);
            entry ``[iy, ix]`` is the BBS of the window whose top-left pixel is
            ``(x, y) = (ix * stride, iy * stride)``.
        """
        q, r = check_pair(query, reference)
        g, s = self.gamma, self.stride
        h, w = q.shape[:2]
        H, W = r.shape[:2]
        gy, gx = h // g, w // g  # the template's patch grid
        if gy == 0 or gx == 0:
            raise ValueError(f"the query ({w}x{h} px) is smaller than one {g}x{g} BBS patch")
        n = gy * gx
        ny, nx = (H - h) // s + 1, (W - w) // s + 1
        self.warn_if_costly(q.shape, r.shape, *self.expected_cost(q.shape, r.shape))

        qt = _to_tensor(q)
        rt = _to_tensor(r)
        # Template points' appearance, (n, C*g*g), in F.unfold's (channel, row, col) order so it lines
        # up with the reference's im2col; points in row-major order of the patch grid.
        t_app = F.unfold(qt[:, :, : gy * g, : gx * g], g, stride=g)[0].T.contiguous()
        spatial = torch.from_numpy(spatial_term(gy, gx, g, h, w, self.lam))  # (n, n) float32

        span_y, span_x = (gy - 1) * g + 1, (gx - 1) * g + 1  # patch corners one window spans
        budget = self.chunk_elements
        out = np.empty((ny, nx), dtype=np.float64)
        # Tiles of windows whose appearance map (n, rows, cols) stays under the budget; the
        # per-window state of the mutual-NN test, (n, windows), is smaller still.
        bx = _fit(nx, lambda k: n * span_y * ((k - 1) * s + span_x) <= budget)
        by = _fit(ny, lambda k: n * ((k - 1) * s + span_y) * ((bx - 1) * s + span_x) <= budget)
        for i0, i1 in _ranges(ny, by):
            for j0, j1 in _ranges(nx, bx):
                ry, rx = i0 * s, j0 * s  # reference pixel of this tile's first patch corner
                rows, cols = (i1 - i0 - 1) * s + span_y, (j1 - j0 - 1) * s + span_x
                app = _appearance(t_app, rt[:, :, ry : ry + rows + g - 1, rx : rx + cols + g - 1], g)
                # Sub-tiles of windows whose (n, windows) state stays in cache: much faster.
                cx = _fit(j1 - j0, lambda k: n * k <= _CACHE_ELEMENTS)
                cy = _fit(i1 - i0, lambda k: n * k * cx <= _CACHE_ELEMENTS)
                for a0, a1 in _ranges(i1 - i0, cy):
                    for b0, b1 in _ranges(j1 - j0, cx):
                        sub = app[:, a0 * s :, b0 * s :]
                        counts = best_buddies(sub, spatial, gx, g, s, (a1 - a0, b1 - b0))
                        out[i0 + a0 : i0 + a1, j0 + b0 : j0 + b1] = counts.numpy() / n
        return out

    def expected_cost(self, query_shape: tuple[int, ...], reference_shape: tuple[int, ...]) -> tuple[int, float, float]:
        """Rough cost of matching a ``query_shape`` query in a ``reference_shape`` reference
        (``(h, w[, C])``, ``(H, W[, C])``): window positions, seconds on one CPU thread
        (:data:`SECONDS_PER_WINDOW_PAIR` per window and pair of points), bytes of working memory
        (the reference as float32, the float64 score map, a few tensors of ``chunk_elements``)."""
        (h, w), (big_h, big_w) = query_shape[:2], reference_shape[:2]
        channels = reference_shape[2] if len(reference_shape) > 2 else 1
        n = (h // self.gamma) * (w // self.gamma)
        windows = ((big_h - h) // self.stride + 1) * ((big_w - w) // self.stride + 1)
        memory = 4.0 * big_h * big_w * channels + 8.0 * windows + 16.0 * self.chunk_elements
        return windows, SECONDS_PER_WINDOW_PAIR * windows * n * n, memory

    def __repr__(self) -> str:
        return f"BBS(lam={self.lam}, gamma={self.gamma}, stride={self.stride})"


# ---------------------------------------------------------------------- helpers
def best_buddies(
    app: torch.Tensor, spatial: torch.Tensor, gx: int, gamma: int, stride: int, windows: tuple[int, int]
) -> torch.Tensor:
    """Number of best-buddies pairs of every window of a tile.

    :param app: ``(n, rows, cols)`` appearance distances, template patch ``i`` vs the reference
        patch with top-left ``(u, v)`` of the tile (see :func:`_appearance`).
    :param spatial: ``(n, n)`` spatial term between template slot ``i`` and window slot ``m``.
    :param gx: patch columns of the grid (``n = gy * gx``); ``gamma``: patch side; ``stride``:
        window step (px); ``windows``: ``(ty, tx)`` windows of the tile, the first at ``(0, 0)``.
    :return: ``(ty, tx)`` int64 counts.

    The full ``(n, n)`` distance matrix of a window is never stored: the loop runs over the ``n``
    window slots ``m`` and, for all windows at once, takes the ``(n, ty, tx)`` slice
    ``D[:, m] = app[:, y + 3a, x + 3b] + spatial[:, m]`` (a strided view of ``app``). From it, the
    window point's NN among the template points (a min over ``i``) is final at once, and each
    template point's running NN over the slots seen so far is updated. That is ``O(n^2)`` work
    per window like the matrix, but in cache-sized ``n x windows`` pieces and without a
    ``n^2 x windows`` tensor (3-4x faster than ``argmin`` on the materialised matrix).
    Ties go to the lowest index on both sides, like ``argmin``.
    """
    n = spatial.shape[0]
    ty, tx = windows
    itype = torch.int16 if n < 2**15 else torch.int32  # small indices: less memory traffic
    idx_i = torch.arange(n, dtype=itype).view(n, 1, 1)
    no_index = torch.tensor(n, dtype=itype)
    row_best = torch.full((n, ty, tx), float("inf"))  # template point i: smallest D[i, m] so far
    row_nn = torch.zeros((n, ty, tx), dtype=itype)  # ... and its first argmin m
    col_nn = torch.empty((n, ty, tx), dtype=itype)  # window point m: first argmin_i D[i, m]
    d = torch.empty((n, ty, tx))
    col_min = torch.empty((1, ty, tx))
    is_min = torch.empty((n, ty, tx), dtype=torch.bool)
    for m in range(n):
        a, b = divmod(m, gx)
        y0, x0 = a * gamma, b * gamma  # slot m's patch corner in the tile's first window
        view = app[:, y0 : y0 + (ty - 1) * stride + 1 : stride, x0 : x0 + (tx - 1) * stride + 1 : stride]
        torch.add(view, spatial[:, m].view(n, 1, 1), out=d)
        # First argmin over i, as the smallest index attaining the min (amin is much faster
        # than argmin on CPU, and this keeps argmin's tie rule).
        torch.amin(d, 0, keepdim=True, out=col_min)
        torch.eq(d, col_min, out=is_min)
        col_nn[m] = torch.where(is_min, idx_i, no_index).amin(0)
        # Strict "<": a later slot with an equal distance does not replace the first one.
        torch.lt(d, row_best, out=is_min)
        torch.minimum(row_best, d, out=row_best)
        row_nn.masked_fill_(is_min, m)
    # (i, row_nn[i]) is a best-buddies pair iff i is in turn the NN of window point row_nn[i].
    mutual = col_nn.gather(0, row_nn.long()) == idx_i
    return mutual.sum(dim=0)


def spatial_term(gy: int, gx: int, gamma: int, h: int, w: int, lam: float) -> np.ndarray:
    """``lam`` times the squared distance between the positions of two patch slots of a window.

    :param gy: patch rows of the grid; ``gx`` patch columns; ``gamma`` patch side (px);
        ``h``/``w`` window height/width (px), which normalise positions to ``[0, 1)``.
    :return: ``(n, n)`` float32 with ``n = gy * gx`` (slots in row-major order), in units of
        squared grey levels (times ``255^2``, like the appearance term, see ``_APP_SCALE``).
    """
    a, b = np.divmod(np.arange(gy * gx), gx)
    dy = (a[:, None] - a[None, :]) * gamma / h  # float64; identical for every window
    dx = (b[:, None] - b[None, :]) * gamma / w
    return (lam * _APP_SCALE * (dx * dx + dy * dy)).astype(np.float32)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """Channel-last uint8 ``(H, W, C)`` -> ``(1, C, H, W)`` float32 with integer values 0..255."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().unsqueeze(0)


def _appearance(t_app: torch.Tensor, ref: torch.Tensor, g: int) -> torch.Tensor:
    """Squared appearance distance (in squared grey levels) of every template patch to every patch of ``ref``.

    :param t_app: ``(n, C*g*g)`` template patches, integer values 0..255.
    :param ref: ``(1, C, R, K)`` reference tile, integer values 0..255.
    :return: ``(n, R - g + 1, K - g + 1)`` float32; ``[i, u, v]`` compares template patch ``i`` with
        the reference patch whose top-left pixel is ``(u, v)`` of the tile.

    ``|t|^2 + |r|^2 - 2 t.r`` by GEMM on integer-valued float32 is *exact* (every partial sum is an
    integer below ``2 * 27 * 255^2 < 2^24``), so the result does not depend on the summation order
    and ties between equal distances are real ties, broken identically by any implementation.
    """
    rows, cols = ref.shape[2] - g + 1, ref.shape[3] - g + 1
    patches = F.unfold(ref, g)[0]  # (C*g*g, rows*cols)
    d = (t_app * t_app).sum(1, keepdim=True) + (patches * patches).sum(0, keepdim=True)
    d -= 2.0 * (t_app @ patches)
    return d.view(-1, rows, cols)


def _fit(total: int, fits) -> int:
    """The largest ``k`` in ``1..total`` with ``fits(k)`` (``fits`` monotone), or 1 if none fits."""
    lo, hi = 1, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _ranges(total: int, step: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``0..total`` in steps of ``step``."""
    for start in range(0, total, step):
        yield start, min(start + step, total)
