"""Appearance changes that turn a crop into a template that is *not* a pixel copy of its target.

A template cut from the very image it is searched in matches its target exactly, so an agent (or
a matcher) trained on such pairs only learns pixel equality. Real templates differ from their
targets: another camera, another exposure, another viewpoint, something in front. The functions
here imitate those differences cheaply enough to run once per training episode:

* :func:`photometric_jitter` -- brightness, contrast, saturation, hue and gamma;
* :func:`gaussian_blur` and :func:`add_noise` -- focus and sensor noise;
* :func:`random_warp` -- a small affine (rotation, shear, anisotropic scale) and perspective warp
  that keeps the crop's size;
* :func:`occlude` -- a rectangle of random colour or noise in front of part of the crop.

:class:`AppearanceChange` holds the strength of each and draws a random change with
:meth:`AppearanceChange.apply`. Every function takes and returns **RGB uint8** ``(H, W, 3)``
arrays, never modifies its input and returns a new array (also when it changes nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import cv2
import numpy as np

#: ITU-R BT.601 luma weights of (R, G, B): how bright each channel looks (what grayscale uses).
_LUMA_TUPLE = (0.299, 0.587, 0.114)
#: Size and seed of the fixed pool of standard normals that :func:`add_noise` reads from.
_NOISE_POOL_SIZE = 2**20
_NOISE_POOL_SEED = 20240611
_NOISE_POOL: Optional[np.ndarray] = None
#: ``log(x / 255)`` for the uint8 levels ``x = 1..255`` (the gamma lookup table's exponent).
_LOG_LEVELS = np.log(np.arange(1, 256) / 255.0)


def _check_rgb(image: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` unless ``image`` is an RGB uint8 ``(H, W, 3)`` array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{where} needs an RGB uint8 image of shape (H, W, 3), got a {desc}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{where} got an empty image of shape {image.shape}")


# ---------------------------------------------------------------------------------- photometric
def colour_matrix(
    brightness: float, contrast: float, saturation: float, hue: float, mean_luma: float
) -> np.ndarray:
    """The ``(3, 4)`` affine RGB map of brightness, contrast, saturation and hue, applied in that order.

    All four are linear in RGB, so they fold into one matrix and the image is touched once
    (``cv2.transform``) instead of four times. Built from Python floats: numpy's per-call overhead
    on 3x3 matrices would cost more than transforming a 64x64 crop.

    :param brightness: factor on every channel (1: unchanged).
    :param contrast: factor on the distance from the image's mean luma (1: unchanged).
    :param saturation: factor on the distance from each pixel's own gray (1: unchanged; 0: grayscale).
    :param hue: rotation of the colours about RGB's gray axis, in degrees; about a hue shift of
        ``hue`` degrees on the colour wheel (grays do not move).
    :param mean_luma: mean luma of the image in 0-255 units (the contrast pivot, before brightness).
    :return: ``(3, 4)`` float64 matrix ``[M | o]``: ``out = M @ rgb + o``.
    """
    # hue: Rodrigues' rotation by theta about the unit gray axis k = (1, 1, 1) / sqrt(3):
    # R = cos I + sin [k]x + (1 - cos) k k^T, with k k^T = 1/3 everywhere
    theta = math.radians(hue)
    cos, sin = math.cos(theta), math.sin(theta) / math.sqrt(3.0)
    diag, off = cos + (1.0 - cos) / 3.0, (1.0 - cos) / 3.0
    rot = ((diag, off - sin, off + sin), (off + sin, diag, off - sin), (off - sin, off + sin, diag))
    # saturation blends with the pixel's gray: S = s I + (1 - s) 1 luma^T; R fixes the gray axis
    # (R 1 = 1), so R S = s R + (1 - s) 1 luma^T
    gain = brightness * contrast
    rows = [
        [gain * (saturation * rot[i][j] + (1.0 - saturation) * _LUMA_TUPLE[j]) for j in range(3)]
        # contrast pivots on the (brightened) mean gray; S and R leave gray unchanged, so the
        # offset passes through them as is
        + [(1.0 - contrast) * brightness * mean_luma]
        for i in range(3)
    ]
    return np.array(rows)


def gamma_table(gamma: float) -> np.ndarray:
    """``(256,)`` uint8 lookup table of ``255 * (x / 255) ** gamma`` (gamma > 1 darkens mid-tones)."""
    table = np.empty(256)
    table[0] = 0.0
    np.exp(gamma * _LOG_LEVELS, out=table[1:])  # exp(gamma log x): ~4x faster than x ** gamma
    table *= 255.0
    table += 0.5  # + 0.5 then truncation by astype = rounding
    return table.astype(np.uint8)


def photometric_jitter(
    image: np.ndarray,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
    gamma: float = 1.0,
) -> np.ndarray:
    """Change an image's exposure and colours; the defaults leave it unchanged.

    :param image: ``(H, W, 3)`` uint8 RGB image.
    :param brightness: factor on every channel (``1.2``: 20 % brighter).
    :param contrast: factor on the distance of each pixel from the image's mean luma.
    :param saturation: factor on the distance of each pixel from its own gray (``0``: grayscale).
    :param hue: hue shift in degrees (a rotation about RGB's gray axis).
    :param gamma: exponent on intensities in ``[0, 1]`` (``> 1`` darkens, ``< 1`` brightens mid-tones).
    :return: ``(H, W, 3)`` uint8 RGB image (a new array), values clipped to 0-255.
    """
    _check_rgb(image, "photometric_jitter")
    if min(brightness, contrast, saturation, gamma) < 0 or gamma == 0:
        raise ValueError(
            "photometric_jitter needs brightness, contrast, saturation >= 0 and gamma > 0, got "
            f"{brightness}, {contrast}, {saturation}, {gamma}"
        )
    out = image
    if brightness != 1.0 or contrast != 1.0 or saturation != 1.0 or hue != 0.0:
        means = cv2.mean(image)
        mean_luma = sum(w * m for w, m in zip(_LUMA_TUPLE, means))
        # cv2.transform rounds and saturates to uint8 itself: no float copy of the image
        out = cv2.transform(image, colour_matrix(brightness, contrast, saturation, hue, mean_luma))
    if gamma != 1.0:
        # one channel of width W * 3 is the same bytes, and OpenCV's LUT is ~2x faster on it
        flat = np.ascontiguousarray(out).reshape(out.shape[0], -1)
        out = cv2.LUT(flat, gamma_table(gamma)).reshape(image.shape)
    return image.copy() if out is image else out


# ---------------------------------------------------------------------------------- blur, noise
def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels (``0``: unchanged); borders are reflected.

    The kernel spans about ``+-2 sigma`` (95 % of the weight, renormalised): OpenCV's default
    ``+-3 sigma`` kernel is twice as slow on a template-sized crop and changes little.

    :param image: ``(H, W, 3)`` uint8 RGB image.
    :return: ``(H, W, 3)`` uint8 RGB image (a new array).
    """
    _check_rgb(image, "gaussian_blur")
    if sigma < 0:
        raise ValueError(f"gaussian_blur needs sigma >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    ksize = 2 * max(int(round(2.0 * sigma)), 1) + 1
    return cv2.GaussianBlur(image, (ksize, ksize), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def _noise_pool() -> np.ndarray:
    """A fixed block of standard normals (float32), made on first use and shared by every call."""
    global _NOISE_POOL
    if _NOISE_POOL is None:
        _NOISE_POOL = np.random.default_rng(_NOISE_POOL_SEED).standard_normal(_NOISE_POOL_SIZE, dtype=np.float32)
    return _NOISE_POOL


def add_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add independent Gaussian noise of standard deviation ``std`` (0-255 units) to every channel.

    The noise is a slice, at an offset drawn with ``rng``, of a fixed pool of ``2**20`` standard
    normals: drawing fresh normals costs ~10x more than the rest of an appearance change at
    template size, and a different offset per call already gives every episode different noise.
    An image with more values than the pool draws fresh normals from ``rng`` instead.

    :param image: ``(H, W, 3)`` uint8 RGB image.
    :param std: noise standard deviation in 0-255 units.
    :param rng: the generator that draws the noise (its offset in the pool).
    :return: ``(H, W, 3)`` uint8 RGB image (a new array), rounded and clipped to 0-255.
    """
    _check_rgb(image, "add_noise")
    if std < 0:
        raise ValueError(f"add_noise needs std >= 0, got {std}")
    if std == 0:
        return image.copy()
    pool = _noise_pool()
    if image.size <= pool.size:
        offset = int(rng.integers(pool.size - image.size + 1))
        noise = pool[offset : offset + image.size].reshape(image.shape)
    else:
        noise = rng.standard_normal(image.shape, dtype=np.float32)
    # image + std * noise, rounded and saturated to uint8 in one pass
    return cv2.addWeighted(image, 1.0, noise, float(std), 0.0, dtype=cv2.CV_8U)


# ---------------------------------------------------------------------------------- geometry
def warp_homography(
    height: int,
    width: int,
    rotation: float = 0.0,
    shear: float = 0.0,
    scale_x: float = 1.0,
    scale_y: float = 1.0,
    corner_shifts: Optional[Sequence[Sequence[float]]] = None,
) -> np.ndarray:
    """``(3, 3)`` homography of a warp about the image centre: an affine map, then a perspective one.

    :param height: image height in pixels.
    :param width: image width in pixels.
    :param rotation: rotation in degrees (counter-clockwise as displayed).
    :param shear: horizontal shear, x-shift per pixel of y from the centre.
    :param scale_x: horizontal scale factor.
    :param scale_y: vertical scale factor.
    :param corner_shifts: ``(4, 2)`` array (or 4 pairs) of pixel shifts ``(dx, dy)`` of the affine-mapped corners (top-left,
        top-right, bottom-right, bottom-left): the perspective part, or ``None`` for none.
    :return: ``(3, 3)`` float64 matrix mapping input pixel coordinates to output ones.
    """
    # pixel centres sit at integer coordinates in OpenCV's warps
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    # rotation @ shear @ diag(scale_x, scale_y), multiplied out in Python floats (numpy's per-call
    # overhead on 3x3 matrices costs more than the warp of a small crop)
    a, b = cos * scale_x, (cos * shear + sin) * scale_y
    c, d = -sin * scale_x, (cos - sin * shear) * scale_y
    # the translation keeps the centre in place
    tx, ty = cx - a * cx - b * cy, cy - c * cx - d * cy
    affine = np.array([[a, b, tx], [c, d, ty], [0.0, 0.0, 1.0]])
    if corner_shifts is None:
        return affine
    # the homography that takes the corners to their affine images, moved by corner_shifts
    shifts = [(float(dx), float(dy)) for dx, dy in corner_shifts]
    if len(shifts) != 4:
        raise ValueError(f"corner_shifts must be 4 (dx, dy) pairs, got {len(shifts)}")
    corners = [(0.0, 0.0), (width - 1.0, 0.0), (width - 1.0, height - 1.0), (0.0, height - 1.0)]
    moved = [(a * x + b * y + tx + dx, c * x + d * y + ty + dy) for (x, y), (dx, dy) in zip(corners, shifts)]
    return cv2.getPerspectiveTransform(np.array(corners, dtype=np.float32), np.array(moved, dtype=np.float32))


def random_warp(
    image: np.ndarray,
    rng: np.random.Generator,
    rotation: float = 10.0,
    shear: float = 0.1,
    stretch: float = 0.1,
    perspective: float = 0.06,
) -> np.ndarray:
    """A random small affine and perspective warp about the centre; the output keeps the input's size.

    Pixels that the warp brings in from outside the image are filled by reflection, so no black
    corners give away that the template was warped.

    :param image: ``(H, W, 3)`` uint8 RGB image.
    :param rng: the generator that draws the warp.
    :param rotation: largest rotation, in degrees (uniform in ``[-rotation, rotation]``).
    :param shear: largest horizontal shear (uniform in ``[-shear, shear]``).
    :param stretch: anisotropic scale: each axis is scaled by a factor drawn log-uniformly in
        ``[1 / (1 + stretch), 1 + stretch]``.
    :param perspective: largest shift of each corner, as a fraction of the image's width
        (horizontally) or height (vertically).
    :return: ``(H, W, 3)`` uint8 RGB image (a new array).
    """
    _check_rgb(image, "random_warp")
    if min(rotation, shear, stretch, perspective) < 0:
        raise ValueError(
            f"random_warp needs rotation, shear, stretch, perspective >= 0, got {rotation}, {shear}, {stretch}, {perspective}"
        )
    h, w = image.shape[:2]
    if (rotation == shear == stretch == perspective == 0) or min(h, w) < 2:  # a 1-px line has no shape to warp
        return image.copy()
    # one call for every parameter, as Python floats: per-call overhead dominates at template size
    u = [2.0 * v - 1.0 for v in rng.random(12).tolist()]
    log_stretch = math.log1p(stretch)
    shifts = None
    if perspective > 0:
        px, py = perspective * w, perspective * h
        shifts = [(px * u[i], py * u[i + 1]) for i in range(4, 12, 2)]
    matrix = warp_homography(
        h,
        w,
        rotation=rotation * u[0],
        shear=shear * u[1],
        scale_x=math.exp(log_stretch * u[2]),
        scale_y=math.exp(log_stretch * u[3]),
        corner_shifts=shifts,
    )
    return cv2.warpPerspective(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def occlude(image: np.ndarray, rng: np.random.Generator, max_fraction: float = 0.25) -> np.ndarray:
    """Cover a random rectangle of the image with one random colour or with random noise (even odds).

    The rectangle's area is drawn uniformly in ``(0, max_fraction]`` of the image's area (rounded
    down to whole pixels, so it never covers more), its aspect log-uniformly in ``[1/2, 2]``, and
    its position uniformly inside the image.

    :param image: ``(H, W, 3)`` uint8 RGB image.
    :param rng: the generator that draws the rectangle and its fill.
    :param max_fraction: largest fraction of the image's pixels the rectangle covers, in ``[0, 1]``.
    :return: ``(H, W, 3)`` uint8 RGB image (a new array).
    """
    _check_rgb(image, "occlude")
    if not 0 <= max_fraction <= 1:
        raise ValueError(f"occlude needs 0 <= max_fraction <= 1, got {max_fraction}")
    out = image.copy()
    h, w = image.shape[:2]
    u = rng.random(5).tolist()
    area = (1.0 - u[0]) * max_fraction * h * w  # 1 - u is in (0, 1]: the full max_fraction is possible
    aspect = math.exp(math.log(2.0) * (2.0 * u[1] - 1.0))
    rect_w = min(int(math.sqrt(area * aspect)), w)
    rect_h = min(int(area / rect_w), h) if rect_w else 0  # floor twice: rect_w * rect_h <= area
    if rect_w == 0 or rect_h == 0:
        return out
    x0 = int(u[2] * (w - rect_w + 1))
    y0 = int(u[3] * (h - rect_h + 1))
    if u[4] < 0.5:
        out[y0 : y0 + rect_h, x0 : x0 + rect_w] = rng.integers(0, 256, size=3, dtype=np.uint8)
    else:
        out[y0 : y0 + rect_h, x0 : x0 + rect_w] = rng.integers(0, 256, size=(rect_h, rect_w, 3), dtype=np.uint8)
    return out


# ---------------------------------------------------------------------------------- the recipe
def _as_range(value: Any, name: str) -> tuple[float, float]:
    """``(lo, hi)`` as a tuple of floats with ``0 < lo <= hi``; raise a ``ValueError`` naming the field."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"AppearanceChange.{name} must be a (min, max) pair, got {value!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"AppearanceChange.{name} must be (min, max) with 0 < min <= max, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class AppearanceChange:
    """How strongly a template may differ from its target; :meth:`apply` draws one random change.

    The defaults are moderate: the template is plainly the same place, but never the same pixels.
    :meth:`none` changes nothing, :meth:`mild` only exposure and colour (for the reference).

    Order of :meth:`apply`: warp, occlusion, photometric, blur, noise -- geometry first on clean
    pixels; the occluder is then lit and blurred like the rest (it is part of the scene), and sensor
    noise comes last, on top of everything, as in a camera.

    :param brightness: factor ``1 + u`` on every channel, ``u`` uniform in ``[-brightness, brightness]``.
    :param contrast: ``(min, max)`` contrast factor, uniform.
    :param saturation: ``(min, max)`` saturation factor, uniform.
    :param hue: largest hue shift in degrees (uniform in ``[-hue, hue]``).
    :param gamma: ``(min, max)`` gamma, log-uniform.
    :param blur_sigma: largest Gaussian blur sigma in pixels (uniform in ``[0, blur_sigma]``) ...
    :param blur_prob: ... applied with this probability.
    :param noise_std: largest Gaussian noise standard deviation, 0-255 units (uniform in ``[0, noise_std]``).
    :param rotation: largest rotation in degrees (see :func:`random_warp`).
    :param shear: largest horizontal shear.
    :param stretch: anisotropic scale: per-axis factor log-uniform in ``[1 / (1 + stretch), 1 + stretch]``.
    :param perspective: largest corner shift, as a fraction of the side.
    :param occlusion_prob: probability of an occluding rectangle (see :func:`occlude`) ...
    :param occlusion_fraction: ... covering at most this fraction of the image.
    """

    brightness: float = 0.25
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.7, 1.3)
    hue: float = 8.0
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_sigma: float = 1.2
    blur_prob: float = 0.5
    noise_std: float = 8.0
    rotation: float = 10.0
    shear: float = 0.1
    stretch: float = 0.1
    perspective: float = 0.06
    occlusion_prob: float = 0.3
    occlusion_fraction: float = 0.25

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ (lists from a config file become tuples, so
        # the instance stays hashable and comparable)
        for name in ("contrast", "saturation", "gamma"):
            object.__setattr__(self, name, _as_range(getattr(self, name), name))
        for name in ("brightness", "hue", "blur_sigma", "noise_std", "rotation", "shear", "stretch", "perspective"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"AppearanceChange.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        for name in ("blur_prob", "occlusion_prob", "occlusion_fraction"):
            value = float(getattr(self, name))
            if not 0 <= value <= 1:
                raise ValueError(f"AppearanceChange.{name} must be in [0, 1], got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if self.brightness >= 1:
            raise ValueError(f"AppearanceChange.brightness must be < 1 (a factor 1 - brightness > 0), got {self.brightness}")

    @classmethod
    def none(cls) -> "AppearanceChange":
        """The identity: :meth:`apply` returns a copy of its input."""
        return cls(
            brightness=0.0,
            contrast=(1.0, 1.0),
            saturation=(1.0, 1.0),
            hue=0.0,
            gamma=(1.0, 1.0),
            blur_sigma=0.0,
            blur_prob=0.0,
            noise_std=0.0,
            rotation=0.0,
            shear=0.0,
            stretch=0.0,
            perspective=0.0,
            occlusion_prob=0.0,
            occlusion_fraction=0.0,
        )

    @classmethod
    def mild(cls) -> "AppearanceChange":
        """Exposure and colour only, about a third of the default strength: for a whole reference image.

        No gamma: it costs a lookup pass over the image (~3x the rest on a 320x240 reference), and
        brightness and contrast already change the exposure.
        """
        return cls.none().replace(brightness=0.1, contrast=(0.9, 1.1), saturation=(0.9, 1.1), hue=3.0)

    def replace(self, **changes: Any) -> "AppearanceChange":
        """A copy with some strengths changed, e.g. ``AppearanceChange().replace(occlusion_prob=0)``."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"AppearanceChange has no field(s) {sorted(unknown)}; fields: {[f.name for f in fields(self)]}")
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    @property
    def changes_geometry(self) -> bool:
        return self.rotation > 0 or self.shear > 0 or self.stretch > 0 or self.perspective > 0

    @property
    def changes_colour(self) -> bool:
        return (
            self.brightness > 0
            or self.contrast != (1.0, 1.0)
            or self.saturation != (1.0, 1.0)
            or self.hue > 0
            or self.gamma != (1.0, 1.0)
        )

    @property
    def is_identity(self) -> bool:
        """Whether :meth:`apply` can only return its input unchanged."""
        return not (
            self.changes_geometry
            or self.changes_colour
            or (self.blur_prob > 0 and self.blur_sigma > 0)
            or self.noise_std > 0
            or (self.occlusion_prob > 0 and self.occlusion_fraction > 0)
        )

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw a random change with ``rng`` and apply it.

        :param image: ``(H, W, 3)`` uint8 RGB image (not modified).
        :param rng: the only source of randomness: the same generator state gives the same output.
        :return: ``(H, W, 3)`` uint8 RGB image (a new array, also for the identity).
        """
        _check_rgb(image, "AppearanceChange.apply")
        if self.is_identity:
            return image.copy()
        out = image
        if self.changes_geometry:
            out = random_warp(out, rng, self.rotation, self.shear, self.stretch, self.perspective)
        # u: occlusion?, brightness, contrast, saturation, hue, gamma, blur?, blur sigma, noise std
        u = rng.random(9).tolist()
        if self.occlusion_fraction > 0 and u[0] < self.occlusion_prob:
            out = occlude(out, rng, self.occlusion_fraction)
        if self.changes_colour:
            (c_lo, c_hi), (s_lo, s_hi), (g_lo, g_hi) = self.contrast, self.saturation, self.gamma
            out = photometric_jitter(
                out,
                brightness=1.0 + self.brightness * (2.0 * u[1] - 1.0),
                contrast=c_lo + (c_hi - c_lo) * u[2],
                saturation=s_lo + (s_hi - s_lo) * u[3],
                hue=self.hue * (2.0 * u[4] - 1.0),
                gamma=g_lo * (g_hi / g_lo) ** u[5],
            )
        if self.blur_sigma > 0 and u[6] < self.blur_prob:
            sigma = self.blur_sigma * u[7]
            if sigma >= 0.2:  # a narrower kernel is [~0, 1, ~0]: not worth a pass over the image
                out = gaussian_blur(out, sigma)
        if self.noise_std > 0:
            out = add_noise(out, self.noise_std * u[8], rng)
        return image.copy() if out is image else out
