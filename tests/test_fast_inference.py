"""The searcher's CPU fast path (traced CNN, numpy actor step) computes what the policy computes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import matchenv  # noqa: F401  (registers the environments)
from agents.numpy_step import NumpyActorStep
from agents.policy import SearchLstmPolicy
from agents.searcher import PolicyStep, TemplateSearcher

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CASES = {
    "plain": ("TemplateSearch-ClutteredMNIST-v0", {}, {}),
    "pointer": ("TemplateSearch-MixedMNIST-v0", {"overview_size": 48}, {"pointer": True, "pointer_window_fraction": 0.28}),
    "scale": ("TemplateSearch-ClutteredMNIST-v0", {"scale_range": (0.5, 2.0)}, {}),
}


def random_policy(case: str, seed: int = 0) -> tuple[SearchLstmPolicy, gym.Env]:
    env_id, env_kwargs, policy_kwargs = CASES[case]
    env = gym.make(env_id, **env_kwargs)
    torch.manual_seed(seed)
    policy = SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3, lstm_hidden_size=32, **policy_kwargs)
    with torch.no_grad():  # SB3 starts the action head near 0: make every part of the step matter
        for param in policy.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return policy.eval(), env


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_step_equals_the_torch_step(case):
    policy, _ = random_policy(case)
    rng = np.random.default_rng(0)
    n, emb = 16, policy.features_extractor.cnn.embedding_dim
    cells = 0 if policy.features_extractor.map_size is None else int(np.prod(policy.features_extractor.map_size))
    location = np.concatenate([rng.uniform(0.1, 0.9, (n, 2)), rng.uniform(0.2, 1.0, (n, 2))], axis=1)
    inputs = [rng.normal(size=(n, emb)), rng.normal(size=(n, emb)), location, rng.uniform(0, 1, (n, 1)),
              rng.uniform(-1, 1, (n, cells)), rng.normal(size=(n, 32)), rng.normal(size=(n, 32))]
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    with torch.no_grad():
        expected = PolicyStep(policy)(*(torch.from_numpy(x) for x in inputs))
    got = NumpyActorStep(policy)(*inputs)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-5, atol=1e-5)


def test_policy_step_equals_actor_step():
    policy, env = random_policy("pointer")
    obs, _ = env.reset(seed=0)
    obs_t, _ = policy.obs_to_tensor({k: v[None] for k, v in obs.items()})
    with torch.no_grad():
        features = policy.extract_features(obs_t)
        expected, (h, c) = policy.actor_step(features, None)
        parts = policy.features_extractor.feature_slices(features)
        zeros = torch.zeros(1, 32)
        mean, h2, c2 = PolicyStep(policy)(parts["query_emb"], parts["window_emb"], parts["location"],
                                          obs_t["trials_left"], parts["similarity"], zeros, zeros)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(h2, h[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_and_plain_searchers_place_the_same_windows(case):
    policy, env = random_policy(case, seed=1)
    kwargs = {"scale_range": env.unwrapped.scale_range}
    fast, plain = TemplateSearcher(policy, fast=True, **kwargs), TemplateSearcher(policy, fast=False, **kwargs)
    dataset = env.unwrapped.dataset
    pairs = [dataset.test_pair(i) for i in range(8)]
    for pair in pairs:
        a, b = fast.locate(pair.query, pair.reference), plain.locate(pair.query, pair.reference)
        np.testing.assert_array_equal(a.path, b.path)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    batched = fast.locate_batch([p.query for p in pairs], [p.reference for p in pairs])
    for pair, result in zip(pairs, batched):
        np.testing.assert_array_equal(result.path, plain.locate(pair.query, pair.reference).path)


def test_fast_path_is_the_cpu_default_and_refuses_what_it_cannot_run():
    policy, _ = random_policy("plain")
    assert TemplateSearcher(policy).fast
    assert not TemplateSearcher(policy, fast=False).fast
