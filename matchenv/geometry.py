"""Boxes, IoU and window crops.

Conventions used across matchenv:

* A **box** is ``(x0, y0, x1, y1)`` in *pixel coordinates* of an image: continuous
  coordinates in which pixel column ``i`` spans ``[i, i + 1)``. A box covering pixel
  columns 3..30 inclusive is therefore ``x0=3, x1=31``; ``x1``/``y1`` are exclusive.
* A **normalised centre box** ``(cx, cy, w, h)`` divides the centre and size by the
  image width and height, so the whole image is ``(0.5, 0.5, 1.0, 1.0)``. This is
  the ``location`` the environment observes.

Functions accept a single box of shape ``(4,)`` or a batch of shape ``(N, 4)`` and
broadcast like numpy.
"""

from __future__ import annotations

from typing import Sequence, Union

import cv2
import numpy as np

BoxLike = Union[Sequence[float], np.ndarray]


def as_boxes(boxes: BoxLike) -> np.ndarray:
    """Return ``boxes`` as a float64 array of shape ``(..., 4)``; raise ``ValueError`` otherwise."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (4,):
        raise ValueError(f"a box is (x0, y0, x1, y1): expected shape (4,) or (N, 4), got {arr.shape}")
    return arr


def box_area(boxes: BoxLike) -> np.ndarray:
    """Area of ``boxes`` in square pixels; an inverted box has area 0. Shape ``(...)``."""
    b = as_boxes(boxes)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def iou(boxes_a: BoxLike, boxes_b: BoxLike) -> np.ndarray | float:
    """Intersection over union of two (batches of) boxes, element-wise with broadcasting.

    :param boxes_a: ``(4,)`` or ``(N, 4)`` boxes ``(x0, y0, x1, y1)``.
    :param boxes_b: boxes broadcastable against ``boxes_a``.
    :return: IoU in ``[0, 1]``: a Python float for two single boxes, else an array of shape ``(N,)``.
        Two empty boxes have IoU 0 (not NaN), so a degenerate window never counts as a match.
    """
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    if a.ndim == 1 and b.ndim == 1:  # the env's per-step case: plain floats are ~10x faster than ufuncs
        return iou_of_floats(*a.tolist(), *b.tolist())
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    out = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def iou_of_floats(ax0: float, ay0: float, ax1: float, ay1: float, bx0: float, by0: float, bx1: float, by1: float) -> float:
    """:func:`iou` of two boxes given as eight plain floats: no numpy calls, for loops over a few boxes."""
    iw = max(min(ax1, bx1) - max(ax0, bx0), 0.0)
    ih = max(min(ay1, by1) - max(ay0, by0), 0.0)
    inter = iw * ih
    union = max(ax1 - ax0, 0.0) * max(ay1 - ay0, 0.0) + max(bx1 - bx0, 0.0) * max(by1 - by0, 0.0) - inter
    return inter / union if union > 0 else 0.0


def xyxy_to_cxcywh(boxes: BoxLike, width: float, height: float) -> np.ndarray:
    """Pixel ``(x0, y0, x1, y1)`` -> normalised ``(cx, cy, w, h)`` for an image of ``width x height``."""
    b = as_boxes(boxes)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.stack(
        [(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]],
        axis=-1,
    ) / scale


def cxcywh_to_xyxy(boxes: BoxLike, width: float, height: float) -> np.ndarray:
    """Normalised ``(cx, cy, w, h)`` -> pixel ``(x0, y0, x1, y1)``; inverse of :func:`xyxy_to_cxcywh`."""
    b = as_boxes(boxes) * np.array([width, height, width, height], dtype=np.float64)
    half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
    return np.stack([b[..., 0] - half_w, b[..., 1] - half_h, b[..., 0] + half_w, b[..., 1] + half_h], axis=-1)


# The window geometry of a search -- where an action puts a window, its whole-pixel box and what the
# agent observes of its place -- written once, batched, for the environment and the vector env
# (numpy float64), the step-by-step searcher (Python floats, one window at a time) and the exported
# search graphs (torch float64, traced for export).
# Each helper below takes numpy arrays or torch tensors alike, or Python floats for one axis of one
# window (window_locations then gives a (centre, size) pair); the torch path avoids anything a
# trace would freeze (Python numbers from tensors, numpy calls).
def is_torch_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


class _NumpyOps:
    """The few operations the geometry needs, on numpy arrays (round: half to even, like Python's)."""

    minimum, maximum, round = staticmethod(np.minimum), staticmethod(np.maximum), staticmethod(np.rint)

    @staticmethod
    def concat(parts):
        return np.concatenate(parts, axis=-1)


class _TorchOps:
    """The same on torch tensors, in operations a trace records (torch.round rounds half to even)."""

    @staticmethod
    def minimum(a, b):
        import torch

        return torch.minimum(a, b) if is_torch_tensor(b) else torch.clamp(a, max=b)

    @staticmethod
    def maximum(a, b):
        import torch

        return torch.maximum(a, b) if is_torch_tensor(b) else torch.clamp(a, min=b)

    @staticmethod
    def round(a):
        import torch

        return torch.round(a)

    @staticmethod
    def concat(parts):
        import torch

        return torch.cat(parts, dim=-1)


class _FloatOps:
    """The same on Python floats, one axis at a time (one window: numpy's per-call overhead would
    be most of the geometry's time). ``round`` rounds half to even, as the others do."""

    minimum, maximum = staticmethod(min), staticmethod(max)

    @staticmethod
    def round(a):
        return float(round(a))

    @staticmethod
    def concat(parts):
        return tuple(parts)


def _ops(x) -> type:
    if isinstance(x, float):
        return _FloatOps
    return _TorchOps if is_torch_tensor(x) else _NumpyOps


def absolute_centres(action, image_wh, window_wh):
    """Window centres ``(..., 2)`` (pixels, ``(x, y)``) for ``"absolute"`` actions.

    ``(x, y)`` in ``[-1, 1]`` span the centres that keep a window of ``window_wh`` inside the
    image: -1 puts it against the left/top edge, +1 against the right/bottom edge.

    :param action: ``(..., 2)`` finite actions, already clipped to ``[-1, 1]`` (float64).
    :param image_wh: ``(..., 2)`` image ``(width, height)``; :param window_wh: ``(..., 2)`` the
        window's ``(width, height)`` in pixels (scale included), not rounded.
    """
    window = _ops(action).minimum(window_wh, image_wh)
    return window / 2 + (action + 1.0) / 2.0 * (image_wh - window)


def place_windows(centre, window_wh, image_wh):
    """Whole-pixel windows of ``window_wh`` centred as close to ``centre`` as fits.

    The size is rounded to whole pixels (at least 1, at most the image) and the window is
    shifted, not shrunk, to stay inside the image, so the agent always sees a full window of the
    size it asked for.

    :param centre: ``(..., 2)`` centres ``(x, y)`` in pixels; ``window_wh`` and ``image_wh`` ``(..., 2)``.
    :return: corners ``p0 = (x0, y0)`` and ``p1 = (x1, y1)``, each ``(..., 2)``, whole numbers
        inside ``[0, W] x [0, H]``.
    """
    ops = _ops(centre)
    side = ops.minimum(ops.maximum(ops.round(window_wh), 1.0), image_wh)
    p0 = ops.minimum(ops.maximum(ops.round(centre - side / 2), 0.0), image_wh - side)
    return p0, p0 + side


def window_locations(p0, p1, image_wh):
    """What the agent observes of a window's place: ``(..., 4)`` ``(cx, cy, w, h)`` as fractions
    of the image (float64; the observation is its float32 cast).

    :param p0: / :param p1: ``(..., 2)`` corners (:func:`place_windows`); ``image_wh`` ``(..., 2)``.
    """
    return _ops(p0).concat([(p0 + p1) / (2 * image_wh), (p1 - p0) / image_wh])


def place_window(
    center_x: float, center_y: float, win_w: float, win_h: float, image_w: int, image_h: int
) -> np.ndarray:
    """:func:`place_windows` for one window: box ``(x0, y0, x1, y1)`` float64 with whole values."""
    p0, p1 = place_windows(np.array([center_x, center_y], np.float64), np.array([win_w, win_h], np.float64),
                           np.array([image_w, image_h], np.float64))
    return np.concatenate([p0, p1])


def clip_box(box: BoxLike, image_w: int, image_h: int) -> np.ndarray:
    """Clip box(es) to the image ``[0, image_w] x [0, image_h]``."""
    b = as_boxes(box).copy()
    b[..., [0, 2]] = np.clip(b[..., [0, 2]], 0, image_w)
    b[..., [1, 3]] = np.clip(b[..., [1, 3]], 0, image_h)
    return b


def crop_window(image: np.ndarray, box: BoxLike, out_size: tuple[int, int]) -> np.ndarray:
    """Crop ``box`` from ``image`` and resize it to ``out_size``.

    :param image: ``(H, W)`` or ``(H, W, C)`` uint8 image (channel-last, as OpenCV stores it).
    :param box: ``(x0, y0, x1, y1)`` pixel box; it is rounded to whole pixels and clipped to the
        image, so the crop never reads outside the image. A box with no pixels inside the image
        raises ``ValueError``.
    :param out_size: ``(height, width)`` of the result.
    :return: ``(out_h, out_w)`` or ``(out_h, out_w, C)`` uint8 array (a new array, never a view).
    """
    return resize_image(pixels_under(image, box), out_size)


def pixels_under(image: np.ndarray, box: BoxLike) -> np.ndarray:
    """The view of ``image`` under ``box``, rounded to whole pixels and clipped to the image.

    :raises ValueError: if no pixel of the box lies inside the image.
    """
    h_img, w_img = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in as_boxes(box))
    x0, x1 = max(x0, 0), min(x1, w_img)
    y0, y1 = max(y0, 0), min(y1, h_img)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"window {tuple(np.round(as_boxes(box), 2))} has no pixels inside the {w_img}x{h_img} image")
    return image[y0:y1, x0:x1]


#: Images with more pixels than this are shrunk by halvings first (see :func:`resize_image`).
HALVING_MIN_PIXELS = 512 * 512


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W)`` or ``(H, W, C)`` uint8 image to ``size = (height, width)``, keeping its axes.

    Shrinking averages areas (OpenCV's ``INTER_AREA``: no aliasing of thin strokes); enlarging is
    bilinear. An image of more than :data:`HALVING_MIN_PIXELS` pixels is first halved (exact 2x2
    averages) while it is at least twice the output size and its sides are even: the same area
    average up to rounding (and an odd last row or column of the original, dropped), at a small
    fraction of the cost, because OpenCV's area resize costs some 3 ns per source pixel for a
    non-integer factor but has a fast path for an exact halving (1000x1000 to 28x28: 3 ms
    directly, 0.12 ms by halvings; measured, 1 thread). Smaller images, every Noisy MNIST canvas
    and photographs at working size among them, take the direct resize, as before.

    Returns a new array (a copy when no resizing is needed), so callers may keep it.
    """
    out_h, out_w = size
    if image.shape[:2] == (out_h, out_w):
        return image.copy()
    shrinking = image.shape[0] > out_h or image.shape[1] > out_w
    source = image
    if (image.shape[0] * image.shape[1] > HALVING_MIN_PIXELS
            and image.shape[0] >= 2 * out_h and image.shape[1] >= 2 * out_w):  # at least one halving
        # An odd last source row/column is dropped (at most one pixel of the original); deeper
        # levels halve only while exact, since a dropped row there would be 2^k original pixels.
        source = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
        while (source.shape[0] >= 2 * out_h and source.shape[1] >= 2 * out_w
               and source.shape[0] % 2 == 0 and source.shape[1] % 2 == 0):
            source = cv2.resize(source, (source.shape[1] // 2, source.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if source.shape[:2] == (out_h, out_w):
        resized = source if not np.shares_memory(source, image) else source.copy()
    else:
        resized = cv2.resize(source, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if resized.ndim == 2 and image.ndim == 3:  # cv2 drops a singleton channel axis
        resized = resized[:, :, None]
    return resized


def letterbox(image: np.ndarray, size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Resize ``image`` to fit inside ``size = (height, width)`` keeping its aspect, centred and padded.

    This is how a logo query is shown to the agent (the paper's protocol): the crop keeps its shape
    and the rest of the square is ``fill``. Windows of a letterboxing dataset are shown the same
    way, so query and window are comparable pixel for pixel.

    :param image: ``(H, W)`` or ``(H, W, C)`` uint8 image.
    :return: ``(height, width)`` or ``(height, width, C)`` uint8 array (a new array).
    """
    y0, x0, new_h, new_w = letterbox_placement(image.shape[:2], size)
    out = np.full(tuple(size) + image.shape[2:], fill, dtype=image.dtype)
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resize_image(image, (new_h, new_w))
    return out


def letterbox_placement(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where :func:`letterbox` puts an image of ``image_size = (h, w)`` inside ``size``.

    :return: ``(y0, x0, new_h, new_w)``: the top-left corner and size of the resized image.
    """
    (h, w), (out_h, out_w) = image_size, size
    factor = min(out_h / h, out_w / w)
    new_h = min(max(int(round(h * factor)), 1), out_h)
    new_w = min(max(int(round(w * factor)), 1), out_w)
    return (out_h - new_h) // 2, (out_w - new_w) // 2, new_h, new_w


def crop_letterboxed(image: np.ndarray, box: BoxLike, out_size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """:func:`crop_window`, but the crop keeps its aspect ratio (see :func:`letterbox`)."""
    return letterbox(pixels_under(image, box), out_size, fill)
