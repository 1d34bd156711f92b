"""What every photograph dataset shares: reading images, the working size, boxes, logo-style pairs.

It also holds :class:`PhotoFilesDataset`, the base of every dataset read from image files
(:mod:`matchenv.datasets.logos`, :mod:`matchenv.datasets.pair_files`): image sizes from file
headers (:func:`read_image_size`), a cache of decoded working-size images, and the assembly of a
pair from files and boxes; with what those datasets report through (:class:`DatasetFilesError`,
one :class:`AnnotationWarning` listing what was skipped, collected by :class:`SkippedItems`).

Conventions for photographs (logos, template/target pairs, your own images):

* Images are **RGB** uint8 ``(H, W, 3)`` (``read_image`` converts OpenCV's BGR).
* A reference is shrunk to a **working size** (longest side at most ``max_side`` pixels, never
  enlarged) before the agent or a matcher sees it; boxes are mapped with it. ``SearchPair.meta``
  keeps ``"working_scale"`` (working pixels per original pixel) and ``"original_size"`` so
  answers can be reported in original pixels (:func:`to_original_box`).
* The **template** is the query crop at its natural size and aspect, in working pixels of the
  image it was cut from; exhaustive matchers slide it (at scales around its own size). The
  agent's **query** observation is the template letterboxed (centred, padded with black) to the
  dataset's ``query_size``.
* The agent's **nominal window** (:func:`nominal_window`) has the template's aspect ratio and a
  side of ``WINDOW_FRACTION`` of the reference's shorter side; the agent chooses a scale in
  ``scale_range`` around it -- never the target's size. It is relative to the reference, not
  the template's pixel size, because a query cut from another photograph (a logo) says nothing
  about the target's size, and because the policy can then read the scale off the image.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from matchenv.datasets.base import ImageReadError, PairDataset, SearchPair
from matchenv.geometry import letterbox, resize_image

PathLike = Union[str, os.PathLike]

#: Longest side, in pixels, to which references are shrunk (FlickrLogos photos are ~500 px).
DEFAULT_MAX_SIDE = 320
#: Resolution at which colour queries and windows are observed.
DEFAULT_PHOTO_QUERY_SIZE = (32, 32)
#: Side of the nominal window as a fraction of the reference's shorter side (FlickrLogos-27 test
#: targets: median 0.59, 5-95% 0.10-1.2).
WINDOW_FRACTION = 0.4
#: Window scales the agent may choose around the nominal window: sides of 0.1-1.2 of the shorter side.
DEFAULT_PHOTO_SCALE_RANGE = (0.25, 3.0)
#: Default smallest side, in working pixels, of a target; smaller targets are skipped.
DEFAULT_MIN_TARGET_SIDE = 8.0

_MAX_LISTED = 5  # items quoted in a warning or error before "..."


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)`` (grayscale files are repeated to 3 channels).

    :raises ImageReadError: if the file does not exist or OpenCV cannot decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)  # imdecode also handles non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot decode image {path} (not an image OpenCV can read, or a truncated file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def working_scale(height: int, width: int, max_side: Optional[int]) -> float:
    """Factor (<= 1) that shrinks an image so that its longest side is at most ``max_side``."""
    if max_side is None:
        return 1.0
    return min(1.0, float(max_side) / max(height, width))


def to_working_size(image: np.ndarray, max_side: Optional[int]) -> tuple[np.ndarray, float]:
    """Shrink ``image`` to the working size; return it and the factor applied (1.0 if unchanged)."""
    h, w = image.shape[:2]
    factor = working_scale(h, w, max_side)
    if factor >= 1.0:
        return image, 1.0
    size = (max(int(round(h * factor)), 1), max(int(round(w * factor)), 1))
    return resize_image(image, size), factor


def to_original_box(box: Sequence[float], meta: dict[str, Any]) -> np.ndarray:
    """Map a working-size pixel box ``(x0, y0, x1, y1)`` back to the original image's pixels.

    :raises ValueError: for a composite reference (two photographs side by side), which has no
        original image.
    """
    if meta.get("composite"):
        raise ValueError("this reference is a composite of two photographs (beside_other_brand=True): its boxes "
                         "have no original-image pixels")
    return np.asarray(box, dtype=np.float64) / float(meta.get("working_scale", 1.0))


def xywh_to_xyxy(box: Sequence[float]) -> np.ndarray:
    """``(x, y, w, h)`` (top-left corner and size) -> ``(x0, y0, x1, y1)``."""
    x, y, w, h = (float(v) for v in box)
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def check_box(box: Sequence[float], width: int, height: int, where: str, min_side: float = 1.0) -> np.ndarray:
    """Validate a pixel box ``(x0, y0, x1, y1)`` against a ``width x height`` image.

    A box that sticks out of the image by less than a pixel (rounding in annotation files) is
    clipped; one further outside, non-finite, or with a side below ``min_side`` raises.

    :param where: what the box is, for the error message (file and line).
    :raises ValueError: saying what is wrong with the box.
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise ValueError(f"{where}: a box needs 4 finite numbers, got {list(box)}")
    if b[0] < -1 or b[1] < -1 or b[2] > width + 1 or b[3] > height + 1:
        raise ValueError(f"{where}: box {b.tolist()} lies outside the {width}x{height} image")
    b = np.clip(b, 0, [width, height, width, height]).astype(np.float64)
    if b[2] - b[0] < min_side or b[3] - b[1] < min_side:
        raise ValueError(f"{where}: box {b.tolist()} has zero area (or a side under {min_side} px)")
    return b


def crop_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The pixels of ``image`` under ``box`` (rounded to whole pixels), as a new array."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
    return image[y0:y1, x0:x1].copy()


def nominal_window(
    template_shape: Sequence[int], reference_shape: Sequence[int], fraction: float = WINDOW_FRACTION
) -> tuple[float, float]:
    """The nominal window ``(height, width)`` in reference pixels for a photograph search.

    Its aspect is the template's; its area that of a square with side ``fraction`` times the
    reference's shorter side.

    :param template_shape: ``(h, w, ...)`` of the template (or query) image.
    :param reference_shape: ``(H, W, ...)`` of the reference at working size.
    """
    aspect = float(template_shape[1]) / float(template_shape[0])
    side = fraction * min(reference_shape[0], reference_shape[1])
    return side / aspect**0.5, side * aspect**0.5


def make_photo_pair(
    template: np.ndarray,
    reference: np.ndarray,
    target_box: Sequence[float],
    query_size: tuple[int, int],
    label: Any = None,
    meta: Optional[dict[str, Any]] = None,
    distractor_boxes: Optional[np.ndarray] = None,
    template_sized_window: bool = False,
) -> SearchPair:
    """A :class:`SearchPair` for photographs: query = ``template`` letterboxed to ``query_size``.

    A template larger than the reference (a logo cut from a close-up, searched in a wide shot) is
    shrunk, keeping its aspect, until it fits: every exhaustive matcher slides it over the
    reference, and the agent's view of it (letterboxed) does not change.

    :param template: ``(h, w, 3)`` uint8 crop (working pixels of its source image).
    :param reference: ``(H, W, 3)`` uint8 reference at working size.
    :param target_box: ``(x0, y0, x1, y1)`` in ``reference`` pixels.
    :param template_sized_window: the nominal window is the template's own size (real pairs of two
        views of one scene), not :func:`nominal_window` (a query that says nothing of the target's size).
    """
    fit = min(1.0, reference.shape[0] / template.shape[0], reference.shape[1] / template.shape[1])
    if fit < 1.0:
        size = (max(int(template.shape[0] * fit), 1), max(int(template.shape[1] * fit), 1))
        template = resize_image(template, size)
    return SearchPair(
        query=letterbox(template, query_size),
        reference=reference,
        target_box=np.asarray(target_box, dtype=np.float64),
        distractor_boxes=np.zeros((0, 4)) if distractor_boxes is None else np.asarray(distractor_boxes, np.float64),
        label=label,
        meta=dict(meta or {}),
        template=template,
        window_size=(tuple(float(v) for v in template.shape[:2]) if template_sized_window
                     else nominal_window(template.shape, reference.shape)),
    )


class PhotoPairDataset(PairDataset):
    """Base class of the photograph datasets: colour, letterboxed queries, scale-aware windows.

    :param query_size: ``(h, w)`` resolution of query and window observations.
    :param max_side: working size: references are shrunk so their longest side is at most this.
    :param scale_range: window scales the agent may choose around the template's size.
    """

    channels = 3
    letterbox = True
    window_fraction = WINDOW_FRACTION
    #: Whether a pair's nominal window is its template's size (see :func:`make_photo_pair`).
    template_sized_window = False

    def __init__(
        self,
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
    ) -> None:
        if len(query_size) != 2 or min(query_size) < 4:
            raise ValueError(f"query_size must be (height, width) of at least 4 px, got {query_size}")
        if max_side is not None and int(max_side) < 32:
            raise ValueError(f"max_side must be at least 32 px (or None for no resizing), got {max_side}")
        if not 0 < scale_range[0] <= 1.0 <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= 1 <= max, got {scale_range}")
        self.query_size = (int(query_size[0]), int(query_size[1]))
        self.window_size = self.query_size  # only a fallback: every photo pair carries its own window size
        self.max_side = None if max_side is None else int(max_side)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))


# ============================================================================= shared by datasets of image files


class DatasetFilesError(FileNotFoundError):
    """A dataset's files are missing or incomplete; the message says where we looked and how to fix it."""


class AnnotationWarning(UserWarning):
    """Annotations were skipped when a dataset was built (the message lists them)."""


def read_image_size(path: PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header without decoding the pixels.

    The size is the one :func:`read_image` returns: OpenCV applies the EXIF orientation, so a
    rotated photo (orientations 5-8) has its sides swapped here too.

    :raises ImageReadError: if the file is missing or not an image Pillow can identify.
    """
    from PIL import Image, UnidentifiedImageError  # lazy: keeps ``import matchenv`` light

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"cannot read image {path} ({err}); is it a complete image file?") from err
    if orientation in (5, 6, 7, 8):  # transposed EXIF orientations: decoded with sides swapped
        height, width = width, height
    return int(height), int(width)


class SkippedItems:
    """What a dataset left out at init, by reason, for one summarising warning."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, item: str) -> None:
        self.items[reason].append(item)

    def warn(self, name: str, stacklevel: int = 4) -> None:
        if not self.items:
            return
        parts = [f"{len(items)} {reason}: {listing(items)}" for reason, items in self.items.items()]
        warnings.warn(f"{name} skipped " + "; ".join(parts), AnnotationWarning, stacklevel=stacklevel)


def listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """``items`` joined by commas, the first ``limit`` of them, then how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def box_text(box: Sequence[float]) -> str:
    """A box as ``[x0, y0, x1, y1]`` with short numbers, for warnings and errors."""
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


# ============================================================================= datasets of image files


class PhotoFilesDataset(PhotoPairDataset):
    """Base of the datasets read from image files: sizes from headers, a cache of working-size images.

    Subclasses find their annotations at init (image sizes come from file headers, so this is
    fast), and decode an image the first time a pair needs it. Decoded images are kept at
    working size in memory (``cache_images=True``), since training draws the same images again
    and again; cached images are read-only. Pickling (e.g. for ``SubprocVecEnv``) drops the cache.

    :param query_size: ``(h, w)`` resolution of query and window observations.
    :param max_side: working size: images are shrunk so their longest side is at most this.
    :param scale_range: window scales the agent may choose around the nominal window
        (:func:`~matchenv.datasets.photos.nominal_window`).
    :param test_seed: seed of the fixed test split.
    :param min_target_side: targets whose shorter side is below this many working pixels are
        skipped (with a warning); ``0`` keeps every valid box.
    :param cache_images: keep decoded working-size images in memory.
    """

    def __init__(
        self,
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
        test_seed: int = 0,
        min_target_side: float = DEFAULT_MIN_TARGET_SIDE,
        cache_images: bool = True,
    ) -> None:
        super().__init__(query_size=query_size, max_side=max_side, scale_range=scale_range)
        if not np.isfinite(min_target_side) or min_target_side < 0:
            raise ValueError(f"min_target_side must be a number of pixels >= 0, got {min_target_side}")
        self.test_seed = int(test_seed)
        self.min_target_side = float(min_target_side)
        self.cache_images = bool(cache_images)
        self._sizes: dict[str, tuple[int, int]] = {}
        self._images: dict[str, tuple[np.ndarray, float]] = {}

    # ------------------------------------------------------------------ images
    def image_size(self, path: PathLike) -> tuple[int, int]:
        """Original ``(height, width)`` of an image file (from its header, remembered)."""
        key = str(path)
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = read_image_size(path)
        return size

    def working_image(self, path: PathLike) -> tuple[np.ndarray, float]:
        """The image at working size, ``(H', W', 3)`` uint8 read-only, and its scale (working / original px)."""
        key = str(path)
        hit = self._images.get(key)
        if hit is None:
            original = read_image(path)
            expected = self.image_size(path)
            if original.shape[:2] != expected:
                raise ImageReadError(
                    f"{path} decodes to {original.shape[1]}x{original.shape[0]} px but its header says "
                    f"{expected[1]}x{expected[0]}: the file changed since the dataset was built, or is damaged"
                )
            image, factor = to_working_size(original, self.max_side)
            image.flags.writeable = False  # shared by every pair that uses this image
            hit = (image, float(factor))
            if self.cache_images:
                self._images[key] = hit
        return hit

    def working_scale_of(self, path: PathLike) -> float:
        """Scale (working / original pixels) that the working size applies to an image file."""
        height, width = self.image_size(path)
        return working_scale(height, width, self.max_side)

    def target_too_small(self, box: Sequence[float], path: PathLike) -> bool:
        """Whether ``box`` (original pixels of ``path``) has a side under ``min_target_side`` at working size."""
        b = np.asarray(box, dtype=np.float64)
        side = min(b[2] - b[0], b[3] - b[1]) * self.working_scale_of(path)
        return side < self.min_target_side

    def __getstate__(self) -> dict:
        # Pickle the configuration and annotations, not the decoded images: they are re-read on use.
        state = self.__dict__.copy()
        state["_images"] = {}
        return state

    # ------------------------------------------------------------------ pairs
    def _photo_pair(
        self,
        reference_path: Path,
        target_box: np.ndarray,
        template_path: Path,
        template_box: Optional[np.ndarray],
        label: Any,
        meta: dict[str, Any],
        other_boxes: Optional[np.ndarray] = None,
    ) -> SearchPair:
        """Assemble a pair from files and boxes in *original* pixels.

        :param target_box: ``(4,)`` ``(x0, y0, x1, y1)`` of the target in the reference's original pixels.
        :param template_box: ``(4,)`` box of the template in the template image's original pixels,
            cropped from that image at its working size; ``None``: the whole template image is the
            template, shrunk by the *reference's* working scale (a separate query image is taken to
            be at the resolution of the reference's original pixels, so it stays comparable to the target).
        :param other_boxes: ``(K, 4)`` further instances in the reference (original pixels), reported
            in ``meta["other_instances"]`` in working pixels.
        """
        reference, scale = self.working_image(reference_path)
        ref_h, ref_w = reference.shape[:2]
        # Rounding of the working size may leave the scaled box a fraction of a pixel outside.
        target = np.minimum(np.asarray(target_box, dtype=np.float64) * scale, [ref_w, ref_h, ref_w, ref_h])
        source, t_scale = self.working_image(template_path)
        if template_box is not None:
            template = crop_box(source, np.asarray(template_box, dtype=np.float64) * t_scale)
            template_working_box = np.asarray(template_box, dtype=np.float64) * t_scale
        else:
            # Overall factor on the query image: the reference's, never more than its own working scale.
            factor = min(scale, t_scale)
            orig_h, orig_w = self.image_size(template_path)
            size = (max(int(round(orig_h * factor)), 1), max(int(round(orig_w * factor)), 1))
            template = resize_image(source, size) if size != source.shape[:2] else source.copy()
            template_working_box = np.array([0.0, 0.0, size[1], size[0]])
            t_scale = factor
        others = np.zeros((0, 4)) if other_boxes is None else np.asarray(other_boxes, np.float64).reshape(-1, 4) * scale
        others = np.minimum(others, [ref_w, ref_h, ref_w, ref_h])
        meta = dict(meta)
        meta.update(
            {
                "working_scale": float(scale),
                "original_size": self.image_size(reference_path),
                "reference_path": str(reference_path),
                "template_path": str(template_path),
                "template_working_scale": float(t_scale),
                "template_box": template_working_box,
                "other_instances": others,
            }
        )
        return make_photo_pair(template, reference, target, self.query_size, label=label, meta=meta,
                               template_sized_window=self.template_sized_window)
