"""The interface every matcher shares, baseline or learned: ``locate(query, reference) -> MatchResult``."""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass

import numpy as np

#: An exhaustive baseline (MTM, BBS, DDIS) warns (:class:`CostlyMatchWarning`) when it expects one
#: pair to take more than this many seconds on one CPU thread...
COSTLY_SECONDS = 30.0
#: ... or to need more than this many bytes of working memory.
COSTLY_BYTES = 2**30


class CostlyMatchWarning(RuntimeWarning):
    """An exhaustive matcher expects a long run or a lot of memory for one pair (see
    :meth:`Matcher.warn_if_costly`); silence it with ``warnings.simplefilter("ignore", CostlyMatchWarning)``."""


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
    the reference and be at least :data:`MIN_QUERY_SIDE` (2) pixels a side (``ValueError``
    otherwise, see :func:`check_pair`).
    """

    #: Short name used in benchmark tables, e.g. ``"ncc"``.
    name: str = "matcher"
    #: whether :meth:`warn_if_costly` has warned (it warns once per matcher)
    _warned_costly: bool = False

    def warn_if_costly(self, query_shape: tuple[int, ...], reference_shape: tuple[int, ...], windows: int,
                       seconds: float, memory: float, stride: bool = True) -> None:
        """Warn, once per matcher, when a pair is expected to cost more than :data:`COSTLY_SECONDS`
        or :data:`COSTLY_BYTES`; the answer is the same either way.

        The estimate is an operation count times a per-operation cost measured once on one CPU
        thread (each method's module docstring has its measurements), not a timing of this run:
        it is only meant to tell a two-second match from a ten-minute one before it starts.

        :param query_shape: / :param reference_shape: ``(h, w, ...)`` / ``(H, W, ...)``, for the message.
        :param windows: window positions the method will score.
        :param seconds: expected time, one thread. :param memory: expected working memory, bytes.
        :param stride: whether the method takes ``stride`` (the message suggests it).
        """
        if self._warned_costly or (seconds <= COSTLY_SECONDS and memory <= COSTLY_BYTES):
            return
        self._warned_costly = True
        (h, w), (big_h, big_w) = query_shape[:2], reference_shape[:2]
        time = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
        advice = "shrink the reference and the query together (e.g. cv2.resize both by 0.5: about 4x less work)"
        if stride:
            advice += ", or pass stride=k to score every k-th position (about k*k times less work)"
        warnings.warn(f"{self.name}: {windows:,} window positions for a {w}x{h} query in a {big_w}x{big_h} reference; "
                      f"expect roughly {time} on one CPU thread and {memory / 2**30:.1f} GiB of memory (an estimate "
                      f"from the operation count; the answer does not change): {advice}",
                      CostlyMatchWarning, stacklevel=4)

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


#: The smallest query side (pixels) a baseline takes: a 1-pixel-wide query has no 2-D pattern
#: (NCC's zero-mean correlation of one pixel is 0 at every position, MTM's one-bin tone map
#: explains every window equally). Methods built on patches need more (BBS and DDIS: 3 px).
MIN_QUERY_SIDE = 2


def check_pair(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a query/reference pair and return both as channel-last uint8 with the same channels.

    Grayscale ``(H, W)`` and ``(H, W, 1)`` become ``(H, W, 1)``; if one image is colour and the
    other grayscale, the grayscale one is repeated to 3 channels.

    :raises TypeError: for non-arrays. :raises ValueError: for wrong shapes/dtypes (a float image
        with NaN or infinite values says so), empty images, a query under :data:`MIN_QUERY_SIDE`
        pixels a side, or a query larger than the reference.
    """
    images = []
    for name, img in (("query", query), ("reference", reference)):
        if not isinstance(img, np.ndarray):
            raise TypeError(f"{name} must be a numpy array (e.g. from cv2.imread), got {type(img).__name__}")
        if img.dtype != np.uint8:
            # NaN is looked for only in a float image that is refused anyway: no cost for uint8 ones.
            if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
                what = " and ".join(label for label, found in (("NaN", np.isnan(img).any()),
                                                               ("infinite (inf)", np.isinf(img).any())) if found)
                raise ValueError(f"{name} has {what} values ({img.dtype}): the baselines take uint8 (0-255) images; "
                                 "replace the bad values and convert it, e.g. np.nan_to_num(image, nan=0.0, posinf=1.0, "
                                 "neginf=0.0) then (image * 255).round().astype(np.uint8) for floats in [0, 1]")
            hint = (" (for floats in [0, 1]: (image * 255).round().astype(np.uint8))"
                    if np.issubdtype(img.dtype, np.floating) else "")
            raise ValueError(f"{name} must be uint8 (0-255), got {img.dtype}{hint}")
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 3) or min(img.shape[:2]) < 1:
            raise ValueError(f"{name} must be (H, W) grayscale or (H, W, 3) colour, got shape {img.shape}")
        images.append(img)
    q, r = images
    if min(q.shape[:2]) < MIN_QUERY_SIDE:
        raise ValueError(f"the query is {q.shape[1]}x{q.shape[0]} px, smaller than the {MIN_QUERY_SIDE}x{MIN_QUERY_SIDE} px "
                         "a matcher needs (a single row or column of pixels has no pattern to correlate): pass a larger "
                         "template")
    if q.shape[0] > r.shape[0] or q.shape[1] > r.shape[1]:
        raise ValueError(
            f"the query ({q.shape[1]}x{q.shape[0]} px) is larger than the reference ({r.shape[1]}x{r.shape[0]} px): "
            "the matchers look for the query at (about) its own size, so it must fit inside the reference; crop the "
            "query or pass a larger reference"
        )
    if q.shape[2] != r.shape[2]:
        q, r = (np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in (q, r))
    return q, r
