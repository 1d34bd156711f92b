"""The environment, teacher, vector env and searcher on photograph-style pairs.

Photograph pairs differ from Noisy MNIST in three ways the env must honour: colour, a window
whose nominal size is the pair's template (not the dataset's), and letterboxed views. A small
synthetic dataset (random colour references of several sizes, templates cut from them and
rescaled) exercises all three without any image files.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import matchenv  # noqa: F401  (registers the env ids)
from matchenv.agents.policy import SearchLstmPolicy
from matchenv.agents.ppo import SearchRecurrentPPO, search_config_of
from matchenv.agents.searcher import TemplateSearcher
from matchenv.agents.teacher import env_target_action, zoom_target_box
from matchenv.datasets.photos import WINDOW_FRACTION, PhotoPairDataset, make_photo_pair, nominal_window, to_original_box
from matchenv.envs import TemplateSearchEnv
from matchenv.geometry import letterbox, resize_image
from matchenv.vector import TemplateSearchVecEnv


class RandomPhotos(PhotoPairDataset):
    """Random colour references (3 sizes, 2 aspects); the template is a rescaled crop of the target."""

    test_size = 16

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)

    def _pair(self, rng: np.random.Generator, split: str) -> object:
        h, w = [(90, 120), (120, 80), (100, 100)][int(rng.integers(3))]
        reference = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bw, bh = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        factor = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        template = resize_image(reference[y0 : y0 + bh, x0 : x0 + bw], (max(int(bh * factor), 2), max(int(bw * factor), 2)))
        return make_photo_pair(template, reference, (x0, y0, x0 + bw, y0 + bh), self.query_size, meta={"split": split})

    def sample(self, rng: np.random.Generator):
        return self._pair(rng, "train")

    def test_pair(self, index: int):
        return self._pair(np.random.default_rng([99, self._check_test_index(index)]), "test")


@pytest.fixture
def photos() -> RandomPhotos:
    return RandomPhotos()


def test_env_checker_passes(photos):
    env = TemplateSearchEnv(dataset=photos)
    check_env(env, skip_render_check=True)
    assert env.observation_space["query"].shape == (3, 32, 32)
    assert env.action_space.shape == (3,)  # centre and scale


def test_window_is_the_pairs_nominal_window_times_the_scale(photos):
    env = TemplateSearchEnv(dataset=photos)
    env.reset(seed=3)
    pair = env.pair
    img_h, img_w = pair.reference.shape[:2]
    nominal_h, nominal_w = nominal_window(pair.template.shape, pair.reference.shape)
    assert env.window_size == pair.window_size == (nominal_h, nominal_w)
    # the template's aspect, a side of WINDOW_FRACTION of the reference's shorter side
    assert nominal_w / nominal_h == pytest.approx(pair.template.shape[1] / pair.template.shape[0])
    assert (nominal_h * nominal_w) ** 0.5 == pytest.approx(WINDOW_FRACTION * min(img_h, img_w))
    lo, hi = photos.scale_range
    for scale_action, scale in [(-1.0, lo), (0.0, (lo * hi) ** 0.5), (1.0, hi)]:
        env.reset(seed=3)
        _, _, _, _, info = env.step(np.array([0.0, 0.0, scale_action], dtype=np.float32))
        x0, y0, x1, y1 = info["window_box"]
        expected_w = min(max(round(nominal_w * scale), 1), img_w)
        expected_h = min(max(round(nominal_h * scale), 1), img_h)
        assert (x1 - x0, y1 - y0) == (expected_w, expected_h)


def test_views_are_letterboxed(photos):
    env = TemplateSearchEnv(dataset=photos)
    obs, _ = env.reset(seed=1)
    pair = env.pair
    np.testing.assert_array_equal(obs["query"], letterbox(pair.template, (32, 32)).transpose(2, 0, 1))
    np.testing.assert_array_equal(obs["window"], letterbox(pair.reference, (32, 32)).transpose(2, 0, 1))
    obs, _, _, _, info = env.step(np.array([0.3, -0.2, 0.1], dtype=np.float32))
    x0, y0, x1, y1 = (int(v) for v in info["window_box"])
    np.testing.assert_array_equal(obs["window"], letterbox(pair.reference[y0:y1, x0:x1], (32, 32)).transpose(2, 0, 1))


def test_teacher_reaches_the_target_and_zoom_boxes_hold_it(photos):
    env = TemplateSearchEnv(dataset=photos, privileged_info=True)
    ious = []
    for seed in range(20):
        env.reset(seed=seed)
        _, _, _, _, info = env.step(env_target_action(env))
        ious.append(info["iou"])
        target = env.pair.target_box
        for trial in range(3):
            box = zoom_target_box(target, trial, env.pair.reference.shape[:2])
            assert box[0] <= target[0] and box[1] <= target[1] and box[2] >= target[2] and box[3] >= target[3]
    # Only rounding and the template's aspect (a rescaled crop keeps it up to a pixel) separate them.
    assert np.median(ious) > 0.85


def test_vector_env_matches_dummy_vec_env_on_photographs(photos):
    from tests.test_vector import run_both

    reference = DummyVecEnv([lambda: TemplateSearchEnv(dataset=photos)] * 3)
    batched = TemplateSearchVecEnv(3, "TemplateSearch-v0", dataset=photos)
    reference.seed(5)
    batched.seed(5)
    assert run_both(reference, batched, steps=13, rng=np.random.default_rng(1)) >= 3


def test_search_config_and_searcher_map_boxes_to_the_given_pixels(photos, tmp_path):
    torch.manual_seed(0)
    env = TemplateSearchEnv(dataset=RandomPhotos(max_side=64))
    config = search_config_of(env)
    assert config == {"max_trials": 6, "scale_range": [0.25, 3.0], "letterbox": True, "max_side": 64,
                      "window_fraction": WINDOW_FRACTION}
    model = SearchRecurrentPPO("SearchLstmPolicy", DummyVecEnv([lambda: env]), n_steps=6, batch_size=6, search_config=config)
    model.save(tmp_path / "photo.zip")
    searcher = TemplateSearcher.load(tmp_path / "photo.zip")
    assert (searcher.scale_range, searcher.letterbox, searcher.max_side) == ((0.25, 3.0), True, 64)
    assert searcher.window_fraction == WINDOW_FRACTION

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)  # shrunk by 64/300 inside the searcher
    query = reference[50:90, 100:160].copy()
    result = searcher.locate(query, reference)
    for x0, y0, x1, y1 in result.path:  # boxes in the pixels given, with the query's aspect
        assert 0 <= x0 < x1 <= 300 + 1e-6 and 0 <= y0 < y1 <= 200 + 1e-6
    assert result.path.shape == (6, 4) and result.scores.shape == (6,)
    # the same search on the pre-shrunk images gives the same windows, scaled
    factor = 64 / 300
    small = searcher.locate(resize_image(query, (round(40 * factor), round(60 * factor))), resize_image(reference, (43, 64)))
    assert np.allclose(small.path / factor, result.path, atol=2 / factor)


def test_to_original_box_inverts_the_working_scale():
    box = np.array([10.0, 20.0, 30.0, 50.0])
    np.testing.assert_allclose(to_original_box(box, {"working_scale": 0.5}), box * 2)
    np.testing.assert_allclose(to_original_box(box, {}), box)


def test_policy_handles_colour_observations(photos):
    env = gym.make("TemplateSearch-v0", dataset=photos)
    policy = SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3)
    obs, _ = env.reset(seed=0)
    obs_t, _ = policy.obs_to_tensor(obs)
    features = policy.extract_features(obs_t)
    assert features.shape == (1, 2 * 32 + 5)


def test_overview_observation_and_similarity_map(photos, tmp_path):
    env = TemplateSearchEnv(dataset=photos, overview_size=(64, 64))
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=2)
    np.testing.assert_array_equal(obs["overview"], letterbox(env.pair.reference, (64, 64)).transpose(2, 0, 1))
    step_obs, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(step_obs["overview"], obs["overview"])  # the same all episode

    policy = SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3)
    extractor = policy.features_extractor
    assert extractor.map_size == (8, 8)  # strides 2-2-1-2-1: 64 / 8
    assert extractor.features_dim == 2 * 32 + 5 + 64
    obs_t, _ = policy.obs_to_tensor(obs)
    features = policy.extract_features(obs_t)
    assert features.shape == (1, extractor.features_dim)
    similarity = features[0, -64:]
    assert torch.all(similarity.abs() <= 1 + 1e-5)  # cosine similarities

    # the searcher computes the same similarity map once per search
    config = search_config_of(env)
    model = SearchRecurrentPPO("SearchLstmPolicy", DummyVecEnv([lambda: env]), n_steps=6, batch_size=6, search_config=config)
    model.save(tmp_path / "overview.zip")
    searcher = TemplateSearcher.load(tmp_path / "overview.zip")
    assert searcher.overview_size == (64, 64)
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    result = searcher.locate(reference[10:40, 20:50], reference)
    assert result.path.shape == (6, 4)


def test_vector_env_matches_dummy_vec_env_with_an_overview(photos):
    from tests.test_vector import run_both

    reference = DummyVecEnv([lambda: TemplateSearchEnv(dataset=photos, overview_size=(48, 40))] * 2)
    batched = TemplateSearchVecEnv(2, "TemplateSearch-v0", dataset=photos, overview_size=(48, 40))
    reference.seed(3)
    batched.seed(3)
    assert run_both(reference, batched, steps=13, rng=np.random.default_rng(2)) >= 2


def test_overview_point_maps_reference_pixels_into_the_letterboxed_overview(photos):
    env = TemplateSearchEnv(dataset=photos, overview_size=(64, 64))
    for seed in range(6):
        env.reset(seed=seed)
        img_h, img_w = env.pair.reference.shape[:2]
        factor = min(64 / img_h, 64 / img_w)
        x0, y0 = env.overview_point(0, 0)
        x1, y1 = env.overview_point(img_w, img_h)
        assert (x1 - x0, y1 - y0) == pytest.approx((img_w * factor, img_h * factor), abs=1)
        assert (x0 + x1, y0 + y1) == pytest.approx((64, 64), abs=1)  # centred in the padding
    with pytest.raises(RuntimeError, match="overview_size"):
        TemplateSearchEnv(dataset=photos).overview_point(0, 0)


def test_localization_loss_prefers_the_targets_cell():
    from matchenv.agents.imitation import localization_loss

    similarity = torch.full((2, 16), -0.5)
    similarity[0, 5] = similarity[1, 10] = 0.9  # row 1 col 1, row 2 col 2 of a 4x4 map
    right = np.array([[1.5 * 16, 1.5 * 16], [2.5 * 16, 2.5 * 16]])  # centres of those cells in a 64x64 overview
    wrong = right[::-1].copy()
    loss_right, hit_right = localization_loss(similarity, right, (4, 4), (64, 64))
    loss_wrong, hit_wrong = localization_loss(similarity, wrong, (4, 4), (64, 64))
    assert float(hit_right) == 1.0 and float(hit_wrong) == 0.0
    assert float(loss_right) < float(loss_wrong)


def test_imitation_with_an_overview_trains_the_localization_loss(photos):
    from matchenv.agents.imitation import DAggerTrainer, ImitationConfig

    torch.manual_seed(0)
    envs = [TemplateSearchEnv(dataset=photos, overview_size=(64, 64)) for _ in range(4)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    policy = SearchLstmPolicy(envs[0].observation_space, envs[0].action_space, lambda _: 1e-3)
    trainer = DAggerTrainer(policy, envs, ImitationConfig(teacher="zoom"), seed=0)
    batch, losses = trainer.iteration()
    assert batch.target_in_overview.shape == (4, 2)
    assert np.isfinite(losses["localization"]) and 0 <= losses["localization_accuracy"] <= 1


@pytest.mark.parametrize("overview", [None, (64, 64)])
def test_searcher_replays_the_environment_exactly(photos, overview):
    """The inference API must show the policy what the env showed it in training, window for window."""
    from matchenv.agents.rollout import run_episodes

    torch.manual_seed(1)
    env = TemplateSearchEnv(dataset=photos, split="test", overview_size=overview)
    policy = SearchLstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3)
    with torch.no_grad():  # SB3 initialises the action head near 0: make actions depend on the input
        torch.nn.init.normal_(policy.action_net.weight, std=1.0)
    config = search_config_of(env)
    searcher = TemplateSearcher(policy, max_trials=config["max_trials"], scale_range=config["scale_range"],
                                letterbox=True, max_side=config["max_side"], window_fraction=config["window_fraction"])
    envs = [TemplateSearchEnv(dataset=photos, split="test", overview_size=overview) for _ in range(4)]
    batch = run_episodes(policy, envs, [{"pair_index": i} for i in range(4)])
    for i in range(4):
        pair = photos.test_pair(i)
        result = searcher.locate(pair.matcher_query, pair.reference)
        np.testing.assert_allclose(result.path, batch.window_boxes[:, i], atol=1e-6)
    assert len({tuple(batch.window_boxes[-1, i]) for i in range(4)}) > 1  # not a constant answer


def test_a_template_larger_than_the_reference_is_shrunk_to_fit():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (240, 160, 3), dtype=np.uint8)
    template = rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)
    pair = make_photo_pair(template, reference, (10, 10, 50, 30), (32, 32))
    assert pair.template.shape[0] <= 240 and pair.template.shape[1] <= 160
    assert pair.template.shape[1] / pair.template.shape[0] == pytest.approx(3.0, rel=0.02)
