"""Where the look runs at inference: :class:`LookRuntime` computes kernels and score maps in ONNX
Runtime (through the exported graphs here) when it is installed, else in PyTorch."""

from __future__ import annotations

import copy
import warnings
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matchenv.agents.look_correlation import KernelPart, mean_over_cells, row_filters, sum_rows, trimmed_kernel
from matchenv.agents.look_network import STRIDE, LookFeatures, MultiScaleLook


class _CentredFeatures(nn.Module):
    """:class:`LookFeatures` for the exported graphs: ``(N, 3, H, W)`` pixels minus 127.5 -> the
    same features.

    Why: ``pixels / 255 - 0.5`` and ``F.normalize``'s expanded divisor are separate passes over
    the largest tensors in ONNX Runtime (their four operations took 0.27 ms of a 3.3 ms level at
    160x256 pixels; ONNX Runtime's profiler, one thread). The 1/255 is folded into the first convolution's weights, the
    centring done in numpy while the uint8 pixels become floats (:func:`_centred_pixels`), and
    the norm divides by broadcasting. The zero padding of the first convolution is the same
    value (pixel 127.5) either way.
    """

    def __init__(self, features: LookFeatures) -> None:
        super().__init__()
        self.net = copy.deepcopy(features.net)  # as matchenv.agents.cnn_runtime.on_0_255_pixels does for the agents' CNN
        with torch.no_grad():
            self.net[0].weight.div_(255.0)

    def forward(self, centred: torch.Tensor) -> torch.Tensor:
        out = self.net(centred)
        return out / torch.linalg.vector_norm(out, dim=1, keepdim=True).clamp_min(1e-12)


def _centred_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 pixels minus 127.5, C-contiguous (the
    input of :class:`_CentredFeatures`)."""
    out = np.empty((images.shape[0], images.shape[3], images.shape[1], images.shape[2]), np.float32)
    np.subtract(images.transpose(0, 3, 1, 2), np.float32(127.5), out=out, dtype=np.float32)
    return out


class _Kernel(nn.Module):
    """The query's kernel, for export: ``(1, 3, canvas, canvas)`` centred pixels and ``(1, K, K)``
    cell mask -> ``(1, C, K, K)`` (:meth:`~matchenv.agents.look_network.MultiScaleLook.kernel`)."""

    def __init__(self, look: MultiScaleLook) -> None:
        super().__init__()
        self.features = _CentredFeatures(look.features)

    def forward(self, canvas: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return mean_over_cells(self.features(canvas), cells)


class _RowScores(nn.Module):
    """The look's features and :func:`~matchenv.agents.look_correlation.row_filters`, for export:
    ``(N, 3, H, W)`` centred pixels (a pyramid level, or the second look's patches) and a
    ``(1, C, k, k')`` kernel -> ``(N, k, h, q)`` row correlations (``h = ceil(H / 4)``), whose
    :func:`~matchenv.agents.look_correlation.sum_rows` are the mean cosine similarities
    ``F.conv2d(features(pixels), kernel)``."""

    def __init__(self, look: MultiScaleLook) -> None:
        super().__init__()
        self.features = _CentredFeatures(look.features)

    def forward(self, pixels: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return row_filters(self.features(pixels), kernel)


class LookRuntime:
    """Kernels and score maps for inference: ONNX Runtime when installed (image and kernel sizes
    left free), else PyTorch (the same arithmetic).

    :param onnx: use ONNX Runtime when it is installed; ``False``: PyTorch.
    """

    def __init__(self, look: MultiScaleLook, threads: int, onnx: bool = True) -> None:
        self.look = look.eval()
        self.threads = threads
        #: kernel sessions by query canvas side (the first look's, and the second look's larger one)
        self.kernel_sessions: dict[int, Any] = {}
        #: score sessions by number of images: 1 for the pyramid's levels, and the second look's
        #: batches of patches (ONNX Runtime re-plans a session whenever its input shape changes;
        #: measured: alternating 4 and 3 patches in one session cost 3.5 ms a call, against 2.5 /
        #: 2.1 ms in two)
        self.score_sessions: dict[int, Any] = {}
        self.name = "torch"
        try:
            from matchenv.agents.onnx_export import onnxruntime_available

            if onnx and onnxruntime_available():
                self._score_session(1)
                # The kernel too: a PyTorch call costs about 0.3 ms of overhead even for a 32x32 canvas.
                self._kernel_session(look.config.canvas)
                self.name = "onnxruntime"
        except Exception as err:  # noqa: BLE001  (a speed-up only: PyTorch gives the same scores)
            warnings.warn(f"could not run the look in ONNX Runtime ({err}); using PyTorch", RuntimeWarning, stacklevel=3)
            self.kernel_sessions, self.score_sessions = {}, {}

    def _score_session(self, count: int):
        """The ONNX Runtime session of :class:`_RowScores` for ``count`` images at a time (built once)."""
        if count not in self.score_sessions:
            from matchenv.agents.onnx_export import onnx_session

            cfg, k = self.look.config, self.look.config.kernel_cells
            example = (torch.zeros(count, 3, 4 * cfg.canvas, 4 * cfg.canvas), torch.zeros(1, cfg.channels[3], k, k))
            self.score_sessions[count] = onnx_session(
                _RowScores(self.look), example, ["pixels", "kernel"], ["rows"],
                {"pixels": {2: "height", 3: "width"}, "rows": {2: "cell_rows", 3: "positions_x"}}, self.threads,
                weight_axes={"kernel": {2: "kernel_rows", 3: "kernel_cols"}, "rows": {1: "kernel_rows"}})
        return self.score_sessions[count]

    def _kernel_session(self, side: int):
        """The ONNX Runtime session of :class:`_Kernel` for canvases of ``side`` pixels (built once)."""
        if side not in self.kernel_sessions:
            from matchenv.agents.onnx_export import onnx_session

            k = side // STRIDE
            example = (torch.zeros(1, 3, side, side), torch.zeros(1, k, k))
            self.kernel_sessions[side] = onnx_session(_Kernel(self.look), example, ["canvas", "cells"], ["kernel"],
                                                      {}, self.threads)
        return self.kernel_sessions[side]

    def kernel(self, canvas: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """``(1, C, K, K)`` float32 kernel of one ``(canvas, canvas, 3)`` canvas and its ``(K, K)`` mask."""
        if self.name == "torch":
            with torch.inference_mode():
                return self.look.kernel(_torch_pixels(canvas[None]), torch.from_numpy(cells)[None]).numpy()
        return self._kernel_session(canvas.shape[0]).run(None, {"canvas": _centred_pixels(canvas[None]), "cells": cells[None]})[0]

    def scores(self, images: np.ndarray, kernel: Union[np.ndarray, KernelPart]) -> np.ndarray:
        """``(N, P, Q)`` mean cosine similarity of a query's kernel at every position of each of
        ``(N, H, W, 3)`` uint8 ``images`` (``P = ceil(H / 4) - K + 1``, likewise ``Q``).

        :param kernel: ``(1, C, K, K)`` (:meth:`kernel`), or its
            :func:`~matchenv.agents.look_correlation.trimmed_kernel` part (trimmed once per query by the
            searcher). Only the part is correlated, and the positions of the whole kernel are kept:
            the same scores, less work.
        """
        part = kernel if isinstance(kernel, KernelPart) else trimmed_kernel(kernel)
        weights = part.weights
        if self.name == "torch":
            with torch.inference_mode():
                out = F.conv2d(self.look.features(_torch_pixels(images)), torch.from_numpy(weights))[:, 0].numpy()
        else:
            planes = self._score_session(len(images)).run(None, {"pixels": _centred_pixels(images), "kernel": weights})[0]
            out = sum_rows(planes)
        rows = out.shape[1] - (part.side - weights.shape[2])
        cols = out.shape[2] - (part.side - weights.shape[3])
        return np.ascontiguousarray(out[:, part.top : part.top + rows, part.left : part.left + cols])


def _torch_pixels(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 tensor of pixels 0-255 (the PyTorch path)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32))
