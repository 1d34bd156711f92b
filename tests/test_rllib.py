"""The search agent in Ray RLlib (matchenv/agents/rllib_agent.py, train/rllib_ppo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib", reason='needs the rllib extra: pip install -e ".[rllib]"')

import matchenv  # noqa: E402  (registers the environments)
from matchenv.agents.rllib_agent import (  # noqa: E402
    MATCH_LABEL,
    MatchLabels,
    SearchAgentModule,
    export_checkpoint,
    initial_weights,
)
from matchenv.agents.policy import match_label  # noqa: E402
from matchenv.agents.searcher import TemplateSearcher  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "rllib_ppo.py"
ENV_ID = "TemplateSearch-TranslatedMNIST-v0"

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def module_for(env: gym.Env, policy_kwargs: dict, seed: int = 0) -> SearchAgentModule:
    torch.manual_seed(seed)
    module = SearchAgentModule(observation_space=env.observation_space, action_space=env.action_space,
                               model_config={"policy_kwargs": policy_kwargs, "max_seq_len": 7})
    with torch.no_grad():  # SB3 starts the action head near 0: make every part matter
        for param in module.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return module.eval()


def as_batch(observations: list[dict]) -> dict[str, torch.Tensor]:
    """``T`` observations of one episode as a ``(1, T, ...)`` batch."""
    return {key: torch.from_numpy(np.stack([o[key] for o in observations]))[None] for key in observations[0]}


def greedy_episode(module: SearchAgentModule, env: gym.Env, pair_index: int) -> tuple[np.ndarray, list[dict], list]:
    """The module's mean actions, played step by step as an RLlib env runner would (T = 1, the
    state carried): the windows placed, the observations and the means."""
    obs, _ = env.reset(options={"pair_index": pair_index})
    state = {k: torch.from_numpy(v)[None] for k, v in module.get_initial_state().items()}
    boxes, observations, means = [], [obs], []
    for _ in range(env.unwrapped.max_trials):
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: as_batch([obs]), Columns.STATE_IN: state})
        mean = out[Columns.ACTION_DIST_INPUTS][0, 0, :2].numpy()
        state = out[Columns.STATE_OUT]
        obs, _, _, _, info = env.step(np.clip(mean, -1.0, 1.0))
        boxes.append(info["window_box"])
        observations.append(obs)
        means.append(mean)
    return np.stack(boxes), observations, means


@pytest.mark.parametrize("case", ["plain", "pointer"])
def test_the_module_computes_what_the_sb3_policy_computes(case):
    """The RLModule runs the SB3 policy's own modules: the same means step by step (env runners)
    and, over a whole episode as one sequence (the learner), the same values."""
    env_id, env_kwargs, policy_kwargs = {
        "plain": (ENV_ID, {}, {"lstm_hidden_size": 32}),
        "pointer": ("TemplateSearch-MixedMNIST-v0", {"overview_size": 48},
                    {"lstm_hidden_size": 32, "pointer": True, "pointer_window_fraction": 0.28}),
    }[case]
    env = gym.make(env_id, split="test", **env_kwargs)
    module = module_for(env, policy_kwargs)
    policy = module.policy
    _, observations, means = greedy_episode(module, env, 0)
    sb3_state = None
    for t, obs in enumerate(observations[:-1]):
        obs_t, _ = policy.obs_to_tensor({k: v[None] for k, v in obs.items()})
        with torch.no_grad():
            expected, sb3_state = policy.actor_step(policy.extract_features(obs_t), sb3_state)
        np.testing.assert_allclose(means[t], expected[0].numpy(), rtol=1e-5, atol=1e-5)
    # the whole episode as one sequence, as the learner sees it
    state = {k: torch.from_numpy(v)[None] for k, v in module.get_initial_state().items()}
    with torch.no_grad():
        out = module.forward_train({Columns.OBS: as_batch(observations[:-1]), Columns.STATE_IN: state})
        obs_t, _ = policy.obs_to_tensor({k: np.stack([o[k] for o in observations[:-1]]) for k in observations[0]})
        starts = torch.zeros(len(observations) - 1)
        starts[0] = 1.0
        zeros = torch.zeros(1, 1, 32)
        values = policy.predict_values(obs_t, (zeros, zeros), starts)
        # the advantage step's own call, without the train pass's values
        computed = module.compute_values({Columns.OBS: as_batch(observations[:-1]), Columns.STATE_IN: state})
    np.testing.assert_allclose(out[Columns.EMBEDDINGS][0].numpy(), values[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(computed[0].numpy(), values[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[Columns.ACTION_DIST_INPUTS][0, :, :2].numpy(), np.stack(means), rtol=1e-5, atol=1e-5)


def test_match_labels_go_to_the_loss_and_never_to_the_module():
    """Labels come from the episodes' infos into their own train-batch column; the observations
    the module reads keep exactly the env's keys (no label among them)."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=0)
    episode = SingleAgentEpisode(observations=[obs], infos=[info], observation_space=env.observation_space,
                                 action_space=env.action_space)
    rng = np.random.default_rng(0)
    ious = [info["iou"]]
    for _ in range(6):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        episode.add_env_step(obs, action, reward, infos=info, terminated=terminated, truncated=truncated)
        ious.append(info["iou"])
    batch = MatchLabels(env.observation_space, env.action_space)(rl_module=None, batch={}, episodes=[episode])
    labels = np.concatenate([np.asarray(v).ravel() for v in batch[MATCH_LABEL].values()])
    # labels for the 6 observations that precede an action: the reset view has none
    assert labels.tolist() == [-1.0] + [float(iou > 0.5) for iou in ious[1:6]]
    assert set(batch) == {MATCH_LABEL}  # the connector adds no observation
    assert match_label({"iou": 0.9, "trial": 0}, 0.5) == -1.0 and match_label({"iou": 0.9, "trial": 2}, 0.5) == 1.0
    assert match_label({}, 0.5) == -1.0


def test_warm_start_and_export_round_trip(tmp_path):
    """A shipped agent's weights into the module and back out as a checkpoint: the searchers load
    it and place the windows the module's greedy actions place, which are the shipped agent's."""
    warm = initial_weights("pretrained:cluttered-mnist")
    env = gym.make("TemplateSearch-ClutteredMNIST-v0", split="test", **warm.env_kwargs)
    assert env.observation_space == warm.observation_space and env.action_space == warm.action_space
    module = module_for(env, warm.policy_kwargs)
    module.policy.load_state_dict(warm.state_dict)
    path = export_checkpoint(module.policy, warm.policy_kwargs, warm.aux_margin, "TemplateSearch-ClutteredMNIST-v0",
                             warm.env_kwargs, tmp_path / "export.zip")
    exported = TemplateSearcher.load(path)
    shipped = TemplateSearcher.from_pretrained("cluttered-mnist", refine=False)
    assert matchenv.load(str(path)).kind == "agent"
    for index in range(8):
        boxes, _, _ = greedy_episode(module, env, index)
        pair = env.unwrapped.dataset.test_pair(index)
        ours = exported.locate(pair.query, pair.reference)
        np.testing.assert_array_equal(ours.path, boxes)
        np.testing.assert_array_equal(ours.path, shipped.locate(pair.query, pair.reference).path)


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


TINY = ["--timesteps", "500", "--train-batch-size", "252", "--minibatch-size", "126", "--num-epochs", "1",
        "--num-envs-per-env-runner", "4", "--lstm-hidden-size", "32", "--eval-pairs", "20", "--eval-every", "10000",
        "--checkpoint-every", "10000", "--num-cpus", "2"]


def test_training_checkpoint_resume_and_export(tmp_path):
    """A few hundred steps, a resume that continues the counters, and export.zip that the searchers
    load and that places the windows the RLlib checkpoint's module places; the folder is then
    refused to another run."""
    out = tmp_path / "run"
    first = run_script(*TINY, "--out-dir", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("checkpoint", "export.zip", "best.zip", "state.json", "summary.json", "args.json"):
        assert (out / name).exists(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (out / "tb" / "progress.jsonl").read_text().splitlines()]
    assert rows and "match_loss" in rows[-1] and rows[-1]["timesteps"] >= 500
    refused = run_script(*TINY, "--out-dir", str(out))
    assert refused.returncode != 0 and "holds an earlier run" in refused.stderr

    resumed = run_script(*TINY, "--out-dir", str(out), "--resume", str(out / "checkpoint"), "--timesteps", "1000")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timesteps"] >= 1000
    assert len([json.loads(line) for line in (out / "tb" / "progress.jsonl").read_text().splitlines()]) > len(rows)

    # the RLlib checkpoint's module and the exported checkpoint search alike
    from ray.rllib.core.rl_module.rl_module import RLModule

    module = RLModule.from_checkpoint(out / "checkpoint" / "learner_group" / "learner" / "rl_module" / "default_policy").eval()
    searcher = TemplateSearcher.load(out / "export.zip")
    env = gym.make(ENV_ID, split="test")
    for index in range(4):
        boxes, _, _ = greedy_episode(module, env, index)
        pair = env.unwrapped.dataset.test_pair(index)
        np.testing.assert_array_equal(searcher.locate(pair.query, pair.reference).path, boxes)


@pytest.mark.parametrize("flags, message", [
    (["--resume", "nowhere/checkpoint"], "not an RLlib checkpoint folder"),
    (["--init", "nowhere.zip"], "no such checkpoint"),
    (["--env-id", "TemplateSearch-Nothing-v0"], "unknown --env-id"),
    (["--minibatch-size", "4096"], "is larger than --train-batch-size"),
    (["--cnn-channels", "8,16"], "five positive integers"),
    (["--reward-mode", "shaped"], "invalid choice"),
    (["--init", "pretrained:flickrlogos27"], "pass the --env-id (and --overview-size) it was trained on"),
    (["--init", "pretrained:no-such-agent"], "--init pretrained:no-such-agent"),
])
def test_bad_command_lines_exit_with_a_message_before_starting_ray(tmp_path, flags, message):
    run = run_script(*flags, "--out-dir", str(tmp_path / "run"), timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing written


def test_sigterm_saves_a_checkpoint_to_resume_from(tmp_path):
    """A scheduler's SIGTERM (Ray installs its own handler, which would end the process at once)
    saves the checkpoint like Ctrl-C does, then exits 143."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--timesteps", "100000", "--out-dir", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    progress = out / "tb" / "progress.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (progress.exists() and progress.read_text().strip()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "continue with --resume" in stdout
    assert (out / "checkpoint" / "rllib_checkpoint.json").is_file()
    assert json.loads((out / "state.json").read_text())["timesteps"] > 0
