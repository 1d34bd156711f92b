"""Environment tests for every registered id (the Farama Minigrid / HighwayEnv style).

Warnings are errors in this module: anything the env, gymnasium or SB3 warns about fails a
test, except the few filtered explicitly below, each with the reason it is expected.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import matchenv
from matchenv.datasets import PairListDataset, SearchPair
from matchenv.geometry import iou, xyxy_to_cxcywh

pytestmark = pytest.mark.filterwarnings("error")

ENV_IDS = sorted(matchenv.ENV_IDS)
REPO_ROOT = Path(__file__).resolve().parents[1]
OBS_KEYS = {"query", "window", "location", "trials_left"}

# SB3's check_env warns that images smaller than 36x36 do not fit its default CnnPolicy
# (NatureCNN). Expected: our observations are 28x28 MNIST crops, and we ship
# matchenv.agents.SearchFeaturesExtractor for exactly this reason (see tests/test_algorithms.py).
SB3_SMALL_IMAGE_WARNING = r"The minimal resolution for an image is 36x36 for the default `CnnPolicy`"
# gymnasium's check_env warns about Box(-inf, inf) observation bounds. Expected in
# obs_mode="features" only: the env cannot know the output range of an arbitrary frozen
# encoder (a torch module), so the feature vectors are declared unbounded.
GYM_UNBOUNDED_BOX_WARNING = r".*A Box observation space (minimum value is -infinity|maximum value is infinity)"


@pytest.fixture(params=ENV_IDS)
def env_id(request) -> str:
    return request.param


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, **kwargs)


def assert_same(a, b, path: str = "") -> None:
    """Bit-identical nested dicts / lists / arrays / scalars."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a!r} != {b!r}"
        assert np.array_equal(a, b), f"{path}: arrays differ"
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def action_to(env: gym.Env, box) -> np.ndarray:
    """The absolute action that puts a nominal-size window with left/top edge at ``box[:2]``.

    The absolute action maps -1..1 onto the positions where the window fits:
    ``a = 2 * x0 / (W - w) - 1`` for the left edge ``x0`` (and the same for y).
    """
    u = env.unwrapped
    img_h, img_w = u.pair.reference.shape[:2]
    win_h, win_w = u.window_size
    x0, y0 = float(box[0]), float(box[1])
    return np.array([2 * x0 / (img_w - win_w) - 1, 2 * y0 / (img_h - win_h) - 1], dtype=np.float32)


def target_action(env: gym.Env) -> np.ndarray:
    return action_to(env, env.unwrapped.privileged_info()["target_box"])


def far_action(env: gym.Env) -> np.ndarray:
    """The corner of the reference farthest from the target."""
    u = env.unwrapped
    img_h, img_w = u.pair.reference.shape[:2]
    tb = u.privileged_info()["target_box"]
    cx, cy = (tb[0] + tb[2]) / 2, (tb[1] + tb[3]) / 2
    return np.array([1.0 if cx < img_w / 2 else -1.0, 1.0 if cy < img_h / 2 else -1.0], dtype=np.float32)


def random_actions(env: gym.Env, n: int, seed: int = 0) -> list:
    space = env.action_space
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def run_episode(env: gym.Env, actions) -> list[tuple]:
    return [env.step(a) for a in actions]


def box_inside(box, img_w: int, img_h: int) -> bool:
    return 0 <= box[0] < box[2] <= img_w and 0 <= box[1] < box[3] <= img_h


# ============================================================================ checkers


def test_gymnasium_check_env_passes(env_id):
    env = make(env_id)
    gym_check_env(env.unwrapped)  # also builds one env per declared render mode via env.spec


def test_sb3_check_env_passes(env_id):
    env = make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=SB3_SMALL_IMAGE_WARNING, category=UserWarning)
        sb3_check_env(env.unwrapped, warn=True)


# ============================================================================ determinism


@pytest.mark.parametrize("seed", [0, 123])
def test_same_seed_and_actions_give_identical_episodes(env_id, seed):
    env_a, env_b = make(env_id), make(env_id)
    actions = random_actions(env_a, 6, seed=seed)
    for reset_seed in (seed, None):  # the second episode continues from the seeded np_random
        obs_a, info_a = env_a.reset(seed=reset_seed)
        obs_b, info_b = env_b.reset(seed=reset_seed)
        assert_same(obs_a, obs_b)
        assert_same(info_a, info_b)
        assert_same(run_episode(env_a, actions), run_episode(env_b, actions))


def test_different_seeds_give_different_references(env_id):
    env_a, env_b = make(env_id), make(env_id)
    obs_a, _ = env_a.reset(seed=0)
    obs_b, _ = env_b.reset(seed=1)
    assert not np.array_equal(env_a.unwrapped.pair.reference, env_b.unwrapped.pair.reference)
    assert not np.array_equal(obs_a["window"], obs_b["window"])


# ============================================================================ registration


def test_gym_make_after_import_builds_a_template_search_env(env_id):
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, matchenv.TemplateSearchEnv)
    assert env.unwrapped.dataset.name == matchenv.ENV_IDS[env_id]["dataset"]
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_gym_make_with_module_prefix_works_in_a_fresh_interpreter(env_id):
    # A fresh python (like a "spawn" worker) that has not imported matchenv: the "matchenv:"
    # prefix must import it and register the ids.
    code = (
        "import sys\n"
        "import gymnasium as gym\n"
        "assert 'matchenv' not in sys.modules, 'matchenv was imported before gym.make'\n"
        f"env = gym.make('matchenv:{env_id}')\n"
        "obs, info = env.reset(seed=0)\n"
        "obs, reward, terminated, truncated, info = env.step(env.action_space.sample())\n"
        "assert env.observation_space.contains(obs)\n"
        "print('OK', type(env.unwrapped).__module__, env.unwrapped.dataset.name)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = f"OK matchenv.envs.template_search {matchenv.ENV_IDS[env_id]['dataset']}"
    assert expected in result.stdout


# ============================================================================ pickling


def test_pickled_env_continues_identically_mid_episode(env_id):
    env = make(env_id)
    env.reset(seed=7)
    actions = random_actions(env, 6, seed=7)
    run_episode(env, actions[:2])
    clone = pickle.loads(pickle.dumps(env))
    assert_same(run_episode(clone, actions[2:]), run_episode(env, actions[2:]))
    assert_same(clone.reset(), env.reset())  # the np_random state travelled too


def test_pickle_of_a_reset_env_is_small(env_id):
    env = make(env_id)
    env.reset(seed=0)  # loads the MNIST digits: they must not be pickled
    size = len(pickle.dumps(env))
    assert size < 1_000_000, f"pickled env is {size} bytes"


# ============================================================================ rendering


def test_rgb_array_render_returns_a_frame_that_changes_after_a_step(env_id):
    env = make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    before = env.render()
    assert isinstance(before, np.ndarray) and before.dtype == np.uint8
    assert before.ndim == 3 and before.shape[2] == 3
    env.step(far_action(env))
    after = env.render()
    assert after.shape == before.shape and after.dtype == np.uint8
    assert not np.array_equal(before, after)


def test_human_render_runs_with_the_dummy_video_driver(env_id):
    pytest.importorskip("pygame")
    assert os.environ.get("SDL_VIDEODRIVER") == "dummy"
    env = make(env_id, render_mode="human")
    try:
        env.reset(seed=0)
        env.step(env.action_space.sample())
        assert env.render() is None
        assert env.unwrapped._viewer is not None and env.unwrapped._viewer.is_open
    finally:
        env.close()
    assert env.unwrapped._viewer is None


def test_human_render_shows_a_frame_on_reset_and_every_step(env_id):
    pytest.importorskip("pygame")
    env = make(env_id, render_mode="human", max_trials=3)
    try:
        env.reset(seed=0)
        viewer = env.unwrapped._viewer
        shown = []
        viewer.fps = 0  # no frame-rate sleep in tests
        real_show = viewer.show
        viewer.show = lambda frame: (shown.append(frame.copy()), real_show(frame))
        env.reset(seed=1)
        run_episode(env, random_actions(env, 3))
        assert len(shown) == 4
        assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in shown)
        assert not np.array_equal(shown[0], shown[-1])
    finally:
        env.close()


def test_render_without_render_mode_returns_none(env_id):
    env = make(env_id)
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


# ============================================================================ vector envs


def test_sync_vector_env_autoresets_over_20_steps(env_id):
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(3)])
    try:
        obs, _ = vec.reset(seed=0)
        vec.action_space.seed(0)
        previous_terminated = np.zeros(3, dtype=bool)
        n_terminated = np.zeros(3, dtype=int)
        for _ in range(20):
            obs, rewards, terminated, truncated, infos = vec.step(vec.action_space.sample())
            assert vec.observation_space.contains(obs)
            assert rewards.shape == (3,) and not truncated.any()
            # NEXT_STEP autoreset: the step after a termination returns a fresh episode.
            restarted = np.flatnonzero(previous_terminated)
            np.testing.assert_array_equal(obs["trials_left"][restarted, 0], 1.0)
            np.testing.assert_array_equal(terminated, infos.get("_is_success", np.zeros(3, dtype=bool)))
            previous_terminated = terminated
            n_terminated += terminated
        # 6 trials + 1 reset step per episode: terminations at steps 6, 13 and 20.
        np.testing.assert_array_equal(n_terminated, [3, 3, 3])
    finally:
        vec.close()


def test_sb3_dummy_vec_env_autoresets_over_20_steps(env_id):
    vec = DummyVecEnv([lambda: gym.make(env_id) for _ in range(3)])
    vec.seed(0)
    obs = vec.reset()
    rng = np.random.default_rng(0)
    episodes_done = 0
    for _ in range(20):
        obs, rewards, dones, infos = vec.step(rng.uniform(-1, 1, size=(3, 2)).astype(np.float32))
        assert obs["query"].shape == (3, 1, 28, 28) and rewards.shape == (3,)
        for i in np.flatnonzero(dones):
            episodes_done += 1
            assert infos[i]["TimeLimit.truncated"] is False
            assert infos[i]["terminal_observation"]["trials_left"][0] == 0.0
            assert obs["trials_left"][i, 0] == 1.0  # already the next episode's first observation
    assert episodes_done == 3 * (20 // 6)
    vec.close()


# ============================================================================ episode mechanics


@pytest.mark.parametrize("max_trials", [1, 3, 6])
def test_episode_terminates_exactly_after_max_trials(env_id, max_trials):
    env = make(env_id, max_trials=max_trials)
    env.reset(seed=0)
    for t, action in enumerate(random_actions(env, max_trials), start=1):
        _, _, terminated, truncated, _ = env.step(action)
        assert terminated == (t == max_trials)
        assert truncated is False


@pytest.mark.parametrize("max_trials", [1, 3, 6])
def test_trials_left_goes_from_one_to_zero(env_id, max_trials):
    env = make(env_id, max_trials=max_trials)
    obs, _ = env.reset(seed=0)
    seen = [float(obs["trials_left"][0])]
    for action in random_actions(env, max_trials):
        seen.append(float(env.step(action)[0]["trials_left"][0]))
    np.testing.assert_allclose(seen, np.linspace(1.0, 0.0, max_trials + 1), atol=1e-6)


def test_stepping_after_the_end_raises_runtime_error(env_id):
    env = make(env_id, max_trials=2)
    env.reset(seed=0)
    run_episode(env, random_actions(env, 2))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_first_observation_shows_the_whole_reference(env_id):
    env = make(env_id)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs["location"], np.array([0.5, 0.5, 1.0, 1.0], dtype=np.float32))
    ref = env.unwrapped.pair.reference
    h, w = env.unwrapped.query_size
    expected = cv2.resize(ref, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1).transpose(2, 0, 1)
    np.testing.assert_array_equal(obs["window"], expected)
    np.testing.assert_array_equal(info["window_box"], [0, 0, ref.shape[1], ref.shape[0]])


def test_reward_is_one_only_on_a_successful_final_step(env_id):
    env = make(env_id, max_trials=3)
    env.reset(seed=0)
    steps = [env.step(target_action(env)) for _ in range(3)]
    rewards = [s[1] for s in steps]
    assert all(type(r) is float for r in rewards)
    assert rewards == [0.0, 0.0, 1.0]  # on target every step, paid only at the end
    assert steps[-1][4]["iou"] > env.unwrapped.iou_threshold and steps[-1][4]["is_success"] is True


def test_reward_is_zero_when_the_final_window_misses(env_id):
    env = make(env_id, max_trials=3)
    env.reset(seed=0)
    steps = [env.step(target_action(env)), env.step(target_action(env)), env.step(far_action(env))]
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0]
    assert steps[-1][4]["iou"] <= env.unwrapped.iou_threshold and steps[-1][4]["is_success"] is False


@pytest.mark.parametrize("steer", ["target", "far", "random"])
def test_dense_return_is_final_iou_plus_success(env_id, steer):
    env = make(env_id, reward_mode="dense")
    env.reset(seed=1)
    rewards, info = [], {}
    for action in random_actions(env, 6, seed=1):
        if steer != "random":
            action = target_action(env) if steer == "target" else far_action(env)
        _, reward, _, _, info = env.step(action)
        assert type(reward) is float
        rewards.append(reward)
    assert sum(rewards) == pytest.approx(info["iou"] + float(info["is_success"]), abs=1e-9)
    if steer == "target":
        assert sum(rewards) == pytest.approx(2.0)


def test_observation_keys_are_exactly_query_window_location_trials_left(env_id):
    env = make(env_id)
    obs, _ = env.reset(seed=0)
    assert set(env.observation_space.spaces) == OBS_KEYS
    assert set(obs) == OBS_KEYS
    assert set(env.step(env.action_space.sample())[0]) == OBS_KEYS


def _contains_run(values: np.ndarray, run: np.ndarray, atol: float) -> bool:
    """Whether ``run`` appears as consecutive elements of the flattened ``values``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) < len(run):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(values, len(run))
    return bool(np.any(np.all(np.abs(windows - run) <= atol, axis=1)))


def test_observation_never_contains_the_target_box(env_id):
    env = make(env_id)
    obs, _ = env.reset(seed=0)
    img_h, img_w = env.unwrapped.pair.reference.shape[:2]
    target = env.unwrapped.privileged_info()["target_box"]
    forms = [target, xyxy_to_cxcywh(target, img_w, img_h), target / np.array([img_w, img_h, img_w, img_h])]
    observations = [obs] + [env.step(far_action(env))[0] for _ in range(6)]
    for o in observations:
        for key, value in o.items():
            for form in forms:
                assert not _contains_run(value, form, atol=1e-4), f"obs[{key!r}] contains the target box {form}"


def test_observation_does_not_depend_on_the_target_box(env_id):
    # Same images, target moved: a policy must not be able to tell the difference.
    env = make(env_id)
    env.reset(seed=0)
    pair = env.unwrapped.pair
    corner = np.array([0.0, 0.0, 28.0, 28.0])
    new_box = corner if not np.array_equal(pair.target_box, corner) else corner + 10
    moved = SearchPair(pair.query, pair.reference, new_box, pair.distractor_boxes, pair.label, pair.meta)
    episodes = []
    for p in (pair, moved):
        e = matchenv.TemplateSearchEnv(dataset=PairListDataset([p], window_size=(28, 28)))
        obs, _ = e.reset(seed=0)
        episodes.append([obs] + [e.step(a)[0] for a in random_actions(e, 6, seed=3)])
    assert_same(episodes[0], episodes[1])


def test_info_has_window_box_iou_and_trial_every_step(env_id):
    env = make(env_id)
    _, info = env.reset(seed=0)
    infos = [info] + [env.step(a)[4] for a in random_actions(env, 6)]
    target = env.unwrapped.privileged_info()["target_box"]
    for trial, info in enumerate(infos):
        assert {"window_box", "iou", "trial"} <= set(info)
        assert info["trial"] == trial
        assert info["iou"] == pytest.approx(iou(info["window_box"], target))


def test_info_has_is_success_and_target_box_only_at_the_end(env_id):
    env = make(env_id)
    _, info = env.reset(seed=0)
    infos = [info] + [env.step(a)[4] for a in random_actions(env, 6)]
    for info in infos[:-1]:
        assert "is_success" not in info and "target_box" not in info
    np.testing.assert_array_equal(infos[-1]["target_box"], env.unwrapped.pair.target_box)
    assert infos[-1]["is_success"] == (infos[-1]["iou"] > env.unwrapped.iou_threshold)


def test_privileged_info_flag_puts_target_and_distractor_boxes_in_every_info(env_id):
    env = make(env_id, privileged_info=True)
    _, info = env.reset(seed=0)
    infos = [info] + [env.step(a)[4] for a in random_actions(env, 6)]
    pair = env.unwrapped.pair
    for info in infos:
        np.testing.assert_array_equal(info["privileged"]["target_box"], pair.target_box)
        np.testing.assert_array_equal(info["privileged"]["distractor_boxes"], pair.distractor_boxes)


def test_no_privileged_info_by_default(env_id):
    env = make(env_id)
    _, info = env.reset(seed=0)
    infos = [info] + [env.step(a)[4] for a in random_actions(env, 6)]
    assert all("privileged" not in info for info in infos)


@pytest.mark.parametrize("seed", range(8))
def test_mixed_mnist_distractors_are_present_and_apart_from_the_target(seed):
    env = make("TemplateSearch-MixedMNIST-v0")
    env.reset(seed=seed)
    priv = env.unwrapped.privileged_info()
    distractors = priv["distractor_boxes"]
    assert distractors.ndim == 2 and distractors.shape[1] == 4 and len(distractors) >= 1
    assert np.all(iou(distractors, priv["target_box"]) <= 0.1)


# ============================================================================ action types


@pytest.mark.parametrize(
    "action_type, space_type, shape", [("absolute", spaces.Box, (2,)), ("relative", spaces.Box, (2,)), ("discrete", spaces.Discrete, ())]
)
def test_each_action_type_runs_a_full_episode(env_id, action_type, space_type, shape):
    env = make(env_id, action_type=action_type)
    assert isinstance(env.action_space, space_type) and env.action_space.shape == shape
    env.reset(seed=0)
    img_h, img_w = env.unwrapped.pair.reference.shape[:2]
    steps = run_episode(env, random_actions(env, 6, seed=2))
    assert [s[2] for s in steps] == [False] * 5 + [True]
    assert all(box_inside(s[4]["window_box"], img_w, img_h) for s in steps)
    assert len({tuple(s[4]["window_box"]) for s in steps}) > 1  # the window moved


@pytest.mark.parametrize("action_type", ["absolute", "relative"])
@pytest.mark.parametrize("action", [[5.0, -5.0], [-100.0, 100.0], [1e30, 1e30]])
def test_out_of_range_continuous_actions_are_clipped(env_id, action_type, action):
    env, clipped_env = make(env_id, action_type=action_type), make(env_id, action_type=action_type)
    env.reset(seed=0)
    clipped_env.reset(seed=0)
    img_h, img_w = env.unwrapped.pair.reference.shape[:2]
    for _ in range(3):
        _, _, _, _, info = env.step(np.array(action, dtype=np.float32))
        _, _, _, _, clipped_info = clipped_env.step(np.clip(np.array(action, dtype=np.float32), -1, 1))
        assert box_inside(info["window_box"], img_w, img_h)
        np.testing.assert_array_equal(info["window_box"], clipped_info["window_box"])


@pytest.mark.parametrize("action_type", ["absolute", "relative"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_raise_value_error_mentioning_nan(env_id, action_type, bad):
    env = make(env_id, action_type=action_type)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0.0, bad], dtype=np.float32))


@pytest.mark.parametrize("shape", [(1,), (3,), (4,)])
def test_wrong_shaped_action_raises_value_error(env_id, shape):
    env = make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("action", [-1, 9, 100])
def test_discrete_action_out_of_range_raises_value_error(env_id, action):
    env = make(env_id, action_type="discrete")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        env.step(action)


def test_scale_range_adds_a_scale_action_that_changes_the_window_size(env_id):
    env = make(env_id, dataset_kwargs={"scale_range": (0.7, 1.5)})
    assert env.action_space.shape == (3,)
    env.reset(seed=0)
    sizes = []
    for scale_action in (-1.0, 0.0, 1.0):
        box = env.step(np.array([0.0, 0.0, scale_action], dtype=np.float32))[4]["window_box"]
        sizes.append((box[2] - box[0], box[3] - box[1]))
    np.testing.assert_allclose([w for w, _ in sizes], [28 * 0.7, 28 * np.sqrt(0.7 * 1.5), 28 * 1.5], atol=1)
    assert all(w == h for w, h in sizes)


# ============================================================================ test split


def test_test_split_pair_index_gives_the_same_pair_across_instances(env_id):
    env_a, env_b = make(env_id, split="test"), make(env_id, split="test")
    env_a.reset(seed=1, options={"pair_index": 5})
    env_b.reset(seed=2, options={"pair_index": 5})  # the seed does not matter for a chosen pair
    pa, pb = env_a.unwrapped.pair, env_b.unwrapped.pair
    for field in ("query", "reference", "target_box", "distractor_boxes"):
        np.testing.assert_array_equal(getattr(pa, field), getattr(pb, field))
    assert pa.meta["split"] == "test" and pa.meta["test_index"] == 5


def test_test_split_draws_test_pairs_without_pair_index(env_id):
    env = make(env_id, split="test")
    env.reset(seed=0)
    assert env.unwrapped.pair.meta["split"] == "test"


def test_different_pair_indices_give_different_pairs(env_id):
    env = make(env_id, split="test")
    env.reset(options={"pair_index": 0})
    first = env.unwrapped.pair.reference
    env.reset(options={"pair_index": 1})
    assert not np.array_equal(first, env.unwrapped.pair.reference)


# ============================================================================ features mode


def _siamese_encoder():
    torch = pytest.importorskip("torch")
    import matchenv.agents

    torch.manual_seed(0)
    module = matchenv.agents.SiameseCNN()

    def reference(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(images).float() / 255.0).numpy()

    return module, reference


def _pixels_encoder():
    from matchenv.encoders import DownsampledPixels

    return "pixels", DownsampledPixels()


ENCODERS = {"pixels": _pixels_encoder, "siamese_cnn": _siamese_encoder}


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_features_mode_observes_vectors_and_passes_both_checkers(env_id, encoder_name):
    encoder, _ = ENCODERS[encoder_name]()
    env = make(env_id, obs_mode="features", encoder=encoder)
    for key in ("query", "window"):
        space = env.observation_space[key]
        assert isinstance(space, spaces.Box) and len(space.shape) == 1 and space.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=GYM_UNBOUNDED_BOX_WARNING, category=UserWarning)
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_features_are_the_encoder_applied_to_the_pixels(env_id, encoder_name):
    encoder, reference_encoder = ENCODERS[encoder_name]()
    pixel_env = make(env_id)
    feature_env = make(env_id, obs_mode="features", encoder=encoder)
    pixel_obs, _ = pixel_env.reset(seed=4)
    feature_obs, _ = feature_env.reset(seed=4)
    pairs = [(pixel_obs, feature_obs)]
    for action in random_actions(pixel_env, 3, seed=4):
        pairs.append((pixel_env.step(action)[0], feature_env.step(action)[0]))
    for pix, feat in pairs:
        for key in ("query", "window"):
            np.testing.assert_allclose(feat[key], reference_encoder(pix[key][None])[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(feat["location"], pix["location"])
        np.testing.assert_array_equal(feat["trials_left"], pix["trials_left"])


@pytest.mark.parametrize("action_type", ["absolute", "relative", "discrete"])
@pytest.mark.parametrize("scale_range", [None, (0.5, 2.0)])
def test_one_window_placed_on_floats_is_the_batched_window(action_type, scale_range):
    """The env and the searcher place one window with WindowAction.place (Python floats, axis by
    axis); the vector env moves a batch with WindowAction.move on numpy arrays: the same boxes,
    locations and scales, bit for bit (half-pixel ties included)."""
    from matchenv.envs.actions import make_window_action
    from matchenv.geometry import place_windows, window_locations

    rng = np.random.default_rng(3)
    n = 2000
    action_map = make_window_action(action_type, scale_range)
    image_wh = rng.integers(20, 400, (n, 2)).astype(np.float64)
    window_wh = np.where(rng.random((n, 2)) < 0.3, rng.integers(1, 60, (n, 2)) + 0.5, rng.uniform(1, 80, (n, 2)))
    centre = rng.uniform(0, 1, (n, 2)) * image_wh
    scale = rng.uniform(0.5, 2.0, n) if scale_range else np.ones(n)
    if action_type == "discrete":
        actions = rng.integers(0, action_map.space.n, (n, 1)).astype(np.float64)
    else:
        actions = np.clip(np.round(rng.uniform(-1.2, 1.2, (n, action_map.space.shape[0])) * 8) / 8, -1.0, 1.0)
    moved, new_scale = action_map.move(actions, centre, scale, image_wh, window_wh)
    p0, p1 = place_windows(moved, window_wh * new_scale[:, None], image_wh)
    boxes, locations = np.concatenate([p0, p1], axis=1), window_locations(p0, p1, image_wh)
    for i in range(n):
        placed = action_map.place(action_map.check(actions[i]), tuple(centre[i].tolist()), float(scale[i]), image_wh[i],
                                  window_wh[i])
        assert placed.box == tuple(boxes[i].tolist()) and placed.location == tuple(locations[i].tolist())
        assert placed.scale == float(new_scale[i])
