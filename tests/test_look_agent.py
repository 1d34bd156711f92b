"""The photograph agent (agents/look_agent.py): a sequential search on the learned look, and its training script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from matchenv.agents.look_agent import (
    CANDIDATE_FEATURES,
    COMPARISON_CELLS,
    LookAgentConfig,
    LookAgentPolicy,
    LookAgentSearcher,
    LookDecision,
    answer_box,
    compare,
    glance,
    load_look_agent_file,
    rollout,
    save_look_agent_file,
    window_features,
)
from matchenv.agents.cnn_runtime import onnxruntime_available
from matchenv.agents.exported_module import ExportedModule
from matchenv.agents.look_files import save_look_file
from matchenv.agents.look_network import STRIDE, MultiScaleLook
from matchenv.agents.look_peaks import box_at, clip_to_reference
from matchenv.agents.multiscale_look import CLOSER_ZOOM, LookSearcher
from matchenv.agents.pretrained import LOOK_AGENTS, look_agent_path
from matchenv.agents.searcher import TemplateSearcher, prepare_image
from matchenv.datasets.self_supervised import SelfSupervisedPhotos
from matchenv.geometry import iou

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "manifest"


def fixture_pairs(count: int, seed: int = 1, **kwargs) -> list:
    """Regions of the bundled fixture photographs (never seen in training) and their photographs."""
    images = SelfSupervisedPhotos(PHOTOS, exclude=[PHOTOS / "logo.png"], test_size=count, test_seed=seed,
                                  template_scale=(1.0, 1.0), region_side=(0.25, 0.45), **kwargs)
    return [images.test_pair(i) for i in range(count)]


@pytest.fixture(scope="module")
def shipped() -> LookAgentSearcher:
    return LookAgentSearcher.from_pretrained("photo", threads=1)


@pytest.fixture(scope="module")
def untrained() -> LookAgentSearcher:
    torch.manual_seed(0)
    return LookAgentSearcher(LookAgentPolicy(), MultiScaleLook(), threads=1)


def random_tables(batch: int, config: LookAgentConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = len(config.size_steps)
    valid = torch.arange(config.candidates)[None] < torch.randint(1, config.candidates + 1, (batch, 1), generator=generator)
    return {"candidates": torch.rand(batch, config.candidates, CANDIDATE_FEATURES, generator=generator),
            "comparisons": torch.rand(batch, config.candidates, sizes * COMPARISON_CELLS, generator=generator),
            "valid": valid}


# ---------------------------------------------------------------------------------- policy
def test_config_checks_its_values():
    assert LookAgentConfig().windows == 8
    with pytest.raises(ValueError, match="candidates"):
        LookAgentConfig(candidates=0)
    with pytest.raises(ValueError, match="size_steps"):
        LookAgentConfig(size_steps=(0, 0))
    with pytest.raises(ValueError, match="max_trials"):
        LookAgentConfig(max_trials=0)


def test_window_features_show_a_comparison_only_once_its_window_is_placed():
    config = LookAgentConfig(candidates=3)
    tables = random_tables(2, config)
    seen = torch.tensor([[True, False, False], [False, False, True]])
    features = window_features(tables["candidates"], tables["comparisons"], seen, config)
    assert features.shape == (2, 3, config.window_features)
    shown = features[..., CANDIDATE_FEATURES + 1 + len(config.size_steps):]
    assert torch.equal(shown[0, 0], tables["comparisons"][0, 0]) and torch.equal(shown[1, 2], tables["comparisons"][1, 2])
    assert shown[0, 1:].abs().sum() == 0 and shown[1, :2].abs().sum() == 0
    best = features[0, 0, CANDIDATE_FEATURES + 1:CANDIDATE_FEATURES + 1 + len(config.size_steps)]
    assert torch.allclose(best, tables["comparisons"][0, 0].reshape(3, COMPARISON_CELLS).amax(dim=1))
    # the policy sees no comparison it has not made: the features of unplaced windows do not depend on them
    other = dict(tables, comparisons=tables["comparisons"].clone())
    other["comparisons"][0, 1:] += 1.0
    assert torch.equal(window_features(other["candidates"], other["comparisons"], seen, config)[0, 1:], features[0, 1:])


def test_rollout_never_chooses_a_missing_candidate_and_greedy_is_deterministic():
    config = LookAgentConfig()
    torch.manual_seed(0)
    policy = LookAgentPolicy(config)
    tables = random_tables(64, config)
    out = rollout(policy, tables["candidates"], tables["comparisons"], tables["valid"],
                  generator=torch.Generator().manual_seed(1))
    assert out["actions"].shape == out["log_probs"].shape == (config.max_trials, 64)
    assert out["logits"].shape == (config.max_trials, 64, config.windows)
    assert tables["valid"].gather(1, out["actions"].T).all()
    assert torch.isfinite(out["log_probs"]).all() and (out["entropy"] >= -1e-6).all()
    first = rollout(policy, tables["candidates"], tables["comparisons"], tables["valid"], greedy=True)["actions"]
    again = rollout(policy, tables["candidates"], tables["comparisons"], tables["valid"], greedy=True)["actions"]
    assert torch.equal(first, again)


@pytest.mark.parametrize("kind", ["torch", "torchscript"] + (["onnxruntime"] if onnxruntime_available() else []))
def test_exported_decision_equals_the_policy_decision(kind):
    config = LookAgentConfig()
    torch.manual_seed(2)
    policy = LookAgentPolicy(config)
    tables = random_tables(3, config, seed=4)
    seen = torch.rand(3, config.windows, generator=torch.Generator().manual_seed(5)) < 0.4
    inputs = (tables["candidates"], tables["comparisons"], seen, tables["valid"], torch.randn(3, config.hidden),
              torch.tensor([1, 0, 2]), torch.full((3, 1), 0.5), torch.ones(3, 1))
    with torch.no_grad():
        logits, new_state = policy.decide(*inputs)
    example = [x[:1] for x in inputs]
    names = ["candidates", "comparisons", "seen", "valid", "state", "last_window", "trials_left", "started"]
    decide = ExportedModule(LookDecision(policy), example, names, ["logits", "state_next"], kind, threads=1)
    assert decide.name == kind
    got_logits, got_state = decide(*(x.numpy() for x in inputs))
    np.testing.assert_allclose(got_state, new_state.numpy(), atol=1e-5)
    assert np.array_equal(np.isinf(got_logits), ~tables["valid"].numpy())
    finite = tables["valid"].numpy()
    np.testing.assert_allclose(got_logits[finite], logits.numpy()[finite], atol=1e-4)


# ---------------------------------------------------------------------------------- windows and answers
def test_answer_box_moves_onto_the_best_cell_and_size():
    searcher = LookSearcher(MultiScaleLook(), candidates=2, threads=1)
    reference = np.zeros((200, 300, 3), np.uint8)
    seen = glance(searcher, np.full((20, 40, 3), 128, np.uint8), reference, 2)
    seen.places[0] = (150.0, 100.0, 40.0)
    config = LookAgentConfig(candidates=2)
    maps = np.zeros((3, 5, 5), np.float32)
    maps[1, 2, 2] = 1.0  # the candidate's own size and centre, a sharp peak
    box = answer_box(searcher, seen, 0, maps.ravel(), config)
    assert np.allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], (150.0, 100.0))
    assert math.sqrt((box[2] - box[0]) * (box[3] - box[1])) == pytest.approx(40.0)
    assert (box[2] - box[0]) / (box[3] - box[1]) == pytest.approx(2.0)  # the query's aspect
    maps[:] = 0.0
    maps[2, 2, 3] = 1.0  # one cell right, at the larger size
    box = answer_box(searcher, seen, 0, maps.ravel(), config)
    half_step = math.sqrt(searcher.config.level_step)
    cell = STRIDE * 40.0 * half_step / (CLOSER_ZOOM * searcher.config.side)
    assert (box[0] + box[2]) / 2 == pytest.approx(150.0 + cell)
    assert math.sqrt((box[2] - box[0]) * (box[3] - box[1])) == pytest.approx(40.0 * half_step)


def test_compare_scores_every_window_at_every_size_in_one_call(untrained):
    pair = fixture_pairs(1)[0]
    config = untrained.agent_config
    seen = glance(untrained, prepare_image(pair.template, 3, "rgb", "q"), pair.reference, config.candidates)
    assert 1 <= seen.count <= config.candidates and seen.candidates.shape == (config.candidates, CANDIDATE_FEATURES)
    assert (seen.candidates[:seen.count, 5] == 1).all() and (seen.candidates[seen.count:] == 0).all()
    assert (np.diff(seen.candidates[:seen.count, 0]) <= 0).all()  # best first
    together = compare(untrained, seen, [0, seen.count - 1], config)
    assert together.shape == (2, len(config.size_steps) * COMPARISON_CELLS)
    assert np.allclose(together[1], compare(untrained, seen, [seen.count - 1], config)[0], atol=1e-5)
    assert (np.abs(together) <= 1 + 1e-5).all()  # mean cosine similarities


# ---------------------------------------------------------------------------------- searcher
def test_locate_places_at_most_max_trials_windows_and_answers_with_the_last(untrained):
    pair = fixture_pairs(1)[0]
    result = untrained.locate(pair.template, pair.reference)
    config = untrained.agent_config
    assert result.path.shape == (config.max_trials + 1, 4) and result.scores.shape == (config.max_trials + 1,)
    height, width = pair.reference.shape[:2]
    assert (result.box >= 0).all() and result.box[2] <= width and result.box[3] <= height
    assert np.array_equal(result.path[-1], result.box)
    again = untrained.locate(pair.template, pair.reference)
    assert np.array_equal(again.box, result.box)
    assert [r.box.tolist() for r in untrained.locate_batch([pair.template], [pair.reference])] == [result.box.tolist()]


def test_locate_places_the_windows_the_training_rollout_would(shipped):
    # Training searches tables of every window's comparison; locate compares windows as it places
    # them. On the same pair both must place the same windows and give the same answer.
    config = shipped.agent_config
    for pair in fixture_pairs(4):
        query = prepare_image(pair.template, 3, "rgb", "q")
        seen = glance(shipped, query, pair.reference, config.candidates)
        comparisons = compare(shipped, seen, range(config.candidates), config)
        valid = torch.from_numpy(np.arange(config.candidates) < seen.count)[None]
        with torch.no_grad():
            actions = rollout(shipped.policy, torch.from_numpy(seen.candidates)[None], torch.from_numpy(comparisons)[None],
                              valid, greedy=True)["actions"][:, 0].tolist()
        result = shipped.locate(pair.template, pair.reference)
        expected = np.stack([clip_to_reference(box_at(*seen.places[k], seen.aspect), pair.reference) for k in actions])
        assert np.allclose(result.path[:-1], expected)
        answer = answer_box(shipped, seen, actions[-1], comparisons[actions[-1]], config)
        assert np.allclose(result.box, answer, atol=1e-3)


def test_boxes_are_in_pixels_of_the_reference_as_given(shipped):
    pair = fixture_pairs(1)[0]
    small = shipped.locate(pair.template, pair.reference).box
    big_reference = np.repeat(np.repeat(pair.reference, 2, axis=0), 2, axis=1)
    big = shipped.locate(np.repeat(np.repeat(pair.template, 2, axis=0), 2, axis=1), big_reference).box
    assert iou(big / 2, small) > 0.8


def test_ordinary_photograph_sizes_work(shipped):
    # The sizes: a reference of about 1000 px and a query of a few hundred; the answer
    # comes back in the pixels given.
    import cv2

    pair = fixture_pairs(1, seed=4, appearance=None, reference_appearance=None)[0]
    scale = 1000 / max(pair.reference.shape[:2])
    reference = cv2.resize(pair.reference, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    target = pair.target_box * scale
    x0, y0, x1, y1 = (int(round(v)) for v in target)
    query = reference[y0:y1, x0:x1]
    assert max(reference.shape[:2]) == 1000 and max(query.shape[:2]) >= 100
    result = shipped.locate(query, reference)
    assert iou(result.box, target) > 0.5


def test_bgr_input_gives_the_rgb_answer(shipped):
    pair = fixture_pairs(1, seed=3)[0]
    bgr = LookAgentSearcher.from_pretrained("photo", threads=1, channel_order="bgr")
    rgb_box = shipped.locate(pair.template, pair.reference).box
    assert np.allclose(bgr.locate(pair.template[:, :, ::-1], pair.reference[:, :, ::-1]).box, rgb_box)


def test_shipped_agent_finds_regions_of_photographs_and_an_untrained_one_does_not(shipped, untrained):
    # Regions of the bundled fixture photographs (never seen in training), changed in appearance
    # (the training pairs' changes) or exact copies.
    pairs = fixture_pairs(12) + fixture_pairs(12, seed=2, appearance=None, reference_appearance=None)
    hits = [iou(shipped.locate(p.template, p.reference).box, p.target_box) > 0.5 for p in pairs]
    assert np.mean(hits) >= 0.75
    # an untrained policy on an untrained look: the same windows, chosen and compared at random
    assert np.mean([iou(untrained.locate(p.template, p.reference).box, p.target_box) > 0.5 for p in pairs]) < 0.5


def test_shipped_agent_is_small_and_records_how_it_was_made():
    policy, look, info = load_look_agent_file(look_agent_path("photo"))
    assert look_agent_path("photo").stat().st_size < 300_000
    assert info["command"].startswith("python train/look_agent.py") and info["history"][-1]["success_rate"] > 0.5
    assert set(LOOK_AGENTS) == {"photo"} and policy.config == LookAgentConfig()


def test_template_searcher_points_to_the_photograph_searcher():
    with pytest.raises(ValueError, match=r"PhotoSearcher\.from_pretrained\('photo'\)"):
        TemplateSearcher.from_pretrained("photo")
    with pytest.raises(ValueError, match="no pretrained photograph agent 'logos'; shipped: photo"):
        look_agent_path("logos")


def test_files_round_trip_and_foreign_files_get_clear_errors(tmp_path):
    torch.manual_seed(3)
    policy, look = LookAgentPolicy(LookAgentConfig(candidates=4, max_trials=3)), MultiScaleLook()
    path = save_look_agent_file(tmp_path / "agent.pt", policy, look, {"command": "test"})
    loaded, loaded_look, info = load_look_agent_file(path)
    assert loaded.config == policy.config and info == {"command": "test"}
    for name, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    for name, value in look.state_dict().items():
        assert torch.equal(loaded_look.state_dict()[name], value)
    save_look_file(tmp_path / "look.pt", look)
    with pytest.raises(ValueError, match="not a photograph agent file written by train/look_agent.py"):
        LookAgentSearcher.load(tmp_path / "look.pt")
    with pytest.raises(FileNotFoundError, match="train one with `python train/look_agent.py`"):
        LookAgentSearcher.load(tmp_path / "missing.pt")


def test_bad_input_gets_clear_errors(untrained):
    with pytest.raises(ValueError, match="query"):
        untrained.locate(np.zeros((0, 5, 3), np.uint8), np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ValueError, match="channel_order"):
        LookAgentSearcher(LookAgentPolicy(), MultiScaleLook(), channel_order="bgra")


# ---------------------------------------------------------------------------------- training script
def test_training_script_end_to_end_and_resume(tmp_path):
    script = str(ROOT / "train" / "look_agent.py")
    flags = ["--images", str(PHOTOS), "--train-pairs", "40", "--eval-first", "0", "--eval-pairs", "6",
             "--imitation-steps", "6", "--pg-steps", "6", "--eval-every", "4", "--batch-size", "16"]
    run = subprocess.run([sys.executable, script, *flags, "--out-dir", str(tmp_path / "a")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [h["step"] for h in summary["history"]] == [4, 8, 12] and "--images" in summary["command"]
    assert "searching the test pairs for real" in run.stdout
    assert LookAgentSearcher.load(tmp_path / "a" / "look_agent.pt").agent_config == LookAgentConfig()
    # the tables are kept: a second run with the same data does not recompute them
    tables = (tmp_path / "a" / "tables-train.pt").stat().st_mtime_ns
    resumed = subprocess.run([sys.executable, script, *flags, "--out-dir", str(tmp_path / "a"),
                              "--resume", str(tmp_path / "a" / "last.pt")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "after step 12" in resumed.stdout
    assert (tmp_path / "a" / "tables-train.pt").stat().st_mtime_ns == tables
    wrong = subprocess.run([sys.executable, script, *flags, "--pg-steps", "9", "--out-dir", str(tmp_path / "b"),
                            "--resume", str(tmp_path / "a" / "last.pt")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "pass the same flags as that run" in wrong.stderr


def test_training_script_resumes_a_run_stopped_mid_way(tmp_path):
    script = str(ROOT / "train" / "look_agent.py")
    flags = ["--images", str(PHOTOS), "--train-pairs", "40", "--eval-first", "0", "--eval-pairs", "4",
             "--imitation-steps", "300", "--pg-steps", "300", "--eval-every", "50", "--batch-size", "16"]
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
    done = torch.load(crashed / "last.pt", weights_only=True)["step"]
    assert 50 <= done <= 600 and done % 50 == 0
    again = subprocess.run([sys.executable, script, *flags, "--resume", str(crashed / "last.pt"),
                            "--out-dir", str(crashed)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"after step {done}" in again.stdout
    steps = [h["step"] for h in json.loads((crashed / "summary.json").read_text())["history"]]
    assert steps == list(range(50, 601, 50))


def test_training_script_rejects_bad_flags(tmp_path):
    script = str(ROOT / "train" / "look_agent.py")
    for flags, message in ((["--candidates", "0"], "candidates must be >= 1"),
                           (["--eval-pairs", "0"], "--eval-pairs must be >= 1"),
                           (["--look", str(tmp_path / "none.pt")], "--look"),
                           (["--eval-first", "10", "--eval-pairs", "10", "--dataset-kwargs", '{"test_size": 12}'],
                            "exceeds the dataset's 12 test pairs")):
        run = subprocess.run([sys.executable, script, "--images", str(PHOTOS), *flags, "--out-dir", str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and message in run.stderr, (flags, run.stderr[-2000:])
