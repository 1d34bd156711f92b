"""The dataset interface shared by every source of query/reference pairs."""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

SPLITS = ("train", "test")
#: a training draw whose image cannot be decoded is skipped (with a warning) and another drawn;
#: once more than :data:`UNREADABLE_GRACE` draws failed, more than this fraction of all draws
#: failing stops the run: then the data, not a few damaged files, is broken
MAX_UNREADABLE_FRACTION = 0.01
UNREADABLE_GRACE = 20


class ImageReadError(ValueError):
    """An image file is missing or cannot be decoded."""


class UnreadablePairWarning(UserWarning):
    """A training pair was skipped because one of its images could not be decoded."""


class TooManyUnreadablePairs(RuntimeError):
    """More training draws failed to decode than :data:`MAX_UNREADABLE_FRACTION` allows."""


@dataclass(frozen=True)
class SearchPair:
    """One episode's data: a query, the reference to search and where the query is.

    :param query: ``(Hq, Wq, C)`` uint8 query image at the dataset's query resolution (channel-last).
    :param reference: ``(H, W, C)`` uint8 reference image (channel-last).
    :param target_box: ``(4,)`` float64 pixel box ``(x0, y0, x1, y1)`` of the match in ``reference``.
    :param distractor_boxes: ``(K, 4)`` float64 pixel boxes of look-alike candidates that are *not*
        the match (e.g. the other digits of Mixed MNIST); ``K = 0`` where a dataset has none.
        Privileged: for teachers and analysis only, never for a policy's input.
    :param label: class of the target (digit, brand), or ``None``.
    :param meta: provenance (source indices, split, ...), for tests and debugging. Photograph
        datasets add ``working_scale`` and ``original_size`` (see :mod:`matchenv.datasets.photos`).
    :param template: the query at its natural size and aspect, ``(h, w, C)`` uint8 in reference-scale
        pixels, or ``None`` when ``query`` is already that (Noisy MNIST). Exhaustive matchers slide
        this; the agent sees ``query``.
    :param window_size: this pair's nominal window ``(height, width)`` in reference pixels (the
        template's size), or ``None`` for the dataset's :attr:`PairDataset.window_size`. It must be
        derived from the query alone, never from the target.
    """

    query: np.ndarray
    reference: np.ndarray
    target_box: np.ndarray
    distractor_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    label: Optional[int] = None
    meta: dict[str, Any] = field(default_factory=dict)
    template: Optional[np.ndarray] = None
    window_size: Optional[tuple[float, float]] = None

    @property
    def matcher_query(self) -> np.ndarray:
        """What an exhaustive matcher slides over the reference: the template, else the query."""
        return self.query if self.template is None else self.template


class PairDataset(abc.ABC):
    """A source of :class:`SearchPair` s with a random training stream and a fixed test split.

    Subclasses set the class attributes below and implement :meth:`sample` and :meth:`test_pair`.
    Training pairs are drawn from a caller-supplied generator (the environment's ``np_random``),
    so a seeded environment replays the same episodes. Test pair ``i`` depends only on
    ``(test_seed, i)``: evaluation sets are fixed by seed and size.
    """

    #: Number of image channels (1 for grayscale, 3 for colour).
    channels: int = 1
    #: ``(height, width)`` at which the query (and each window) is observed.
    query_size: tuple[int, int] = (28, 28)
    #: Nominal ``(height, width)`` of the target in reference pixels: the default window size.
    window_size: tuple[int, int] = (28, 28)
    #: ``(min, max)`` factor on :attr:`window_size` that the agent may choose, or ``None`` when
    #: every target has the nominal size (the action then has no scale component).
    scale_range: Optional[tuple[float, float]] = None
    #: Number of pairs in the fixed test split.
    test_size: int = 1000
    #: Whether pairs come with look-alike distractor boxes (``SearchPair.distractor_boxes``), so
    #: that a teacher should demonstrate *search* rather than go straight to the target.
    has_distractors: bool = False
    #: Whether query and windows are shown letterboxed (aspect kept, padded) instead of stretched
    #: to ``query_size`` (photographs: see :mod:`matchenv.datasets.photos`).
    letterbox: bool = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> SearchPair:
        """Draw a training pair using ``rng`` (training images only)."""

    @abc.abstractmethod
    def test_pair(self, index: int) -> SearchPair:
        """Return pair ``index`` of the fixed test split (held-out images only)."""

    #: training draws so far, and how many of them were skipped as unreadable (:meth:`pair`)
    training_draws: int = 0
    unreadable_draws: int = 0

    def pair(self, split: str, rng: np.random.Generator) -> SearchPair:
        """A training pair, or a uniformly chosen test pair, drawn with ``rng``.

        A training pair whose image cannot be decoded (:class:`ImageReadError`, e.g. a truncated
        JPEG) is skipped with an :class:`UnreadablePairWarning`, counted in
        :attr:`unreadable_draws`, and another is drawn.

        :raises TooManyUnreadablePairs: more than :data:`MAX_UNREADABLE_FRACTION` of the draws
            failed (after :data:`UNREADABLE_GRACE` failures).
        """
        check_split(split)
        if split != "train":
            return self.test_pair(int(rng.integers(self.test_size)))
        while True:
            self.training_draws += 1
            try:
                return self.sample(rng)
            except ImageReadError as err:
                self.unreadable_draws += 1
                warnings.warn(f"{self.name}: skipped a training pair: {err}", UnreadablePairWarning, stacklevel=2)
                if (self.unreadable_draws > UNREADABLE_GRACE
                        and self.unreadable_draws > MAX_UNREADABLE_FRACTION * self.training_draws):
                    raise TooManyUnreadablePairs(
                        f"{self.name}: {self.unreadable_draws} of {self.training_draws} training pairs could not be "
                        f"decoded (more than {MAX_UNREADABLE_FRACTION:.0%}); the last: {err}. Check the image files "
                        "(e.g. re-download the dataset) or remove the damaged ones from its manifest") from err

    def _check_test_index(self, index: int) -> int:
        if not 0 <= int(index) < self.test_size:
            raise IndexError(f"test pair index {index} is out of range: {self.name} has test_size={self.test_size}")
        return int(index)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")


class PairListDataset(PairDataset):
    """A dataset of pairs you already have in memory (e.g. your own images).

    Training episodes draw a pair uniformly with the env's generator; test pair ``i`` is
    ``test_pairs[i]`` (the training pairs when no test pairs are given).

    :param pairs: the training pairs; all must share the channel count.
    :param test_pairs: the fixed test split, or ``None`` to evaluate on ``pairs``.
    :param window_size: nominal ``(height, width)`` of the target in reference pixels; by
        default the first query's size.
    """

    def __init__(
        self,
        pairs: list[SearchPair],
        test_pairs: Optional[list[SearchPair]] = None,
        window_size: Optional[tuple[int, int]] = None,
    ) -> None:
        if not pairs:
            raise ValueError("PairListDataset needs at least one pair")
        self.pairs = list(pairs)
        self.test_pairs = list(test_pairs) if test_pairs is not None else self.pairs
        first = self.pairs[0].query
        self.channels = int(first.shape[2]) if getattr(first, "ndim", 0) == 3 else 1
        self.query_size = tuple(first.shape[:2])
        self.window_size = tuple(window_size) if window_size is not None else self.query_size
        self.test_size = len(self.test_pairs)

    def sample(self, rng: np.random.Generator) -> SearchPair:
        return self.pairs[int(rng.integers(len(self.pairs)))]

    def test_pair(self, index: int) -> SearchPair:
        return self.test_pairs[self._check_test_index(index)]
