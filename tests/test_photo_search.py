"""The photograph search (agents/photo_search.py, agents/photo_search_net.py): its arithmetic, runtimes, files
and the shipped searcher on synthetic photographs (no shared data)."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from matchenv.agents.model_files import write_model_file
from matchenv.agents.photo_search import (
    PhotoSearcher,
    PhotoSearchRuntime,
    best_peaks,
    load_photo_search_file,
    parabola_offset,
    save_photo_search_file,
    verifier_size,
)
from matchenv.agents.photo_search_net import PhotoSearchConfig, PhotoSearchNet, cosine_map
from matchenv.geometry import iou

from test_self_supervised import texture


@pytest.fixture(scope="module")
def small_net() -> PhotoSearchNet:
    """Random weights (seeded), a short verifier: the mechanics, not accuracy."""
    torch.manual_seed(0)
    return PhotoSearchNet(PhotoSearchConfig(verifier_blocks=3, verifier_side=32, candidates=3)).eval()


@pytest.fixture(scope="module")
def shipped() -> PhotoSearcher:
    return PhotoSearcher.from_pretrained("photo")


def reference_cosine_map(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The cosine of ``kernel`` with every window of ``features``, window by window (slow, plain)."""
    c, h, w = kernel.shape
    out = np.zeros((features.shape[1] - h + 1, features.shape[2] - w + 1))
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            window = features[:, y:y + h, x:x + w]
            out[y, x] = (window * kernel).sum() / np.linalg.norm(window) / np.linalg.norm(kernel)
    return out


def test_cosine_map_in_torch_and_onnx_runtime_is_the_plain_cosine(small_net):
    rng = np.random.default_rng(0)
    runtimes = [PhotoSearchRuntime(small_net, onnx=False)]
    if PhotoSearchRuntime(small_net).name == "onnxruntime":
        runtimes.append(PhotoSearchRuntime(small_net))
    for (h, w) in ((3, 5), (1, 1), (7, 2), (12, 20)):
        features = rng.standard_normal((24, 12, 20)).astype(np.float32)
        kernel = rng.standard_normal((24, h, w)).astype(np.float32)
        expected = reference_cosine_map(features, kernel)
        np.testing.assert_allclose(cosine_map(torch.from_numpy(features)[None], torch.from_numpy(kernel)[None]).numpy(),
                                   expected, atol=2e-5)
        for runtime in runtimes:
            got = runtime.cosine_map(features, kernel)
            assert got.shape == (12 - h + 1, 20 - w + 1)
            np.testing.assert_allclose(got, expected, atol=2e-5)
    # a kernel cut from the features matches itself with cosine 1 there
    features = rng.standard_normal((24, 20, 30)).astype(np.float32)
    scores = runtimes[-1].cosine_map(features, features[:, 5:9, 11:17])
    assert np.unravel_index(np.argmax(scores), scores.shape) == (5, 11) and scores[5, 11] == pytest.approx(1.0, abs=1e-5)


def test_peaks_are_found_best_first_apart_and_between_cells():
    scores = np.zeros((20, 20), np.float32)
    scores[4, 4], scores[4, 5] = 1.0, 0.5  # a peak leaning right
    scores[15, 12] = 0.8
    scores[5, 5] = 0.9  # within the first peak's suppression: not a peak of its own
    peaks = best_peaks(scores, 3, (2, 2))
    (y0, x0, s0), (y1, x1, s1) = peaks[:2]
    assert (s0, s1) == pytest.approx((1.0, 0.8)) and y0 == 4 and 4 < x0 < 4.5 and (y1, x1) == (15, 12)
    assert all(abs(y - 5) + abs(x - 5) > 1 for y, x, _ in peaks[1:])
    assert parabola_offset(1.0, 2.0, 1.0) == 0.0 and parabola_offset(0.0, 1.0, 1.0) == 0.5
    assert parabola_offset(1.0, 1.0, 1.0) == 0.0  # flat: stay


def test_verifier_size_keeps_the_aspect_in_steps_of_8():
    assert verifier_size(100, 50, 64) == (64, 32)
    assert verifier_size(20, 100, 64) == (16, 64)  # at least 16
    assert verifier_size(30, 30, 48) == (48, 48)


def test_onnx_runtime_computes_what_pytorch_does(small_net):
    pytest.importorskip("onnxruntime")
    fast, slow = PhotoSearchRuntime(small_net), PhotoSearchRuntime(small_net, onnx=False)
    assert (fast.name, slow.name) == ("onnxruntime", "torch")
    image = texture(70, 90, 1)
    np.testing.assert_allclose(fast.look_features(image), slow.look_features(image), atol=1e-4, rtol=1e-4)
    assert fast.look_features(image).shape == (24, 18, 23)  # ceil(70 / 4), ceil(90 / 4)
    crops = np.stack([texture(32, 16, s) for s in range(3)])
    a, b = fast.embed(crops), slow.embed(crops)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    rng = np.random.default_rng(0)
    look, verified = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    seen, state = np.array([True, False, False]), rng.standard_normal(32).astype(np.float32)
    for chosen in (-1, 0):  # the first decision, then one after comparing candidate 0
        for x, y in zip(fast.decide(look, verified, seen, state, chosen), slow.decide(look, verified, seen, state, chosen)):
            np.testing.assert_allclose(x, y, atol=1e-5)
    reference, query = texture(120, 160, 2), texture(120, 160, 2)[40:70, 50:90]
    for policy in ("first-look order", "learned"):
        answers = [PhotoSearcher(small_net, onnx=onnx, policy=policy).locate(query, reference) for onnx in (True, False)]
        np.testing.assert_allclose(answers[0].box, answers[1].box, atol=0.05)
        np.testing.assert_allclose(answers[0].path, answers[1].path, atol=0.05)


def test_files_round_trip_in_half_precision_and_refuse_what_they_are_not(small_net, tmp_path):
    path = save_photo_search_file(tmp_path / "search.pt", small_net, {"command": "test"})
    net, info = load_photo_search_file(path)
    assert info == {"command": "test"} and net.config == small_net.config
    for key, value in small_net.state_dict().items():
        if value.is_floating_point():
            np.testing.assert_allclose(net.state_dict()[key], value, rtol=1e-3, atol=1e-4)
    other = write_model_file(tmp_path / "other.pt", {"kind": "multiscale-look", "state_dict": {}, "config": {}, "info": {}})
    with pytest.raises(ValueError, match="not a photograph search"):
        PhotoSearcher.load(other)
    with pytest.raises(FileNotFoundError, match="train/photo_search.py"):
        PhotoSearcher.load(tmp_path / "missing.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the foreign pickle below
def test_a_model_file_never_runs_code_when_loaded(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"kind": "photo-search", "state_dict": {}, "config": {}, "info": Exploit()}, path)
    with pytest.raises(ValueError, match="is not a photograph search file"):
        PhotoSearcher.load(path)
    path.write_bytes(pickle.dumps({"kind": "photo-search"}))
    with pytest.raises(ValueError, match="is not a photograph search file"):
        PhotoSearcher.load(path)
    with zipfile.ZipFile(tmp_path / "not.pt", "w") as z:
        z.writestr("a.txt", "x")
    with pytest.raises(ValueError, match="is not a photograph search file"):
        PhotoSearcher.load(tmp_path / "not.pt")


def test_bad_arguments_and_inputs_are_clear_errors(small_net):
    with pytest.raises(ValueError, match="channel_order"):
        PhotoSearcher(small_net, channel_order="hsv")
    with pytest.raises(ValueError, match="policy must be one of"):
        PhotoSearcher(small_net, policy="random")
    with pytest.raises(ValueError, match="found_threshold"):
        PhotoSearcher(small_net, found_threshold=2)
    searcher = PhotoSearcher(small_net, onnx=False)
    with pytest.raises(ValueError, match="larger than the reference"):
        searcher.locate(texture(50, 50, 0), texture(40, 80, 1))
    with pytest.raises(TypeError, match="numpy array"):
        searcher.locate([[1, 2]], texture(40, 80, 1))
    with pytest.raises(ValueError, match="one reference per query"):
        searcher.locate_batch([texture(10, 10, 0)], [])
    with pytest.raises(ValueError, match="look_min_side"):
        PhotoSearchConfig(look_min_side=0)


def test_both_policies_answer_with_windows_they_compared(small_net):
    reference = texture(150, 200, 4)
    query = reference[60:90, 100:140]
    for policy in ("first-look order", "learned"):
        result = PhotoSearcher(small_net, onnx=False, policy=policy).locate(query, reference)
        assert result.box.shape == (4,) and 0 <= result.score <= 1 and result.found == (result.score >= 0.5)
        assert result.box[2] - result.box[0] == 40 and result.box[3] - result.box[1] == 30
        assert 1 <= result.windows <= 3 and result.path.shape == (result.windows, 4)
        assert result.candidates.shape == (3, 4) and result.positions > 0
        np.testing.assert_array_equal(result.xywh, [*result.box[:2], 40, 30])


def test_the_shipped_searcher_finds_crops_of_photographs(shipped):
    hits = 0
    for seed in range(8):
        reference = texture(240, 320, 10 + seed)
        rng = np.random.default_rng(seed)
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        x, y = int(rng.integers(0, 320 - w)), int(rng.integers(0, 240 - h))
        result = shipped.locate(reference[y:y + h, x:x + w], reference)
        hits += iou(result.box, np.array([x, y, x + w, y + h])) > 0.8 and result.found
    assert hits >= 7
    bgr = PhotoSearcher.from_pretrained("photo", channel_order="bgr")
    reference = texture(240, 320, 3)
    query = reference[100:140, 150:200]
    np.testing.assert_allclose(bgr.locate(query[:, :, ::-1], reference[:, :, ::-1]).box,
                               shipped.locate(query, reference).box, atol=1e-6)


def test_shipped_searcher_windows_option_bounds_the_windows(shipped):
    reference = texture(240, 320, 21)
    query = reference[50:90, 60:120]
    assert PhotoSearcher.from_pretrained("photo", windows=1).locate(query, reference).windows == 1
    assert shipped.policy == shipped.info["policy"] == "learned"
    assert 1 <= shipped.locate(query, reference).windows <= shipped.config.candidates  # the policy stops when it chooses
    every = PhotoSearcher.from_pretrained("photo", policy="first-look order")
    assert every.locate(query, reference).windows == every.config.candidates
