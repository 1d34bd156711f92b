"""Self-supervised pairs that look like two real views of one scene: a template from one, the target in the other.

Real template matching (a template cut from one video frame, found again in a later frame: the
KTM and BBS benchmarks) differs from a crop of a photo found again in the same photo. Between
the two views the camera moves (the target moves in the frame, the view turns and tilts a
little), the object deforms, is partly occluded, the light changes and either view may be
blurred; but the target's pixel size stays close to the template's (KTM: 0.8-1.2x in 80% of the
pairs). :class:`TwoViewPhotos` makes such pairs from any folder of unlabelled photographs:

* the template is a box of the photograph (the *first view*, its colours changed a little), at
  its own pixel size;
* the reference (the *second view*) is a frame of the photograph warped by a homography about
  the box (scale around 1, a small rotation and tilt), placed at random, so the target moves in
  the frame (the camera panned); then
  deformed near the target (a smooth random displacement field), partly occluded by a patch of
  the same photograph, relit, blurred and noised (:class:`ViewChange`);
* the target box is the bounding box of the template's box under the homography.

The nominal window is the template's size (``template_sized_window``), as for the real pairs.
Images, the working size and the split by image are those of
:class:`~matchenv.datasets.self_supervised.SelfSupervisedPhotos`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from matchenv.datasets.appearance import AppearanceChange, warp_homography
from matchenv.datasets.base import SearchPair
from matchenv.datasets.photos import DEFAULT_PHOTO_QUERY_SIZE, crop_box, make_photo_pair
from matchenv.datasets.self_supervised import ImageSource, PathLike, SelfSupervisedPhotos

#: Working size of the photographs: that of KTM's frames (480 px on the longer side).
DEFAULT_TWO_VIEW_MAX_SIDE = 480
#: Window scales around the template's size (as for KTM).
DEFAULT_TWO_VIEW_SCALE_RANGE = (0.5, 2.0)
#: Random places tried for the second view's frame before it is centred on the target.
MAX_FRAME_TRIES = 10
#: Fraction of the target box that must stay inside the second view.
MIN_TARGET_INSIDE = 0.9


@dataclass(frozen=True)
class ViewChange:
    """How the second view differs from the first; :meth:`apply` draws one change.

    :param scale: ``(min, max)`` scale of the target from the first view to the second, log-uniform.
    :param rotation: largest in-plane rotation, degrees (uniform in ``[-rotation, rotation]``).
    :param perspective: largest shift of each image corner, as a fraction of the side (a tilt).
    :param frame_fraction: the second view's frame, as a fraction of the photograph's sides; the
        target moves in the frame by where the frame falls (uniform, keeping the target inside).
    :param deformation: largest displacement of a deformed pixel, as a fraction of the target's
        longer side; the field is smooth (a random 4x4 grid, bicubic) and fades away from the target.
    :param deformation_prob: probability of a deformation.
    :param occlusion_prob: probability of an occluder: a patch of the same photograph pasted over the target ...
    :param occlusion_fraction: ``(min, max)`` of the target's area it covers, uniform.
    :param appearance: the second view's light, colour, blur and noise (no warp, no occluder:
        those are above).
    :param template_appearance: the first view's (the template's) light and colour.
    """

    scale: tuple[float, float] = (0.8, 1.25)
    rotation: float = 8.0
    perspective: float = 0.03
    frame_fraction: float = 0.8
    deformation: float = 0.1
    deformation_prob: float = 0.5
    occlusion_prob: float = 0.3
    occlusion_fraction: tuple[float, float] = (0.1, 0.4)
    appearance: AppearanceChange = AppearanceChange(
        rotation=0.0, shear=0.0, stretch=0.0, perspective=0.0, occlusion_prob=0.0, blur_sigma=1.5, noise_std=6.0
    )
    template_appearance: AppearanceChange = AppearanceChange.mild()

    def __post_init__(self) -> None:
        for name in ("scale", "occlusion_fraction"):
            try:
                lo, hi = (float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"ViewChange.{name} must be a (min, max) pair, got {getattr(self, name)!r}") from None
            if not 0 < lo <= hi or (name == "occlusion_fraction" and hi > 1):
                raise ValueError(f"ViewChange.{name} must be (min, max) with 0 < min <= max, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (lo, hi))
        if not 0.2 <= float(self.frame_fraction) <= 1:
            raise ValueError(f"ViewChange.frame_fraction must be in [0.2, 1], got {self.frame_fraction!r}")
        object.__setattr__(self, "frame_fraction", float(self.frame_fraction))
        for name in ("rotation", "perspective", "deformation"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ViewChange.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        for name in ("deformation_prob", "occlusion_prob"):
            value = float(getattr(self, name))
            if not 0 <= value <= 1:
                raise ValueError(f"ViewChange.{name} must be in [0, 1], got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        for name in ("appearance", "template_appearance"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, AppearanceChange().replace(**value))
            elif not isinstance(value, AppearanceChange):
                raise TypeError(f"ViewChange.{name} must be an AppearanceChange or a dict of its fields")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViewChange":
        """A change from a dict of its fields (e.g. a JSON config); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ViewChange: unknown field(s) {unknown}; valid: {sorted(known)}")
        return cls(**values)

    def homography(self, box: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """``(3, 3)`` map from the first view to the whole warped photograph: scale and rotation
        about the box's centre, and a tilt."""
        lo, hi = np.log(self.scale)
        scale = math.exp(lo + (hi - lo) * rng.random())
        u = (2.0 * rng.random(10) - 1.0).tolist()
        shifts = [(self.perspective * width * u[2 + 2 * i], self.perspective * height * u[3 + 2 * i]) for i in range(4)]
        # warp_homography turns about the image centre: conjugate it by a move of the box's centre there
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        ox, oy = (width - 1) / 2.0, (height - 1) / 2.0
        about = warp_homography(height, width, rotation=self.rotation * u[0], scale_x=scale, scale_y=scale,
                                corner_shifts=shifts if self.perspective > 0 else None)
        to_centre = np.array([[1.0, 0.0, ox - cx], [0.0, 1.0, oy - cy], [0.0, 0.0, 1.0]])
        return np.linalg.inv(to_centre) @ about @ to_centre

    def frame(self, target: np.ndarray, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The second view's frame ``(x0, y0, width, height)`` in the warped photograph: ``frame``
        of its sides, placed at random where it keeps :data:`MIN_TARGET_INSIDE` of the target
        (the centred frame if no try does)."""
        fw, fh = max(int(round(self.frame_fraction * width)), 1), max(int(round(self.frame_fraction * height)), 1)
        for _ in range(MAX_FRAME_TRIES):
            x0, y0 = int(rng.integers(0, width - fw + 1)), int(rng.integers(0, height - fh + 1))
            if inside_fraction(target - [x0, y0, x0, y0], fw, fh) >= MIN_TARGET_INSIDE:
                return x0, y0, fw, fh
        # the frame that holds the target best: centred on it, inside the photograph
        cx, cy = (target[0] + target[2]) / 2.0, (target[1] + target[3]) / 2.0
        x0 = int(min(max(round(cx - fw / 2.0), 0), width - fw))
        y0 = int(min(max(round(cy - fh / 2.0), 0), height - fh))
        return x0, y0, fw, fh

    def apply(
        self, image: np.ndarray, box: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two views of ``image`` about ``box``.

        :param image: ``(H, W, 3)`` uint8 RGB photograph.
        :param box: ``(4,)`` integer-valued ``(x0, y0, x1, y1)`` of the template in ``image``.
        :return: the template ``(h, w, 3)`` uint8 (the first view's crop), the reference
            ``(H, W, 3)`` uint8 (the second view) and the target box ``(4,)`` float64 in it.
        """
        height, width = image.shape[:2]
        template = self.template_appearance.apply(crop_box(image, box), rng)
        matrix = self.homography(box, height, width, rng)
        target = map_box(matrix, box)
        x0, y0, fw, fh = self.frame(target, height, width, rng)
        # the frame's pixels only: a translation by the frame's corner after the homography
        matrix = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ matrix
        view = cv2.warpPerspective(image, matrix, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        width, height = fw, fh
        target = np.clip(map_box(matrix, box), 0, [width, height, width, height])
        if self.deformation > 0 and rng.random() < self.deformation_prob:
            view = deform_near(view, target, self.deformation, rng)
        if rng.random() < self.occlusion_prob:
            view = occlude_target(view, image, target, self.occlusion_fraction, rng)
        return template, self.appearance.apply(view, rng), target


def map_box(matrix: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of ``box``'s corners mapped by the homography ``matrix``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = np.array([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]], dtype=np.float64)
    mapped = cv2.perspectiveTransform(corners, matrix)[0]
    return np.array([*mapped.min(axis=0), *mapped.max(axis=0)], dtype=np.float64)


def inside_fraction(box: np.ndarray, width: int, height: int) -> float:
    """Fraction of ``box``'s area inside a ``width`` x ``height`` frame."""
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    if area <= 0:
        return 0.0
    iw = max(min(box[2], width) - max(box[0], 0.0), 0.0)
    ih = max(min(box[3], height) - max(box[1], 0.0), 0.0)
    return iw * ih / area


def deform_near(image: np.ndarray, box: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Move the pixels near ``box`` by a smooth random field of at most ``amount`` x its longer side.

    The field is a random 4x4 grid of displacements, resized bicubically over the box grown by
    half its size each way, and faded to zero outside it (a Hann window), so the object bends
    while the far background stays put.
    """
    height, width = image.shape[:2]
    side = max(box[2] - box[0], box[3] - box[1])
    grow_x, grow_y = 0.5 * (box[2] - box[0]), 0.5 * (box[3] - box[1])
    x0, y0 = int(max(box[0] - grow_x, 0)), int(max(box[1] - grow_y, 0))
    x1, y1 = int(min(math.ceil(box[2] + grow_x), width)), int(min(math.ceil(box[3] + grow_y), height))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return image
    grid = (2.0 * rng.random((4, 4, 2)) - 1.0).astype(np.float32) * float(amount * side)
    field = cv2.resize(grid, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    window = np.outer(np.hanning(y1 - y0), np.hanning(x1 - x0)).astype(np.float32)
    field *= window[..., None]
    map_x, map_y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, map_x + field[..., 0], map_y + field[..., 1], cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
    return out


def occlude_target(
    view: np.ndarray, source: np.ndarray, box: np.ndarray, fraction: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Paste a rectangle of ``source`` (another place of the photograph: something else of the
    scene) over ``fraction`` of the target's area, at one of its sides."""
    height, width = view.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    share = fraction[0] + (fraction[1] - fraction[0]) * rng.random()
    if rng.random() < 0.5:  # a vertical strip at the left or right
        w, h = max(int(round(bw * share)), 1), max(int(round(bh)), 1)
    else:  # a horizontal strip at the top or bottom
        w, h = max(int(round(bw)), 1), max(int(round(bh * share)), 1)
    w, h = min(w, width), min(h, height)
    far = rng.random() < 0.5
    x = int(box[2] - w if far and w < bw else box[0]) if h >= bh - 1 else int(box[0])
    y = int(box[3] - h if far and h < bh else box[1]) if w >= bw - 1 else int(box[1])
    x, y = min(max(x, 0), width - w), min(max(y, 0), height - h)
    sx, sy = int(rng.integers(0, source.shape[1] - w + 1)), int(rng.integers(0, source.shape[0] - h + 1))
    out = view.copy()
    out[y:y + h, x:x + w] = source[sy:sy + h, sx:sx + w]
    return out


class TwoViewPhotos(SelfSupervisedPhotos):
    """Template/target pairs as two views of one unlabelled photograph (see the module docstring).

    :param images: a folder of photographs (searched recursively), an image file, or a list of
        paths and/or RGB uint8 arrays.
    :param query_size: ``(h, w)`` of query and window observations.
    :param max_side: working size of the photographs (longest side, pixels).
    :param scale_range: window scales the agent may choose around the template's size.
    :param region_side: ``(min, max)`` side of the template's box (geometric mean of its width and
        height) as a fraction of the photograph's shorter side, log-uniform.
    :param aspect_range: ``(min, max)`` width / height of the box, log-uniform.
    :param view_change: how the second view differs (:class:`ViewChange`, or a dict of its fields).
    :param min_region_std: boxes flatter than this grayscale standard deviation are redrawn.
    :param test_fraction: fraction of the images used only for the test split.
    :param test_size: number of pairs in the fixed test split.
    :param test_seed: seed of the test images' choice and of the test pairs.
    :param exclude: image paths to leave out.
    """

    template_sized_window = True
    window_fraction = None

    def __init__(
        self,
        images: Union[PathLike, Sequence[ImageSource]],
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_TWO_VIEW_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_TWO_VIEW_SCALE_RANGE,
        region_side: tuple[float, float] = (0.035, 0.35),
        aspect_range: tuple[float, float] = (0.25, 3.0),
        view_change: Union[ViewChange, dict, None] = None,
        min_region_std: float = 12.0,
        test_fraction: float = 0.2,
        test_size: int = 500,
        test_seed: int = 0,
        exclude: Optional[Sequence[PathLike]] = None,
    ) -> None:
        change = ViewChange() if view_change is None else view_change
        self.view_change = ViewChange.from_dict(change) if isinstance(change, dict) else change
        if not isinstance(self.view_change, ViewChange):
            raise TypeError(f"view_change must be a ViewChange or a dict of its fields, got {type(change).__name__}")
        super().__init__(
            images, query_size=query_size, max_side=max_side, scale_range=scale_range, region_side=region_side,
            aspect_range=aspect_range, template_scale=(1.0, 1.0), appearance=None, reference_appearance=None,
            min_region_std=min_region_std, test_fraction=test_fraction, test_size=test_size, test_seed=test_seed,
            exclude=exclude,
        )

    def check_reach(self) -> None:
        """The target's scale (``view_change.scale``) must lie inside ``scale_range``."""
        lo, hi = self.view_change.scale
        if not (self.scale_range[0] - 1e-9 <= lo and hi <= self.scale_range[1] + 1e-9):
            raise ValueError(
                f"view_change.scale={self.view_change.scale} makes targets the agent cannot size with "
                f"scale_range={self.scale_range}: keep the view's scale inside it"
            )

    def _make_pair(
        self, index: int, split: str, rng: np.random.Generator, test_index: Optional[int] = None
    ) -> SearchPair:
        image, factor, original_size = self.working_image(index)
        box = self._pick_region(image, rng)
        template, reference, target = self.view_change.apply(image, box, rng)
        source = self.sources[index]
        meta: dict[str, Any] = {
            "split": split,
            "index": index,
            "path": None if isinstance(source, np.ndarray) else str(source),
            "working_scale": factor,
            "original_size": original_size,
            "template_box": box,
            "test_index": test_index,
        }
        return make_photo_pair(template, reference, target, self.query_size, meta=meta, template_sized_window=True)
