"""Self-supervised training pairs from any folder of photographs: no labels, no annotation.

A pair is made from one image: a random, textured box of it is cut out, changed in appearance
(:class:`~matchenv.datasets.appearance.AppearanceChange`: exposure, colour, blur, noise, a small
warp, an occluder) and rescaled, and becomes the template; the (mildly jittered) image is the
reference and the box is the target. The template's size differs from the target's by the drawn
``template_scale``, so exhaustive matchers must search scales too; the agent's window is
relative to the reference (:func:`~matchenv.datasets.photos.nominal_window`) and it must find the
target's scale as well as its place.

The test split is **by image**: a fixed, seeded subset of the images is used only for test pairs,
so evaluation measures search in photographs the agent never saw.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from matchenv.datasets.appearance import AppearanceChange
from matchenv.datasets.base import SearchPair
from matchenv.datasets.photos import (
    DEFAULT_MAX_SIDE,
    DEFAULT_PHOTO_QUERY_SIZE,
    DEFAULT_PHOTO_SCALE_RANGE,
    ImageReadError,
    PhotoPairDataset,
    crop_box,
    make_photo_pair,
    read_image,
    read_image_size,
    to_working_size,
    working_scale,
    WINDOW_FRACTION,
)
from matchenv.geometry import resize_image

PathLike = Union[str, os.PathLike]
ImageSource = Union[PathLike, np.ndarray]

#: File extensions searched for in an image folder (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Images whose shorter side is below this at working size are skipped: too small to search in.
MIN_IMAGE_SIDE = 48
#: Smallest side of a template region, in working pixels.
MIN_REGION_SIDE = 8
#: Smallest side of a template after rescaling, in pixels (the letterboxed query still shows it).
MIN_TEMPLATE_SIDE = 4
#: Candidate regions tried per pair before the most textured one is accepted anyway.
MAX_REGION_TRIES = 10


class SelfSupervisedPhotos(PhotoPairDataset):
    """Template/target pairs cut from unlabelled photographs (a folder of them, or arrays).

    Train pair: an image of the train side (drawn with the env's generator), shrunk to the working
    size; a box of side ``region_side`` (fraction of the shorter side, log-uniform) and aspect
    ``aspect_range`` (width / height, log-uniform) at a uniform position; the template is that
    crop rescaled by ``template_scale`` (log-uniform) and changed by ``appearance``; the reference
    is the working image changed by ``reference_appearance``; the target box is the box.

    :param images: a folder (searched recursively for :data:`IMAGE_EXTENSIONS`; names starting
        with ``.`` are skipped), a single image file, or a list of image paths and/or RGB uint8
        ``(H, W, 3)`` arrays.
    :param query_size: ``(h, w)`` of query and window observations.
    :param max_side: working size: images are shrunk so their longest side is at most this.
    :param scale_range: window scales the agent may choose around the nominal window
        (``region_side / WINDOW_FRACTION`` must lie inside it, so every target size is reachable).
    :param region_side: ``(min, max)`` side of the template region (the geometric mean of its
        width and height) as a fraction of the image's shorter side, log-uniform.
    :param aspect_range: ``(min, max)`` width / height of the region, log-uniform.
    :param template_scale: ``(min, max)`` factor from the region's size to the template's,
        log-uniform (the template is never larger than the reference).
    :param appearance: how the template differs from its target (``None``: a pixel copy; a dict:
        fields that override :class:`AppearanceChange`'s defaults, for config files).
    :param reference_appearance: global change of the reference image, so that the reference is
        not the source photograph either (``None``: unchanged; a dict as for ``appearance``).
        :meth:`AppearanceChange.mild` colour jitter by default.
    :param min_region_std: a candidate region whose grayscale standard deviation (0-255 units) is
        below this is redrawn (up to :data:`MAX_REGION_TRIES` times).
    :param test_fraction: fraction of the images used only for the test split.
    :param test_size: number of pairs in the fixed test split.
    :param test_seed: seed of the test images' choice and of the test pairs.
    :param exclude: image paths to leave out (e.g. a benchmark's test images).
    """

    def __init__(
        self,
        images: Union[PathLike, Sequence[ImageSource]],
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
        region_side: tuple[float, float] = (0.1, 0.45),
        aspect_range: tuple[float, float] = (0.5, 2.0),
        template_scale: tuple[float, float] = (0.5, 2.0),
        appearance: Union[AppearanceChange, dict, None] = AppearanceChange(),
        reference_appearance: Union[AppearanceChange, dict, None] = AppearanceChange.mild(),
        min_region_std: float = 12.0,
        test_fraction: float = 0.2,
        test_size: int = 500,
        test_seed: int = 0,
        exclude: Optional[Sequence[PathLike]] = None,
    ) -> None:
        super().__init__(query_size=query_size, max_side=max_side, scale_range=scale_range)
        self.region_side = _positive_range(region_side, "region_side", upper=1.0)
        self.aspect_range = _positive_range(aspect_range, "aspect_range")
        self.template_scale = _positive_range(template_scale, "template_scale")
        self.check_reach()
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if int(test_size) < 1:
            raise ValueError(f"test_size must be >= 1, got {test_size}")
        if min_region_std < 0:
            raise ValueError(f"min_region_std must be >= 0, got {min_region_std}")
        self.appearance = _as_appearance(appearance, "appearance")
        self.reference_appearance = _as_appearance(reference_appearance, "reference_appearance")
        self.min_region_std = float(min_region_std)
        self.test_fraction = float(test_fraction)
        self.test_size = int(test_size)
        self.test_seed = int(test_seed)

        sources, keys = _collect_sources(images, exclude)
        #: image index -> (working-size image, working scale, original (height, width)); paths are
        #: decoded on first use, so a large folder costs nothing until it is sampled
        self._cache: dict[int, tuple[np.ndarray, float, tuple[int, int]]] = {}
        self.sources, self.keys = self._drop_small(sources, keys)
        self.train_indices, self.test_indices = self._split()

    # ------------------------------------------------------------------ construction
    def check_reach(self) -> None:
        """Every target size must be one the agent's windows can take: ``region_side`` inside
        ``scale_range`` times the nominal window's :data:`WINDOW_FRACTION`.

        :raises ValueError: naming both ranges.
        """
        reach = (self.scale_range[0] * WINDOW_FRACTION, self.scale_range[1] * WINDOW_FRACTION)
        if not (reach[0] - 1e-9 <= self.region_side[0] and self.region_side[1] <= reach[1] + 1e-9):
            raise ValueError(
                f"region_side={self.region_side} makes targets the agent cannot size with scale_range={self.scale_range} "
                f"(windows of {reach[0]:g} to {reach[1]:g} of the shorter side): keep region_side inside that"
            )

    def _drop_small(self, sources: list[ImageSource], keys: list[str]) -> tuple[list[ImageSource], list[str]]:
        """Keep the images whose shorter side is at least :data:`MIN_IMAGE_SIDE` at working size."""
        kept_sources, kept_keys, small = [], [], []
        for source, key in zip(sources, keys):
            if isinstance(source, np.ndarray):
                self._cache[len(kept_sources)] = _working(source, self.max_side)
                h, w = self._cache[len(kept_sources)][0].shape[:2]
            else:
                h, w = self._probe_size(source, len(kept_sources))
            if min(h, w) < MIN_IMAGE_SIDE:
                self._cache.pop(len(kept_sources), None)
                small.append(f"{key} ({w}x{h})")
                continue
            kept_sources.append(source)
            kept_keys.append(key)
        where = f" after shrinking to max_side={self.max_side}" if self.max_side is not None else ""
        if not kept_sources:
            raise ValueError(
                f"{self.name}: all {len(sources)} images have a shorter side under {MIN_IMAGE_SIDE} px{where}, "
                f"too small to search in (e.g. {', '.join(small[:3])}); use larger images"
            )
        if small:
            warnings.warn(
                f"{self.name}: skipped {len(small)} of {len(sources)} images whose shorter side is under "
                f"{MIN_IMAGE_SIDE} px{where}: {', '.join(small[:5])}{', ...' if len(small) > 5 else ''}",
                stacklevel=3,
            )
        return kept_sources, kept_keys

    def _probe_size(self, path: Path, index: int) -> tuple[int, int]:
        """Working ``(height, width)`` of an image file, from its header when Pillow can read it.

        Decoding every image up front would make a large folder slow to open; the header is
        enough to skip small images (:func:`~matchenv.datasets.photos.read_image_size`). A file
        Pillow cannot identify is decoded with OpenCV (which raises a clear
        :class:`ImageReadError` if it cannot read it either) and cached.
        """
        try:
            height, width = read_image_size(path)
        except Exception:  # not for Pillow (unidentified, or e.g. a decompression bomb): OpenCV decides
            entry = _working(self._read(path), self.max_side)
            self._cache[index] = entry
            return entry[0].shape[:2]
        factor = working_scale(height, width, self.max_side)
        return max(int(round(height * factor)), 1), max(int(round(width * factor)), 1)

    def _split(self) -> tuple[list[int], list[int]]:
        """Train and test image indices: the test images are a fixed, seeded ``test_fraction``.

        Images are ranked by a seeded hash of their name rather than by a permutation of the list,
        so adding or removing an image moves at most one other image between the splits.
        """
        n = len(self.sources)
        if n < 2:
            warnings.warn(
                "SelfSupervisedPhotos: a single image cannot be split by image; its train and test pairs come from "
                "the same image (give at least 2 images for a held-out test split)",
                stacklevel=3,
            )
            return [0], [0]
        n_test = min(max(int(round(self.test_fraction * n)), 1), n - 1)
        order = sorted(range(n), key=lambda i: _split_hash(self.keys[i], self.test_seed))
        return sorted(order[n_test:]), sorted(order[:n_test])

    # ------------------------------------------------------------------ image access
    def _read(self, path: Path) -> np.ndarray:
        try:
            return read_image(path)
        except ImageReadError as err:
            raise ImageReadError(f"SelfSupervisedPhotos cannot use image {path}: {err}") from err

    def working_image(self, index: int) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Image ``index`` at working size (decoded once, then cached), its working scale and original size.

        :return: ``(H, W, 3)`` uint8 image (shared: do not modify), working pixels per original
            pixel, and the original ``(height, width)``.
        """
        entry = self._cache.get(index)
        if entry is None:
            entry = _working(self._read(self.sources[index]), self.max_side)
            self._cache[index] = entry
        return entry

    def __getstate__(self) -> dict:
        # Pickle the configuration (and images given as arrays), not the decoded files: workers
        # decode and cache them again on use.
        state = self.__dict__.copy()
        state["_cache"] = {i: e for i, e in self._cache.items() if isinstance(self.sources[i], np.ndarray)}
        return state

    # ------------------------------------------------------------------ pairs
    def sample(self, rng: np.random.Generator) -> SearchPair:
        index = self.train_indices[int(rng.integers(len(self.train_indices)))]
        return self._make_pair(index, "train", rng)

    def test_pair(self, index: int) -> SearchPair:
        index = self._check_test_index(index)
        rng = np.random.default_rng([self.test_seed, index])
        image_index = self.test_indices[int(rng.integers(len(self.test_indices)))]
        return self._make_pair(image_index, "test", rng, test_index=index)

    def _make_pair(
        self, index: int, split: str, rng: np.random.Generator, test_index: Optional[int] = None
    ) -> SearchPair:
        image, factor, original_size = self.working_image(index)
        box = self._pick_region(image, rng)
        template, template_factor = self._make_template(crop_box(image, box), image.shape[:2], rng)
        reference = self.reference_appearance.apply(image, rng)  # a new array: the cache stays clean
        source = self.sources[index]
        meta: dict[str, Any] = {
            "split": split,
            "index": index,
            "path": None if isinstance(source, np.ndarray) else str(source),
            "working_scale": factor,
            "original_size": original_size,
            "template_scale": template_factor,
            "test_index": test_index,
        }
        return make_photo_pair(template, reference, box, self.query_size, meta=meta)

    def _pick_region(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random integer box ``(x0, y0, x1, y1)`` of the image, preferably a textured one.

        A flat patch (sky, a wall, a blown-out highlight) looks the same wherever it is cut from:
        it has no unique match, so the target box would be an arbitrary answer among many equally
        good ones. Candidates whose grayscale standard deviation is below ``min_region_std`` are
        redrawn; after :data:`MAX_REGION_TRIES` the most textured candidate is taken, so a flat
        image still yields pairs.
        """
        height, width = image.shape[:2]
        log_side = np.log(self.region_side)
        log_aspect = np.log(self.aspect_range)
        best_box, best_std = None, -1.0
        for _ in range(MAX_REGION_TRIES):
            u = rng.random(4)
            side = min(height, width) * math.exp(log_side[0] + (log_side[1] - log_side[0]) * u[0])
            root_aspect = math.exp(0.5 * (log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[1]))
            w = int(min(max(round(side * root_aspect), MIN_REGION_SIDE), width))
            h = int(min(max(round(side / root_aspect), MIN_REGION_SIDE), height))
            x0, y0 = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
            std = _gray_std(image[y0 : y0 + h, x0 : x0 + w])
            if std > best_std:
                best_box, best_std = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64), std
            if std >= self.min_region_std:
                break
        return best_box

    def _make_template(
        self, crop: np.ndarray, reference_size: tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        """Rescale the crop by a random ``template_scale`` factor, then change its appearance.

        Appearance changes come after the rescale so that blur and noise are in the template's own
        pixels, as if the template had been photographed at that resolution.

        :return: ``(h, w, 3)`` uint8 template and the scale factor actually used.
        """
        h, w = crop.shape[:2]
        lo, hi = np.log(self.template_scale)
        factor = math.exp(lo + (hi - lo) * rng.random())
        # A template larger than the reference could not be slid over it by exhaustive matchers;
        # the region fits in the reference, so this cap is >= 1 and keeps factor reachable.
        factor = min(factor, reference_size[0] / h, reference_size[1] / w)
        # A few pixels per side at least; the region has >= MIN_REGION_SIDE, so this floor is <= 1/2.
        factor = max(factor, MIN_TEMPLATE_SIDE / min(h, w))
        size = (max(int(round(h * factor)), 1), max(int(round(w * factor)), 1))
        template = self.appearance.apply(resize_image(crop, size), rng)
        return template, factor


# ---------------------------------------------------------------------------------- helpers
def _positive_range(value: Sequence[float], name: str, upper: float = math.inf) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 < lo <= hi <= upper``, else a ``ValueError`` naming the parameter."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not 0 < lo <= hi <= upper:
        bound = "" if math.isinf(upper) else f" <= {upper:g}"
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max{bound}, got {value!r}")
    return lo, hi


def _as_appearance(value: Union[AppearanceChange, dict, None], name: str) -> AppearanceChange:
    """An :class:`AppearanceChange` from itself, a dict of its fields (config files) or ``None`` (identity)."""
    if value is None:
        return AppearanceChange.none()
    if isinstance(value, AppearanceChange):
        return value
    if isinstance(value, dict):
        return AppearanceChange().replace(**value)
    raise TypeError(f"{name} must be an AppearanceChange, a dict of its fields or None, got {type(value).__name__}")


def find_images(folder: PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden names (``.*``) are skipped.

    Hidden files include macOS ``._name.jpg`` resource forks, which carry an image extension but
    are not images.
    """
    root = Path(folder)
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in rel.parts):
            if path.is_file():
                found.append(path)
    return sorted(found)


def _collect_sources(
    images: Union[PathLike, Sequence[ImageSource]], exclude: Optional[Sequence[PathLike]]
) -> tuple[list[ImageSource], list[str]]:
    """The image sources (paths or arrays) and a stable name for each (the split hashes it)."""
    excluded = {Path(p).resolve() for p in (exclude or [])}
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if root.is_dir():
            paths = find_images(root)
            if not paths:
                raise ValueError(
                    f"SelfSupervisedPhotos: no images found in {root} (searched recursively for "
                    f"{', '.join(IMAGE_EXTENSIONS)}, any case)"
                )
            kept = [p for p in paths if p.resolve() not in excluded]
            if not kept:
                raise ValueError(f"SelfSupervisedPhotos: all {len(paths)} images in {root} are in `exclude`")
            return list(kept), [p.relative_to(root).as_posix() for p in kept]
        if root.is_file():
            images = [root]
        else:
            raise FileNotFoundError(f"SelfSupervisedPhotos: image folder not found: {root}")
    if isinstance(images, np.ndarray):
        raise TypeError("SelfSupervisedPhotos: pass a list of images ([image]), not a single array")
    sources: list[ImageSource] = []
    keys: list[str] = []
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                raise ValueError(
                    f"SelfSupervisedPhotos: image {i} must be an RGB uint8 array of shape (H, W, 3), got "
                    f"{item.dtype} {item.shape} (see matchenv.datasets.photos.read_image to load files)"
                )
            sources.append(np.ascontiguousarray(item).copy())  # the caller may reuse its array
            keys.append(f"array:{i}")
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if path.resolve() in excluded:
                continue
            if not path.is_file():
                raise ImageReadError(f"SelfSupervisedPhotos: image file not found: {path}")
            sources.append(path)
            keys.append(path.as_posix())
        else:
            raise TypeError(f"SelfSupervisedPhotos: image {i} must be a path or an RGB uint8 array, got {type(item).__name__}")
    if not sources:
        raise ValueError("SelfSupervisedPhotos: no images given" + (" (all were in `exclude`)" if excluded else ""))
    return sources, keys


def _working(image: np.ndarray, max_side: Optional[int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``(working image, working scale, original (height, width))`` of an RGB image."""
    working, factor = to_working_size(image, max_side)
    return np.ascontiguousarray(working), float(factor), (int(image.shape[0]), int(image.shape[1]))


def _gray_std(crop: np.ndarray) -> float:
    """Standard deviation of the crop's grayscale, in 0-255 units (how much texture it has)."""
    _, std = cv2.meanStdDev(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY))
    return float(std[0, 0])


def _split_hash(key: str, seed: int) -> int:
    """A seeded, platform-independent hash of an image's name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little")
