"""The learned multi-scale look for photographs (agents/multiscale_look.py) and its training script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from matchenv.agents.look_correlation import row_filters, sum_rows, trimmed_kernel
from matchenv.agents.look_files import config_dict, load_look_file, save_look_file
from matchenv.agents.look_images import _level_resize, fill_colour, level_image, patch_around, pyramid, template_canvas
from matchenv.agents.look_network import STRIDE, LookConfig, MultiScaleLook
from matchenv.agents.look_peaks import refine_peak
from matchenv.agents.look_runtime import LookRuntime, _CentredFeatures, _centred_pixels
from matchenv.agents.look_training import training_sample
from matchenv.agents.multiscale_look import CLOSER_MARGIN, LookSearcher
from matchenv.agents.pretrained import LOOKS, look_path
from matchenv.agents.searcher import TemplateSearcher
from matchenv.datasets.base import SearchPair
from matchenv.datasets.self_supervised import SelfSupervisedPhotos
from matchenv.geometry import iou, resize_image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "manifest"


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A colour image with structure at several scales (smoothed noise), like a photograph's texture."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for blur in (1, 3, 9):
        noise = rng.random((height, width, 3)).astype(np.float32)
        image += cv2.GaussianBlur(noise, (0, 0), blur) * blur
    image -= image.min()
    return (255 * image / image.max()).astype(np.uint8)


@pytest.fixture(scope="module")
def untrained() -> LookSearcher:
    torch.manual_seed(0)
    return LookSearcher(MultiScaleLook(), threads=1)


@pytest.fixture(scope="module")
def shipped() -> LookSearcher:
    return LookSearcher.from_pretrained("photo", threads=1)


# ---------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape", [(40, 40), (30, 60), (90, 45), (7, 200)])
def test_template_canvas_keeps_the_aspect_at_the_configured_size(shape):
    config = LookConfig()
    template = np.full((*shape, 3), 200, np.uint8)
    canvas, cells = template_canvas(template, config)
    assert canvas.shape == (config.canvas, config.canvas, 3) and cells.shape == (config.kernel_cells,) * 2
    assert canvas.dtype == np.uint8 and cells.dtype == np.float32
    assert cells.sum() >= 1
    if shape == (40, 40):  # a square query: a side of `side` pixels, centred; cells at least half covered
        k0 = (config.canvas - config.side) // 2
        assert (canvas == 200).all()  # the fill is the query's mean colour: no frame to match
        covered = np.zeros((config.canvas, config.canvas))
        covered[k0:k0 + config.side, k0:k0 + config.side] = 1
        k = config.kernel_cells
        assert np.array_equal(cells, (covered.reshape(k, 4, k, 4).mean((1, 3)) >= 0.5).astype(np.float32))
    if shape == (30, 60):  # aspect 2: wider than high, geometric mean `side`
        assert cells.sum(1).max() > cells.sum(0).max()


def test_look_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of 4"):
        LookConfig(canvas=26)
    with pytest.raises(ValueError, match="level_step"):
        LookConfig(level_step=1.0)
    with pytest.raises(ValueError, match="smallest <= largest"):
        LookConfig(smallest=0.5, largest=0.2)
    with pytest.raises(ValueError, match="four positive"):
        LookConfig(channels=(8, 8))


def test_level_sides_span_smallest_to_largest_in_level_steps():
    config = LookConfig(smallest=0.1, largest=0.8, level_step=2.0)
    assert np.allclose(config.level_sides(200), [20, 40, 80, 160])


@pytest.mark.parametrize("side", [10.0, 200.0])
def test_level_image_scales_a_target_of_the_level_side_to_the_query_side(side):
    config = LookConfig()
    reference = textured(120, 160)
    image, scale_x, scale_y = level_image(reference, side, config)
    assert scale_x == pytest.approx(config.side / side, rel=0.05) and scale_y == pytest.approx(config.side / side, rel=0.05)
    assert min(image.shape[:2]) >= config.canvas  # small levels padded so the kernel fits


def test_pyramid_halves_earlier_levels_and_keeps_the_geometry():
    config = LookConfig()  # level_step 2^(1/3): every third level is an earlier one halved
    reference = np.zeros((183, 320, 3), np.uint8)
    reference[60:100, 150:210] = 255  # a bright box centred at (180, 80) reference pixels
    sides = config.level_sides(183)
    levels = pyramid(reference, sides, config)
    assert len(levels) == len(sides)
    for side, (image, scale_x, scale_y) in zip(sides, levels):
        direct, direct_x, direct_y = level_image(reference, side, config)
        # a halved level may be a pixel smaller than the direct resize (odd sizes); its scales say so
        assert abs(image.shape[0] - direct.shape[0]) <= 1 and abs(image.shape[1] - direct.shape[1]) <= 1
        assert scale_x == pytest.approx(direct_x, rel=0.03) and scale_y == pytest.approx(direct_y, rel=0.03)
        # the box's centroid in the level maps back to the reference through the level's scales
        unpadded = image[: int(183 * scale_y + 1e-6), : int(320 * scale_x + 1e-6)]  # without the fill
        weights = unpadded[..., 0].astype(float)
        rows, cols = np.indices(weights.shape) + 0.5
        centre_x = (weights * cols).sum() / weights.sum() / scale_x
        centre_y = (weights * rows).sum() / weights.sum() / scale_y
        assert centre_x == pytest.approx(180, abs=0.5 / scale_x) and centre_y == pytest.approx(80, abs=0.5 / scale_y)
    # level 3 is level 0 halved: exactly half its scales, and (level 0 shrinks by less than 2x, so
    # it is bilinear) nearly the area average of the reference at its size, as close as a direct
    # resize (the reference halved, then bilinear) and aligned with it
    assert levels[3][1] == pytest.approx(levels[0][1] / 2) and levels[3][2] == pytest.approx(levels[0][2] / 2)
    textured_reference = textured(183, 320, seed=4)
    built = pyramid(textured_reference, sides, config)
    direct = level_image(textured_reference, sides[3], config)[0]
    assert built[3][0].shape == direct.shape
    average = resize_image(textured_reference, direct.shape[:2]).astype(int)
    built_off, direct_off = (np.abs(image.astype(int) - average).mean() for image in (built[3][0], direct))
    assert built_off < 1 and built_off <= direct_off < 6
    assert direct_off < 0.6 * np.abs(direct[:, 1:].astype(int) - average[:, :-1]).mean()
    # and the bilinear level 0 is close to the area average it replaces
    area = resize_image(textured_reference, built[0][0].shape[:2])
    assert np.abs(built[0][0].astype(int) - area.astype(int)).mean() < 3


@pytest.mark.parametrize("factor", [0.3, 0.47, 0.75, 1.5])
def test_level_resize_gives_the_size_asked_close_to_an_area_average(factor):
    reference = textured(183, 320, seed=5)
    size = (int(round(183 * factor)), int(round(320 * factor)))
    resized = _level_resize(reference, size)
    assert resized.shape == (*size, 3) and resized.dtype == np.uint8
    if factor < 1:  # exact halvings, then bilinear: close to the area average it replaces, and aligned with it
        area = resize_image(reference, size).astype(int)
        difference = np.abs(resized.astype(int) - area).mean()
        one_pixel_off = np.abs(resized[:, 1:].astype(int) - area[:, :-1]).mean()
        assert difference < 6 and difference < 0.6 * one_pixel_off
    flat = np.full((183, 320, 3), 77, np.uint8)
    assert (_level_resize(flat, size) == 77).all()


def test_refine_peak_finds_the_vertex_of_a_parabola():
    vertex = 0.3
    values = [-(x - vertex) ** 2 for x in (-1, 0, 1)]
    assert refine_peak(*values) == pytest.approx(vertex)
    assert refine_peak(1.0, 1.0, 1.0) == 0.0  # flat: stay on the grid


# ---------------------------------------------------------------------------------- training data
@pytest.mark.parametrize("seed", range(6))
def test_training_label_is_where_the_target_lands_at_its_level(seed):
    # A white target box on black: at the labelled position of the target's level crop, the
    # canvas-sized window is centred on the white box (to within a cell and the crops' rounding).
    config = LookConfig()
    rng = np.random.default_rng(seed)
    reference = np.zeros((180, 240, 3), np.uint8)
    w, h = (int(v) for v in rng.integers(20, 70, size=2))
    x0, y0 = int(rng.integers(0, 240 - w)), int(rng.integers(0, 180 - h))
    reference[y0:y0 + h, x0:x0 + w] = 255
    pair = SearchPair(query=np.zeros((32, 32, 3), np.uint8), reference=reference,
                      target_box=np.array([x0, y0, x0 + w, y0 + h], float), template=reference[y0:y0 + h, x0:x0 + w])
    offsets = (-1, 0, 1)
    sample = training_sample(pair, config, rng, crop=80, offsets=offsets)
    positions = (80 - config.canvas) // STRIDE + 1
    level, rest = divmod(sample.label, positions * positions)
    row, col = divmod(rest, positions)
    assert offsets[level] == 0
    crop = sample.crops[level, :, :, 0] > 127
    ys, xs = np.nonzero(crop)
    centre = (col * STRIDE + config.canvas / 2, row * STRIDE + config.canvas / 2)
    assert abs(xs.mean() + 0.5 - centre[0]) <= STRIDE / 2 + 1.5 and abs(ys.mean() + 0.5 - centre[1]) <= STRIDE / 2 + 1.5
    side = math.sqrt((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    assert config.side * 2 ** (-1 / 6) - 1.5 <= side <= config.side * 2 ** (1 / 6) + 1.5


def test_training_sample_needs_a_template_and_the_true_level():
    pair = SearchPair(query=np.zeros((8, 8, 3), np.uint8), reference=np.zeros((50, 50, 3), np.uint8),
                      target_box=np.array([0.0, 0, 10, 10]))
    with pytest.raises(ValueError, match="template"):
        training_sample(pair, LookConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="include 0"):
        training_sample(SearchPair(**{**pair.__dict__, "template": np.zeros((10, 10, 3), np.uint8)}), LookConfig(),
                        np.random.default_rng(0), offsets=(-1, 1))


def test_training_logits_correlate_each_query_with_its_own_crops():
    torch.manual_seed(0)
    look = MultiScaleLook(LookConfig(side=16, canvas=24)).eval()
    canvas = torch.rand(3, 3, 24, 24) * 255
    cells = torch.ones(3, 6, 6)
    crops = torch.rand(3, 2, 3, 40, 40) * 255
    with torch.no_grad():
        logits = look(canvas, cells, crops)
        assert logits.shape == (3, 2 * 5 * 5)
        for n in range(3):
            kernel = look.kernel(canvas[n:n + 1], cells[n:n + 1])
            alone = F.conv2d(look.features(crops[n]), kernel)  # (2, 1, 5, 5)
            assert torch.allclose(logits[n], alone.flatten() * look.log_temperature.exp(), atol=1e-5)


def test_scores_are_mean_cosine_similarities_in_minus_one_to_one(untrained):
    reference = textured(100, 140)
    canvas, cells = template_canvas(reference[30:60, 40:70], untrained.config)
    kernel = untrained._runtime.kernel(canvas, cells)
    scores = untrained._runtime.scores(reference[None], kernel)
    k = untrained.config.kernel_cells
    assert scores.shape == (1, 100 // 4 - k + 1, 140 // 4 - k + 1)
    assert scores.max() <= 1.0 + 1e-5 and scores.min() >= -1.0 - 1e-5


@pytest.mark.parametrize("kernel_shape, height, width", [((8, 8), 20, 33), ((16, 16), 20, 20), ((3, 3), 9, 5), ((5, 2), 9, 7)])
def test_row_correlation_equals_the_plain_correlation(kernel_shape, height, width):
    torch.manual_seed(kernel_shape[0])
    features = F.normalize(torch.randn(3, 48, height, width), dim=1)
    kernel = torch.randn(1, 48, *kernel_shape) / (kernel_shape[0] * kernel_shape[1])
    got = sum_rows(row_filters(features, kernel).numpy())
    assert got.shape == (3, height - kernel_shape[0] + 1, width - kernel_shape[1] + 1)
    assert np.allclose(got, F.conv2d(features, kernel)[:, 0].numpy(), atol=1e-5)


def test_trimmed_kernel_is_the_part_holding_every_nonzero_cell():
    kernel = np.zeros((1, 4, 8, 8), np.float32)
    kernel[0, 1, 2, 3] = 1.0
    kernel[0, 3, 5, 6] = -2.0
    part = trimmed_kernel(kernel)
    assert (part.top, part.left, part.side) == (2, 3, 8) and part.weights.flags.c_contiguous
    assert np.array_equal(part.weights, kernel[:, :, 2:6, 3:7])
    part = trimmed_kernel(np.zeros((1, 4, 8, 8), np.float32))
    assert part.weights.shape == (1, 4, 1, 1) and not part.weights.any()


@pytest.mark.parametrize("onnx", [True, False])
def test_scores_of_a_trimmed_kernel_are_those_of_the_whole_kernel(onnx):
    """The runtime correlates only the query's cells (a part of the 8x8 kernel whose size and place
    depend on the query's aspect; one ONNX Runtime session takes them all) and must still give
    every position of the whole kernel, at the same place."""
    if onnx:
        pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    look = MultiScaleLook()
    runtime = LookRuntime(look, threads=1, onnx=onnx)
    assert runtime.name == ("onnxruntime" if onnx else "torch")
    reference = textured(96, 120, seed=6)
    images = np.stack([reference, textured(96, 120, seed=7)])
    with torch.no_grad():
        features = look.features(torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)))
    shapes = set()
    for x0, y0, x1, y1 in [(0, 0, 40, 40), (10, 5, 90, 35), (30, 20, 42, 60), (0, 0, 96, 96)]:
        kernel = runtime.kernel(*template_canvas(reference[y0:y1, x0:x1], look.config))
        shapes.add(trimmed_kernel(kernel).weights.shape[2:])
        expected = F.conv2d(features, torch.from_numpy(kernel))[:, 0].numpy()
        got = runtime.scores(images, kernel)
        assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-4)
    assert len(shapes) == 3 and (8, 8) not in shapes  # three aspects, each leaving some cells empty


def test_exported_features_take_centred_pixels_and_give_the_same_features():
    torch.manual_seed(3)
    look = MultiScaleLook()
    images = np.stack([textured(36, 44, seed=s) for s in range(2)])
    centred = _centred_pixels(images)
    assert centred.shape == (2, 3, 36, 44) and centred.flags.c_contiguous and centred.dtype == np.float32
    assert np.array_equal(centred[1, 2], images[1, :, :, 2].astype(np.float32) - 127.5)
    with torch.no_grad():
        expected = look.features(torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)))
        got = _CentredFeatures(look.features)(torch.from_numpy(centred))
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------- inference
def test_onnx_runtime_and_pytorch_give_the_same_scores():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    look = MultiScaleLook()
    fast = LookSearcher(look, threads=1)
    assert fast.runtime == "onnxruntime"
    reference = textured(90, 130, seed=2)
    canvas, cells = template_canvas(reference[10:40, 20:60], look.config)
    kernel = fast._runtime.kernel(canvas, cells)
    slow = LookRuntime(look, threads=1, onnx=False)
    assert np.allclose(kernel, slow.kernel(canvas, cells), atol=1e-6)
    assert np.allclose(fast._runtime.scores(reference[None], kernel), slow.scores(reference[None], kernel), atol=1e-4)


def test_onnx_runtime_and_pytorch_give_the_same_second_look():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    look = MultiScaleLook()
    fast = LookSearcher(look, threads=1)
    slow = LookRuntime(look, threads=1, onnx=False)
    closer = LookConfig(side=2 * look.config.side, canvas=2 * look.config.canvas)
    canvas, cells = template_canvas(textured(50, 70, seed=3), closer)
    patches = np.stack([textured(closer.canvas + 16, closer.canvas + 16, seed=s) for s in range(3)])
    kernel = fast._runtime.kernel(canvas, cells)
    assert np.allclose(kernel, slow.kernel(canvas, cells), atol=1e-6)
    got = fast._runtime.scores(patches, kernel)
    assert got.shape == (3, 5, 5) and np.allclose(got, slow.scores(patches, kernel), atol=1e-4)
    assert np.abs(got).max() <= 1.0 + 1e-5  # mean cosine similarities


def test_locate_gives_the_same_answers_with_onnx_runtime_and_with_pytorch(shipped):
    pytest.importorskip("onnxruntime")
    fast = LookSearcher(shipped.look, threads=1, closer_gap=float("inf"))  # the second look every time
    slow = LookSearcher(shipped.look, threads=1, closer_gap=float("inf"))
    slow._runtime = LookRuntime(shipped.look, threads=1, onnx=False)
    assert fast.runtime == "onnxruntime" and slow._runtime.name == "torch"
    for seed in range(3):
        reference = textured(200, 260, seed=60 + seed)
        query = reference[40:100, 60:150]
        a, b = fast.locate(query, reference), slow.locate(query, reference)
        assert a.path.shape == b.path.shape == (5, 4)
        assert np.allclose(a.box, b.box, atol=1e-3) and np.allclose(a.scores, b.scores, atol=1e-4)


def test_box_has_the_query_aspect_and_reports_every_level(untrained):
    reference, query = textured(200, 300), textured(30, 60, seed=5)
    result = LookSearcher(untrained.look, threads=1, candidates=1).locate(query, reference)
    x0, y0, x1, y1 = result.box
    assert (x1 - x0) / (y1 - y0) == pytest.approx(2.0)
    assert len(result.level_sides) == len(result.level_scores) == len(untrained.config.level_sides(200))
    assert result.positions > 100 and result.path.shape == (1, 4) and 0.0 <= result.score <= 1.0


def test_patch_around_resizes_the_region_around_a_centre_and_fills_the_outside():
    image = textured(60, 80, seed=9)
    fill = np.array([1, 2, 3], np.uint8)
    assert np.array_equal(patch_around(image, 40.0, 30.0, 1.0, 20, fill), image[20:40, 30:50])
    # twice smaller: the 40x40 region, area-averaged; a corner centre leaves three quarters outside
    assert np.array_equal(patch_around(image, 40.0, 30.0, 0.5, 20, fill), resize_image(image[10:50, 20:60], (20, 20)))
    corner = patch_around(image, 0.0, 0.0, 1.0, 20, fill)
    assert np.array_equal(corner[10:, 10:], image[:10, :10]) and (corner[:10] == fill).all() and (corner[:, :10] == fill).all()
    assert (patch_around(image, -100.0, 30.0, 1.0, 20, fill) == fill).all()  # wholly outside


def test_candidates_are_distinct_local_maxima_best_first(untrained):
    reference, query = textured(200, 300, seed=11), textured(40, 50, seed=12)
    searcher = LookSearcher(untrained.look, threads=1, candidates=5)
    maps, sides, scales, _, _ = searcher._score_maps(query, reference)
    peaks = searcher._peaks(query, maps, sides, scales)
    assert len(peaks) == 5 and [p[0] for p in peaks] == sorted((p[0] for p in peaks), reverse=True)
    assert peaks[0][0] == pytest.approx(max(float(m.max()) for m in maps))  # the best position is the first
    boxes = np.stack([searcher._grid_box(query, sides, scales, *p[1:]) for p in peaks])
    for i in range(5):
        for j in range(i):
            assert iou(boxes[i], boxes[j]) < 0.3
    for score, level, row, col in peaks:  # each one a 3x3 local maximum of its level
        window = maps[level][max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
        assert score == pytest.approx(float(window.max()))


def test_second_look_compares_the_candidates_and_answers_with_one(untrained):
    reference, query = textured(200, 300, seed=13), textured(40, 50, seed=14)
    first = LookSearcher(untrained.look, threads=1, candidates=1).locate(query, reference)
    always = LookSearcher(untrained.look, threads=1, candidates=4, closer_gap=float("inf")).locate(query, reference)
    never = LookSearcher(untrained.look, threads=1, candidates=4, closer_gap=0.0).locate(query, reference)
    assert np.array_equal(never.box, first.box) and never.path.shape == (1, 4)  # no tie: the first look's answer
    assert always.path.shape == (5, 4) and np.array_equal(always.path[-1], always.box)  # 4 candidates, then the answer
    assert always.positions == first.positions + 4 * (2 * CLOSER_MARGIN + 1) ** 2
    centres = (always.path[:4, :2] + always.path[:4, 2:]) / 2
    answer = (always.box[:2] + always.box[2:]) / 2
    assert np.min(np.linalg.norm(centres - answer, axis=1)) < 0.5 * STRIDE * max(always.level_sides) / 20
    assert 0.0 <= always.score <= 1.0 and np.all((always.scores >= 0) & (always.scores <= 1))
    for bad in ({"candidates": 0}, {"candidates": 2.5}, {"candidates": True}, {"closer_gap": -0.1},
                {"closer_gap": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LookSearcher(untrained.look, **bad)


def test_close_rival_check_finds_only_distinct_positions_within_the_gap(untrained):
    query = np.zeros((30, 30, 3), np.uint8)  # square: boxes of side `sides[level]`
    sides, scales = np.array([20.0, 25.0]), [(1.0, 1.0), (0.8, 0.8)]
    maps = [np.zeros((12, 12), np.float32), np.zeros((14, 14), np.float32)]
    maps[0][2, 2] = 0.9                  # the best: working-pixel box centred at (24, 24), side 20
    maps[0][2, 3] = 0.89                 # its neighbour: IoU 0.67 with it, the same object
    searcher = LookSearcher(untrained.look, threads=1, closer_gap=0.05)
    best = [float(m.max()) for m in maps]
    assert not searcher._may_have_close_rival(query, maps, sides, scales, best, 0, 2, 2)
    maps[1][10, 10] = 0.84               # far away (centre (70, 70)), but 0.06 below the best
    assert not searcher._may_have_close_rival(query, maps, sides, scales, [float(m.max()) for m in maps], 0, 2, 2)
    maps[1][10, 10] = 0.86               # far away and within the gap: a rival
    assert searcher._may_have_close_rival(query, maps, sides, scales, [float(m.max()) for m in maps], 0, 2, 2)


def test_skipping_the_peaks_without_a_close_rival_changes_no_answer(shipped, monkeypatch):
    """locate skips _peaks when no position could be a runner-up within closer_gap; forcing it to
    look for the peaks every time must give the same answers. Half the references hold the query's
    region twice (a close rival: the second look runs), half once."""
    searcher = LookSearcher(shipped.look, threads=1)
    checked = []
    real_check = searcher._may_have_close_rival
    monkeypatch.setattr(searcher, "_may_have_close_rival", lambda *args: checked.append(real_check(*args)) or checked[-1])
    queries, references = [], []
    for seed in range(6):
        reference = textured(160, 220, seed=40 + seed)
        region = reference[30 + seed * 10:90 + seed * 10, 50:110].copy()
        if seed % 2:
            reference[90:150, 150:210] = region
        queries.append(np.clip(region.astype(int) + 20, 0, 255).astype(np.uint8))
        references.append(reference)
    usual = [searcher.locate(q, r) for q, r in zip(queries, references)]
    assert checked == [False, True] * 3
    monkeypatch.setattr(searcher, "_may_have_close_rival", lambda *args: True)
    forced = [searcher.locate(q, r) for q, r in zip(queries, references)]
    for a, b in zip(usual, forced):
        assert np.array_equal(a.box, b.box) and np.array_equal(a.path, b.path) and np.array_equal(a.scores, b.scores)


def test_second_look_answers_with_the_best_sum_of_both_scores(shipped):
    # A fixture photograph's region, brightened: the answer is the candidate whose first-look
    # score plus best second-look score is highest, placed as the first look places its answer.
    images = SelfSupervisedPhotos(PHOTOS, exclude=[PHOTOS / "logo.png"], test_size=6, test_seed=2)
    searcher = LookSearcher.from_pretrained("photo", threads=1, closer_gap=float("inf"))
    for i in range(6):
        pair = images.test_pair(i)
        query = pair.template
        maps, sides, scales, factor, working = searcher._score_maps(query, pair.reference)
        peaks = searcher._peaks(query, maps, sides, scales)
        kernel = searcher._closer_kernel(query)
        places = [(*searcher._centre(scales, level, row, col), sides[level]) for _, level, row, col in peaks]
        totals = [p[0] for p in peaks] + searcher._closer_scores(kernel, working, fill_colour(working), places).max(axis=(1, 2))
        best = peaks[int(np.argmax(totals))]
        result = searcher.locate(query, pair.reference)
        grid = searcher._grid_box(query, sides, scales, *best[1:]) / factor
        assert np.allclose(result.path[int(np.argmax(totals))], grid)
        # refined between positions and levels (within half a position and half a level step of
        # it), then resized by the second look (at most half a level step more)
        step = STRIDE / np.array(scales[best[1]]) / factor
        centre, grid_centre = (result.box[:2] + result.box[2:]) / 2, (grid[:2] + grid[2:]) / 2
        assert np.all(np.abs(centre - grid_centre) <= 0.5 * step + 1e-6)
        ratio = (result.box[2] - result.box[0]) / (grid[2] - grid[0])
        assert searcher.config.level_step ** -1 - 1e-6 <= ratio <= searcher.config.level_step + 1e-6
        assert result.score == pytest.approx(min(max(totals[int(np.argmax(totals))] / 2, 0.0), 1.0))


def test_boxes_are_in_pixels_of_the_reference_as_given():
    # A reference twice the working size (each pixel doubled) is shrunk back to the same working
    # image: the same search, the box in the large image's pixels, i.e. doubled.
    torch.manual_seed(0)
    searcher = LookSearcher(MultiScaleLook(LookConfig(max_side=200)), threads=1)
    small = textured(150, 200, seed=3)
    large = cv2.resize(small, (400, 300), interpolation=cv2.INTER_NEAREST)
    query = small[40:90, 60:120]
    a, b = searcher.locate(query, small), searcher.locate(query, large)
    assert np.allclose(b.box, 2 * a.box)
    assert np.allclose(b.level_sides, 2 * a.level_sides)


def test_boxes_are_clipped_to_the_reference(untrained):
    # a query of extreme aspect: at the larger levels its box reaches past the reference's edges
    reference = textured(200, 300, seed=7)
    for query in (reference[100:107, 50:250], reference[20:180, 140:147]):
        result = untrained.locate(query, reference)
        for box in (result.box, *result.path):
            assert box[0] >= 0 and box[1] >= 0 and box[2] <= 300 and box[3] <= 200
            assert box[2] > box[0] and box[3] > box[1]
        assert math.isfinite(result.score)  # the clipped answer is still the path's last box


def test_bgr_input_gives_the_rgb_answer():
    torch.manual_seed(0)
    look = MultiScaleLook()
    rgb, bgr = LookSearcher(look, threads=1), LookSearcher(look, channel_order="bgr", threads=1)
    reference = textured(120, 160, seed=4)
    query = reference[20:60, 30:80]
    expected = rgb.locate(query, reference).box
    assert np.allclose(bgr.locate(query[:, :, ::-1], reference[:, :, ::-1]).box, expected)


def test_grayscale_input_is_searched_as_colour(untrained):
    reference = cv2.cvtColor(textured(120, 160, seed=6), cv2.COLOR_RGB2GRAY)
    assert untrained.locate(reference[20:50, 30:70], reference).box.shape == (4,)


def test_bad_input_and_files_get_clear_errors(untrained, tmp_path):
    with pytest.raises(ValueError, match="channel_order"):
        LookSearcher(MultiScaleLook(), channel_order="bgra")
    with pytest.raises(TypeError, match="reference must be a numpy array"):
        untrained.locate(np.zeros((10, 10, 3), np.uint8), [[0]])
    with pytest.raises(ValueError, match="one reference per query"):
        untrained.locate_batch([np.zeros((10, 10, 3), np.uint8)] * 2, [np.zeros((50, 50, 3), np.uint8)])
    with pytest.raises(FileNotFoundError, match="train one with"):
        LookSearcher.load(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a look file"):
        LookSearcher.load(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="no pretrained look 'nope'"):
        LookSearcher.from_pretrained("nope")


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(3)
    look = MultiScaleLook(LookConfig(channels=(8, 16, 16, 16), separable=False, side=12, canvas=20))
    path = save_look_file(tmp_path / "look.pt", look, {"note": "test"})
    loaded, info = load_look_file(path)
    assert loaded.config == look.config and info == {"note": "test"}
    for key, value in look.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_separable_stem_has_the_same_cells_fewer_weights_and_loads_back(tmp_path):
    torch.manual_seed(4)
    plain, stem = MultiScaleLook(), MultiScaleLook(LookConfig(separable_stem=True))
    pixels = torch.rand(1, 3, 40, 56) * 255
    assert plain.features(pixels).shape == stem.features(pixels).shape == (1, 48, 10, 14)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(stem) < count(plain)
    loaded, _ = load_look_file(save_look_file(tmp_path / "stem.pt", stem))
    assert loaded.config.separable_stem and loaded.config == stem.config
    searcher = LookSearcher(loaded, threads=1)  # and it runs, through ONNX Runtime where installed
    reference = textured(120, 160, seed=8)
    assert searcher.locate(reference[30:70, 40:90], reference).box.shape == (4,)
    # a file saved before the field existed (no "separable_stem" in its config) is a plain stem
    assert LookConfig(**{k: v for k, v in config_dict(plain.config).items() if k != "separable_stem"}) == plain.config


def test_locate_batch_equals_locate_per_pair(untrained):
    references = [textured(100, 150, seed=s) for s in (7, 8)]
    queries = [r[10:50, 20:70] for r in references]
    batch = untrained.locate_batch(queries, references)
    for q, r, got in zip(queries, references, batch):
        assert np.array_equal(got.box, untrained.locate(q, r).box)


# ---------------------------------------------------------------------------------- the shipped look
def test_shipped_look_is_small_and_records_how_it_was_made():
    _, info = load_look_file(look_path("photo"))
    assert look_path("photo").stat().st_size < 200_000
    assert info["command"].startswith("python train/multiscale_look.py") and info["test"]["success_rate"] > 0.5
    assert set(LOOKS) == {"photo"}


def test_template_searcher_points_to_the_photograph_searcher_for_photo():
    with pytest.raises(ValueError, match="PhotoSearcher.from_pretrained"):
        TemplateSearcher.from_pretrained("photo")


@pytest.mark.parametrize("change", ["copy", "brighter"])
def test_shipped_look_finds_patches_of_photographs(shipped, change):
    # Regions of the bundled fixture photographs (never seen in training), as exact copies and
    # with brightness +40: the look must find most of them. An untrained look does not (below).
    images = SelfSupervisedPhotos(PHOTOS, exclude=[PHOTOS / "logo.png"], appearance=None, reference_appearance=None, test_size=12, test_seed=1,
                                  template_scale=(1.0, 1.0), region_side=(0.25, 0.45))
    hits = []
    for i in range(12):
        pair = images.test_pair(i)
        template = pair.template if change == "copy" else np.clip(pair.template.astype(int) + 40, 0, 255).astype(np.uint8)
        hits.append(iou(shipped.locate(template, pair.reference).box, pair.target_box) > 0.5)
    assert np.mean(hits) >= 0.75


def test_smallest_extends_the_pyramid_to_small_targets_and_small_queries_are_flagged(shipped):
    # 20x20 exact patches of a 360x480 texture: 5.6% of its shorter side, under the shipped
    # look's smallest target (12.5%), so its answer is far too large; smallest=0.04 sizes them.
    small = LookSearcher.from_pretrained("photo", threads=1, smallest=0.04)
    assert small.config.smallest == 0.04 and small.look.config.smallest == shipped.config.smallest == 0.125
    default_ious, small_ious = [], []
    for seed in range(4):
        reference, rng = textured(360, 480, seed=seed), np.random.default_rng(seed)
        y, x = (int(v) for v in rng.integers(20, [320, 440]))
        query, box = reference[y : y + 20, x : x + 20], np.array([x, y, x + 20, y + 20])
        default = LookSearcher.from_pretrained("photo", threads=1)  # a new searcher: each warns once
        with pytest.warns(UserWarning, match=r"5\.6% of the reference's shorter side.*pass smallest=0\.028"):
            default_ious.append(iou(default.locate(query, reference).box, box))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            default.locate(query, reference)  # once is enough
        result = small.locate(query, reference)
        small_ious.append(iou(result.box, box))
        assert result.level_sides.min() == pytest.approx(0.04 * 360, rel=0.03)
    assert max(default_ious) < 0.5 and min(small_ious) > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for queries within the searched sizes
        small.locate(reference[:60, :60], reference)
    with pytest.raises(ValueError, match="smallest <= largest"):
        LookSearcher.from_pretrained("photo", smallest=0.9)


def test_untrained_look_does_not_find_them(untrained):
    images = SelfSupervisedPhotos(PHOTOS, exclude=[PHOTOS / "logo.png"], appearance=None, reference_appearance=None, test_size=12, test_seed=1,
                                  template_scale=(1.0, 1.0), region_side=(0.25, 0.45))
    hits = [iou(untrained.locate(p.template, p.reference).box, p.target_box) > 0.5
            for p in (images.test_pair(i) for i in range(12))]
    assert np.mean(hits) < 0.75


# ---------------------------------------------------------------------------------- training script
def test_training_script_end_to_end_and_resume(tmp_path):
    tiny = ["--images", str(PHOTOS), "--train-pairs", "48", "--epochs", "1", "--batch-size", "16", "--eval-pairs", "4",
            "--threads", "1", "--out-dir", str(tmp_path)]
    script = str(ROOT / "train" / "multiscale_look.py")
    run = subprocess.run([sys.executable, script, *tiny], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1] and summary["test"]["pairs"] == 4
    assert "--images" in summary["command"]
    assert LookSearcher.load(tmp_path / "look.pt").config == LookConfig()


def test_training_script_resumes_a_run_stopped_mid_way(tmp_path):
    # Stop a 3-epoch run once its first checkpoint exists (a crash), then resume it.
    script = str(ROOT / "train" / "multiscale_look.py")
    flags = ["--images", str(PHOTOS), "--train-pairs", "160", "--epochs", "3", "--batch-size", "16",
             "--eval-pairs", "4", "--threads", "1"]
    crashed = tmp_path / "crashed"
    process = subprocess.Popen([sys.executable, script, *flags, "--out-dir", str(crashed)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (crashed / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    done = torch.load(crashed / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done <= 3
    wrong = subprocess.run([sys.executable, script, *flags, "--epochs", "5", "--resume", str(crashed / "last.pt"),
                            "--out-dir", str(tmp_path / "wrong")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "pass --epochs 3" in wrong.stderr
    again = subprocess.run([sys.executable, script, *flags, "--resume", str(crashed / "last.pt"),
                            "--out-dir", str(tmp_path / "resumed")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {crashed / 'last.pt'} after epoch {done}" in again.stdout
    assert [h["epoch"] for h in json.loads((tmp_path / "resumed" / "summary.json").read_text())["history"]] == [1, 2, 3]


def test_training_script_fine_tunes_a_look_on_labelled_pairs(tmp_path):
    script = str(ROOT / "train" / "multiscale_look.py")
    save_look_file(tmp_path / "look.pt", MultiScaleLook())
    # your own manifest of pairs
    tune = subprocess.run([sys.executable, script, "--dataset", "ManifestPairs", "--dataset-kwargs",
                           json.dumps({"path": str(PHOTOS / "pairs.csv")}), "--init", str(tmp_path / "look.pt"),
                           "--train-pairs", "16", "--epochs", "1", "--batch-size", "8", "--threads", "1",
                           "--out-dir", str(tmp_path / "tuned")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert "--init" in json.loads((tmp_path / "tuned" / "summary.json").read_text())["command"]


def test_training_script_errors_are_clear(tmp_path):
    script = str(ROOT / "train" / "multiscale_look.py")
    common = ["--images", str(PHOTOS), "--out-dir", str(tmp_path)]
    missing = subprocess.run([sys.executable, script, *common, "--resume", str(tmp_path / "nope.pt")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    torch.save({"config": {"channels": [1, 2, 3, 4]}}, tmp_path / "other.pt")
    other = subprocess.run([sys.executable, script, *common, "--resume", str(tmp_path / "other.pt")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "pass the same --channels" in other.stderr
    torch.save({"config": {"colour": "blue"}}, tmp_path / "foreign.pt")
    foreign = subprocess.run([sys.executable, script, *common, "--resume", str(tmp_path / "foreign.pt")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert foreign.returncode == 2 and "pass the same --channels" in foreign.stderr and "Traceback" not in foreign.stderr
    offsets = subprocess.run([sys.executable, script, *common, "--level-offsets=-1,1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert offsets.returncode != 0 and "must include 0" in offsets.stderr
    canvas = subprocess.run([sys.executable, script, *common, "--canvas", "26"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert canvas.returncode != 0 and "multiple of 4" in canvas.stderr
    digits = subprocess.run([sys.executable, script, "--dataset", "TranslatedMNIST", "--out-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert digits.returncode != 0 and "not a photograph dataset" in digits.stderr
    images = subprocess.run([sys.executable, script, *common, "--dataset", "FlickrLogos27"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert images.returncode != 0 and "--images is for --dataset SelfSupervisedPhotos" in images.stderr
    save_look_file(tmp_path / "small.pt", MultiScaleLook(LookConfig(channels=(8, 8, 8, 8))))
    init = subprocess.run([sys.executable, script, *common, "--init", str(tmp_path / "small.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert init.returncode != 0 and "pass its --channels" in init.stderr


def test_second_look_resizes_a_box_towards_the_target(shipped):
    # Exact patches of textures, offered at the right centre but a half to a whole half level step
    # too small or too large: the second look's sizing brings them closer to the patch's size on
    # average, and never further.
    half_step = math.sqrt(shipped.config.level_step)
    ratios = []
    for seed in range(4):
        reference = textured(240, 320, seed=60 + seed)
        query = reference[70:140, 100:170]
        for k in (-1.0, -0.75, -0.5, 0.5, 0.75, 1.0):
            offered = np.array([135 - 35 * half_step ** k, 105 - 35 * half_step ** k,
                                135 + 35 * half_step ** k, 105 + 35 * half_step ** k])
            resized = shipped._closer_size(shipped._closer_kernel(query), 1.0, reference,
                                           fill_colour(reference), offered)
            assert np.allclose((resized[:2] + resized[2:]) / 2, (135, 105))  # the centre stays
            before, after = abs(k * math.log(half_step)), abs(math.log((resized[2] - resized[0]) / 70))
            assert after <= before + 1e-9
            ratios.append(after / before)
    assert np.mean(ratios) < 0.6  # most of the way there on average

