"""Frozen image encoders for ``obs_mode="features"``.

An encoder maps a batch of channel-first uint8 images ``(N, C, H, W)`` to float32 feature
vectors ``(N, D)``. Any callable with that contract works; :func:`as_encoder` also accepts a
``torch.nn.Module`` (run frozen, without gradients, on its own device, fed images scaled to
``[0, 1]``), so a trained siamese CNN can be dropped in.
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

ImageEncoder = Callable[[np.ndarray], np.ndarray]


class DownsampledPixels:
    """A parameter-free baseline encoder: images shrunk to ``size x size``, scaled to ``[0, 1]``, flattened.

    :param size: side of the thumbnail; ``D = C * size * size``.
    """

    def __init__(self, size: int = 7) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        n, c = images.shape[:2]
        # cv2 resizes channel-last images; fold the batch and channels into the channel axis.
        stacked = np.ascontiguousarray(images.reshape(n * c, *images.shape[2:]).transpose(1, 2, 0))
        small = cv2.resize(stacked, (self.size, self.size), interpolation=cv2.INTER_AREA).reshape(self.size, self.size, -1)
        return (small.transpose(2, 0, 1).reshape(n, -1) / 255.0).astype(np.float32)


class TorchModuleEncoder:
    """Run a ``torch.nn.Module`` as a frozen encoder (``eval()``, ``no_grad``, inputs in ``[0, 1]``)."""

    def __init__(self, module: Any, device: str = "cpu") -> None:
        import torch  # torch is only needed when a module is used as encoder

        self._torch = torch
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            x = torch.as_tensor(images, device=self.device).float().div_(255.0)
            out = self.module(x)
        return out.reshape(len(images), -1).float().cpu().numpy()


def as_encoder(encoder: Any) -> ImageEncoder:
    """Return ``encoder`` as an :data:`ImageEncoder`.

    :param encoder: a ``torch.nn.Module``, the string ``"pixels"`` (:class:`DownsampledPixels`),
        or any callable ``(N, C, H, W) uint8 -> (N, D)``.
    :raises TypeError: for anything else.
    """
    if isinstance(encoder, str):
        if encoder == "pixels":
            return DownsampledPixels()
        raise TypeError(f"unknown encoder name {encoder!r}: the built-in one is 'pixels'; or pass a callable or torch module")
    try:
        import torch

        if isinstance(encoder, torch.nn.Module):
            return TorchModuleEncoder(encoder)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if callable(encoder):
        return encoder
    raise TypeError(
        f"encoder must be a callable (N, C, H, W) uint8 -> (N, D) float array or a torch.nn.Module, got {type(encoder).__name__}"
    )
