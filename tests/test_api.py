"""The public API: ``matchenv.load`` / ``locate`` / ``list_models``, one result type, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import matchenv
from matchenv import Match, Searcher
from matchenv.cli import main as cli_main
from matchenv.models import intra_op_threads

ROOT = Path(__file__).resolve().parents[1]
#: baselines that take seconds to minutes on a photograph pair: checked on a tiny pair below
SLOW = {"bbs", "ddis", "mtm"}


def photo_pair(seed: int = 0, size: tuple[int, int] = (120, 160), query_side: int = 40):
    """A textured RGB reference and a query cut from it at a known place."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    reference = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    reference = cv2.GaussianBlur(reference, (3, 3), 0)
    x, y = (size[1] - query_side) * 3 // 5, (size[0] - query_side) // 2
    query = reference[y : y + query_side, x : x + query_side].copy()
    return query, reference, np.array([x, y, x + query_side, y + query_side], dtype=float)


def test_list_models_names_every_shipped_model_and_baseline():
    from matchenv.agents.baselines import MATCHERS
    from matchenv.agents.pretrained import LOOK_AGENTS, LOOKS, PHOTO_SEARCHERS, PRETRAINED, PROPOSERS

    infos = matchenv.list_models()
    names = [info.name for info in infos]
    assert len(names) == len(set(names)), "two models share a name"
    expected = (set(PHOTO_SEARCHERS) | {f"{k}-look" for k in LOOKS} | {f"{k}-agent" for k in LOOK_AGENTS}
                | set(PRETRAINED) | {f"{k}-large" for k in PROPOSERS} | set(MATCHERS))
    assert set(names) == expected
    for info in infos:
        assert info.description and info.score
        if info.kind == "baseline":
            assert info.file is None
        else:  # a shipped file, and the command that made it
            assert (ROOT / "agents" / "pretrained" / info.file).is_file() and info.command
    assert [i.name for i in matchenv.list_models("baseline")] == list(MATCHERS)
    by_name = {info.name: info for info in infos}
    assert by_name["flickrlogos27"].defaults == {"refiner": PRETRAINED["flickrlogos27"].refiner}
    assert by_name["mixed-mnist-large"].defaults["candidates"] == PROPOSERS["mixed-mnist"].candidates
    assert "found_threshold" in by_name["photo"].defaults
    with pytest.raises(ValueError, match="unknown kind"):
        matchenv.list_models("nonsense")


@pytest.mark.parametrize("name", [info.name for info in matchenv.list_models()])
def test_every_model_loads_and_answers_with_one_result_type(name):
    """The registry test: every name loads, and its result has the same type and fields."""
    searcher = matchenv.load(name)
    assert isinstance(searcher, Searcher) and searcher.name == name
    if searcher.kind in ("agent", "coarse-to-fine") and "mnist" in name:
        rng = np.random.default_rng(1)  # a grayscale digit-sized query on a larger canvas
        reference = rng.integers(0, 256, (100, 100), dtype=np.uint8)
        query = reference[30:58, 40:68].copy()
        if name.endswith("-large"):
            reference = np.pad(reference, ((0, 200), (0, 200)))
    else:
        query, reference, _ = photo_pair(size=(48, 64) if name in SLOW else (120, 160),
                                         query_side=12 if name in SLOW else 40)
    match = searcher.locate(query, reference)
    assert type(match) is Match
    assert match.box.shape == (4,) and match.box.dtype == np.float64
    height, width = reference.shape[:2]
    x0, y0, x1, y1 = match.box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    np.testing.assert_allclose(match.xywh, [x0, y0, x1 - x0, y1 - y0])
    assert isinstance(match.score, float) and np.isfinite(match.score)
    assert match.found is None or isinstance(match.found, bool)
    assert isinstance(match.evaluated, int) and match.evaluated >= (0 if name == "centre-box" else 1)
    assert match.path is None or (match.path.ndim == 2 and match.path.shape[1] == 4)
    assert match.model == name
    json.dumps(match.to_dict())  # JSON-ready


def test_photo_finds_the_crop_and_bgr_gives_the_same_answer():
    query, reference, truth = photo_pair()
    rgb = matchenv.locate(query, reference, model="photo")
    bgr = matchenv.load("photo", channel_order="bgr").locate(query[..., ::-1].copy(), reference[..., ::-1].copy())
    from matchenv.geometry import iou

    assert iou(rgb.box, truth) > 0.8, rgb.box
    np.testing.assert_allclose(bgr.box, rgb.box)
    assert rgb.found is True  # a photograph searcher has a found decision
    # a baseline is given RGB by the Searcher too: the same answer either way
    ncc_rgb = matchenv.load("ncc").locate(query, reference)
    ncc_bgr = matchenv.load("ncc", channel_order="bgr").locate(query[..., ::-1].copy(), reference[..., ::-1].copy())
    np.testing.assert_allclose(ncc_rgb.box, ncc_bgr.box)


def test_locate_batch_matches_locate():
    searcher = matchenv.load("ncc")
    pairs = [photo_pair(seed) for seed in range(3)]
    batch = searcher.locate_batch([q for q, _, _ in pairs], [r for _, r, _ in pairs])
    for (q, r, _), match in zip(pairs, batch):
        np.testing.assert_allclose(searcher.locate(q, r).box, match.box)
    with pytest.raises(ValueError, match="one reference per query"):
        searcher.locate_batch([pairs[0][0]], [])


def test_searcher_uses_one_thread_by_default_and_restores_the_process_setting():
    seen = []

    class Probe:
        channel_order = "rgb"

        def locate(self, query, reference):
            seen.append((torch.get_num_threads(), cv2.getNumThreads()))
            return matchenv.match.Match(box=np.array([0.0, 0.0, 1.0, 1.0]), score=0.0, found=None, evaluated=1)

    before = (torch.get_num_threads(), cv2.getNumThreads())
    query, reference, _ = photo_pair()
    Searcher(Probe(), "probe", "baseline").locate(query, reference)
    Searcher(Probe(), "probe", "baseline", threads=None).locate(query, reference)
    assert seen[0] == (1, 1) and seen[1] == before
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
    with intra_op_threads(2):
        assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads"):
        Searcher(Probe(), "probe", "baseline", threads=0)


def test_load_errors_name_what_was_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'.*photo"):
        matchenv.load("nope")
    with pytest.raises(FileNotFoundError, match="no model file"):
        matchenv.load(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        matchenv.load(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        matchenv.load(junk)
    with pytest.raises(ValueError, match="channel_order"):
        matchenv.load("ncc", channel_order="rbg")


def test_load_takes_a_model_file(tmp_path):
    from matchenv.agents.pretrained import photo_search_path

    searcher = matchenv.load(photo_search_path("photo"), windows=2)
    assert searcher.kind == "photo-search" and searcher.model.windows == 2
    query, reference, _ = photo_pair()
    assert searcher.locate(query, reference).evaluated > 0


def test_cli_locate_prints_json_and_draws(tmp_path, capsys):
    query, reference, truth = photo_pair()
    q, r, out = tmp_path / "q.png", tmp_path / "r.png", tmp_path / "drawn.png"
    cv2.imwrite(str(q), query[..., ::-1])  # files hold BGR
    cv2.imwrite(str(r), reference[..., ::-1])
    assert cli_main(["locate", str(q), str(r), "--json", "--draw", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"box", "xywh", "score", "found", "evaluated", "ms"}
    np.testing.assert_allclose(result["box"], matchenv.locate(query, reference).box)
    drawn = cv2.imread(str(out))
    assert drawn.shape == reference.shape and not np.array_equal(drawn, reference[..., ::-1])
    assert cli_main(["locate", str(q), str(r), "--model", "ncc"]) == 0
    assert "box (x0, y0, x1, y1)" in capsys.readouterr().out


def test_cli_errors_and_exit_codes(tmp_path, capsys):
    assert cli_main(["locate", str(tmp_path / "q.png"), str(tmp_path / "r.png")]) == 1
    assert "no query image" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert cli_main(["locate", str(bad), str(bad)]) == 1
    assert "could not read the query" in capsys.readouterr().err
    query, reference, _ = photo_pair()
    q, r = tmp_path / "q.png", tmp_path / "r.png"
    cv2.imwrite(str(q), query)
    cv2.imwrite(str(r), reference)
    assert cli_main(["locate", str(q), str(r), "--model", "nope"]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert cli_main(["locate", str(r), str(q)]) == 1  # query larger than the reference
    assert "larger" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli_main(["locate"])
    assert usage.value.code == 2
    assert cli_main(["models"]) == 0
    listing = capsys.readouterr().out
    assert all(info.name in listing for info in matchenv.list_models())


def test_cli_front_doors_pass_arguments_to_the_scripts(capsys):
    assert cli_main(["benchmark", "--help"]) == 0  # the script's own --help
    assert "--methods" in capsys.readouterr().out
    assert cli_main(["train", "--help"]) == 0
    assert "--env-id" in capsys.readouterr().out


def test_console_script_is_installed():
    """``pip install`` puts a ``matchenv`` command next to the interpreter."""
    command = Path(sys.executable).with_name("matchenv")
    assert command.is_file(), "reinstall the package (pip install -e .) to get the console script"
    done = subprocess.run([str(command), "models", "--kind", "photo-search"], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"MATCHENV_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout.startswith("photo "), done.stderr


def test_front_door_prints_the_scripts_error_message(tmp_path, capsys):
    assert cli_main(["train", "--resume", str(tmp_path / "missing.zip")]) == 2  # argparse's error
    assert "no such checkpoint file" in capsys.readouterr().err
    (tmp_path / "args.json").write_text("{}")  # a folder that holds a run
    assert cli_main(["train", "--out-dir", str(tmp_path)]) == 1  # the script's sys.exit("error: ...")
    assert "holds an earlier run" in capsys.readouterr().err
    assert sys.argv[0] != str(ROOT / "train" / "ppo_lstm.py")  # restored
    with pytest.raises(ValueError, match="threads"):
        matchenv.load("ncc", threads=0)


@pytest.mark.parametrize("agents_first", [True, False])
def test_matchenv_coexists_with_another_distribution_installing_a_top_level_agents(tmp_path, agents_first):
    """Other distributions install a top-level ``agents`` (the OpenAI Agents SDK does): ours is
    ``matchenv.agents``, so both import, whichever comes first, and a shipped agent (whose SB3
    checkpoint names its classes ``agents.policy...``, as written before the move) still loads."""
    site = tmp_path / "site"
    (site / "agents").mkdir(parents=True)
    (site / "agents" / "__init__.py").write_text("MARK = 'another distribution'\n")
    code = f"""
import importlib, pkgutil, numpy as np
if {agents_first}:
    import agents
import matchenv, matchenv.agents
searcher = matchenv.load("translated-mnist")
reference = np.zeros((60, 60), np.uint8); reference[20:48, 10:38] = 255
match = searcher.locate(reference[20:48, 10:38].copy(), reference)
for module in pkgutil.walk_packages(matchenv.agents.__path__, "matchenv.agents."):
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as err:  # an optional extra not installed (rllib_agent needs ray)
        assert err.name.split(".")[0] in ("ray",), err
import agents
assert agents.MARK == "another distribution", agents.__file__
assert matchenv.agents is not agents and type(match).__name__ == "Match"
print("both")
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("both")
