"""A learned last step for photograph searches: move and resize the final window onto the target.

An agent's last window on a photograph is often *near* the logo but not on it: on FlickrLogos-27
a fifth of the shipped agent's answers have IoU 0.3-0.5 with the target. The search has used its
trials by then, and its windows are seen at the query's coarse resolution. The box refiner looks
once more, at the window's surroundings (the window enlarged ``context`` times around its centre,
resized to ``crop_size`` pixels), together with the query, and regresses where the target's box
is relative to the window, as the box-regression step of two-stage object detectors does
(R-CNN's centre offsets in window units and log size ratios).

* :class:`BoxRefiner`: the network (query embedding tiled onto the context's feature map, then
  convolutions and a small head); :class:`RefinerConfig` its sizes.
* :func:`context_crop`, :func:`box_deltas`, :func:`apply_deltas`: the geometry, shared by
  training and inference.
* :class:`RefinerRuntime` and :func:`refine_boxes`: inference; ``TemplateSearcher(...,
  refiner=...)`` refines every answer with them (``TemplateSearcher.from_pretrained("flickrlogos27")``
  does by default).

``train/box_refiner.py`` trains one from any photograph dataset with templates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from matchenv.agents.model_files import read_model_file, write_model_file
from matchenv.geometry import resize_image

#: Predicted log size ratios are clipped to this (a factor of ~3 either way) before decoding.
MAX_LOG_RATIO = 1.1


@dataclass(frozen=True)
class RefinerConfig:
    """Sizes of a :class:`BoxRefiner`.

    :param crop_size: side (pixels) of the context crop the network sees.
    :param context: the context crop is the window scaled by this factor around its centre.
    :param query_size: ``(h, w)`` the query is letterboxed to.
    :param width: channels of the convolutions.
    """

    crop_size: int = 64
    context: float = 2.0
    query_size: tuple[int, int] = (32, 32)
    width: int = 64


# ---------------------------------------------------------------------------------- geometry
def context_box(window: Sequence[float], context: float) -> np.ndarray:
    """``window`` ``(x0, y0, x1, y1)`` scaled by ``context`` around its centre."""
    x0, y0, x1, y1 = (float(v) for v in window)
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, context * (x1 - x0) / 2, context * (y1 - y0) / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def context_crop(image: np.ndarray, window: Sequence[float], config: RefinerConfig) -> np.ndarray:
    """The window's surroundings as the refiner sees them: ``(crop_size, crop_size, C)`` uint8.

    The context box (:func:`context_box`) is cut from ``image`` at whole pixels; parts outside
    the image are black (the network learns where the photograph ends); the cut is resized to a
    square (its aspect is not kept: :func:`box_deltas` are in window units, so they do not care).
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in context_box(window, config.context))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    inside = image[max(y0, 0):min(max(y1, 0), h), max(x0, 0):min(max(x1, 0), w)]
    if inside.shape[:2] != (y1 - y0, x1 - x0):
        canvas = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], image.dtype)
        if inside.size:
            canvas[max(-y0, 0):max(-y0, 0) + inside.shape[0], max(-x0, 0):max(-x0, 0) + inside.shape[1]] = inside
        inside = canvas
    return resize_image(inside, (config.crop_size, config.crop_size))


def box_deltas(window: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Where ``target`` is relative to ``window`` (both ``(..., 4)`` ``x0, y0, x1, y1``):
    ``(dx, dy, log sw, log sh)``, the centre offset in window widths/heights and the log size ratios."""
    window, target = np.asarray(window, np.float64), np.asarray(target, np.float64)
    ww, wh = window[..., 2] - window[..., 0], window[..., 3] - window[..., 1]
    tw, th = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    dx = ((target[..., 0] + target[..., 2]) - (window[..., 0] + window[..., 2])) / (2 * ww)
    dy = ((target[..., 1] + target[..., 3]) - (window[..., 1] + window[..., 3])) / (2 * wh)
    return np.stack([dx, dy, np.log(tw / ww), np.log(th / wh)], axis=-1)


def apply_deltas(window: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The inverse of :func:`box_deltas`: the box at ``deltas`` from ``window``."""
    window, deltas = np.asarray(window, np.float64), np.asarray(deltas, np.float64)
    ww, wh = window[..., 2] - window[..., 0], window[..., 3] - window[..., 1]
    cx = (window[..., 0] + window[..., 2]) / 2 + deltas[..., 0] * ww
    cy = (window[..., 1] + window[..., 3]) / 2 + deltas[..., 1] * wh
    half_w = ww * np.exp(np.clip(deltas[..., 2], -MAX_LOG_RATIO, MAX_LOG_RATIO)) / 2
    half_h = wh * np.exp(np.clip(deltas[..., 3], -MAX_LOG_RATIO, MAX_LOG_RATIO)) / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


# ---------------------------------------------------------------------------------- the network
def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.ReLU()]


class BoxRefiner(nn.Module):
    """Query and context crop in, :func:`box_deltas` out.

    The query is embedded (three stride-2 convolutions, global average pooling) and its
    embedding tiled over the context's feature map after two stride-2 convolutions (16x16 cells
    for a 64-px crop), so the following convolutions compare every place with the query; two
    more stride-2 convolutions, a flattened 4x4 map and two linear layers give the four deltas.
    """

    def __init__(self, config: RefinerConfig = RefinerConfig()) -> None:
        super().__init__()
        if config.crop_size % 16 or config.crop_size < 16:
            raise ValueError(f"crop_size must be a multiple of 16 (four stride-2 convolutions), got {config.crop_size}")
        if config.width < 2 or config.width % 2:
            raise ValueError(f"width must be an even number of channels >= 2, got {config.width}")
        if not config.context >= 1.0:
            raise ValueError(f"context must be >= 1 (the crop holds the whole window), got {config.context}")
        if min(config.query_size) < 8:
            raise ValueError(f"query_size must be at least 8x8 (three stride-2 convolutions), got {config.query_size}")
        self.config = config
        c = config.width
        self.query_net = nn.Sequential(*_conv(3, c // 2, 2), *_conv(c // 2, c, 2), *_conv(c, c, 2))
        self.context_stem = nn.Sequential(*_conv(3, c // 2, 2), *_conv(c // 2, c, 2))
        self.context_net = nn.Sequential(*_conv(2 * c, c, 1), *_conv(c, c, 2), *_conv(c, c, 2))
        cells = (config.crop_size // 16) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * cells, 256), nn.ReLU(), nn.Linear(256, 4))

    def forward(self, queries: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """:param queries: ``(N, 3, qh, qw)`` and :param crops: ``(N, 3, S, S)`` float in ``[0, 1]``.
        :return: ``(N, 4)`` deltas (:func:`box_deltas`)."""
        query = self.query_net(queries).mean(dim=(2, 3))
        stem = self.context_stem(crops)
        tiled = query[:, :, None, None].expand(-1, -1, stem.shape[2], stem.shape[3])
        return self.head(self.context_net(torch.cat([stem, tiled], dim=1)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


# ---------------------------------------------------------------------------------- files
def save_refiner_file(path: Union[str, Path], refiner: BoxRefiner, info: Optional[dict[str, Any]] = None) -> Path:
    """Write a refiner (weights, :class:`RefinerConfig`, free-form ``info``) to ``path`` (``.pt``)."""
    config = asdict(refiner.config) | {"query_size": list(refiner.config.query_size)}
    return write_model_file(path, {"kind": "box-refiner", "state_dict": refiner.state_dict(),
                                   "config": config, "info": info or {}})


def load_refiner_file(path: Union[str, Path]) -> tuple[BoxRefiner, dict[str, Any]]:
    """A refiner and its ``info`` from :func:`save_refiner_file`'s file (clear errors otherwise)."""
    saved = read_model_file(path, "box refiner", "train/box_refiner.py", {"kind", "state_dict", "config", "info"})
    try:
        config = dict(saved["config"])
        config["query_size"] = tuple(config["query_size"])
        refiner = BoxRefiner(RefinerConfig(**config))
        refiner.load_state_dict(saved["state_dict"])
    except (TypeError, KeyError, ValueError, RuntimeError) as err:  # a config or weights of another network
        raise ValueError(f"{path} is not a box refiner file written by train/box_refiner.py ({err})") from err
    return refiner.eval(), saved["info"]


# ---------------------------------------------------------------------------------- inference
class RefinerRuntime:
    """The refiner at inference, from uint8 images to numpy deltas: ONNX Runtime when the
    ``onnxruntime`` is installed (about half PyTorch's time at batch 1 on this project's CPU),
    else PyTorch; the same function on the same float32 weights.

    :param refiner: the trained refiner (a snapshot of its weights is taken for ONNX Runtime).
    :param onnx: use ONNX Runtime when installed; ``False``: PyTorch.
    :param threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(self, refiner: BoxRefiner, onnx: bool = True, threads: Optional[int] = None) -> None:
        from matchenv.agents.onnx_export import onnx_session, onnxruntime_available

        self.refiner = refiner.eval()
        self.config = refiner.config
        self.device = next(refiner.parameters()).device
        self._session = None
        on_cpu = self.device.type == "cpu"
        if onnx and on_cpu and onnxruntime_available():
            size, (qh, qw) = self.config.crop_size, self.config.query_size
            axes = {"queries": {0: "n"}, "crops": {0: "n"}, "deltas": {0: "n"}}
            self._session = onnx_session(refiner, (torch.zeros(1, 3, qh, qw), torch.zeros(1, 3, size, size)),
                                         ["queries", "crops"], ["deltas"], axes,
                                         torch.get_num_threads() if threads is None else threads)
        #: where the refiner runs: "onnxruntime" or "torch"
        self.name = "torch" if self._session is None else "onnxruntime"

    def __call__(self, views: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """:param views: ``(N, qh, qw, 3)`` and :param crops: ``(N, S, S, 3)`` uint8 RGB.
        :return: ``(N, 4)`` float deltas (:func:`box_deltas`)."""
        if self._session is not None:
            inputs = {"queries": views.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0),
                      "crops": crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)}
            return self._session.run(None, inputs)[0]
        with torch.inference_mode():
            return self.refiner(to_tensor(views).to(self.device), to_tensor(crops).to(self.device)).cpu().numpy()


def refine_boxes(refiner: Union[BoxRefiner, RefinerRuntime], views: np.ndarray, images: Sequence[np.ndarray],
                 boxes: np.ndarray, steps: int = 1) -> np.ndarray:
    """``(N, 4)`` boxes moved ``steps`` times by ``refiner`` (one network call per step for the batch).

    :param refiner: the network, or its :class:`RefinerRuntime` (a plain network runs in PyTorch).
    :param views: ``(N, qh, qw, 3)`` uint8 RGB queries letterboxed to the refiner's query size.
    :param images: the ``N`` references, ``(H, W, 3)`` uint8 RGB, at the size the refiner was
        trained on (a photograph dataset's working size).
    :param boxes: ``(N, 4)`` the windows to refine ``(x0, y0, x1, y1)``, in those references' pixels.
    :return: ``(N, 4)`` float64 refined boxes in the same pixels (not clipped to the images).
    """
    runtime = refiner if isinstance(refiner, RefinerRuntime) else RefinerRuntime(refiner, onnx=False)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for _ in range(int(steps)):
        crops = np.stack([context_crop(image, box, runtime.config) for image, box in zip(images, boxes)])
        boxes = apply_deltas(boxes, runtime(views, crops))
    return boxes
