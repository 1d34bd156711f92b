"""The look's correlation: a query's kernel (its features averaged over its cells), the part of it
that holds the query, and the row-by-row correlation the exported score graph computes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def mean_over_cells(features: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``(N, C, K, K)`` features kept on the ``(N, K, K)`` cell mask and divided by the number of
    cells: a kernel whose correlation is the mean cosine similarity over the query's cells."""
    return features * cells[:, None] / cells.sum((1, 2)).clamp(min=1.0)[:, None, None, None]


@dataclass(frozen=True)
class KernelPart:
    """A query's ``(1, C, K, K)`` kernel trimmed to the cells that hold the query
    (:func:`trimmed_kernel`).

    :param weights: ``(1, C, k, k')`` the nonzero part. :param top: its first row in the kernel.
    :param left: its first column. :param side: ``K``, the whole kernel's side.
    """

    weights: np.ndarray
    top: int
    left: int
    side: int


def trimmed_kernel(kernel: np.ndarray) -> KernelPart:
    """The smallest part of a ``(1, C, K, K)`` kernel that holds all its nonzero cells.

    Why: the kernel is zero outside the query's cells (:func:`mean_over_cells`), and a square
    query covers 5x5 of the 8x8 cells; correlating the part and keeping the positions of the whole
    kernel gives the same scores (:meth:`~matchenv.agents.look_runtime.LookRuntime.scores`) for 25/64 of
    the correlation's work.
    """
    cells = np.any(kernel[0] != 0.0, axis=0)
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    if rows.size == 0:  # all zero: any one cell gives the same (zero) scores
        rows = cols = np.zeros(1, np.int64)
    part = kernel[:, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return KernelPart(np.ascontiguousarray(part), int(rows[0]), int(cols[0]), kernel.shape[-1])


def row_filters(features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` features and a ``(1, C, k, k')`` kernel given at run time -> ``(N, k, H,
    W - k' + 1)``: plane ``dy`` is every position's correlation with kernel row ``dy`` (a ``1 x k'``
    filter). :func:`sum_rows` of it is ``F.conv2d(features, kernel)``.

    Why: ONNX Runtime runs a convolution whose weights are an input by im2col (a ``C * k * k'`` by
    ``positions`` matrix with one output row: memory-bound, about half of a pyramid level's time);
    ``k`` outputs use its convolution kernels well. Measured against that single convolution (one
    thread, with the row sums as a one-hot convolution): 0.60 vs 2.9 ms on a 40x64-cell map with
    an 8x8 kernel, 0.49 vs 1.4 ms on four 20x20 maps with a 16x16 kernel (the second look).
    """
    return F.conv2d(features, kernel[0].transpose(0, 1).unsqueeze(2))


def sum_rows(planes: np.ndarray) -> np.ndarray:
    """``(N, k, H, Q)`` row correlations (:func:`row_filters`) -> ``(N, H - k + 1, Q)``: each
    position's sum of plane ``dy`` read ``dy`` cells down, i.e. the correlation with the whole
    kernel. (A handful of numpy additions: cheaper than a one-hot convolution in the graph, which
    would need the kernel's height fixed.)"""
    rows = planes.shape[1]
    height = planes.shape[2] - rows + 1
    total = planes[:, 0, :height].copy()
    for dy in range(1, rows):
        total += planes[:, dy, dy : dy + height]
    return total
