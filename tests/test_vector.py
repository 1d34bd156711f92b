"""TemplateSearchVecEnv must be indistinguishable from DummyVecEnv over TemplateSearchEnv."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import matchenv  # noqa: F401  (registers the ids)
from matchenv.envs import TemplateSearchEnv
from matchenv.vector import TemplateSearchVecEnv, env_kwargs_for, make_vec_env

SCALE_JITTER = {"dataset_kwargs": {"scale_range": (0.7, 1.5)}}


def assert_same(a, b, path="") -> None:
    """Exact equality of nested dicts/lists/arrays/scalars, including dtypes, shapes and dict key order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: {type(b).__name__} is not an array"
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def make_pair_of_venvs(env_id: str, num_envs: int, seed: int, **kwargs):
    kwargs_ref = env_kwargs_for(env_id, **kwargs)
    reference = DummyVecEnv([lambda: TemplateSearchEnv(**kwargs_ref)] * num_envs)
    batched = TemplateSearchVecEnv(num_envs, env_id, **kwargs)
    reference.seed(seed)
    batched.seed(seed)
    return reference, batched


def random_actions(space: gym.Space, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n, size=num_envs)
    # a little outside the box too: both must clip the same way
    return rng.uniform(-1.2, 1.2, size=(num_envs, *space.shape)).astype(np.float32)


def run_both(reference, batched, steps: int, rng: np.random.Generator) -> int:
    assert_same(reference.reset(), batched.reset(), "reset")
    assert_same(reference.reset_infos, batched.reset_infos, "reset_infos")
    episodes = 0
    for t in range(steps):
        actions = random_actions(batched.action_space, batched.num_envs, rng)
        expected, got = reference.step(actions), batched.step(actions)
        assert_same(expected, got, f"step {t}")
        assert_same(reference.reset_infos, batched.reset_infos, f"reset_infos after step {t}")
        episodes += int(got[2].sum())
    return episodes


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("TemplateSearch-TranslatedMNIST-v0", {}),
        ("TemplateSearch-ClutteredMNIST-v0", {}),
        ("TemplateSearch-MixedMNIST-v0", {}),
        ("TemplateSearch-v0", SCALE_JITTER),
        ("TemplateSearch-v0", {**SCALE_JITTER, "action_type": "relative", "reward_mode": "dense"}),
        ("TemplateSearch-TranslatedMNIST-v0", {"action_type": "relative", "max_trials": 4, "iou_threshold": 0.3}),
        ("TemplateSearch-TranslatedMNIST-v0", {**SCALE_JITTER, "action_type": "discrete"}),
        ("TemplateSearch-TranslatedMNIST-v0", {"query_size": (20, 24)}),  # crops are resized
        ("TemplateSearch-TranslatedMNIST-v0", {"obs_mode": "features", "encoder": "pixels"}),
        ("TemplateSearch-TranslatedMNIST-v0", {"privileged_info": True, "split": "test"}),
    ],
)
def test_matches_dummy_vec_env(env_id, kwargs):
    num_envs = 3
    reference, batched = make_pair_of_venvs(env_id, num_envs, seed=7, **kwargs)
    episodes = run_both(reference, batched, steps=19, rng=np.random.default_rng(0))
    assert episodes >= 3 * num_envs  # several episodes each, through autoreset
    for i in range(num_envs):  # the envs inside were kept in step too
        assert_same(reference.envs[i].window_boxes, batched.envs[i].window_boxes, f"window_boxes {i}")
        assert reference.envs[i]._trial == batched.envs[i]._trial


def test_delegated_calls_keep_the_batch_in_sync():
    reference, batched = make_pair_of_venvs("TemplateSearch-ClutteredMNIST-v0", 3, seed=1, reward_mode="dense")
    rng = np.random.default_rng(1)
    run_both(reference, batched, steps=2, rng=rng)
    for venv in (reference, batched):
        venv.env_method("reset", indices=[1], seed=5)  # env 1 restarts mid-episode: no longer in lockstep
        venv.set_attr("iou_threshold", 0.05, indices=[0, 2])
        venv.set_attr("max_trials", 3, indices=2)
    assert batched.get_attr("iou_threshold") == [0.05, 0.5, 0.05]
    for t in range(14):
        actions = random_actions(batched.action_space, 3, rng)
        assert_same(reference.step(actions), batched.step(actions), f"step {t}")
    assert_same(reference.env_method("privileged_info"), batched.env_method("privileged_info"))
    assert_same(reference.get_attr("window_boxes"), batched.get_attr("window_boxes"))


def test_seed_options_and_errors():
    venv = TemplateSearchVecEnv(2, "TemplateSearch-TranslatedMNIST-v0", seed=10, split="test")
    obs = venv.reset()
    for i in range(2):  # env i is seeded with seed + i, like DummyVecEnv after venv.seed(seed)
        single, _ = TemplateSearchEnv(dataset="TranslatedMNIST", split="test").reset(seed=10 + i)
        assert_same({key: obs[key][i] for key in obs}, {key: single[key] for key in obs})
    venv.set_options([{"pair_index": 3}, {"pair_index": 4}])
    venv.reset()
    assert [p.meta["test_index"] for p in venv.get_attr("pair")] == [3, 4]

    with pytest.raises(ValueError, match="NaN or inf"):
        venv.step(np.array([[0.0, 0.0], [np.nan, 0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        TemplateSearchVecEnv(2, "TemplateSearch-TranslatedMNIST-v0").step(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="not a TemplateSearch"):
        TemplateSearchVecEnv(2, "CartPole-v1")
    assert venv.env_is_wrapped(Monitor) == [False, False]


def test_render_rgb_array():
    venv = TemplateSearchVecEnv(2, "TemplateSearch-TranslatedMNIST-v0", seed=0, render_mode="rgb_array")
    venv.reset()
    venv.step(np.zeros((2, 2), dtype=np.float32))
    frame = venv.render()
    assert frame is not None and frame.ndim == 3 and frame.shape[2] == 3


def test_make_vec_env_batched_and_reference_agree():
    batched = make_vec_env("TemplateSearch-TranslatedMNIST-v0", num_envs=2, seed=3)
    reference = make_vec_env("TemplateSearch-TranslatedMNIST-v0", num_envs=2, seed=3, batched=False)
    assert isinstance(batched, VecMonitor) and isinstance(batched.unwrapped, TemplateSearchVecEnv)
    assert isinstance(reference, DummyVecEnv) and reference.env_is_wrapped(Monitor) == [True, True]
    assert_same(reference.reset(), batched.reset())
    actions = np.zeros((2, 2), dtype=np.float32)
    for _ in range(6):
        obs_r, rew_r, done_r, infos_r = reference.step(actions)
        obs_b, rew_b, done_b, infos_b = batched.step(actions)
        assert_same((obs_r, rew_r, done_r), (obs_b, rew_b, done_b))
    assert done_b.all()
    for info_r, info_b in zip(infos_r, infos_b):
        assert info_b["episode"]["r"] == info_r["episode"]["r"]
        assert info_b["episode"]["l"] == info_r["episode"]["l"] == 6


def test_make_vec_env_in_subprocesses_gives_the_same_episodes():
    batched = make_vec_env("TemplateSearch-TranslatedMNIST-v0", num_envs=2, seed=3)
    subproc = make_vec_env("TemplateSearch-TranslatedMNIST-v0", num_envs=2, seed=3, kind="subproc")
    try:
        assert type(subproc.unwrapped).__name__ == "SubprocVecEnv"
        assert_same(subproc.reset(), batched.reset())
        actions = np.random.default_rng(0).uniform(-1, 1, (7, 2, 2)).astype(np.float32)
        for step_actions in actions:  # across an episode end (6 trials) and its reset
            obs_s, rew_s, done_s, infos_s = subproc.step(step_actions)
            obs_b, rew_b, done_b, infos_b = batched.step(step_actions)
            assert_same((obs_s, rew_s.astype(np.float32), done_s), (obs_b, rew_b, done_b))  # (SB3 stacks rewards as float64)
            assert [i["iou"] for i in infos_s] == [i["iou"] for i in infos_b]
    finally:
        subproc.close()
    with pytest.raises(ValueError, match="kind must be one of"):
        make_vec_env("TemplateSearch-TranslatedMNIST-v0", kind="threads")


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one thread is faster and immune to oversubscription on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_recurrent_ppo_trains_on_it(one_torch_thread):
    from sb3_contrib import RecurrentPPO

    from matchenv.agents import SearchFeaturesExtractor

    venv = make_vec_env("TemplateSearch-TranslatedMNIST-v0", num_envs=4, seed=0)
    model = RecurrentPPO(
        "MultiInputLstmPolicy",
        venv,
        n_steps=16,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"features_extractor_class": SearchFeaturesExtractor, "lstm_hidden_size": 32},
        seed=0,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.learn(total_timesteps=128)
    assert model.num_timesteps == 128
    assert len(model.ep_info_buffer) > 0  # episodes were recorded through VecMonitor
