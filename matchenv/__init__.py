"""matchenv: template matching learned as a search.

Find a query in a reference with any shipped model or baseline (one result type, :class:`Match`)::

    import matchenv

    match = matchenv.locate(query, reference, model="photo")     # RGB uint8 arrays
    print(match.box, match.score, match.found)                   # box: (x0, y0, x1, y1) pixels
    matchenv.list_models()                                        # every name load() takes

Importing the package registers the Gymnasium environments::

    import gymnasium as gym
    import matchenv

    env = gym.make("TemplateSearch-v0")                 # Cluttered MNIST
    env = gym.make("TemplateSearch-MixedMNIST-v0")      # one id per built-in dataset

``gym.make("matchenv:TemplateSearch-v0")`` imports the package by itself.
"""

from gymnasium.envs.registration import register, registry

from matchenv.datasets import DATASETS, make_dataset
from matchenv.envs import TemplateSearchEnv
from matchenv.match import Match
from matchenv.models import ModelInfo, Searcher, list_models, load, locate

__version__ = "0.1.0"

ENTRY_POINT = "matchenv.envs.template_search:TemplateSearchEnv"

#: Registered environment ids whose data ships with matchenv (they work offline), and their kwargs.
ENV_IDS: dict[str, dict] = {"TemplateSearch-v0": {"dataset": "ClutteredMNIST"}}
ENV_IDS.update({f"TemplateSearch-{name}-v0": {"dataset": name} for name in ("TranslatedMNIST", "ClutteredMNIST", "MixedMNIST")})
#: Registered ids whose data is found on disk or downloaded on first use (FlickrLogos-27: ~100 MB).
#: Other photograph datasets need a path: ``gym.make("TemplateSearch-v0", dataset="ManifestPairs",
#: dataset_kwargs={"path": "pairs.csv"})``.
#: KTM (real template/target pairs) is for evaluation only: ``split="test"``.
DOWNLOAD_ENV_IDS: dict[str, dict] = {"TemplateSearch-FlickrLogos27-v0": {"dataset": "FlickrLogos27"},
                                     "TemplateSearch-KTM-v0": {"dataset": "KTM"}}


def _register_envs() -> None:
    for env_id, kwargs in {**ENV_IDS, **DOWNLOAD_ENV_IDS}.items():
        if env_id not in registry:  # importing twice (e.g. reload) must not warn about re-registration
            register(id=env_id, entry_point=ENTRY_POINT, kwargs=kwargs)


_register_envs()

__all__ = [
    "DATASETS",
    "DOWNLOAD_ENV_IDS",
    "ENV_IDS",
    "Match",
    "ModelInfo",
    "Searcher",
    "TemplateSearchEnv",
    "__version__",
    "list_models",
    "load",
    "locate",
    "make_dataset",
]
