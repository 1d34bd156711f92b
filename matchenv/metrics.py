"""Template-matching accuracy as the papers report it: success at IoU > 0.5 and the success curve's AUC.

Every answer is scored by the IoU of its box (the box the method chose, with its own size) with
the target's box. A method's **success** is the fraction of pairs with IoU above 0.5; its
**AUC** is the area under the success curve: the mean, over the thresholds 0, 0.05, ..., 0.95,
of the fraction of pairs with IoU above the threshold (Dekel et al., BBS, CVPR 2015; Gao &
Spratling, Deep-DIM, 2021). The AUC rewards tight boxes; success only right places.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

#: IoU above which an answer counts as found.
SUCCESS_IOU = 0.5
#: Thresholds of the success curve: 0, 0.05, ..., 0.95.
AUC_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.05), 2)

ArrayLike = Union[Sequence[float], np.ndarray]


def _ious(ious: ArrayLike) -> np.ndarray:
    values = np.asarray(ious, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no IoUs to score (no pairs were answered)")
    if not np.all(np.isfinite(values)):
        raise ValueError("IoUs must be finite numbers in [0, 1]")
    return values


def success_rate(ious: ArrayLike, threshold: float = SUCCESS_IOU) -> float:
    """Fraction of answers with IoU above ``threshold``."""
    return float(np.mean(_ious(ious) > threshold))


def success_curve(ious: ArrayLike) -> np.ndarray:
    """``(20,)`` fraction of answers with IoU above each of :data:`AUC_THRESHOLDS`."""
    values = _ious(ious)
    return (values[None, :] > AUC_THRESHOLDS[:, None]).mean(axis=1)


def success_auc(ious: ArrayLike) -> float:
    """Area under the success curve: the mean of :func:`success_curve`."""
    return float(success_curve(ious).mean())
