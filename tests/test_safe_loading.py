"""Loading a model file never runs code from it (SB3 checkpoints: pickled fields are decoded safely)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from matchenv.agents.pretrained import pretrained_path
from matchenv.agents.safe_checkpoint import UnsafeCheckpointError, safe_custom_objects


class Payload:
    """Pickles to a call of ``os.system``: what an attacker would put in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def poisoned_copy(tmp_path: Path, field: str, marker: Path, name: str = "poisoned.zip") -> Path:
    """A copy of the shipped Cluttered MNIST agent whose ``data`` field ``field`` is the payload."""
    path = tmp_path / name
    with zipfile.ZipFile(pretrained_path("cluttered-mnist")) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "data":
                data = json.loads(content)
                data[field] = {":type:": "<class 'object'>",
                               ":serialized:": base64.b64encode(pickle.dumps(Payload(marker))).decode()}
                content = json.dumps(data).encode()
            dst.writestr(item, content)
    return path


@pytest.mark.parametrize("field", ["ep_success_buffer", "observation_space", "lr_schedule", "policy_class", "new_field"])
def test_no_loader_runs_a_poisoned_checkpoint(tmp_path, field):
    import matchenv
    from matchenv.agents import SearchRecurrentPPO, TemplateSearcher
    from matchenv.agents.baselines import make_matcher

    marker = tmp_path / "pwned"
    path = poisoned_copy(tmp_path, field, marker)
    loaders = [lambda: TemplateSearcher.load(path), lambda: SearchRecurrentPPO.load(path, device="cpu"),
               lambda: make_matcher("qatm", checkpoint=path), lambda: matchenv.load(path)]
    for load in loaders:
        if field in ("ep_success_buffer",):  # rollout state: dropped unread, the model loads
            load()
        else:  # a field the model needs, or one we do not know: refused, naming file and field
            with pytest.raises(UnsafeCheckpointError, match=f"{path.name}.*'{field}'"):
                load()
        assert not marker.exists(), "the checkpoint's payload ran"


def test_train_script_resume_refuses_a_poisoned_checkpoint(tmp_path):
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    path = poisoned_copy(tmp_path, "observation_space", marker)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "train" / "ppo_lstm.py"), "--resume", str(path), "--out-dir",
                           str(tmp_path / "run"), "--ppo-timesteps", "16", "--imitation-steps", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "observation_space" in done.stderr, done.stderr[-2000:]
    assert not marker.exists()


def test_safe_load_gives_the_same_model(tmp_path):
    """Every shipped checkpoint loads through the safe path and matches SB3's own unpickling."""
    from stable_baselines3.common.save_util import load_from_zip_file

    from matchenv.agents import SearchLstmPolicy, SearchRecurrentPPO
    from matchenv.agents.pretrained import PRETRAINED

    for name in PRETRAINED:
        path = pretrained_path(name)
        objects = safe_custom_objects(path)
        data, _, _ = load_from_zip_file(path, device="cpu")  # SB3's own reading (trusted: our files)
        assert objects["observation_space"] == data["observation_space"]
        assert objects["action_space"] == data["action_space"]
        # The shipped files name the class "agents.policy.SearchLstmPolicy" (written before the
        # package moved under matchenv): the safe path reads it as ours.
        assert objects["policy_class"] is SearchLstmPolicy
        assert objects["clip_range"](0.5) == data["clip_range"](0.5)
        model = SearchRecurrentPPO.load(path, device="cpu")
        assert model.observation_space == data["observation_space"]


def test_not_a_checkpoint_is_named(tmp_path):
    from matchenv.agents import SearchRecurrentPPO

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.zip is not a checkpoint"):
        SearchRecurrentPPO.load(junk)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        SearchRecurrentPPO.load(tmp_path)
    shutil.copy(pretrained_path("translated-mnist"), tmp_path / "agent.zip")
    model = SearchRecurrentPPO.load(tmp_path / "agent", device="cpu")  # SB3 accepts the name without .zip
    assert np.isfinite(model.aux_margin)


def test_a_proposer_file_pointing_to_a_poisoned_agent_runs_nothing(tmp_path):
    import torch

    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher
    from matchenv.agents.pretrained import HERE, PROPOSERS

    marker = tmp_path / "pwned"
    agent = poisoned_copy(tmp_path, "observation_space", marker)
    saved = torch.load(HERE / PROPOSERS["cluttered-mnist"].filename, map_location="cpu", weights_only=True)
    saved["fine"] = str(agent)
    proposer = tmp_path / "proposer.pt"
    torch.save(saved, proposer)
    with pytest.raises(UnsafeCheckpointError, match="poisoned.zip"):
        CoarseToFineSearcher.load(proposer)
    assert not marker.exists()


def _pt_loaders():
    import matchenv
    from matchenv.agents.box_refiner import load_refiner_file
    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher
    from matchenv.agents.look_agent import LookAgentSearcher
    from matchenv.agents.multiscale_look import LookSearcher
    from matchenv.agents.photo_search import PhotoSearcher

    return {"LookSearcher.load": LookSearcher.load, "LookAgentSearcher.load": LookAgentSearcher.load,
            "PhotoSearcher.load": PhotoSearcher.load, "CoarseToFineSearcher.load": CoarseToFineSearcher.load,
            "load_refiner_file": load_refiner_file, "matchenv.load": matchenv.load}


@pytest.mark.parametrize("loader", list(_pt_loaders()))
def test_no_pt_loader_runs_a_pickled_payload(tmp_path, loader):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"kind": "photo-search", "state_dict": {}, "config": {}, "info": Payload(marker)}, path)
    with pytest.raises(ValueError, match="model.pt"):
        _pt_loaders()[loader](path)
    assert not marker.exists(), "the file's payload ran"


def test_a_pickle_cannot_change_an_allowed_class():
    import io

    from stable_baselines3.common.utils import ConstantSchedule

    from matchenv.agents.safe_checkpoint import RestrictedUnpickler

    before = ConstantSchedule.__call__
    # BUILD with state (None, {"__call__": LinearSchedule}) applied to the class ConstantSchedule itself
    payload = (b"cstable_baselines3.common.utils\nConstantSchedule\n(N}V__call__\n"
               b"cstable_baselines3.common.utils\nLinearSchedule\nstb.")
    with pytest.raises(pickle.UnpicklingError, match="may not change"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    assert ConstantSchedule.__call__ is before
