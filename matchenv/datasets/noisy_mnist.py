"""Noisy MNIST search pairs: Translated, Cluttered and Mixed.

Every variant places one *target* digit on a dark canvas and asks for it with a *query*
that is a clean, centred digit of the same class but a **different instance**, so that
matching needs more than pixel equality. Training pairs use only MNIST's training digits;
the fixed test split uses only MNIST's test digits.

=================  ========  =======  ===========  ==========
variant            canvas    clutter  distractors  noise std
=================  ========  =======  ===========  ==========
TranslatedMNIST    60 x 60   0        0            25
ClutteredMNIST     100x100   8        0            25
MixedMNIST         100x100   4        2-4          25
=================  ========  =======  ===========  ==========

Clutter fragments are random ``8x8`` patches cut from random other digits (the protocol of
the Recurrent Attention Model paper). Distractors are whole digits of *other* classes whose
IoU with every other placed digit is at most ``max_overlap_iou``. Noise is additive Gaussian
on the 0-255 scale, clipped; it is applied to the reference only (the query stays clean).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Union

import cv2
import numpy as np

from matchenv.datasets.base import PairDataset, SearchPair
from matchenv.datasets.mnist_files import MNISTDigits, load_mnist
from matchenv.geometry import iou

DIGIT = 28  # MNIST digit side in pixels
PathLike = Union[str, os.PathLike]


class NoisyMNIST(PairDataset):
    """Configurable Noisy MNIST generator; the three variants below only change defaults.

    :param canvas_size: side of the square reference in pixels.
    :param n_clutter: number of ``clutter_size x clutter_size`` fragments of other digits.
    :param clutter_size: side of a clutter fragment in pixels.
    :param n_distractors: ``(min, max)`` whole distractor digits of other classes (inclusive).
    :param max_overlap_iou: largest IoU allowed between any two placed digits; a distractor that
        cannot be placed within this bound after 100 tries is left out.
    :param noise_std: standard deviation of additive Gaussian pixel noise, in 0-255 units.
    :param scale_range: ``(min, max)`` factor applied to the placed digit (drawn log-uniformly),
        e.g. ``(0.7, 1.5)``; ``None`` keeps 28x28 and the action then has no scale component.
    :param max_rotation: placed digit rotated uniformly in ``[-max_rotation, max_rotation]`` degrees.
    :param contrast_range: ``(min, max)`` factor on the placed digit's intensity, or ``None``.
    :param test_size: number of pairs in the fixed test split.
    :param test_seed: seed of the fixed test split.
    :param data_dir: folder of the MNIST IDX files; see :func:`matchenv.datasets.mnist_files.load_mnist`
        for the search order when ``None``.
    :param download: allow downloading MNIST into the cache (``None``: unless ``MATCHENV_OFFLINE=1``).
    """

    def __init__(
        self,
        canvas_size: int = 100,
        n_clutter: int = 8,
        clutter_size: int = 8,
        n_distractors: tuple[int, int] = (0, 0),
        max_overlap_iou: float = 0.1,
        noise_std: float = 25.0,
        scale_range: Optional[tuple[float, float]] = None,
        max_rotation: float = 0.0,
        contrast_range: Optional[tuple[float, float]] = None,
        test_size: int = 1000,
        test_seed: int = 2024,
        data_dir: Optional[PathLike] = None,
        download: Optional[bool] = None,
    ) -> None:
        lo_d, hi_d = (int(v) for v in n_distractors)
        if not 0 <= lo_d <= hi_d <= 9:
            raise ValueError(f"n_distractors must be (min, max) with 0 <= min <= max <= 9, got {n_distractors}")
        max_side = DIGIT * (scale_range[1] if scale_range else 1.0)
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        if canvas_size < math.ceil(max_side):
            raise ValueError(
                f"canvas_size={canvas_size} is smaller than the largest placed digit ({max_side:.0f} px): "
                "the query would be larger than the reference; use a larger canvas or a smaller scale_range"
            )
        if not 0 < clutter_size <= DIGIT:
            raise ValueError(f"clutter_size must be in 1..{DIGIT}, got {clutter_size}")
        if noise_std < 0 or n_clutter < 0 or test_size < 1:
            raise ValueError("noise_std and n_clutter must be >= 0 and test_size >= 1")
        if max_rotation < 0 or not 0 <= max_overlap_iou <= 1:
            raise ValueError(f"need max_rotation >= 0 and 0 <= max_overlap_iou <= 1, got {max_rotation}, {max_overlap_iou}")
        if contrast_range is not None and not 0 < contrast_range[0] <= contrast_range[1]:
            raise ValueError(f"contrast_range must be (min, max) with 0 < min <= max, got {contrast_range}")
        self.canvas_size = int(canvas_size)
        self.n_clutter = int(n_clutter)
        self.clutter_size = int(clutter_size)
        self.n_distractors = (lo_d, hi_d)
        self.max_overlap_iou = float(max_overlap_iou)
        self.noise_std = float(noise_std)
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.max_rotation = float(max_rotation)
        self.contrast_range = tuple(contrast_range) if contrast_range is not None else None
        self.test_size = int(test_size)
        self.test_seed = int(test_seed)
        self.data_dir = data_dir
        self.download = download
        self._digits: dict[str, MNISTDigits] = {}
        self._by_class: dict[str, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ data access
    def digits(self, split: str) -> MNISTDigits:
        """The MNIST digits of ``split`` (loaded on first use, shared across datasets in a process)."""
        if split not in self._digits:
            digits = load_mnist(split, data_dir=self.data_dir, download=self.download)
            self._digits[split] = digits
            self._by_class[split] = [np.flatnonzero(digits.labels == c) for c in range(10)]
        return self._digits[split]

    @property
    def has_distractors(self) -> bool:
        return self.n_distractors[1] > 0

    @property
    def source(self) -> str:
        """Where the MNIST digits come from (loads the training split if needed)."""
        return self.digits("train").source

    def __getstate__(self) -> dict:
        # Pickle the configuration, not 50 MB of digits: they are reloaded (and cached) on use.
        state = self.__dict__.copy()
        state["_digits"], state["_by_class"] = {}, {}
        return state

    # ------------------------------------------------------------------ pairs
    def sample(self, rng: np.random.Generator) -> SearchPair:
        return self._make_pair("train", rng)

    def test_pair(self, index: int) -> SearchPair:
        index = self._check_test_index(index)
        return self._make_pair("test", np.random.default_rng([self.test_seed, index]), test_index=index)

    def _make_pair(self, split: str, rng: np.random.Generator, test_index: Optional[int] = None) -> SearchPair:
        digits = self.digits(split)
        by_class = self._by_class[split]
        label = int(rng.integers(10))
        target_idx, query_idx = (int(i) for i in rng.choice(by_class[label], size=2, replace=False))

        size = self.canvas_size
        canvas = np.zeros((size, size), dtype=np.float32)
        target_img = self._augment(digits.images[target_idx], rng)
        target_box = self._random_box(target_img.shape, rng)
        boxes = [target_box]
        distractor_boxes, distractor_idx = [], []

        n_dist = int(rng.integers(self.n_distractors[0], self.n_distractors[1] + 1))
        if n_dist:
            other_classes = rng.choice(np.delete(np.arange(10), label), size=n_dist, replace=False)
            for c in other_classes:
                idx = int(rng.choice(by_class[int(c)]))
                img = self._augment(digits.images[idx], rng)
                box = self._place_apart(img.shape, boxes, rng)
                if box is None:
                    continue
                _paste_max(canvas, img, box)
                boxes.append(box)
                distractor_boxes.append(box)
                distractor_idx.append(idx)

        # np.maximum compositing is order independent, so clutter may be drawn before the target.
        s = self.clutter_size
        if self.n_clutter:
            sources = rng.integers(len(digits.labels), size=self.n_clutter)
            offsets = rng.integers(0, DIGIT - s + 1, size=(self.n_clutter, 2))
            positions = rng.integers(0, size - s + 1, size=(self.n_clutter, 2))
            for src, (oy, ox), (py, px) in zip(sources, offsets, positions):
                patch = digits.images[src, oy : oy + s, ox : ox + s]
                np.maximum(canvas[py : py + s, px : px + s], patch, out=canvas[py : py + s, px : px + s])

        _paste_max(canvas, target_img, target_box)
        if self.noise_std > 0:
            canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * np.float32(self.noise_std)
        reference = np.clip(canvas, 0, 255).astype(np.uint8)[:, :, None]
        query = digits.images[query_idx][:, :, None].copy()
        return SearchPair(
            query=query,
            reference=reference,
            target_box=np.asarray(target_box, dtype=np.float64),
            distractor_boxes=np.asarray(distractor_boxes, dtype=np.float64).reshape(-1, 4),
            label=label,
            meta={
                "split": split,
                "target_index": target_idx,
                "query_index": query_idx,
                "distractor_indices": distractor_idx,
                "test_index": test_index,
            },
        )

    def _augment(self, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Optional harder settings: scale jitter, rotation, contrast. Returns float32 ``(h, w)``."""
        img = digit.astype(np.float32)
        if self.max_rotation:
            angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
            m = cv2.getRotationMatrix2D((DIGIT / 2 - 0.5, DIGIT / 2 - 0.5), angle, 1.0)
            img = cv2.warpAffine(img, m, (DIGIT, DIGIT), flags=cv2.INTER_LINEAR)
        if self.scale_range is not None:
            lo, hi = np.log(self.scale_range)
            side = max(int(round(DIGIT * float(np.exp(rng.uniform(lo, hi))))), 4)
            img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA if side < DIGIT else cv2.INTER_LINEAR)
        if self.contrast_range is not None:
            img *= float(rng.uniform(*self.contrast_range))
        return img

    def _random_box(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int, int]:
        h, w = shape
        x0 = int(rng.integers(0, self.canvas_size - w + 1))
        y0 = int(rng.integers(0, self.canvas_size - h + 1))
        return (x0, y0, x0 + w, y0 + h)

    def _place_apart(self, shape, placed, rng) -> Optional[tuple[int, int, int, int]]:
        for _ in range(100):
            box = self._random_box(shape, rng)
            if np.all(iou(np.asarray(placed, dtype=np.float64), np.asarray(box, dtype=np.float64)) <= self.max_overlap_iou):
                return box
        return None


def _paste_max(canvas: np.ndarray, img: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Composite ``img`` into ``canvas`` at ``box`` with a pixel-wise maximum (ink over ink stays ink)."""
    x0, y0, x1, y1 = box
    np.maximum(canvas[y0:y1, x0:x1], img, out=canvas[y0:y1, x0:x1])


def default_clutter_density(dataset: type[NoisyMNIST]) -> float:
    """Clutter fragments per 100x100 px on a Noisy MNIST variant's default canvas (Cluttered
    MNIST: 8, Mixed MNIST: 4, Translated MNIST: 0)."""
    import inspect

    defaults = inspect.signature(dataset.__init__).parameters
    return defaults["n_clutter"].default * (100.0 / defaults["canvas_size"].default) ** 2


def canvas_kwargs(side: int, clutter_density: float, extra: Optional[dict] = None) -> dict:
    """Arguments of a ``side`` x ``side`` Noisy MNIST canvas with clutter at ``clutter_density``
    fragments per 100x100 px (rounded to a whole number of fragments), plus ``extra``: how large
    canvases keep a variant's clutter (its :func:`default_clutter_density`) or a training density."""
    return {**(extra or {}), "canvas_size": int(side), "n_clutter": int(round(clutter_density * (side / 100.0) ** 2))}


class TranslatedMNIST(NoisyMNIST):
    """A 28x28 digit at a uniformly random position on a 60x60 noisy canvas."""

    def __init__(self, canvas_size: int = 60, n_clutter: int = 0, **kwargs) -> None:
        super().__init__(canvas_size=canvas_size, n_clutter=n_clutter, **kwargs)


class ClutteredMNIST(NoisyMNIST):
    """A digit on a 100x100 noisy canvas with 8 random 8x8 fragments of other digits."""

    def __init__(self, canvas_size: int = 100, n_clutter: int = 8, **kwargs) -> None:
        super().__init__(canvas_size=canvas_size, n_clutter=n_clutter, **kwargs)


class MixedMNIST(NoisyMNIST):
    """The target digit among 2-4 whole digits of other classes, with clutter and noise, on 100x100."""

    def __init__(
        self, canvas_size: int = 100, n_clutter: int = 4, n_distractors: tuple[int, int] = (2, 4), **kwargs
    ) -> None:
        super().__init__(canvas_size=canvas_size, n_clutter=n_clutter, n_distractors=n_distractors, **kwargs)
