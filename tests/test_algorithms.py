"""Other RL algorithms plug into TemplateSearch: a few hundred steps each, CPU, tiny batches.

These are smoke tests of the interfaces (spaces, observation dicts, the siamese features
extractor, recurrent policies), not of learning: each checks that training ran and changed the
policy, and that the trained model acts validly in a fresh environment.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.torch_layers import CombinedExtractor

import matchenv.agents
import matchenv  # noqa: F401  (registers the environments)

# Tiny networks on a shared machine: one torch thread is faster than several contending ones.
pytestmark = pytest.mark.usefixtures("single_torch_thread")

ENV_ID = "TemplateSearch-TranslatedMNIST-v0"  # the smallest reference: fastest episodes


def extractor_kwargs(**extra) -> dict:
    """A fresh dict each time: SB3 algorithms add keys (e.g. use_sde) to the policy_kwargs they get."""
    return dict(features_extractor_class=matchenv.agents.SearchFeaturesExtractor, **extra)


def parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def learn_and_check(model, total_timesteps: int, env_kwargs: dict) -> None:
    """Train, then check that the policy changed and acts validly for a whole episode."""
    before = parameters(model)
    model.learn(total_timesteps=total_timesteps)
    assert model.num_timesteps >= total_timesteps
    after = parameters(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "training did not change the policy"

    env = gym.make(ENV_ID, **env_kwargs)
    obs, _ = env.reset(seed=123)
    state, start = None, np.ones((1,), dtype=bool)
    for _ in range(env.unwrapped.max_trials):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        assert env.action_space.contains(action.astype(env.action_space.dtype) if action.ndim else int(action))
        obs, reward, terminated, _, info = env.step(action)
        start = np.zeros((1,), dtype=bool)
    assert terminated and 0.0 <= info["iou"] <= 1.0


def make_env(**kwargs):
    env = gym.make(ENV_ID, **kwargs)
    env.reset(seed=0)
    return env


def test_ppo_with_search_features_extractor():
    model = PPO(
        "MultiInputPolicy", make_env(), n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=extractor_kwargs(),
        device="cpu", seed=0,
    )
    assert isinstance(model.policy.features_extractor, matchenv.agents.SearchFeaturesExtractor)
    learn_and_check(model, 256, {})


def test_a2c_with_search_features_extractor():
    model = A2C("MultiInputPolicy", make_env(), n_steps=8, policy_kwargs=extractor_kwargs(), device="cpu", seed=0)
    assert isinstance(model.policy.features_extractor, matchenv.agents.SearchFeaturesExtractor)
    learn_and_check(model, 256, {})


def test_sac_on_the_continuous_absolute_env():
    env = make_env(action_type="absolute")
    model = SAC(
        "MultiInputPolicy", env, buffer_size=1000, learning_starts=50, batch_size=32, train_freq=4,
        gradient_steps=1, policy_kwargs=extractor_kwargs(), device="cpu", seed=0,
    )
    assert isinstance(model.actor.features_extractor, matchenv.agents.SearchFeaturesExtractor)
    learn_and_check(model, 256, {"action_type": "absolute"})


def test_dqn_on_the_discrete_env():
    model = DQN(
        "MultiInputPolicy", make_env(action_type="discrete"), buffer_size=1000, learning_starts=50, batch_size=32,
        train_freq=4, target_update_interval=50, policy_kwargs=extractor_kwargs(), device="cpu", seed=0,
    )
    assert isinstance(model.q_net.features_extractor, matchenv.agents.SearchFeaturesExtractor)
    learn_and_check(model, 256, {"action_type": "discrete"})


def test_recurrent_ppo_with_lstm_policy_and_search_features_extractor():
    model = RecurrentPPO(
        "MultiInputLstmPolicy", make_env(), n_steps=64, batch_size=32, n_epochs=2,
        policy_kwargs=extractor_kwargs(lstm_hidden_size=32), device="cpu", seed=0,
    )
    assert isinstance(model.policy.features_extractor, matchenv.agents.SearchFeaturesExtractor)
    learn_and_check(model, 256, {})


def test_ppo_mlp_only_on_features_observations():
    env_kwargs = {"obs_mode": "features", "encoder": "pixels"}
    model = PPO("MultiInputPolicy", make_env(**env_kwargs), n_steps=64, batch_size=32, n_epochs=2, device="cpu", seed=0)
    extractor = model.policy.features_extractor
    assert isinstance(extractor, CombinedExtractor)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.policy.modules()), "features mode needs no CNN"
    learn_and_check(model, 256, env_kwargs)
