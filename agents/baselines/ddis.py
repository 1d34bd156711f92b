"""Deformable Diversity Similarity (DDIS) template matching, exhaustive and vectorised.

Talmi, Mechrez & Zelnik-Manor, "Template Matching with Deformable Diversity Similarity",
CVPR 2017 (arXiv:1612.02190).

Features are dense, overlapping ``3 x 3`` patches of intensity (grayscale) or colour (``9 * C``
values per pixel, the paper's "color" variant; its deep-feature variant is not implemented). Each
point ``j`` of the reference (a patch's top-left pixel) gets its exact nearest neighbour
``NN(j)`` among the template's patches (squared Euclidean distance; ties go to the lowest
template index). A window ``w`` of the query's size contains the ``|T| = (h - 2)(w - 2)``
reference points whose patches lie inside it, the same grid as the template's points, and::

    DDIS(w) = (1 / |T|) * sum_{j in w}  exp(1 - kappa_w(NN(j))) / (1 + r_j)

* ``kappa_w(i)`` = number of points of ``w`` whose NN is template point ``i``: a template patch
  matched many times (e.g. flat background) contributes little -- the *diversity* of the matches;
* ``r_j`` = Euclidean distance in **pixels** between ``j``'s position inside the window and the
  position of ``NN(j)`` inside the template -- the *deformation*, penalised softly so that
  non-rigid deformations still score.

This is the paper's Eq. for DDIS with bandwidth ``h = 1`` (the authors' code's value, pixel units)
and normalisation constant ``c = 1 / |T|``, chosen so that ``DDIS`` is in ``[0, 1]`` and an exact
copy of a template whose patches are all distinct scores exactly 1 (the authors' code returns the
unnormalised sum; the constant does not change the argmax). Differences from the authors' code:
exact instead of approximate (TreeCANN) NN search, and a window only contains the points whose
whole patch is inside it (the code also counts the last two rows/columns, whose patches spill out).

**Vectorisation.** The NN field is one GEMM per tile (``|T|`` x reference points). All windows are
then scored in chunks of ``L`` windows: an ``(L, |T|)`` tensor of the NN indices of the windows'
points (a strided view of the NN field), the per-window histograms ``kappa`` by ``scatter_add``
(a sliding-window histogram computed for every window at once), gathered back at ``NN(j)``, and
``1 / (1 + r_j)`` read from a small table indexed by the slot difference of ``j`` and ``NN(j)``.
A dense ``(|T|, H, W)`` one-hot box filter would give the same ``kappa`` but needs ``|T| H W``
memory; the histograms here cost the same ``O(n_windows |T|)`` as the unavoidable per-point
gather of ``kappa(NN(j))`` and stay within ``chunk_elements``.

**Cost.** Time ``O(H W |T| 9 C)`` for the NN field plus ``O(n_windows * |T|)`` for the scores
(``|T| = 676`` for a 28x28 query). Memory: the image as float32, the int64 NN field and the score
map (``O(H W C)``), plus ``O(chunk_elements)`` working memory whatever the image size. Measured on
one CPU thread (28x28 query): 100x100 reference ~0.06-0.07 s, 400x400 ~1.7 s, 1000x1000 ~8 s
(~50 MB above the interpreter at 1000x1000).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from matchenv.agents.baselines.base import ScoreMapMatcher, check_pair
from matchenv.agents.baselines.bbs import _fit, _ranges, _to_tensor  # shared tiling / conversion helpers

PATCH = 3  #: side of the dense patches the features are made of, in pixels (the paper's 3x3)
#: Rough cost per window and template point (``|T|`` per window, the NN field included), one CPU
#: thread: 8 s for 1000x1000 and a 28x28 query (``|T| = 676``, the module docstring).
SECONDS_PER_WINDOW_POINT = 1.2e-8


class DDIS(ScoreMapMatcher):
    """Deformable Diversity Similarity matcher (exhaustive over window positions).

    :param stride: distance in pixels between scored window positions, in x and in y.
    :param chunk_elements: upper bound on the number of elements of one working tensor (default
        ``2**18``: small chunks stay in cache, the fastest setting measured); results do not depend on it.

    A pair expected to take more than 30 s or 1 GiB (the number of windows times the work per
    window: :meth:`expected_cost`, the module docstring's **Cost**) gets a
    :class:`~matchenv.agents.baselines.base.CostlyMatchWarning` first, once per matcher; the scores are the same.
    """

    name = "ddis"

    def __init__(self, stride: int = 1, chunk_elements: int = 2**18) -> None:
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
        self.stride = int(stride)
        self.chunk_elements = int(chunk_elements)

    # ------------------------------------------------------------------ public API
    def score_map(self, query: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """DDIS of every scored window.

        :return: ``(ny, nx)`` float64 array, ``ny = (H - h) // stride + 1`` (likewise ``nx``);
            entry ``[iy, ix]`` is the DDIS of the window whose top-left pixel is
            ``(x, y) = (ix * stride, iy * stride)``.
        """
        q, r = check_pair(query, reference)
        h, w = q.shape[:2]
        H, W = r.shape[:2]
        if h < PATCH or w < PATCH:
            raise ValueError(f"the query ({w}x{h} px) is smaller than one {PATCH}x{PATCH} DDIS patch")
        th, tw = h - PATCH + 1, w - PATCH + 1  # the template's (and every window's) point grid
        n_t = th * tw
        s = self.stride
        ny, nx = (H - h) // s + 1, (W - w) // s + 1
        self.warn_if_costly(q.shape, r.shape, *self.expected_cost(q.shape, r.shape))

        nnf = nearest_neighbour_field(q, r, self.chunk_elements)  # (H - 2, W - 2) int64
        # (ny, nx, th, tw) strided view: the NN indices of each window's points, no copy yet.
        windows = np.lib.stride_tricks.sliding_window_view(nnf, (th, tw))[::s, ::s]
        # r_j depends only on the slot difference (dy, dx) between window point j and template
        # point i = NN(j), both on the same (th, tw) grid: one small table of 1 / (1 + r) over
        # dy in [-(th-1), th-1], dx in [-(tw-1), tw-1], read at base[j] - code[i] (row-major offsets).
        span = 2 * tw - 1
        slot_y, slot_x = np.divmod(np.arange(n_t), tw)
        code = torch.from_numpy(slot_y * span + slot_x)  # (|T|,) int64
        base = torch.from_numpy((slot_y + th - 1) * span + slot_x + tw - 1)  # (|T|,) int64
        dy, dx = np.meshgrid(np.arange(-(th - 1), th), np.arange(-(tw - 1), tw), indexing="ij")
        inv_r = torch.from_numpy((1.0 / (1.0 + np.hypot(dy, dx))).astype(np.float32).ravel())

        out = np.empty((ny, nx), dtype=np.float64)
        # Small chunks: the (windows, |T|) working tensors stay in cache (faster than big ones).
        cx = _fit(nx, lambda k: k * n_t <= self.chunk_elements)
        cy = _fit(ny, lambda k: k * cx * n_t <= self.chunk_elements)
        ones = torch.ones((cy * cx, n_t), dtype=torch.float32)
        for i0, i1 in _ranges(ny, cy):
            for j0, j1 in _ranges(nx, cx):
                n_win = (i1 - i0) * (j1 - j0)
                idx_np = np.empty((n_win, n_t), dtype=np.int64)  # (L, |T|): one copy of the view
                idx_np.reshape(i1 - i0, j1 - j0, th, tw)[...] = windows[i0:i1, j0:j1]
                idx = torch.from_numpy(idx_np)
                # kappa: histogram of each window's NN indices, read back at each point's NN.
                counts = torch.zeros((n_win, n_t), dtype=torch.float32)
                counts.scatter_add_(1, idx, ones[:n_win])
                kappa = counts.gather(1, idx)
                inv_1_plus_r = torch.take(inv_r, base - torch.take(code, idx))
                terms = torch.exp(1.0 - kappa).mul_(inv_1_plus_r)
                scores = terms.sum(dim=1, dtype=torch.float64) / n_t
                out[i0:i1, j0:j1] = scores.view(i1 - i0, j1 - j0).numpy()
        return out

    def expected_cost(self, query_shape: tuple[int, ...], reference_shape: tuple[int, ...]) -> tuple[int, float, float]:
        """Rough cost of matching a ``query_shape`` query in a ``reference_shape`` reference
        (``(h, w[, C])``, ``(H, W[, C])``): window positions, seconds on one CPU thread
        (:data:`SECONDS_PER_WINDOW_POINT` per window and template point), bytes of working memory
        (the reference as float32, the int64 NN field, the float64 score map, the chunks)."""
        (h, w), (big_h, big_w) = query_shape[:2], reference_shape[:2]
        channels = reference_shape[2] if len(reference_shape) > 2 else 1
        points = max(h - PATCH + 1, 0) * max(w - PATCH + 1, 0)
        windows = ((big_h - h) // self.stride + 1) * ((big_w - w) // self.stride + 1)
        memory = (4.0 * channels + 8.0) * big_h * big_w + 8.0 * windows + 32.0 * self.chunk_elements
        return windows, SECONDS_PER_WINDOW_POINT * windows * points, memory

    def __repr__(self) -> str:
        return f"DDIS(stride={self.stride})"


def nearest_neighbour_field(query: np.ndarray, reference: np.ndarray, chunk_elements: int = 2**18) -> np.ndarray:
    """Exact NN of every 3x3 reference patch among the 3x3 template patches.

    :param query: ``(h, w, C)`` uint8; ``reference``: ``(H, W, C)`` uint8 (same ``C``).
    :param chunk_elements: bound on the elements of one distance block.
    :return: ``(H - 2, W - 2)`` int64; entry ``[u, v]`` is the index ``a * (w - 2) + b`` of the
        template patch with top-left ``(a, b)`` nearest (squared Euclidean, lowest index on ties)
        to the reference patch with top-left ``(u, v)``.

    ``argmin_i |t_i - r|^2 = argmin_i (|t_i|^2 - 2 t_i.r)``, one GEMM per block of reference points.
    On integer-valued float32 (0..255) every partial sum is an integer below ``2^24``, so the
    distances are exact and ties are real ties, broken the same way by any implementation.
    """
    t = F.unfold(_to_tensor(query), PATCH)[0].T.contiguous()  # (|T|, 9C)
    t_sq = (t * t).sum(dim=1, keepdim=True)
    ref = _to_tensor(reference)
    rows, cols = reference.shape[0] - PATCH + 1, reference.shape[1] - PATCH + 1
    n_t, dim = t.shape
    out = np.empty((rows, cols), dtype=np.int64)
    # Tiles of reference rows: their im2col (dim x points) and their distance block (|T| x points)
    # both stay under the budget; a single row that is still too wide is split in column blocks.
    per_row = cols * max(n_t, dim)
    band = max(1, chunk_elements // per_row)
    block = max(1, chunk_elements // n_t)
    for u0, u1 in _ranges(rows, band):
        patches = F.unfold(ref[:, :, u0 : u1 + PATCH - 1], PATCH)[0]  # (9C, (u1-u0) * cols)
        flat = out[u0:u1].reshape(-1)  # a view: writes land in out
        for p0, p1 in _ranges(patches.shape[1], block):
            scores = t_sq - 2.0 * (t @ patches[:, p0:p1])
            flat[p0:p1] = scores.argmin(dim=0).numpy()
    return out
