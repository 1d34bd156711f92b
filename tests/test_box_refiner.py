"""The box refiner (agents/box_refiner.py): its geometry, its files, the searcher applying it, and
its training script (train/box_refiner.py) run as a user runs it, on the bundled fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from matchenv.agents.box_refiner import (BoxRefiner, RefinerConfig, apply_deltas, box_deltas, context_box, context_crop,
                                load_refiner_file, refine_boxes, save_refiner_file)
from matchenv.agents.pretrained import PRETRAINED, refiner_path
from matchenv.agents.searcher import TemplateSearcher
from matchenv.datasets import make_dataset
from matchenv.geometry import iou, letterbox, resize_image

ROOT = Path(__file__).resolve().parents[1]
FL32_FIXTURE = ROOT / "tests" / "fixtures" / "flickrlogos32"
FL27 = ROOT.parent / "shared" / "data" / "flickrlogos27"


@pytest.fixture(scope="module")
def untrained() -> BoxRefiner:
    torch.manual_seed(0)
    return BoxRefiner().eval()


# ---------------------------------------------------------------------------------- geometry
def test_deltas_and_their_inverse_round_trip():
    rng = np.random.default_rng(0)
    corners, sizes = rng.uniform(0, 300, (50, 2)), rng.uniform(20, 100, (50, 2))
    windows = np.concatenate([corners, corners + sizes], axis=1)
    target_sizes = sizes * np.exp(rng.uniform(-1.0, 1.0, (50, 2)))  # within the clip of MAX_LOG_RATIO
    target_corners = corners + rng.normal(0, 20, (50, 2))
    targets = np.concatenate([target_corners, target_corners + target_sizes], axis=1)
    np.testing.assert_allclose(apply_deltas(windows, box_deltas(windows, targets)), targets, atol=1e-9)


def test_deltas_are_in_window_units():
    deltas = box_deltas(np.array([10.0, 20, 30, 60]), np.array([20.0, 20, 60, 100]))  # window 20x40, target 40x80
    np.testing.assert_allclose(deltas, [(40 - 20) / 20, (60 - 40) / 40, np.log(2), np.log(2)])


def test_extreme_size_predictions_are_clipped():
    box = apply_deltas(np.array([0.0, 0, 10, 10]), np.array([0.0, 0, 50.0, -50.0]))
    assert 10 * np.exp(1.0) < box[2] - box[0] < 10 * np.exp(1.2) and 10 * np.exp(-1.2) < box[3] - box[1] < 10 * np.exp(-1.0)


def test_context_crop_is_the_enlarged_window_resized():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    config = RefinerConfig(crop_size=32, context=2.0)
    window = np.array([60.0, 40, 80, 60])  # its context box 50..90 x 30..70 lies inside
    np.testing.assert_array_equal(context_box(window, 2.0), [50, 30, 90, 70])
    np.testing.assert_array_equal(context_crop(image, window, config), resize_image(image[30:70, 50:90], (32, 32)))


def test_context_crop_outside_the_image_is_black():
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = context_crop(image, np.array([0.0, 0, 20, 20]), RefinerConfig(crop_size=32, context=2.0))  # -10..30
    assert crop.shape == (32, 32, 3)
    assert crop[:6, :6].max() == 0 and crop[-6:, -6:].min() == 200
    assert context_crop(image, np.array([-400.0, -400, -300, -300]), RefinerConfig(crop_size=16)).max() == 0


# ---------------------------------------------------------------------------------- network and files
def test_refiner_gives_four_deltas_per_pair(untrained):
    queries, crops = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 64, 64)
    assert untrained(queries, crops).shape == (3, 4)
    with pytest.raises(ValueError, match="multiple of 16"):
        BoxRefiner(RefinerConfig(crop_size=40))
    with pytest.raises(ValueError, match="even number"):
        BoxRefiner(RefinerConfig(width=15))
    with pytest.raises(ValueError, match="context must be >= 1"):
        BoxRefiner(RefinerConfig(context=0.5))
    with pytest.raises(ValueError, match="query_size"):
        BoxRefiner(RefinerConfig(query_size=(4, 4)))


def test_refine_boxes_moves_each_box_per_step(untrained):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (100, 140, 3), dtype=np.uint8) for _ in range(2)]
    views = np.stack([letterbox(im[10:40, 10:50], (32, 32)) for im in images])
    boxes = np.array([[10.0, 10, 50, 40], [60, 50, 100, 90]])
    np.testing.assert_array_equal(refine_boxes(untrained, views, images, boxes, steps=0), boxes)
    once = refine_boxes(untrained, views, images, boxes, steps=1)
    twice = refine_boxes(untrained, views, images, boxes, steps=2)
    assert once.shape == (2, 4) and not np.allclose(once, boxes) and not np.allclose(twice, once)
    # One pair at a time gives the same boxes as the batch.
    np.testing.assert_allclose(refine_boxes(untrained, views[1:], images[1:], boxes[1:]), once[1:], atol=1e-4)


def test_save_and_load_round_trip(tmp_path, untrained):
    config = RefinerConfig(crop_size=32, context=1.5, query_size=(24, 24), width=16)
    refiner = BoxRefiner(config)
    path = save_refiner_file(tmp_path / "r.pt", refiner, {"command": "x"})
    loaded, info = load_refiner_file(path)
    assert loaded.config == config and info == {"command": "x"}
    queries, crops = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(queries, crops), refiner.eval()(queries, crops))
    with pytest.raises(FileNotFoundError, match="train/box_refiner.py"):
        load_refiner_file(tmp_path / "nope.pt")
    torch.save({"kind": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a box refiner file"):
        load_refiner_file(tmp_path / "foreign.pt")
    torch.save({"kind": "box-refiner", "state_dict": {}, "config": {"colour": "blue"}, "info": {}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="not a box refiner file"):
        load_refiner_file(tmp_path / "odd.pt")


# ---------------------------------------------------------------------------------- the searcher
def test_flickrlogos27_agent_ships_a_refiner_and_applies_it_by_default():
    assert PRETRAINED["flickrlogos27"].refiner and refiner_path("flickrlogos27").stat().st_size < 3_000_000
    assert refiner_path("cluttered-mnist") is None
    refined = TemplateSearcher.from_pretrained("flickrlogos27")
    plain = TemplateSearcher.from_pretrained("flickrlogos27", refine=False)
    assert isinstance(refined.refiner, BoxRefiner) and plain.refiner is None
    assert refined.refiner_runtime == ("onnxruntime" if refined.cnn_runtime == "onnxruntime" else "torch")
    assert plain.refiner_runtime is None
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    query = reference[60:140, 100:200].copy()
    a, b = refined.locate(query, reference), plain.locate(query, reference)
    np.testing.assert_array_equal(a.path, b.path)  # the same search ...
    np.testing.assert_array_equal(a.refined_from, b.box)  # ... whose answer the refiner moved
    assert b.refined_from is None and not np.allclose(a.box, b.box)
    assert a.score == b.score  # the match score of the window it was refined from
    x0, y0, x1, y1 = a.box
    assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240


def test_refined_boxes_are_in_pixels_of_the_reference_as_given():
    searcher = TemplateSearcher.from_pretrained("flickrlogos27")
    rng = np.random.default_rng(4)
    small = resize_image(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (240, 320))  # smooth at working size
    large = resize_image(small, (720, 960))  # 3x: the searcher shrinks it back to 320 px
    query = small[60:140, 100:200].copy()
    a, b = searcher.locate(query, small), searcher.locate(query, large)
    # The same answer up to resampling (the shrunk 960-px image is not exactly the 320-px one);
    # boxes left in working pixels would be 3x off.
    np.testing.assert_allclose(b.path / 3, a.path, atol=3.0)
    np.testing.assert_allclose(b.box / 3, a.box, atol=8.0)


def test_refiner_options_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="colour photograph agents"):
        TemplateSearcher.from_pretrained("translated-mnist", refiner=refiner_path("flickrlogos27"))
    with pytest.raises(ValueError, match="refine_steps must be at least 1"):
        TemplateSearcher.from_pretrained("flickrlogos27", refine_steps=0)
    with pytest.raises(FileNotFoundError, match="no box refiner file"):
        TemplateSearcher.from_pretrained("flickrlogos27", refiner=tmp_path / "missing.pt")


@pytest.mark.skipif(not FL27.is_dir(), reason="FlickrLogos-27 is not on this machine (tests never download)")
def test_shipped_refiner_lifts_the_logo_agent_on_the_held_out_split():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = make_dataset("FlickrLogos27", root=str(FL27))
    pairs = [data.test_pair(i) for i in range(data.test_size)]
    queries, references = [p.matcher_query for p in pairs], [p.reference for p in pairs]

    def success(searcher):
        return np.mean([iou(r.box, p.target_box) > 0.5 for r, p in zip(searcher.locate_batch(queries, references), pairs)])

    plain, refined = (success(TemplateSearcher.from_pretrained("flickrlogos27", refine=r)) for r in (False, True))
    assert refined > plain + 0.08 and refined > 0.45, (plain, refined)  # measured 0.360 -> see README


# ---------------------------------------------------------------------------------- training script
SCRIPT = str(ROOT / "train" / "box_refiner.py")
TINY = ["--dataset", "FlickrLogos32", "--dataset-kwargs", json.dumps({"root": str(FL32_FIXTURE)}),
        "--train-samples", "96", "--batch-size", "32", "--crop-size", "32", "--width", "16", "--eval-pairs", "4",
        "--threads", "1"]


def run_script(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_training_script_end_to_end(tmp_path):
    run = run_script(*TINY, "--epochs", "2", "--out-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2] and summary["test"]["pairs"] == 4
    assert summary["searcher_alone"]["pairs"] == 4 and "--train-samples" in summary["command"]
    refiner, info = load_refiner_file(tmp_path / "refiner.pt")
    assert refiner.config == RefinerConfig(crop_size=32, width=16) and info["test"] == summary["test"]
    searcher = TemplateSearcher.from_pretrained("flickrlogos27", refiner=tmp_path / "refiner.pt")
    assert searcher.refiner.config.crop_size == 32


def test_training_script_resumes_a_run_stopped_mid_way(tmp_path):
    crashed = tmp_path / "crashed"
    flags = [*TINY, "--train-samples", "320", "--epochs", "3"]
    process = subprocess.Popen([sys.executable, SCRIPT, *flags, "--out-dir", str(crashed)], cwd=ROOT,
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
    wrong = run_script(*flags, "--epochs", "5", "--resume", str(crashed / "last.pt"), "--out-dir", str(tmp_path / "w"))
    assert wrong.returncode == 2 and "pass the same flags" in wrong.stderr
    again = run_script(*flags, "--resume", str(crashed / "last.pt"), "--out-dir", str(tmp_path / "resumed"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {crashed / 'last.pt'} after epoch {done}" in again.stdout
    assert [h["epoch"] for h in json.loads((tmp_path / "resumed" / "summary.json").read_text())["history"]] == [1, 2, 3]


def test_training_script_errors_are_clear(tmp_path):
    missing = run_script(*TINY, "--resume", str(tmp_path / "nope.pt"), "--out-dir", str(tmp_path))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    digits = run_script("--dataset", "TranslatedMNIST", "--dataset-kwargs", "{}", "--out-dir", str(tmp_path))
    assert digits.returncode == 2 and "not a photograph dataset" in digits.stderr
    crop = run_script(*TINY, "--crop-size", "40", "--out-dir", str(tmp_path))
    assert crop.returncode == 2 and "multiple of 16" in crop.stderr and "Traceback" not in crop.stderr
    kwargs = run_script("--dataset-kwargs", "[1]", "--out-dir", str(tmp_path))
    assert kwargs.returncode == 2 and "JSON object" in kwargs.stderr
    # The default keyword arguments are FlickrLogos-27's: another dataset is told which one it does not take.
    other = run_script("--dataset", "TranslatedMNIST", "--out-dir", str(tmp_path))
    assert other.returncode == 2 and "reframe" in other.stderr and "Traceback" not in other.stderr


def test_onnx_runtime_and_pytorch_give_the_same_deltas(untrained):
    from matchenv.agents.box_refiner import RefinerRuntime
    from matchenv.agents.cnn_runtime import onnxruntime_available

    if not onnxruntime_available():
        pytest.skip("the fast extra (onnx, onnxruntime) is not installed")
    rng = np.random.default_rng(5)
    views = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    fast, plain = RefinerRuntime(untrained), RefinerRuntime(untrained, onnx=False)
    assert (fast.name, plain.name) == ("onnxruntime", "torch")
    np.testing.assert_allclose(fast(views, crops), plain(views, crops), atol=1e-5)
    np.testing.assert_allclose(fast(views[:1], crops[:1]), plain(views[:1], crops[:1]), atol=1e-5)  # any batch size
