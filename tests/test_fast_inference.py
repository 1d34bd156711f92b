"""The searcher's CPU fast path (the CNN and the policy's decisions exported) computes what the policy computes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import matchenv  # noqa: F401  (registers the environments)
from matchenv.agents.cnn_runtime import make_cnn_runtime, onnxruntime_available
from matchenv.agents.policy_runtime import PolicyRuntime
from matchenv.agents.policy import PolicyStep, SearchLstmPolicy
from matchenv.agents.searcher import TemplateSearcher
from matchenv.agents.siamese import SiameseCNN

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


RUNTIME_KINDS = ["torch", "torchscript"] + (["onnxruntime"] if onnxruntime_available() else [])


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_search_steps_equal_the_torch_modules(case, kind):
    """The exported opening, looks and match distances compute what the policy's modules compute."""
    policy, env = random_policy(case)
    rng = np.random.default_rng(0)
    n = 16
    channels, height, width = policy.observation_space["query"].shape
    overview_size = env.unwrapped.overview_size
    to_tensor = lambda images: torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    images = lambda *size: rng.integers(0, 256, (n, *(size or (height, width)), channels), dtype=np.uint8)  # noqa: E731
    queries, views = images(), images()
    overviews = None if overview_size is None else images(*overview_size)
    runtime = PolicyRuntime(policy, kind, overview_size)
    assert runtime.name == kind
    search = runtime.start(np.concatenate([queries, views]), overviews, max_trials=4)
    step, cnn = PolicyStep(policy), policy.features_extractor.cnn
    with torch.no_grad():
        query, window = cnn(to_tensor(queries)), cnn(to_tensor(views))
        similarity = (torch.zeros(n, 0) if overviews is None
                      else policy.features_extractor.cell_similarity(query, cnn.feature_map(to_tensor(overviews))))
        h = c = torch.zeros(n, 32)
        location = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(n, 1)
        expected, h, c = step(query, window, location, torch.ones(n, 1), similarity, h, c)
    np.testing.assert_allclose(search.actions, expected.numpy(), rtol=1e-4, atol=1e-4)
    for t in range(1, 4):  # the state carried between looks too
        crops = images()
        location = np.concatenate([rng.uniform(0.1, 0.9, (n, 2)), rng.uniform(0.2, 1.0, (n, 2))], axis=1).astype(np.float32)
        rows = None if t < 3 else np.arange(1, n, 2)  # some searches ended (stop_score)
        picked = slice(None) if rows is None else rows
        window_emb = search.look(crops[picked], location[picked], rows)
        distance = search.distance(window_emb, rows)
        with torch.no_grad():
            window = cnn(to_tensor(crops))
            expected, h, c = step(query, window, torch.from_numpy(location), torch.full((n, 1), (4 - t) / 4), similarity, h, c)
            expected_distance = policy.match_head(query, window)
        np.testing.assert_allclose(window_emb, window.numpy()[picked], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(search.actions[picked], expected.numpy()[picked], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(distance, expected_distance.numpy()[picked], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(search.h[picked], h.numpy()[picked], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_actor_step_equals_the_training_forward(case):
    """The decision the searchers export (PolicyStep, through actor_step) is SB3's recurrent
    forward, the one PPO and imitation train, over a whole episode."""
    policy, env = random_policy(case)
    obs, _ = env.reset(seed=0)
    state, sb3_state = None, (torch.zeros(1, 1, 32), torch.zeros(1, 1, 32))
    for t in range(4):
        obs_t, _ = policy.obs_to_tensor({k: v[None] for k, v in obs.items()})
        with torch.no_grad():
            mean, state = policy.actor_step(policy.extract_features(obs_t), state)
            distribution, sb3_state = policy.get_distribution(obs_t, sb3_state, torch.tensor([float(t == 0)]))
        torch.testing.assert_close(mean, distribution.distribution.mean, rtol=1e-5, atol=1e-5)
        obs, *_ = env.step(np.clip(mean[0].numpy(), -1.0, 1.0))


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


# ---------------------------------------------------------------------------------------------
# Ending a search when the match head accepts the window (stop_score)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("case", ["plain", "pointer"])
def test_stop_score_ends_each_search_at_its_first_accepted_window(case, fast):
    policy, env = random_policy(case, seed=2)
    dataset = env.unwrapped.dataset
    pairs = [dataset.test_pair(i) for i in range(12)]
    queries, references = [p.query for p in pairs], [p.reference for p in pairs]
    # A random match head's distances are far above the margin of 1 (every score clipped to 0): a
    # wide margin spreads the scores, and their median is a threshold that some windows pass and
    # others do not, so that the searches in one batch end at different trials.
    full = TemplateSearcher(policy, fast=fast, margin=1e3).locate_batch(queries, references)
    threshold = float(np.median(np.concatenate([r.scores for r in full])))
    stopping = TemplateSearcher(policy, fast=fast, margin=1e3, stop_score=threshold)
    batched = stopping.locate_batch(queries, references)
    lengths = set()
    for pair, whole, early in zip(pairs, full, batched):
        accepted = np.flatnonzero(whole.scores >= threshold)
        length = accepted[0] + 1 if len(accepted) else len(whole.path)
        lengths.add(length)
        # The same windows as the full search up to the first accepted one, and that one is the answer.
        np.testing.assert_array_equal(early.path, whole.path[:length])
        np.testing.assert_allclose(early.scores, whole.scores[:length], atol=1e-5)
        np.testing.assert_array_equal(early.box, early.path[-1])
        np.testing.assert_array_equal(stopping.locate(pair.query, pair.reference).path, early.path)
    assert len(lengths) > 1  # the batch really mixed early and late stops


def test_stop_score_is_checked():
    policy, _ = random_policy("plain")
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="stop_score"):
            TemplateSearcher(policy, stop_score=bad)


def test_stop_score_refuses_an_agent_without_a_trained_match_head(tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from matchenv.agents.ppo import SearchRecurrentPPO

    venv = DummyVecEnv([lambda: gym.make("TemplateSearch-v0")])
    model = SearchRecurrentPPO("SearchLstmPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu",
                               aux_weight=0.0, policy_kwargs=dict(lstm_hidden_size=32))
    model.save(tmp_path / "no_head.zip")
    assert TemplateSearcher.load(tmp_path / "no_head.zip").stop_score is None
    with pytest.raises(ValueError, match="aux_weight=0"):
        TemplateSearcher.load(tmp_path / "no_head.zip", stop_score=0.5)


# ---------------------------------------------------------------------------------------------
# CNN runtimes (agents/cnn_runtime.py)
# ---------------------------------------------------------------------------------------------
RUNTIME_KINDS = ["torch", "torchscript", pytest.param("onnxruntime", marks=pytest.mark.skipif(
    not onnxruntime_available(), reason='needs onnx and onnxruntime (dependencies of matchenv): pip install onnx onnxruntime'))]


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_cnn_runtimes_compute_the_trained_cnn(kind, channels):
    torch.manual_seed(0)
    cnn = SiameseCNN(in_channels=channels).eval()
    runtime = make_cnn_runtime(kind, cnn, (channels, 28, 28))
    assert runtime.name == kind
    rng = np.random.default_rng(0)
    for shape in [(1, 28, 28), (5, 28, 28), (2, 100, 80)]:  # batch and image size are free
        images = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            np.testing.assert_allclose(runtime.embed(images), cnn(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_searchers_on_every_runtime_place_the_same_windows(kind):
    policy, env = random_policy("pointer", seed=3)
    reference = TemplateSearcher(policy, fast=False)
    searcher = TemplateSearcher(policy, cnn_runtime=kind)
    assert searcher._cnn.name == kind
    dataset = env.unwrapped.dataset
    for pair in [dataset.test_pair(i) for i in range(6)]:
        a, b = searcher.locate(pair.query, pair.reference), reference.locate(pair.query, pair.reference)
        np.testing.assert_array_equal(a.path, b.path)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


class _CorrelateWithGivenKernel(torch.nn.Module):
    def forward(self, images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(images, kernel)


@pytest.mark.skipif(not onnxruntime_available(), reason='needs onnx and onnxruntime (dependencies of matchenv): pip install onnx onnxruntime')
def test_onnx_session_takes_run_time_convolution_weights_of_any_size():
    from matchenv.agents.onnx_export import onnx_session

    example = (torch.zeros(1, 4, 20, 20), torch.zeros(2, 4, 3, 3))
    axes = {"images": {2: "height", 3: "width"}, "out": {2: "rows", 3: "cols"}}
    session = onnx_session(_CorrelateWithGivenKernel(), example, ["images", "kernel"], ["out"], axes,
                           weight_axes={"kernel": {2: "kernel_rows", 3: "kernel_cols"}})
    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 4, 17, 23)).astype(np.float32)
    for shape in [(2, 4, 3, 3), (2, 4, 5, 2), (2, 4, 1, 7)]:  # the exported shape, then others
        kernel = rng.standard_normal(shape).astype(np.float32)
        expected = torch.nn.functional.conv2d(torch.from_numpy(images), torch.from_numpy(kernel)).numpy()
        np.testing.assert_allclose(session.run(None, {"images": images, "kernel": kernel})[0], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'weights', which is not an input or output"):
        onnx_session(_CorrelateWithGivenKernel(), example, ["images", "kernel"], ["out"], axes, weight_axes={"weights": {2: "k"}})


def test_cnn_runtime_choice_is_checked(monkeypatch):
    cnn = SiameseCNN()
    with pytest.raises(ValueError, match="cnn_runtime must be one of"):
        make_cnn_runtime("tensorrt", cnn, (1, 28, 28))
    # without onnxruntime (both places that ask: the explicit choice and the runtime chain)
    monkeypatch.setattr("matchenv.agents.cnn_runtime.onnxruntime_available", lambda: False)
    monkeypatch.setattr("matchenv.agents.exported_module.onnxruntime_available", lambda: False)
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
        make_cnn_runtime("onnxruntime", cnn, (1, 28, 28))
    assert make_cnn_runtime("auto", cnn, (1, 28, 28)).name == "torchscript"
    # the policy's decisions fall back the same way
    assert PolicyRuntime(random_policy("pointer")[0], "auto", (48, 48)).name == "torchscript"
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
        PolicyRuntime(random_policy("plain")[0], "onnxruntime")


# ---------------------------------------------------------------------------------------------
# The whole search as one ONNX Runtime call (agents/fused_search.py)
# ---------------------------------------------------------------------------------------------
needs_onnxruntime = pytest.mark.skipif(not onnxruntime_available(), reason='needs onnx and onnxruntime (dependencies of matchenv): pip install onnx onnxruntime')


@needs_onnxruntime
@pytest.mark.parametrize("case", ["plain", "pointer"])
def test_fused_search_places_the_windows_of_the_step_by_step_search(case):
    policy, env = random_policy(case, seed=4)
    fused, stepwise = TemplateSearcher(policy), TemplateSearcher(policy, fused=False)
    assert fused._fused is not None and stepwise._fused is None
    dataset = env.unwrapped.dataset
    pairs = [dataset.test_pair(i) for i in range(10)]
    queries, references = [p.query for p in pairs], [p.reference for p in pairs]
    expected = stepwise.locate_batch(queries, references)
    for got in (fused.locate_batch(queries, references), [fused.locate(q, r) for q, r in zip(queries, references)]):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.path, b.path)
            np.testing.assert_array_equal(a.box, b.box)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@needs_onnxruntime
def test_fused_search_leaves_what_it_cannot_do_to_the_step_by_step_path():
    policy, env = random_policy("plain", seed=5)
    fused, stepwise = TemplateSearcher(policy), TemplateSearcher(policy, fused=False)
    rng = np.random.default_rng(0)
    # A query smaller than the observation (its window is resized) and references of two sizes.
    queries = [rng.integers(0, 256, (20, 24, 1), dtype=np.uint8), rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)]
    references = [rng.integers(0, 256, (90, 100, 1), dtype=np.uint8), rng.integers(0, 256, (70, 64, 1), dtype=np.uint8)]
    for a, b in zip(fused.locate_batch(queries, references), stepwise.locate_batch(queries, references)):
        np.testing.assert_array_equal(a.path, b.path)
    with pytest.raises(ValueError, match="fused=True needs"):
        TemplateSearcher(*random_policy("scale")[:1], scale_range=(0.5, 2.0), fused=True)


@needs_onnxruntime
def test_a_search_that_cannot_be_fused_falls_back_with_a_warning(monkeypatch):
    policy, env = random_policy("plain", seed=6)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr("matchenv.agents.searcher.FusedSearch", broken)
    with pytest.warns(RuntimeWarning, match="searching step by step"):
        searcher = TemplateSearcher(policy)
    assert searcher._fused is None
    pair = env.unwrapped.dataset.test_pair(0)
    np.testing.assert_array_equal(searcher.locate(pair.query, pair.reference).path,
                                  TemplateSearcher(policy, fused=False).locate(pair.query, pair.reference).path)
    with pytest.raises(RuntimeError, match="exporter unavailable"):
        TemplateSearcher(policy, fused=True)
