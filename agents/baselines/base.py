"""The interface every matcher shares, baseline or learned: ``locate(query, reference) -> MatchResult``."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass
class MatchResult:
    """A matcher's answer.

    :param box: ``(4,)`` float pixel box ``(x0, y0, x1, y1)`` in the reference (``x1``/``y1``
        exclusive), the size of the query (times the chosen scale for multi-scale methods).
        Never derived from a ground-truth box.
    :param score: the method's own confidence for ``box`` (higher is better; not comparable
        across methods).
    :param evaluated: number of candidate windows or positions the method scored to answer
        (the cost measure of the benchmark: ``T`` for the search agent, every position for
        exhaustive matchers).
    """

    box: np.ndarray
    score: float
    evaluated: int


class Matcher(abc.ABC):
    """A template matcher. Subclasses implement :meth:`locate` for one query/reference pair.

    Images are numpy ``uint8`` arrays, ``(H, W)`` grayscale or ``(H, W, 3)`` colour (channel-last,
    as OpenCV loads them); a matcher converts them to what it needs. The query must fit inside
    the reference (``ValueError`` otherwise, see :func:`check_pair`).
    """

    #: Short name used in benchmark tables, e.g. ``"ncc"``.
    name: str = "matcher"

    @abc.abstractmethod
    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        """Find ``query`` in ``reference``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ScoreMapMatcher(Matcher):
    """An exhaustive matcher: it scores every window on a ``stride`` grid and answers with the best.

    Subclasses implement :meth:`score_map`; :meth:`locate` returns the query-size box at the
    highest score (ties: first in row-major order) and counts every scored window as evaluated.
    """

    #: Step in pixels between the top-left corners of scored windows.
    stride: int = 1

    @abc.abstractmethod
    def score_map(self, query: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """``(ny, nx)`` scores; entry ``[iy, ix]`` is the window whose top-left pixel is
        ``(ix * stride, iy * stride)`` (higher is better)."""

    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        scores = self.score_map(query, reference)
        iy, ix = np.unravel_index(int(np.argmax(scores)), scores.shape)
        h, w = query.shape[:2]
        x0, y0 = int(ix) * self.stride, int(iy) * self.stride
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
        return MatchResult(box=box, score=float(scores[iy, ix]), evaluated=int(scores.size))


def check_pair(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a query/reference pair and return both as channel-last uint8 with the same channels.

    Grayscale ``(H, W)`` and ``(H, W, 1)`` become ``(H, W, 1)``; if one image is colour and the
    other grayscale, the grayscale one is repeated to 3 channels.

    :raises TypeError: for non-arrays. :raises ValueError: for wrong shapes/dtypes, empty images
        or a query larger than the reference.
    """
    images = []
    for name, img in (("query", query), ("reference", reference)):
        if not isinstance(img, np.ndarray):
            raise TypeError(f"{name} must be a numpy array (e.g. from cv2.imread), got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 (0-255), got {img.dtype}")
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 3) or min(img.shape[:2]) < 1:
            raise ValueError(f"{name} must be (H, W) grayscale or (H, W, 3) colour, got shape {img.shape}")
        images.append(img)
    q, r = images
    if q.shape[0] > r.shape[0] or q.shape[1] > r.shape[1]:
        raise ValueError(
            f"the query ({q.shape[1]}x{q.shape[0]} px) is larger than the reference ({r.shape[1]}x{r.shape[0]} px)"
        )
    if q.shape[2] != r.shape[2]:
        q, r = (np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in (q, r))
    return q, r
