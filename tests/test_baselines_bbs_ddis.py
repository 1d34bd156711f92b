"""Best-Buddies Similarity and DDIS matchers: robustness claims, box contract, and equality with
slow per-window reference implementations written straight from the papers' definitions."""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest

from matchenv.agents.baselines import bbs as bbs_module
from matchenv.agents.baselines.bbs import BBS
from matchenv.agents.baselines.ddis import DDIS, nearest_neighbour_field
from matchenv.geometry import iou

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MATCHERS = [BBS, DDIS]


def texture(height: int, width: int, seed: int, channels: int = 1, sigma: float = 2.0) -> np.ndarray:
    """Structured random texture: Gaussian-smoothed white noise stretched to 0..255, uint8 ``(H, W, C)``."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(height, width, channels)).astype(np.float32)
    smooth = np.stack([cv2.GaussianBlur(noise[:, :, c], (0, 0), sigma) for c in range(channels)], axis=2)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255.0
    return np.round(smooth).astype(np.uint8)


def paste(reference: np.ndarray, patch: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy of ``reference`` with ``patch`` at top-left ``(x, y)``, and the patch's box."""
    out = reference.copy()
    h, w = patch.shape[:2]
    out[y : y + h, x : x + w] = patch
    return out, np.array([x, y, x + w, y + h], dtype=np.float64)


# ---------------------------------------------------------------------- robustness
@pytest.mark.parametrize("matcher_cls", MATCHERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_finds_exact_copy_in_texture(matcher_cls, channels):
    reference = texture(80, 90, seed=1, channels=channels)
    x, y = 51, 17
    query = reference[y : y + 24, x : x + 24].copy()
    result = matcher_cls().locate(query, reference)
    assert iou(result.box, [x, y, x + 24, y + 24]) >= 0.9
    # Both similarities are normalised so that an exact copy scores exactly 1.
    assert result.score == pytest.approx(1.0)


@pytest.mark.parametrize("matcher_cls", MATCHERS)
def test_finds_copy_with_30_percent_occluded_by_noise(matcher_cls):
    reference = texture(80, 80, seed=2)
    query = texture(24, 24, seed=3)  # pasted from another texture: not otherwise in the reference
    target, box = paste(reference, query, 44, 9)
    # Replace the left 30% of the pasted copy (7 of 24 columns) by uniform noise.
    rng = np.random.default_rng(4)
    target[9 : 9 + 24, 44 : 44 + 7] = rng.integers(0, 256, size=(24, 7, 1), dtype=np.uint8)
    result = matcher_cls().locate(query, target)
    assert iou(result.box, box) >= 0.9


@pytest.mark.parametrize("matcher_cls", MATCHERS)
def test_finds_deformed_copy(matcher_cls):
    reference = texture(80, 80, seed=5)
    query = texture(24, 24, seed=6)
    # A rotated (8 degrees) copy of the query content, its centre shifted by (1, -1) px.
    rotation = cv2.getRotationMatrix2D((11.5, 11.5), 8.0, 1.0)
    rotation[:, 2] += (1.0, -1.0)
    deformed = cv2.warpAffine(query[:, :, 0], rotation, (24, 24), borderMode=cv2.BORDER_REFLECT)[:, :, None]
    target, box = paste(reference, deformed, 20, 40)
    result = matcher_cls().locate(query, target)
    assert iou(result.box, box) >= 0.7


# ---------------------------------------------------------------------- contract
@pytest.mark.parametrize("matcher_cls", MATCHERS)
@pytest.mark.parametrize("stride", [1, 3])
def test_box_size_inside_and_evaluated_count(matcher_cls, stride):
    reference = texture(50, 71, seed=7, channels=3)
    query = texture(13, 17, seed=8)  # grayscale query, colour reference; sizes not multiples of 3
    result = matcher_cls(stride=stride).locate(query, reference)
    x0, y0, x1, y1 = result.box
    assert (x1 - x0, y1 - y0) == (17, 13)
    assert 0 <= x0 and 0 <= y0 and x1 <= 71 and y1 <= 50
    assert x0 % stride == 0 and y0 % stride == 0
    assert result.evaluated == ((50 - 13) // stride + 1) * ((71 - 17) // stride + 1)
    assert 0.0 <= result.score <= 1.0


@pytest.mark.parametrize("matcher_cls", MATCHERS)
def test_query_as_large_as_reference(matcher_cls):
    image = texture(20, 25, seed=9)
    result = matcher_cls().locate(image, image)
    assert result.evaluated == 1 and list(result.box) == [0, 0, 25, 20]


@pytest.mark.parametrize("matcher_cls", MATCHERS)
def test_invalid_inputs(matcher_cls):
    reference = texture(30, 30, seed=10)
    with pytest.raises(ValueError, match="larger than the reference"):
        matcher_cls().locate(texture(31, 10, seed=11), reference)
    with pytest.raises(ValueError, match="patch"):
        matcher_cls().locate(reference[:2, :10], reference)
    with pytest.raises(ValueError, match="uint8"):
        matcher_cls().locate(reference[:10, :10].astype(np.float32), reference)
    with pytest.raises(TypeError):
        matcher_cls().locate(reference[:10, :10].tolist(), reference)
    with pytest.raises(ValueError, match="stride"):
        matcher_cls(stride=0)


def test_bbs_invalid_parameters():
    with pytest.raises(ValueError, match="lam"):
        BBS(lam=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        BBS(gamma=0)


def test_names():
    assert BBS.name == "bbs" and DDIS.name == "ddis"


# ---------------------------------------------------------------------- brute force references
def brute_force_bbs(query: np.ndarray, reference: np.ndarray, lam: float = 2.0, gamma: int = 3, stride: int = 1):
    """BBS of every window, one window at a time, from the paper's definition, in exact arithmetic (slow).

    Points: non-overlapping gamma x gamma patches, appearance in [0, 1] (grey level / 255),
    position inside the window divided by its width/height; d = |app|^2 + lam |pos|^2.
    Every distance is multiplied by the positive constant 255^2 h^2 w^2 den(lam), which makes it
    an exact integer without changing any nearest neighbour. Nearest neighbours: first index on ties.
    """
    h, w, _ = query.shape
    height, width, _ = reference.shape
    gy, gx = h // gamma, w // gamma
    lam = Fraction(lam)

    def points(window):  # (appearance 0..255, x, y) in pixels, patches in row-major order
        patch = lambda a, b: window[a * gamma : (a + 1) * gamma, b * gamma : (b + 1) * gamma]  # noqa: E731
        return [(patch(a, b).astype(np.int64).ravel(), b * gamma, a * gamma) for a in range(gy) for b in range(gx)]

    def dist(p, q):
        appearance = int(((p[0] - q[0]) ** 2).sum()) * h**2 * w**2 * lam.denominator
        spatial = lam.numerator * 255**2 * ((p[1] - q[1]) ** 2 * h**2 + (p[2] - q[2]) ** 2 * w**2)
        return appearance + spatial  # == 255^2 h^2 w^2 den(lam) * d(p, q), an int

    template = points(query)
    out = np.zeros(((height - h) // stride + 1, (width - w) // stride + 1))
    for iy in range(out.shape[0]):
        for ix in range(out.shape[1]):
            window = points(reference[iy * stride : iy * stride + h, ix * stride : ix * stride + w])
            d = [[dist(t, s) for s in window] for t in template]
            nn_t = [min(range(len(window)), key=lambda m: d[i][m]) for i in range(len(template))]
            nn_w = [min(range(len(template)), key=lambda i: d[i][m]) for m in range(len(window))]
            pairs = sum(1 for i in range(len(template)) if nn_w[nn_t[i]] == i)
            out[iy, ix] = pairs / min(len(template), len(window))
    return out


def brute_force_ddis(query: np.ndarray, reference: np.ndarray, stride: int = 1):
    """DDIS of every window, literally from the paper's formula (slow loops).

    DDIS = 1/|T| sum_j exp(1 - kappa(NN(j))) / (1 + r_j) over the 3x3 patches inside the window.
    """
    h, w, _ = query.shape
    height, width, _ = reference.shape
    th, tw = h - 2, w - 2
    template = [query[a : a + 3, b : b + 3].astype(np.int64) for a in range(th) for b in range(tw)]
    nn = np.zeros((height - 2, width - 2), dtype=np.int64)
    for u in range(height - 2):
        for v in range(width - 2):
            patch = reference[u : u + 3, v : v + 3].astype(np.int64)
            dists = [int(((t - patch) ** 2).sum()) for t in template]
            nn[u, v] = dists.index(min(dists))  # first index on ties
    out = np.zeros(((height - h) // stride + 1, (width - w) // stride + 1))
    for iy in range(out.shape[0]):
        for ix in range(out.shape[1]):
            total = 0.0
            for jy in range(th):
                for jx in range(tw):
                    i = nn[iy * stride + jy, ix * stride + jx]
                    kappa = int((nn[iy * stride : iy * stride + th, ix * stride : ix * stride + tw] == i).sum())
                    r = math.hypot(jy - i // tw, jx - i % tw)
                    total += math.exp(1 - kappa) / (1 + r)
            out[iy, ix] = total / len(template)
    return out


def tiny_pairs():
    """12x12 templates in 20x20 references: random, a copy, colour, and a tie-heavy quantised one."""
    rng = np.random.default_rng(12)
    gray = rng.integers(0, 256, size=(20, 20, 1), dtype=np.uint8)
    colour = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    flat = (gray // 128 * 255).astype(np.uint8)  # two grey levels: many exactly equal distances
    return {
        "random": (rng.integers(0, 256, size=(12, 12, 1), dtype=np.uint8), gray),
        "copy": (gray[4:16, 5:17].copy(), gray),
        "colour": (colour[2:14, 7:19].copy(), colour),
        "ties": (flat[3:15, 3:15].copy(), flat),
    }


@pytest.mark.parametrize("case", ["random", "copy", "colour", "ties"])
@pytest.mark.parametrize("stride", [1, 2])
def test_bbs_equals_brute_force(case, stride, monkeypatch):
    query, reference = tiny_pairs()[case]
    expected = brute_force_bbs(query, reference, stride=stride)
    assert np.array_equal(BBS(stride=stride).score_map(query, reference), expected)
    # Tiling must not change a thing: tiny appearance tiles and mutual-NN sub-tiles.
    monkeypatch.setattr(bbs_module, "_CACHE_ELEMENTS", 40)
    assert np.array_equal(BBS(stride=stride, chunk_elements=500).score_map(query, reference), expected)


def test_bbs_brute_force_detects_a_wrong_spatial_weight():
    # The equality above is only meaningful if the scores depend on lam at all on these pairs.
    query, reference = tiny_pairs()["random"]
    assert not np.array_equal(BBS(lam=0.0).score_map(query, reference), brute_force_bbs(query, reference))


@pytest.mark.parametrize("case", ["random", "copy", "colour", "ties"])
@pytest.mark.parametrize("stride", [1, 2])
def test_ddis_equals_brute_force(case, stride):
    query, reference = tiny_pairs()[case]
    expected = brute_force_ddis(query, reference, stride=stride)
    np.testing.assert_allclose(DDIS(stride=stride).score_map(query, reference), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        DDIS(stride=stride, chunk_elements=150).score_map(query, reference), expected, rtol=0, atol=1e-6
    )


def test_nearest_neighbour_field_is_exact_with_ties():
    query, reference = tiny_pairs()["ties"]
    nnf = nearest_neighbour_field(query, reference, chunk_elements=100)
    template = np.stack([query[a : a + 3, b : b + 3].ravel() for a in range(10) for b in range(10)]).astype(np.int64)
    for (u, v), got in np.ndenumerate(nnf):
        dists = ((template - reference[u : u + 3, v : v + 3].ravel().astype(np.int64)) ** 2).sum(axis=1)
        assert got == int(np.argmin(dists))
