"""The recurrent search agent: siamese features, policy, PPO with the match loss, DAgger, inference.

Every test is small (a few dozen environment steps, tiny batches, one torch thread): the point
is to pin down interfaces and invariants, not to train a good agent.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

import matchenv  # noqa: F401  (registers the environments)
from matchenv.agents.imitation import DAggerTrainer, ImitationConfig, imitation_losses
from matchenv.agents.policy import SearchLstmPolicy
from matchenv.agents.ppo import MATCH_LABEL_KEY, SearchRecurrentPPO
from matchenv.agents.rollout import run_episodes
from matchenv.agents.searcher import SearchResult, TemplateSearcher
from matchenv.agents.siamese import SearchFeaturesExtractor, SiameseCNN
from matchenv.agents.teacher import env_target_action, target_action
from matchenv.envs.actions import AbsoluteAction
from matchenv.geometry import iou, place_window

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ENV_ID = "TemplateSearch-TranslatedMNIST-v0"  # the smallest reference (60x60): fastest episodes
OBS_KEYS = {"query", "window", "location", "trials_left"}


def constant_lr(_progress: float) -> float:
    return 1e-3


def make_policy(env: gym.Env, **kwargs) -> SearchLstmPolicy:
    return SearchLstmPolicy(env.observation_space, env.action_space, constant_lr, **kwargs)


def stack_obs(observations: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}


def env_observations(env_kwargs: dict, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` observations (a reset and its following steps) of one env, stacked."""
    env = gym.make(ENV_ID, **env_kwargs)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    while len(out) < n:
        obs, _, terminated, _, _ = env.step(env.action_space.sample())
        out.append(obs)
        if terminated:
            obs, _ = env.reset()
            out.append(obs)
    return stack_obs(out[:n])


# ---------------------------------------------------------------------------------------------
# Siamese CNN and features extractor
# ---------------------------------------------------------------------------------------------
def test_siamese_cnn_is_five_conv_relu_layers():
    cnn = SiameseCNN()
    layers = list(cnn.convs)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.ReLU] * 5


def test_siamese_cnn_global_average_pooling_gives_n_by_32():
    cnn = SiameseCNN()
    for size in (28, 60):  # GAP: the embedding size does not depend on the image size
        assert cnn(torch.rand(3, 1, size, size)).shape == (3, 32)


def test_features_extractor_shares_one_cnn_between_query_and_window():
    env = gym.make(ENV_ID)
    extractor = SearchFeaturesExtractor(env.observation_space)
    assert sum(isinstance(m, SiameseCNN) for m in extractor.modules()) == 1
    obs = {k: torch.as_tensor(v).float() for k, v in env_observations({}, 4).items()}
    obs["query"], obs["window"] = obs["query"] / 255.0, obs["window"] / 255.0
    # The same image as query and as window gets the same embedding: the weights are shared.
    same = dict(obs, window=obs["query"])
    query_emb, window_emb = extractor.embed(same)
    assert torch.equal(query_emb, window_emb)
    # Changing one conv weight changes both embeddings.
    before_q, before_w = (e.detach().clone() for e in extractor.embed(obs))
    with torch.no_grad():
        extractor.cnn.convs[0].weight.add_(0.5)
    after_q, after_w = extractor.embed(obs)
    assert not torch.allclose(before_q, after_q) and not torch.allclose(before_w, after_w)


def test_features_dim_is_two_embeddings_plus_location_and_trials_left():
    env = gym.make(ENV_ID)
    extractor = SearchFeaturesExtractor(env.observation_space)
    assert extractor.features_dim == 2 * 32 + 5
    obs = {k: torch.as_tensor(v).float() for k, v in env_observations({}, 3).items()}
    assert extractor(obs).shape == (3, 2 * 32 + 5)


# ---------------------------------------------------------------------------------------------
# SearchLstmPolicy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env_kwargs, expected_space, out_dim",
    [
        ({}, spaces.Box, 2),
        ({"scale_range": (0.75, 1.5)}, spaces.Box, 3),
        ({"action_type": "discrete"}, spaces.Discrete, 9),
    ],
    ids=["box2", "box3-scale", "discrete"],
)
def test_policy_builds_and_actor_step_shapes(env_kwargs, expected_space, out_dim):
    env = gym.make(ENV_ID, **env_kwargs)
    assert isinstance(env.action_space, expected_space)
    policy = make_policy(env)
    obs_t, _ = policy.obs_to_tensor(env_observations(env_kwargs, 5))
    with torch.no_grad():
        features = policy.extract_features(obs_t)
        out, (h, c) = policy.actor_step(features, None)
        out2, state2 = policy.actor_step(features, (h, c))
    assert out.shape == out2.shape == (5, out_dim)
    assert h.shape == c.shape == (1, 5, 128)
    assert state2[0].shape == (1, 5, 128)
    assert not torch.equal(out, out2), "the LSTM state must carry over between steps"


def test_match_head_parameters_are_in_the_optimizer():
    policy = make_policy(gym.make(ENV_ID))
    in_optimizer = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    head = list(policy.match_head.parameters())
    assert head and all(id(p) in in_optimizer for p in head)


# ---------------------------------------------------------------------------------------------
# No privileged information reaches the policy
# ---------------------------------------------------------------------------------------------
def test_env_observation_has_no_target():
    env = gym.make(ENV_ID, privileged_info=True)  # even when the infos carry the target
    assert set(env.observation_space.spaces) == OBS_KEYS
    obs, info = env.reset(seed=0)
    assert set(obs) == OBS_KEYS and "privileged" in info
    for _ in range(env.unwrapped.max_trials):
        obs, *_ = env.step(env.action_space.sample())
        assert set(obs) == OBS_KEYS


class StepLog(gym.Wrapper):
    """Logs every observation the wrapped env returns, with its info and whether it is terminal."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.log: list[dict] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.log.append({"reset": True, "obs": copy.deepcopy(obs), "iou": info["iou"], "terminal": False})
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.log.append({"reset": False, "obs": copy.deepcopy(obs), "iou": info["iou"], "terminal": terminated})
        return obs, reward, terminated, truncated, info


class TeacherOnOddEpisodes(gym.Wrapper):
    """Replaces the agent's action by the privileged teacher's on every other episode, so that a
    rollout holds windows that match (IoU 1) as well as windows that do not."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episodes = 0

    def reset(self, **kwargs):
        self.episodes += 1
        return self.env.reset(**kwargs)

    def step(self, action):
        if self.episodes % 2:
            action = env_target_action(self.env)
        return self.env.step(action)


N_ENVS, N_STEPS, N_ROLLOUTS = 2, 16, 2


@pytest.fixture(scope="module")
def recorded_ppo_run():
    """Two SearchRecurrentPPO rollouts + updates, recording the buffer, the env logs and what
    ``policy.evaluate_actions`` was given."""
    logged = [StepLog(TeacherOnOddEpisodes(gym.make(ENV_ID))) for _ in range(N_ENVS)]
    venv = DummyVecEnv([lambda e=e: e for e in logged])
    model = SearchRecurrentPPO(
        "SearchLstmPolicy", venv, n_steps=N_STEPS, batch_size=16, n_epochs=1, seed=0, device="cpu",
        policy_kwargs=dict(lstm_hidden_size=32),
    )
    evaluated_keys: list[set] = []
    evaluate = model.policy.evaluate_actions

    def recording_evaluate(observations, *args, **kwargs):
        evaluated_keys.append(set(observations))
        return evaluate(observations, *args, **kwargs)

    model.policy.evaluate_actions = recording_evaluate
    buffers: list[dict] = []
    train = model.train

    def recording_train():
        buffer = model.rollout_buffer
        buffers.append({
            "observations": {k: v.copy() for k, v in buffer.observations.items()},
            "episode_starts": buffer.episode_starts.copy(),
        })
        train()

    model.train = recording_train
    model.learn(N_ROLLOUTS * N_STEPS * N_ENVS)
    return {"logs": [w.log for w in logged], "buffers": buffers, "evaluated_keys": evaluated_keys}


def test_evaluate_actions_never_sees_match_labels(recorded_ppo_run):
    keys = recorded_ppo_run["evaluated_keys"]
    assert len(keys) >= N_ROLLOUTS  # at least one minibatch per update
    assert all(k == OBS_KEYS for k in keys), keys


def test_rollout_buffer_holds_match_labels(recorded_ppo_run):
    for buffer in recorded_ppo_run["buffers"]:
        labels = buffer["observations"][MATCH_LABEL_KEY]
        assert labels.shape == (N_STEPS, N_ENVS, 1)
        assert set(np.unique(labels)) <= {-1.0, 0.0, 1.0}
    all_labels = np.concatenate([b["observations"][MATCH_LABEL_KEY].ravel() for b in recorded_ppo_run["buffers"]])
    assert {-1.0, 0.0, 1.0} <= set(np.unique(all_labels)), "the recorded run should hold every kind of label"


def buffered_sequence(recorded: dict, env_index: int) -> dict[str, np.ndarray]:
    """One env's buffered observations over all rollouts, in time order."""
    buffers = recorded["buffers"]
    return {k: np.concatenate([b["observations"][k][:, env_index] for b in buffers]) for k in buffers[0]["observations"]}


def observed_sequence(recorded: dict, env_index: int) -> list[dict]:
    """The env's logged observations that the agent acted on (terminal observations are
    replaced by the reset observation in a VecEnv), in time order."""
    entries = [e for e in recorded["logs"][env_index] if not e["terminal"]]
    return entries[: N_ROLLOUTS * N_STEPS]


@pytest.mark.parametrize("env_index", range(N_ENVS))
def test_match_label_is_minus_one_exactly_for_reset_observations(recorded_ppo_run, env_index):
    buffered = buffered_sequence(recorded_ppo_run, env_index)
    observed = observed_sequence(recorded_ppo_run, env_index)
    # The buffer holds exactly the observations the env returned (aligned, in order).
    np.testing.assert_array_equal(buffered["location"], np.stack([e["obs"]["location"] for e in observed]))
    np.testing.assert_array_equal(buffered["window"], np.stack([e["obs"]["window"] for e in observed]))
    is_reset = np.array([e["reset"] for e in observed])
    labels = buffered[MATCH_LABEL_KEY][:, 0]
    np.testing.assert_array_equal(labels == -1.0, is_reset)
    np.testing.assert_array_equal(is_reset, buffered["trials_left"][:, 0] == 1.0)  # a reset view shows all trials left
    episode_starts = np.concatenate([b["episode_starts"][:, env_index] for b in recorded_ppo_run["buffers"]])
    np.testing.assert_array_equal(episode_starts.astype(bool), is_reset)


@pytest.mark.parametrize("env_index", range(N_ENVS))
def test_match_label_is_iou_of_the_step_that_produced_the_observation(recorded_ppo_run, env_index):
    buffered = buffered_sequence(recorded_ppo_run, env_index)
    observed = observed_sequence(recorded_ppo_run, env_index)
    labels = buffered[MATCH_LABEL_KEY][:, 0]
    expected = np.array([-1.0 if e["reset"] else float(e["iou"] > 0.5) for e in observed])
    np.testing.assert_array_equal(labels, expected)
    assert (expected == 1.0).any() and (expected == 0.0).any()


# ---------------------------------------------------------------------------------------------
# SearchRecurrentPPO vs RecurrentPPO
# ---------------------------------------------------------------------------------------------
class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.recorded: dict[str, list] = {}

    def record(self, key, value, exclude=None) -> None:
        self.recorded.setdefault(key, []).append(value)
        super().record(key, value, exclude)


def one_learn(algo, **kwargs):
    venv = DummyVecEnv([lambda: gym.make(ENV_ID) for _ in range(2)])
    model = algo(SearchLstmPolicy, venv, n_steps=16, batch_size=16, n_epochs=2, seed=3, device="cpu", **kwargs)
    logger = RecordingLogger()
    model.set_logger(logger)
    model.learn(32)
    return model, logger


@pytest.fixture(scope="module")
def reference_recurrent_ppo():
    model, _ = one_learn(RecurrentPPO)
    return model.policy.state_dict()


def test_aux_weight_zero_is_exactly_recurrent_ppo(reference_recurrent_ppo):
    model, logger = one_learn(SearchRecurrentPPO, aux_weight=0.0)
    ours = model.policy.state_dict()
    assert ours.keys() == reference_recurrent_ppo.keys()
    for key, value in reference_recurrent_ppo.items():
        assert torch.equal(ours[key], value), key
    assert "train/aux_loss" not in logger.recorded


def test_aux_weight_one_changes_the_update_and_logs_aux_loss(reference_recurrent_ppo):
    model, logger = one_learn(SearchRecurrentPPO, aux_weight=1.0)
    ours = model.policy.state_dict()
    assert any(not torch.equal(ours[k], v) for k, v in reference_recurrent_ppo.items())
    assert any(not torch.equal(ours[k], v) for k, v in reference_recurrent_ppo.items() if k.startswith("match_head"))
    assert "train/aux_loss" in logger.recorded
    assert all(np.isfinite(v) and v >= 0 for v in logger.recorded["train/aux_loss"])


def test_save_and_load_without_custom_objects(tmp_path):
    venv = DummyVecEnv([lambda: gym.make(ENV_ID)])
    model = SearchRecurrentPPO("SearchLstmPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu",
                               aux_weight=0.25, policy_kwargs=dict(lstm_hidden_size=32))
    model.learn(8)
    model.save(tmp_path / "model.zip")
    loaded = SearchRecurrentPPO.load(tmp_path / "model.zip", device="cpu")
    assert isinstance(loaded, SearchRecurrentPPO) and isinstance(loaded.policy, SearchLstmPolicy)
    assert loaded.aux_weight == 0.25
    obs = env_observations({}, 1, seed=7)
    start = np.ones(1, dtype=bool)
    action, state = model.predict(obs, episode_start=start, deterministic=True)
    loaded_action, loaded_state = loaded.predict(obs, episode_start=start, deterministic=True)
    np.testing.assert_array_equal(action, loaded_action)
    np.testing.assert_array_equal(state[0], loaded_state[0])


# ---------------------------------------------------------------------------------------------
# The privileged teacher
# ---------------------------------------------------------------------------------------------
def apply_absolute(action, reference_size, window_size, scale_range):
    img_h, img_w = reference_size
    cx, cy, scale = AbsoluteAction(scale_range).apply(action, (img_w / 2, img_h / 2), 1.0, reference_size, window_size)
    return place_window(cx, cy, window_size[1] * scale, window_size[0] * scale, img_w, img_h)


@pytest.mark.parametrize("reference_size, window_size", [((60, 60), (28, 28)), ((80, 120), (28, 20))])
def test_target_action_inverts_absolute_action_for_fixed_size_boxes(reference_size, window_size):
    rng = np.random.default_rng(0)
    img_h, img_w = reference_size
    win_h, win_w = window_size
    for _ in range(300):
        x0, y0 = int(rng.integers(0, img_w - win_w + 1)), int(rng.integers(0, img_h - win_h + 1))
        box = (x0, y0, x0 + win_w, y0 + win_h)
        action = target_action(box, reference_size, window_size)
        assert action.shape == (2,) and action.dtype == np.float32
        assert iou(apply_absolute(action, reference_size, window_size, None), box) == 1.0


def test_target_action_inverts_absolute_action_with_scale():
    rng = np.random.default_rng(1)
    reference_size, window_size, scale_range = (100, 100), (28, 28), (0.75, 1.5)
    for _ in range(300):
        scale = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
        side = 28 * scale
        x0, y0 = rng.uniform(0, 100 - side, size=2)
        box = (x0, y0, x0 + side, y0 + side)
        action = target_action(box, reference_size, window_size, scale_range)
        assert action.shape == (3,) and np.all(np.abs(action) <= 1.0)
        assert iou(apply_absolute(action, reference_size, window_size, scale_range), box) >= 0.9


def test_target_action_is_exact_for_integer_boxes_with_scale():
    rng = np.random.default_rng(2)
    reference_size, window_size, scale_range = (90, 110), (28, 20), (0.5, 2.0)
    for _ in range(300):
        w = int(rng.integers(10, 40))
        h = round(w * 28 / 20)
        x0, y0 = int(rng.integers(0, 110 - w + 1)), int(rng.integers(0, 90 - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        action = target_action(box, reference_size, window_size, scale_range)
        assert iou(apply_absolute(action, reference_size, window_size, scale_range), box) == 1.0


# ---------------------------------------------------------------------------------------------
# DAgger
# ---------------------------------------------------------------------------------------------
def test_dagger_reduces_behaviour_cloning_loss_on_a_fixed_batch():
    # Eight fixed pairs (a test split of size 8): enough for 30 small DAgger iterations to fit
    # the teacher; the full training distribution needs thousands of episodes to leave the
    # "predict the mean position" plateau.
    torch.manual_seed(0)
    envs = [gym.make(ENV_ID, split="test", dataset_kwargs={"test_size": 8}).unwrapped for _ in range(16)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    policy = SearchLstmPolicy(envs[0].observation_space, envs[0].action_space, lambda _: 3e-3)
    config = ImitationConfig(epochs=2)
    fixed = run_episodes(policy, envs, [{"pair_index": i % 8} for i in range(16)], noise_std=0.3,
                         rng=np.random.default_rng(1), with_teacher=True)
    with torch.no_grad():
        before = float(imitation_losses(policy, fixed, config)["bc"])
    trainer = DAggerTrainer(policy, envs, config, seed=0)
    for _ in range(30):
        trainer.iteration()
    with torch.no_grad():
        after = float(imitation_losses(policy, fixed, config)["bc"])
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------------
# run_episodes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_policy():
    torch.manual_seed(0)
    policy = make_policy(gym.make(ENV_ID))
    with torch.no_grad():  # SB3 initialises the action head near 0; make the actions depend on the input
        nn.init.normal_(policy.action_net.weight, std=1.0)
    return policy


def test_run_episodes_shapes_and_success(untrained_policy):
    envs = [gym.make(ENV_ID) for _ in range(3)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    batch = run_episodes(untrained_policy, envs, with_teacher=True)
    T, B = 6, 3
    assert batch.observations["query"].shape == (T + 1, B, 1, 28, 28)
    assert batch.observations["window"].shape == (T + 1, B, 1, 28, 28)
    assert batch.observations["location"].shape == (T + 1, B, 4)
    assert batch.observations["trials_left"].shape == (T + 1, B, 1)
    assert batch.actions.shape == batch.teacher_actions.shape == (T, B, 2)
    assert batch.ious.shape == (T + 1, B) and batch.rewards.shape == (T, B)
    assert batch.window_boxes.shape == (T, B, 4)
    assert batch.success.shape == (B,)
    np.testing.assert_array_equal(batch.success, batch.final_iou > envs[0].unwrapped.iou_threshold)
    np.testing.assert_array_equal(batch.rewards[-1], batch.success.astype(np.float32))


def test_run_episodes_is_deterministic_on_test_pairs(untrained_policy):
    envs = [gym.make(ENV_ID, split="test") for _ in range(3)]
    options = [{"pair_index": i} for i in range(3)]
    first = run_episodes(untrained_policy, envs, options)
    for i, env in enumerate(envs):
        env.reset(seed=100 + i)  # a different random state must not matter
    second = run_episodes(untrained_policy, envs, options)
    for key in first.observations:
        np.testing.assert_array_equal(first.observations[key], second.observations[key])
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.window_boxes, second.window_boxes)
    np.testing.assert_array_equal(first.ious, second.ious)
    assert first.teacher_actions is None


# ---------------------------------------------------------------------------------------------
# TemplateSearcher
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def searcher(untrained_policy):
    return TemplateSearcher(untrained_policy)


def images(seed: int, query_shape=(28, 28), reference_shape=(60, 60)):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, size=reference_shape, dtype=np.uint8)
    query = rng.integers(0, 256, size=query_shape, dtype=np.uint8)
    return query, reference


def assert_same_result(a: SearchResult, b: SearchResult) -> None:
    np.testing.assert_array_equal(a.box, b.box)
    np.testing.assert_array_equal(a.path, b.path)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize("query_shape, reference_shape", [((28, 28), (60, 60)), ((20, 24), (50, 90))])
def test_locate_returns_a_query_sized_box_inside_the_reference(searcher, query_shape, reference_shape):
    query, reference = images(0, query_shape, reference_shape)
    result = searcher.locate(query, reference)
    x0, y0, x1, y1 = result.box
    assert (x1 - x0, y1 - y0) == (query_shape[1], query_shape[0])
    assert 0 <= x0 and 0 <= y0 and x1 <= reference_shape[1] and y1 <= reference_shape[0]
    assert result.path.shape == (6, 4) and result.scores.shape == (6,)
    np.testing.assert_array_equal(result.box, result.path[-1])
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert 0 <= result.score <= 1


def test_locate_depends_on_the_images(searcher):
    # Guards the comparisons below: a searcher that ignored its inputs would pass them trivially.
    paths = [searcher.locate(*images(seed)).path for seed in range(4)]
    assert any(not np.array_equal(paths[0], p) for p in paths[1:])


@pytest.mark.parametrize("env_id", [ENV_ID, "TemplateSearch-ClutteredMNIST-v0"])
def test_searcher_replays_the_environment_exactly(untrained_policy, env_id):
    """locate() must show the policy what the env showed it in training, window for window."""
    envs = [gym.make(env_id, split="test").unwrapped for _ in range(4)]
    batch = run_episodes(untrained_policy, envs, [{"pair_index": i} for i in range(4)])
    searcher = TemplateSearcher(untrained_policy)
    for i, env in enumerate(envs):
        pair = env.dataset.test_pair(i)
        np.testing.assert_allclose(searcher.locate(pair.query, pair.reference).path, batch.window_boxes[:, i], atol=1e-6)
    assert len({tuple(batch.window_boxes[-1, i]) for i in range(4)}) > 1  # not a constant answer


def test_locate_batch_equals_locate_per_pair(searcher):
    pairs = [images(1), images(2, (20, 24), (50, 90)), images(3, (28, 28), (100, 100))]
    batch = searcher.locate_batch([q for q, _ in pairs], [r for _, r in pairs])
    assert len(batch) == len(pairs)
    for (query, reference), result in zip(pairs, batch):
        assert_same_result(result, searcher.locate(query, reference))
    assert searcher.locate_batch([], []) == []


def test_locate_accepts_grayscale_channel_colour_and_float_images(searcher):
    query, reference = images(4)
    expected = searcher.locate(query, reference)
    assert_same_result(searcher.locate(query[:, :, None], reference[:, :, None]), expected)
    colour = lambda img: np.repeat(img[:, :, None], 3, axis=2)  # noqa: E731  grey in BGR
    assert_same_result(searcher.locate(colour(query), colour(reference)), expected)
    assert_same_result(searcher.locate(query / 255.0, reference.astype(np.float32) / 255.0), expected)


def test_locate_converts_colour_to_grey_for_a_one_channel_policy(searcher):
    import cv2

    rng = np.random.default_rng(5)
    query, reference = rng.integers(0, 256, (28, 28, 3), np.uint8), rng.integers(0, 256, (60, 60, 3), np.uint8)
    grey = lambda img: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)  # noqa: E731
    assert_same_result(searcher.locate(query, reference), searcher.locate(grey(query), grey(reference)))
    # channel_order="bgr" (cv2.imread's order) converts with the BGR weights instead
    bgr_searcher = TemplateSearcher(searcher.policy, channel_order="bgr")
    bgr_grey = lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)  # noqa: E731
    assert_same_result(bgr_searcher.locate(query, reference), searcher.locate(bgr_grey(query), bgr_grey(reference)))


def test_locate_query_larger_than_reference(searcher):
    query, reference = images(0, (40, 40), (30, 60))
    with pytest.raises(ValueError, match="larger"):
        searcher.locate(query, reference)


def test_locate_rejects_non_arrays(searcher):
    _, reference = images(0)
    with pytest.raises(TypeError):
        searcher.locate([[0] * 28] * 28, reference)


@pytest.mark.parametrize("shape", [(60,), (2, 60, 60, 1), (60, 60, 2)])
def test_locate_rejects_bad_shapes(searcher, shape):
    query, _ = images(0)
    with pytest.raises(ValueError):
        searcher.locate(query, np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize(
    "reference",
    [
        np.zeros((60, 60), dtype=np.int16),
        np.full((60, 60), 200.0, dtype=np.float32),  # floats must be in [0, 1]
        np.full((60, 60), -0.5, dtype=np.float64),
        np.where(np.eye(60, dtype=bool), np.nan, 0.5),  # NaN pixels
    ],
    ids=["int16", "float>1", "float<0", "float-nan"],
)
def test_locate_rejects_bad_dtypes_and_ranges(searcher, reference):
    query, _ = images(0)
    with pytest.raises(ValueError):
        searcher.locate(query, reference)


def test_locate_batch_rejects_mismatched_lengths(searcher):
    query, reference = images(0)
    with pytest.raises(ValueError, match="2 queries but 1 references"):
        searcher.locate_batch([query, query], [reference])


def test_load_missing_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ppo_lstm.py"):
        TemplateSearcher.load(tmp_path / "missing.zip")


def test_scale_aware_policy_is_rejected():
    policy = make_policy(gym.make(ENV_ID, scale_range=(0.75, 1.5)))
    assert policy.action_space.shape == (3,)
    with pytest.raises(ValueError, match="scale"):
        TemplateSearcher(policy)
