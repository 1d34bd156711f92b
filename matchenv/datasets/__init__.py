"""Datasets of query/reference pairs, by name.

``make_dataset("ClutteredMNIST", noise_std=40)`` builds a dataset from its registered name;
``DATASETS`` maps every name to its class.
"""

from __future__ import annotations

from typing import Any

from matchenv.datasets.appearance import AppearanceChange
from matchenv.datasets.base import PairDataset, PairListDataset, SearchPair
from matchenv.datasets.logos import FlickrLogos27, FlickrLogos32
from matchenv.datasets.noisy_mnist import ClutteredMNIST, MixedMNIST, NoisyMNIST, TranslatedMNIST
from matchenv.datasets.pair_files import KTM, ManifestPairs, TemplateTargetPairs
from matchenv.datasets.self_supervised import SelfSupervisedPhotos
from matchenv.datasets.two_views import TwoViewPhotos, ViewChange

DATASETS: dict[str, type[PairDataset]] = {
    "TranslatedMNIST": TranslatedMNIST,
    "ClutteredMNIST": ClutteredMNIST,
    "MixedMNIST": MixedMNIST,
    "SelfSupervisedPhotos": SelfSupervisedPhotos,
    "TwoViewPhotos": TwoViewPhotos,
    "FlickrLogos27": FlickrLogos27,
    "FlickrLogos32": FlickrLogos32,
    "TemplateTargetPairs": TemplateTargetPairs,
    "KTM": KTM,
    "ManifestPairs": ManifestPairs,
}


#: Datasets to evaluate and choose models on, never to train on (real pairs kept for judging).
EVALUATION_ONLY: tuple[str, ...] = ("KTM",)


def make_dataset(name: str, **kwargs: Any) -> PairDataset:
    """Instantiate the dataset registered as ``name`` with ``kwargs``.

    :raises ValueError: for an unknown name (the message lists the valid ones) or bad kwargs.
    """
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None
    try:
        return cls(**kwargs)
    except TypeError as err:  # an unknown keyword: say which dataset rejected it
        raise ValueError(f"bad dataset_kwargs for {name}: {err}") from None


__all__ = [
    "AppearanceChange",
    "DATASETS",
    "EVALUATION_ONLY",
    "ClutteredMNIST",
    "FlickrLogos27",
    "FlickrLogos32",
    "KTM",
    "ManifestPairs",
    "MixedMNIST",
    "NoisyMNIST",
    "PairDataset",
    "PairListDataset",
    "SearchPair",
    "SelfSupervisedPhotos",
    "TemplateTargetPairs",
    "TranslatedMNIST",
    "TwoViewPhotos",
    "ViewChange",
    "make_dataset",
]
