"""The pointer head: the multimodal actor that picks among similarity-map candidates."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import matchenv  # noqa: F401  (registers the environments)
from matchenv.agents.imitation import DAggerTrainer, ImitationConfig, imitation_losses
from matchenv.agents.policy import PointerHead, SearchLstmPolicy
from matchenv.agents.ppo import SearchRecurrentPPO
from matchenv.agents.rollout import run_episodes
from matchenv.agents.searcher import TemplateSearcher

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ENV_ID = "TemplateSearch-MixedMNIST-v0"
OVERVIEW = (48, 48)  # a 6x6 similarity map: small and fast


def make_env(**kwargs) -> gym.Env:
    return gym.make(ENV_ID, overview_size=OVERVIEW, **kwargs)


def make_pointer_policy(env, **kwargs) -> SearchLstmPolicy:
    return SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3, pointer=True,
                            pointer_window_fraction=0.28, **kwargs)


def test_local_soft_argmax_keeps_the_mode_instead_of_averaging_look_alikes():
    head = PointerHead(8, (4, 5), window_fraction=0.28)
    similarity = torch.full((1, 20), -1.0)
    similarity[0, 7] = 0.9  # row 1, col 2
    similarity[0, 19] = 0.89  # a look-alike far away (row 3, col 4)
    point = head.soft_argmax(similarity)[0]
    torch.testing.assert_close(point, head.cell_centres[7])  # not pulled towards cell 19


def test_local_soft_argmax_refines_between_neighbouring_cells_and_is_differentiable():
    head = PointerHead(8, (4, 4))
    similarity = torch.full((1, 16), -1.0, requires_grad=False)
    similarity[0, 5] = similarity[0, 6] = 0.8  # two neighbours, equally similar
    similarity.requires_grad_(True)
    point = head.soft_argmax(similarity)[0]
    torch.testing.assert_close(point, (head.cell_centres[5] + head.cell_centres[6]) / 2)
    point.sum().backward()
    assert similarity.grad.abs().sum() > 0


def test_next_candidate_skips_the_cells_under_the_current_window():
    head = PointerHead(8, (4, 4))
    similarity = torch.full((1, 16), -1.0)
    similarity[0, 5] = 0.9
    similarity[0, 15] = 0.5
    covered = torch.zeros(1, 16, dtype=torch.bool)
    covered[0, 5] = True
    torch.testing.assert_close(head.soft_argmax(similarity, covered)[0], head.cell_centres[15])
    everything = torch.ones(1, 16, dtype=torch.bool)  # the whole-image view covers every cell
    torch.testing.assert_close(head.soft_argmax(similarity, everything)[0], head.cell_centres[5])


def test_anchor_maps_a_point_to_the_absolute_action_that_centres_the_window_on_it():
    # The absolute action places the centre at w/2 + (a + 1)/2 (W - w): a = (2p - 1) / (1 - w/W).
    env = make_env().unwrapped
    head = PointerHead(8, (6, 6), window_fraction=28 / 100)
    similarity = torch.full((1, 36), -1.0)
    similarity[0, 14] = 1.0  # row 2, col 2
    location = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    anchors, _ = head.candidates(torch.zeros(1, 8), torch.zeros(1, 2), similarity, location, torch.zeros(1))
    point = head.cell_centres[14] * 100
    cx, cy, _ = env.window_action.apply(anchors[0, 0].detach().numpy(), (50, 50), 1.0, (100, 100), (28, 28))
    np.testing.assert_allclose([cx, cy], point.numpy(), atol=1e-4)


def test_forward_picks_one_anchor_never_an_average():
    torch.manual_seed(0)
    head = PointerHead(8, (4, 4))
    latent = torch.randn(5, 8)
    similarity = torch.rand(5, 16)
    location = torch.tensor([[0.3, 0.6, 0.28, 0.28]]).repeat(5, 1)
    free = torch.randn(5, 2)
    distance = torch.rand(5)
    anchors, logits = head.candidates(latent, free, similarity, location, distance)
    mean = head(latent, free, similarity, location, distance)  # the offset starts at 0
    chosen = anchors[torch.arange(5), logits.argmax(dim=-1)]
    assert torch.equal(mean, chosen)  # exactly the anchor (a one-hot sum), not close to it
    # The same with leading batch dimensions (sequences in training), and with the best cell given.
    mean_2d = head(latent.reshape(1, 5, 8), free.reshape(1, 5, 2), similarity.reshape(1, 5, 16),
                   location.reshape(1, 5, 4), distance.reshape(1, 5))
    assert torch.equal(mean_2d[0], mean)
    assert torch.equal(head(latent, free, similarity, location, distance, head.soft_argmax(similarity)), mean)


def test_pointer_needs_an_overview_and_continuous_actions():
    env = gym.make(ENV_ID)
    with pytest.raises(ValueError, match="overview_size"):
        SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3, pointer=True)
    env = make_env(action_type="discrete")
    with pytest.raises(ValueError, match="absolute"):
        SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3, pointer=True)


def test_actor_step_and_sb3_distribution_agree():
    """The lean path (actor_step, used by rollouts and the searcher) and SB3's path (used by PPO)
    must compute the same mean action."""
    torch.manual_seed(0)
    env = make_env()
    policy = make_pointer_policy(env)
    obs, _ = env.reset(seed=3)
    obs_t, _ = policy.obs_to_tensor({k: v[None] for k, v in obs.items()})
    with torch.no_grad():
        features = policy.extract_features(obs_t)
        mean, _ = policy.actor_step(features, None)
        zeros = torch.zeros(1, 1, policy.lstm_actor.hidden_size)
        dist, _ = policy.get_distribution(obs_t, (zeros, zeros), torch.ones(1))
    torch.testing.assert_close(dist.distribution.mean, mean)


def test_imitation_trains_the_gate_and_lowers_the_loss():
    torch.manual_seed(0)
    envs = [make_env(split="test", dataset_kwargs={"test_size": 8}).unwrapped for _ in range(8)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    policy = make_pointer_policy(envs[0], lstm_hidden_size=32)
    config = ImitationConfig(epochs=2)
    fixed = run_episodes(policy, envs, [{"pair_index": i} for i in range(8)], noise_std=0.3,
                         rng=np.random.default_rng(1), with_teacher=True)
    with torch.no_grad():
        before = imitation_losses(policy, fixed, config)
    assert {"gate", "gate_accuracy"} <= set(before)
    trainer = DAggerTrainer(policy, envs, config, seed=0)
    for _ in range(15):
        trainer.iteration()
    with torch.no_grad():
        after = imitation_losses(policy, fixed, config)
    assert float(after["loss"]) < float(before["loss"])


def test_pointer_policy_trains_with_ppo_saves_loads_and_replays_in_the_searcher(tmp_path):
    venv = DummyVecEnv([make_env])
    model = SearchRecurrentPPO("SearchLstmPolicy", venv, n_steps=12, batch_size=12, n_epochs=1, seed=0, device="cpu",
                               policy_kwargs=dict(lstm_hidden_size=32, pointer=True, pointer_window_fraction=0.28))
    model.learn(12)
    model.save(tmp_path / "pointer.zip")
    loaded = SearchRecurrentPPO.load(tmp_path / "pointer.zip", device="cpu")
    assert loaded.policy.pointer and loaded.policy.pointer_window_fraction == 0.28
    for a, b in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values()):
        torch.testing.assert_close(a, b)

    searcher = TemplateSearcher.load(tmp_path / "pointer.zip")
    envs = [make_env(split="test").unwrapped for _ in range(3)]
    batch = run_episodes(loaded.policy, envs, [{"pair_index": i} for i in range(3)])
    dataset = envs[0].dataset
    for i in range(3):
        pair = dataset.test_pair(i)
        result = searcher.locate(pair.query, pair.reference)
        np.testing.assert_allclose(result.path, batch.window_boxes[:, i], atol=1e-5)


def test_overview_size_may_be_one_int_for_a_square():
    assert gym.make(ENV_ID, overview_size=48).observation_space["overview"].shape == (1, 48, 48)
    with pytest.raises(ValueError, match="positive sides"):
        gym.make(ENV_ID, overview_size=0)


def test_overview_cells_share_one_cnn_pass_per_run_of_equal_overviews():
    from matchenv.agents.siamese import SearchFeaturesExtractor

    env = make_env()
    torch.manual_seed(0)
    extractor = SearchFeaturesExtractor(env.observation_space)
    distinct = torch.rand(3, 1, *OVERVIEW)
    overviews = distinct[[0, 0, 0, 1, 2, 2, 0]]  # runs, and a repeat later
    calls = []
    handle = extractor.cnn.convs.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    cells = extractor.overview_cells(overviews)
    handle.remove()
    assert calls == [4]  # runs [0 0 0] [1] [2 2] [0]
    expected = extractor.cnn.feature_map(overviews)
    torch.testing.assert_close(cells, expected)
    weights, params = torch.randn_like(expected), list(extractor.cnn.parameters())
    grads = torch.autograd.grad((cells * weights).sum(), params)  # what training needs: the CNN's gradient
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)


def test_rollouts_reuse_the_overview_maps_while_the_same_overviews_come_back():
    from matchenv.agents.siamese import SearchFeaturesExtractor

    torch.manual_seed(0)
    extractor = SearchFeaturesExtractor(make_env().observation_space)
    calls = []
    extractor.cnn.convs.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    first, second = torch.rand(4, 1, *OVERVIEW), torch.rand(4, 1, *OVERVIEW)
    with torch.no_grad():
        a = extractor.overview_cells(first)
        b = extractor.overview_cells(first.clone())  # the same overviews at the next step
        c = extractor.overview_cells(second)  # new episodes
        d = extractor.overview_cells(first[:3])  # another batch size
    assert calls == [4, 4, 3]
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(c, extractor.cnn.feature_map(second))
    torch.testing.assert_close(d, a[:3])
    calls.clear()
    cells = extractor.overview_cells(first)  # with gradients: always computed, so training sees its graph
    assert calls == [4] and cells.requires_grad
