"""Where the searcher runs the siamese CNN: ONNX Runtime, a frozen TorchScript trace, or PyTorch.

At batch 1 the CNN's arithmetic is tiny (about 0.6 M multiply-adds for a 28x28 image) and the
cost is per-call overhead: measured on this project's 2-core CPU, one 28x28 image took about
0.14 ms through a frozen TorchScript trace, 0.07 ms through OpenCV's dnn module and 0.035 ms
through ONNX Runtime. The searcher places seven windows' worth of CNN calls per query, so the
runtime decides whether a query takes under or over a millisecond.

The CNN runs as an :class:`~matchenv.agents.exported_module.ExportedModule` (the runtime choice
and its fallbacks written once for every exported module): exported runtimes take a copy with the
1/255 pixel scaling folded into the first convolution (:func:`on_0_255_pixels`, a snapshot of the
weights); PyTorch runs the trained CNN itself (:class:`PixelsTo01`). Every runtime computes the
same function (tested to agree to float rounding).
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from torch import nn

from matchenv.agents.exported_module import ExportedModule
from matchenv.agents.onnx_export import onnxruntime_available
from matchenv.agents.siamese import SiameseCNN

RUNTIMES = ("auto", "onnxruntime", "torchscript", "torch")


def on_0_255_pixels(cnn: SiameseCNN) -> SiameseCNN:
    """A copy of ``cnn`` that takes pixel values 0-255 instead of 0-1: the first convolution's
    weights divided by 255 (the same function up to float rounding, one operation fewer per call)."""
    scaled = copy.deepcopy(cnn).eval()
    with torch.no_grad():
        scaled.convs[0].weight.div_(255.0)
    return scaled


class PixelsTo01(nn.Module):
    """The trained CNN on pixels 0-255, scaled as it runs: the eager runtime keeps following the
    policy's weights (exported runtimes take :func:`on_0_255_pixels`' snapshot instead)."""

    def __init__(self, cnn: SiameseCNN) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cnn(images / 255.0)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.cnn.feature_map(images / 255.0)


def pixels_0_255_cnn(cnn: SiameseCNN, eager: bool) -> nn.Module:
    """``cnn`` on pixels 0-255 for a runtime: itself, scaled as it runs, for PyTorch (``eager``);
    :func:`on_0_255_pixels`' folded copy for an exported runtime."""
    return PixelsTo01(cnn) if eager else on_0_255_pixels(cnn)


def as_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` uint8 crops -> ``(N, C, H, W)`` float32 pixels 0-255, what the exported CNN
    graphs take (converting in numpy costs less than converting in the graph)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


class CNNRuntime:
    """The siamese CNN at inference, from the searcher's images to numpy embeddings.

    :param cnn: the trained CNN (put in eval mode).
    :param image_shape: ``(C, H, W)`` of the example it is exported with (batch and image size
        stay free).
    :param kind: as for :func:`make_cnn_runtime`.
    :param threads: ONNX Runtime's intra-op threads.
    """

    def __init__(self, cnn: SiameseCNN, image_shape: tuple[int, int, int], kind: str, threads: int) -> None:
        eager = kind == "torch" or next(cnn.parameters()).device.type != "cpu"
        self._module = ExportedModule(pixels_0_255_cnn(cnn.eval(), eager), [torch.zeros(1, *image_shape)], ["images"],
                                      ["out"], kind, threads, free_axes={"images": {2: "h", 3: "w"}})
        #: the runtime in use: "onnxruntime", "torchscript" or "torch"
        self.name = self._module.name

    def embed(self, images: np.ndarray) -> np.ndarray:
        """:param images: ``(N, H, W, C)`` uint8. :return: ``(N, embedding_dim)`` float32."""
        return self._module(as_pixels(images))[0]


def make_cnn_runtime(
    kind: str, cnn: SiameseCNN, image_shape: tuple[int, int, int], threads: Optional[int] = None
) -> CNNRuntime:
    """The CNN runtime ``kind`` (one of :data:`RUNTIMES`) for images of ``image_shape`` ``(C, H, W)``.

    ``"auto"`` is ONNX Runtime when ``onnxruntime`` is installed, else the TorchScript trace;
    if building either fails, it warns and falls back to the next (eager PyTorch last). A CNN on
    a GPU always runs in PyTorch. Asking for ``"onnxruntime"`` explicitly without the extra raises
    ``ImportError`` saying how to install it.

    :param threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``: the
        searcher's one ``torch.set_num_threads`` call sets both).
    """
    if kind not in RUNTIMES:
        raise ValueError(f"cnn_runtime must be one of {RUNTIMES}, got {kind!r}")
    if kind == "onnxruntime" and not onnxruntime_available():
        raise ImportError('cnn_runtime="onnxruntime" needs onnx and onnxruntime (matchenv installs them; here they are '
                          'missing): pip install onnx onnxruntime, or pass cnn_runtime="auto"')
    if kind == "onnxruntime" and next(cnn.parameters()).device.type != "cpu":
        raise ValueError('cnn_runtime="onnxruntime" runs on the CPU: load the agent with device="cpu", or use "torch"')
    return CNNRuntime(cnn, image_shape, kind, torch.get_num_threads() if threads is None else threads)
