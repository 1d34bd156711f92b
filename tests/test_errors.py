"""Bad input fails early with a ValueError that says what is wrong and how to fix it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import matchenv
from matchenv import DATASETS, TemplateSearchEnv
from matchenv.datasets import PairListDataset, SearchPair


def make_pair(
    reference_shape=(60, 60, 1), reference_dtype=np.uint8, query_shape=(28, 28, 1), target_box=(10, 10, 38, 38)
) -> SearchPair:
    return SearchPair(
        query=np.full(query_shape, 200, dtype=np.uint8),
        reference=np.zeros(reference_shape, dtype=reference_dtype),
        target_box=np.asarray(target_box, dtype=np.float64),
        label=3,
    )


def reset_with(pair: SearchPair):
    return TemplateSearchEnv(dataset=PairListDataset([pair], window_size=(28, 28))).reset(seed=0)


def test_custom_dataset_with_a_valid_pair_works():
    # Control for the failures below: the same dataset with a well-formed pair resets fine.
    obs, info = reset_with(make_pair())
    assert obs["window"].shape == (1, 28, 28) and info["trial"] == 0


# ============================================================================ names and modes


def test_unknown_dataset_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'Nope'") as err:
        gym.make("TemplateSearch-v0", dataset="Nope")
    assert all(name in str(err.value) for name in DATASETS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"action_type": "teleport"}, "unknown action_type 'teleport'.*absolute.*relative.*discrete"),
        ({"obs_mode": "depth"}, "unknown obs_mode 'depth'.*pixels.*features"),
        ({"reward_mode": "shaped"}, "unknown reward_mode 'shaped'.*sparse.*dense"),
        ({"render_mode": "ansi"}, "unknown render_mode 'ansi'.*rgb_array.*human"),
        ({"split": "val"}, "unknown split 'val'.*train.*test"),
    ],
)
def test_unknown_option_names_list_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemplateSearchEnv(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_trials": 0}, "max_trials"),
        ({"iou_threshold": 1.0}, "iou_threshold"),
        ({"iou_threshold": -0.1}, "iou_threshold"),
        ({"query_size": (0, 28)}, "query_size"),
        ({"scale_range": (1.5, 0.5)}, "scale_range"),
        ({"action_type": "relative", "action_kwargs": {"max_step": 0}}, "max_step"),
        ({"action_type": "discrete", "action_kwargs": {"step": -1}}, "step"),
    ],
)
def test_out_of_range_numbers_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemplateSearchEnv(**kwargs)


def test_features_mode_without_encoder_raises_value_error():
    with pytest.raises(ValueError, match="needs an encoder"):
        TemplateSearchEnv(obs_mode="features")


def test_encoder_in_pixels_mode_raises_value_error():
    with pytest.raises(ValueError, match='obs_mode="features"'):
        TemplateSearchEnv(encoder="pixels")


def test_unknown_encoder_name_raises_type_error_naming_the_builtin():
    with pytest.raises(TypeError, match="pixels"):
        TemplateSearchEnv(obs_mode="features", encoder="resnet")


def test_encoder_returning_the_wrong_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        TemplateSearchEnv(obs_mode="features", encoder=lambda images: np.zeros(len(images)))


def test_dataset_kwargs_with_a_dataset_instance_raise_value_error():
    with pytest.raises(ValueError, match="dataset_kwargs"):
        TemplateSearchEnv(dataset=PairListDataset([make_pair()], window_size=(28, 28)), dataset_kwargs={"noise_std": 0})


def test_bad_dataset_kwargs_through_gym_make_raise_value_error():
    with pytest.raises(ValueError, match="bogus"):
        gym.make("TemplateSearch-v0", dataset_kwargs={"bogus": 1})


# ============================================================================ actions


@pytest.mark.parametrize("action_type", ["absolute", "relative"])
def test_nan_action_raises_value_error_mentioning_nan(action_type):
    env = TemplateSearchEnv(action_type=action_type)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0], dtype=np.float32))


def test_nan_discrete_action_raises_value_error():
    env = TemplateSearchEnv(action_type="discrete")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one integer"):
        env.step(np.nan)


def test_fractional_discrete_action_raises_value_error():
    env = TemplateSearchEnv(action_type="discrete")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one integer"):
        env.step(1.5)


def test_step_before_reset_raises_runtime_error():
    with pytest.raises(RuntimeError, match="reset"):
        TemplateSearchEnv().step(np.zeros(2, dtype=np.float32))


# ============================================================================ custom datasets


def test_query_larger_than_reference_raises_value_error():
    pair = make_pair(reference_shape=(20, 20, 1), target_box=(0, 0, 20, 20))
    with pytest.raises(ValueError, match="larger than the reference"):
        reset_with(pair)


def test_float_reference_raises_value_error_with_conversion_hint():
    pair = make_pair(reference_dtype=np.float32)
    with pytest.raises(ValueError, match=r"reference must be a uint8.*float32.*astype\(np.uint8\)"):
        reset_with(pair)


def test_two_dimensional_reference_raises_value_error_with_channel_hint():
    pair = make_pair(reference_shape=(60, 60))
    with pytest.raises(ValueError, match=r"reference must be channel-last \(H, W, 1\).*\(60, 60\).*img\[:, :, None\]"):
        reset_with(pair)


def test_two_dimensional_query_raises_value_error():
    pair = make_pair(query_shape=(28, 28))
    with pytest.raises(ValueError, match="query must be channel-last"):
        reset_with(pair)


@pytest.mark.parametrize(
    "target_box",
    [(40, 40, 68, 68), (-5, 10, 23, 38), (10, 10, 10, 38), (30, 30, 20, 40), (np.nan, 0, 28, 28)],
    ids=["past-the-edge", "negative", "empty", "inverted", "nan"],
)
def test_target_box_outside_the_image_raises_value_error(target_box):
    with pytest.raises(ValueError, match="target_box"):
        reset_with(make_pair(target_box=target_box))


def test_dataset_returning_something_else_than_a_search_pair_raises_type_error():
    class Broken(PairListDataset):
        def sample(self, rng):
            return {"query": None}

    with pytest.raises(TypeError, match="SearchPair"):
        TemplateSearchEnv(dataset=Broken([make_pair()])).reset(seed=0)


def test_dataset_that_is_not_a_pair_dataset_raises_type_error():
    with pytest.raises(TypeError, match="PairDataset"):
        TemplateSearchEnv(dataset=object())


# ============================================================================ splits


def test_pair_index_on_the_train_split_raises_value_error():
    env = gym.make("TemplateSearch-v0")
    with pytest.raises(ValueError, match='split="test"'):
        env.reset(seed=0, options={"pair_index": 0})


def test_pair_index_out_of_range_raises_index_error():
    env = gym.make("TemplateSearch-v0", split="test")
    with pytest.raises(IndexError, match="test_size"):
        env.reset(options={"pair_index": 10_000})


def test_every_registered_id_is_listed_in_env_ids():
    registered = {env_id for env_id in gym.registry if env_id.startswith("TemplateSearch")}
    assert registered == set(matchenv.ENV_IDS) | set(matchenv.DOWNLOAD_ENV_IDS)
    assert not set(matchenv.ENV_IDS) & set(matchenv.DOWNLOAD_ENV_IDS)


def test_flickrlogos27_id_without_the_data_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("MATCHENV_FLICKRLOGOS27", raising=False)
    monkeypatch.setenv("MATCHENV_CACHE", str(tmp_path))  # an empty cache; conftest sets MATCHENV_OFFLINE=1
    with pytest.raises(FileNotFoundError, match="MATCHENV_FLICKRLOGOS27"):
        gym.make("TemplateSearch-FlickrLogos27-v0")
