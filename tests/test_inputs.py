"""Bad and extreme inputs get a clear error or a documented answer, never an out-of-image box or a
runtime's internal error: tiny queries, NaN images, references thinner than the query or than a
searcher needs, non-integer ``max_trials``, costly exhaustive matches, and model files passed to
the wrong loader. The registry-wide checks run every model :func:`matchenv.list_models` names."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import matchenv
from matchenv.agents.baselines import CostlyMatchWarning, check_pair, make_matcher
from matchenv.agents.baselines import base as baselines_base
from matchenv.agents.searcher import MIN_QUERY_SIDE, prepare_image

PRETRAINED = Path(__file__).resolve().parents[1] / "agents" / "pretrained"
#: Models that search for the target at scales of their own (the query's size is not the
#: target's), so a query larger than the reference is a documented, valid input for them.
SCALE_FREE = {"photo-look", "photo-agent", "flickrlogos27"}
MODELS = [info.name for info in matchenv.list_models()]

_LOADED: dict[str, Any] = {}


def model(name: str) -> Any:
    """The model's own searcher or matcher (``matchenv.load(name).model``), loaded once: its
    boxes are checked before the :class:`matchenv.Searcher` wrapper clips them."""
    if name not in _LOADED:
        try:
            _LOADED[name] = matchenv.load(name).model
        except ImportError as err:  # an optional extra (qatm-imagenet's ImageNet weights)
            pytest.skip(f"{name} needs an optional package: {err}")
    return _LOADED[name]


def texture(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def assert_inside(result: Any, reference: np.ndarray) -> None:
    """Every box the result gives (the answer, its path) lies inside ``reference``."""
    height, width = reference.shape[:2]
    for boxes in (result.box, getattr(result, "path", None), getattr(result, "refined_from", None)):
        if boxes is None:
            continue
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        assert np.isfinite(boxes).all()
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= width).all(), boxes
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= height).all(), boxes
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all(), boxes


# ------------------------------------------------------------------ every model in the registry
@pytest.mark.parametrize("name", MODELS)
def test_every_model_refuses_a_1x1_query_clearly(name):
    with pytest.raises(ValueError, match=r"1x1 px, smaller than the \d+x\d+ px"):
        model(name).locate(texture((1, 1, 3)), texture((100, 100, 3)))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_says_nan_for_a_nan_image(name):
    query = np.full((28, 28, 3), 0.5, np.float32)
    query[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"query\S* has NaN values.*np\.nan_to_num"):
        model(name).locate(query, texture((100, 100, 3)))
    reference = np.full((100, 100, 3), 0.5)
    reference[10, 10, 1] = np.inf
    with pytest.raises(ValueError, match=r"reference\S* has infinite \(inf\) values"):
        model(name).locate(texture((28, 28, 3)), reference)


@pytest.mark.parametrize("name", MODELS)
def test_a_reference_smaller_than_the_query_is_refused_or_searched_at_scale(name):
    query, reference = texture((40, 40, 3)), texture((30, 30, 3), seed=1)
    if name in SCALE_FREE:  # documented: these find the target at any scale, so they answer
        assert_inside(model(name).locate(query, reference), reference)
        return
    with pytest.raises(ValueError, match=r"40x40 px\) is larger than the reference|smaller than the query \(40x40 px\)"):
        model(name).locate(query, reference)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(5, 300, 3), (5, 3000, 3), (300, 5, 3)], ids=["5x300", "5x3000", "300x5"])
def test_thin_references_give_boxes_inside_or_a_clear_error(name, shape):
    query, reference = texture((4, 4, 3)), texture(shape, seed=2)
    if name.endswith("-large"):  # the coarse look needs a few pixels each way: said, with what to do
        with pytest.raises(ValueError, match=r"too thin for the coarse look.*at least \d+ px.*pad the reference"):
            model(name).locate(query, reference)
        return
    assert_inside(model(name).locate(query, reference), reference)


# ------------------------------------------------------------------ the defects as found
def test_coarse_to_fine_thin_reference_names_both_sizes_without_a_runtime_error(capfd):
    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher

    searcher = CoarseToFineSearcher.from_pretrained("cluttered-mnist")
    capfd.readouterr()
    with pytest.raises(ValueError, match=r"reference \(2000x5 px\) is smaller than the query \(28x28 px\).*larger reference"):
        searcher.locate(texture((28, 28)), np.zeros((5, 2000), np.uint8))
    assert "onnxruntime" not in capfd.readouterr().err.lower()  # no red ONNX Runtime log line
    with pytest.raises(ValueError, match=r"reference \(2000x5 px\) is too thin for the coarse look"):
        searcher.propose(np.zeros((5, 2000), np.uint8))
    reference = texture((40, 2000), seed=3)  # thick enough: searched, the answer inside
    assert_inside(searcher.locate(texture((28, 28)), reference), reference)


def test_photograph_agent_on_a_strip_answers_inside_and_keeps_its_path_consistent():
    from matchenv.agents.searcher import TemplateSearcher

    searcher = TemplateSearcher.from_pretrained("flickrlogos27")
    for seed in range(3):
        reference = texture((5, 3000, 3), seed)  # one working pixel high: windows came back 9.4 px tall
        result = searcher.locate(texture((4, 4, 3), seed), reference)
        assert_inside(result, reference)
        assert np.isfinite(result.score)  # the (clipped) answer is still one of its (clipped) windows


def test_prepare_image_messages_and_no_copy_for_uint8():
    image = texture((20, 30, 3))
    prepared = prepare_image(image, 3)
    assert np.shares_memory(prepared, image)  # the hot path: a view, no copy
    floats = np.full((20, 30), 0.25)
    floats[0, 0] = np.nan
    floats[1, 1] = -np.inf
    with pytest.raises(ValueError, match=r"img has NaN and infinite \(inf\) values \(float64\).*uint8"):
        prepare_image(floats, 1, name="img")
    with pytest.raises(ValueError, match=r"float in \[0, 1\], got float64 with values in \[200, 200\].*image / 255.0"):
        prepare_image(np.full((20, 30), 200.0), 1)
    with pytest.raises(ValueError, match=rf"query is 3x20 px, smaller than the {MIN_QUERY_SIDE}x{MIN_QUERY_SIDE} px"):
        prepare_image(texture((20, 3)), 1, name="query", min_side=MIN_QUERY_SIDE)
    assert prepare_image(texture((4, 4)), 1, min_side=MIN_QUERY_SIDE).shape == (4, 4, 1)  # the minimum itself is fine


def test_check_pair_and_ncc_explain_tiny_queries():
    with pytest.raises(ValueError, match=r"query is 1x5 px, smaller than the 2x2 px"):
        check_pair(texture((5, 1)), texture((50, 50)))
    with pytest.raises(ValueError, match="query has NaN values"):
        check_pair(np.full((5, 5), np.nan), texture((50, 50)))
    with pytest.raises(ValueError, match=r"uint8 \(0-255\), got float32 \(for floats in \[0, 1\]"):
        check_pair(np.zeros((5, 5), np.float32), texture((50, 50)))
    with pytest.raises(ValueError, match=r"no scale in \(0\.3,\) .* keep at least 2 px a side"):
        make_matcher("ncc", scales=(0.3,)).locate(texture((3, 3)), texture((50, 50)))


@pytest.mark.parametrize("max_trials", [1.7, 6.0, "6", True, None])
def test_max_trials_must_be_a_whole_number(max_trials):
    import gymnasium as gym

    with pytest.raises(ValueError, match=r"max_trials must be a whole number of windows \(an int >= 1"):
        gym.make("TemplateSearch-v0", max_trials=max_trials)


def test_max_trials_takes_python_and_numpy_integers():
    import gymnasium as gym

    assert gym.make("TemplateSearch-v0", max_trials=np.int64(3)).unwrapped.max_trials == 3
    assert gym.make("TemplateSearch-v0", max_trials=2).unwrapped.max_trials == 2
    with pytest.raises(ValueError, match="max_trials must be >= 1"):
        gym.make("TemplateSearch-v0", max_trials=0)


# ------------------------------------------------------------------ costly exhaustive matches
@pytest.mark.parametrize("name", ["mtm", "bbs", "ddis"])
def test_exhaustive_baselines_expect_a_6000px_reference_to_be_costly(name):
    matcher = make_matcher(name)
    windows, seconds, memory = matcher.expected_cost((28, 28), (6000, 6000))
    assert windows == 5973 ** 2
    assert seconds > baselines_base.COSTLY_SECONDS or memory > baselines_base.COSTLY_BYTES
    _, seconds, memory = matcher.expected_cost((28, 28, 3), (480, 640, 3))  # a photograph: no warning
    assert seconds <= baselines_base.COSTLY_SECONDS and memory <= baselines_base.COSTLY_BYTES
    if name != "mtm":  # the stride the warning suggests: k * k times fewer windows
        strided = make_matcher(name, stride=4).expected_cost((28, 28), (6000, 6000))
        assert strided[0] == 1494 ** 2 and strided[1] < matcher.expected_cost((28, 28), (6000, 6000))[1] / 10


@pytest.mark.parametrize("name", ["mtm", "bbs", "ddis"])
def test_costly_warning_once_per_matcher_and_the_same_answer(name, monkeypatch):
    query, reference = texture((9, 9)), texture((30, 40), seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a small pair: no warning
        expected = make_matcher(name).locate(query, reference)
    monkeypatch.setattr(baselines_base, "COSTLY_SECONDS", 0.0)  # every pair is now "costly"
    matcher = make_matcher(name)
    with pytest.warns(CostlyMatchWarning, match=r"expect roughly .* on one CPU thread .* GiB of memory .*shrink the reference"):
        result = matcher.locate(query, reference)
    np.testing.assert_array_equal(result.box, expected.box)
    assert result.score == expected.score
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per matcher
        matcher.locate(query, reference)


# ------------------------------------------------------------------ model files and their loaders
def _loaders() -> dict[str, Any]:
    from matchenv.agents.box_refiner import load_refiner_file
    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher
    from matchenv.agents.look_agent import LookAgentSearcher
    from matchenv.agents.multiscale_look import LookSearcher
    from matchenv.agents.photo_search import PhotoSearcher
    from matchenv.agents.searcher import TemplateSearcher

    return {"TemplateSearcher": TemplateSearcher.load, "LookSearcher": LookSearcher.load,
            "LookAgentSearcher": LookAgentSearcher.load, "PhotoSearcher": PhotoSearcher.load,
            "CoarseToFineSearcher": CoarseToFineSearcher.load, "load_refiner_file": load_refiner_file}


#: shipped file -> what a wrong loader's message must say it is and which loader takes it
SHIPPED = {
    "photo_look.pt": r"is a look file \(kind 'multiscale-look'.*LookSearcher\.load",
    "photo_agent.pt": r"is a photograph agent file \(kind 'look-agent'.*LookAgentSearcher\.load",
    "photo_search.pt": r"is a photograph search file \(kind 'photo-search'.*PhotoSearcher\.load",
    "cluttered_mnist.zip": r"is a search agent checkpoint file \(written by train/ppo_lstm\.py\).*TemplateSearcher\.load",
    "cluttered_mnist_proposer.pt": r"is a proposer file \(written by train/coarse_proposer\.py\).*CoarseToFineSearcher\.load",
    "flickrlogos27_refiner.pt": r"is a box refiner file \(kind 'box-refiner'.*refiner=path",
}
#: loader -> the shipped file it takes
OWN = {"TemplateSearcher": "cluttered_mnist.zip", "LookSearcher": "photo_look.pt", "LookAgentSearcher": "photo_agent.pt",
       "PhotoSearcher": "photo_search.pt", "CoarseToFineSearcher": "cluttered_mnist_proposer.pt",
       "load_refiner_file": "flickrlogos27_refiner.pt"}


@pytest.mark.parametrize("loader, filename", [(loader, filename) for loader in sorted(OWN) for filename in sorted(SHIPPED)
                                              if OWN[loader] != filename])
def test_a_model_file_of_another_kind_says_what_it_is_and_who_loads_it(loader, filename):
    path = PRETRAINED / filename
    with pytest.raises(ValueError, match=SHIPPED[filename]) as err:
        _loaders()[loader](path)
    assert str(path) in str(err.value)  # the file, named


@pytest.mark.parametrize("loader", sorted(OWN))
def test_a_folder_or_a_text_file_is_named_in_the_error(loader, tmp_path):
    load = _loaders()[loader]
    with pytest.raises(IsADirectoryError, match=rf"{re.escape(str(tmp_path))} is a folder"):
        load(tmp_path)
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(text))} is not a .*(written by|checkpoint)"):
        load(text)


def test_matchenv_load_of_a_folder_or_a_refiner_stays_clear(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        matchenv.load(tmp_path)
    with pytest.raises(ValueError, match="box refiner"):
        matchenv.load(PRETRAINED / "flickrlogos27_refiner.pt")
