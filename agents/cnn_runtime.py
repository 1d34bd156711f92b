"""Where the searcher runs the siamese CNN: PyTorch, a frozen TorchScript trace, or ONNX Runtime.

At batch 1 the CNN's arithmetic is tiny (about 0.6 M multiply-adds for a 28x28 image) and the
cost is per-call overhead: measured on this project's 2-core CPU, one 28x28 image took about
0.14 ms through a frozen TorchScript trace, 0.07 ms through OpenCV's dnn module and 0.035 ms
through ONNX Runtime. The searcher places seven windows' worth of CNN calls per query, so the
runtime decides whether a query takes under or over a millisecond.

``"onnxruntime"`` needs ``onnx`` and ``onnxruntime`` (core dependencies of matchenv: ``onnx`` to export
the trained CNN, ``onnxruntime`` to run it); ``"auto"`` takes it when installed and otherwise the
TorchScript trace. Every runtime computes the same function on the same float32 weights (tested
to agree to float rounding); the weights are a snapshot taken when the runtime is built.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn

from matchenv.agents.siamese import SiameseCNN

RUNTIMES = ("auto", "onnxruntime", "torchscript", "torch")


def onnxruntime_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` are installed (matchenv depends on them; a platform
    without their wheels falls back to TorchScript)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class CNNRuntime:
    """The siamese CNN at inference, from the searcher's images to numpy embeddings.

    Inputs are what the searcher crops: ``(N, H, W, C)`` uint8 images (channel-last, 0-255); the
    runtime scales them to ``[0, 1]`` and reorders the channels as training did.

    :param cnn: the trained CNN (left unchanged; put in eval mode).
    """

    name = "torch"

    def __init__(self, cnn: SiameseCNN) -> None:
        self.cnn = cnn.eval()
        self.device = next(cnn.parameters()).device

    def _tensor(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """:param images: ``(N, H, W, C)`` uint8. :return: ``(N, embedding_dim)`` float32."""
        return self.cnn(self._tensor(images)).cpu().numpy()


class TorchScriptCNN(CNNRuntime):
    """:meth:`embed` through a frozen TorchScript trace (about 1.6x faster than eager at batch 1)
    of images of ``image_shape`` (``(C, H, W)``)."""

    name = "torchscript"

    def __init__(self, cnn: SiameseCNN, image_shape: tuple[int, int, int]) -> None:
        super().__init__(cnn)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, not gone
            self.traced = torch.jit.freeze(torch.jit.trace(self.cnn, torch.zeros(1, *image_shape)))

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.traced(self._tensor(images)).cpu().numpy()


def on_0_255_pixels(cnn: SiameseCNN) -> SiameseCNN:
    """A copy of ``cnn`` that takes pixel values 0-255 instead of 0-1: the first convolution's
    weights divided by 255 (the same function up to float rounding, one operation fewer per call)."""
    scaled = copy.deepcopy(cnn).eval()
    with torch.no_grad():
        scaled.convs[0].weight.div_(255.0)
    return scaled


def onnx_session(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
                 dynamic_axes: dict[str, dict[int, str]], threads: int = 1,
                 weight_axes: Optional[dict[str, dict[int, str]]] = None):
    """``module`` traced on ``inputs``, exported to ONNX (opset 17) and loaded into an ONNX Runtime
    CPU session with ``threads`` intra-op threads and every graph optimisation on.

    :param dynamic_axes: as ``torch.onnx.export`` takes them.
    :param weight_axes: like ``dynamic_axes``, for the axes of inputs that are convolution
        weights given at run time, and of outputs whose size follows them (see
        :func:`_free_weight_axes`).
    """
    import onnxruntime

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export's, which needs
        # the onnxscript package as well; this one only needs onnx. Its tracer notes are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(module, inputs, buffer, dynamo=False, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=17)
    model = buffer.getvalue()
    if weight_axes:
        model = _free_weight_axes(model, weight_axes)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = max(1, int(threads))
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _free_weight_axes(model: bytes, axes: dict[str, dict[int, str]]) -> bytes:
    """An exported ONNX model that takes convolution weights of any size as inputs.

    Why: the TorchScript-based exporter refuses a convolution whose weight shape is unknown, so
    such a model is exported at the example's weight shape. ONNX's ``Conv`` infers its
    ``kernel_shape`` from the weight when the attribute is absent, so the attribute is removed
    from every convolution whose weight is not stored in the model, the named axes of inputs and
    outputs are made free, and the shapes the exporter recorded for intermediate values (those of
    the example) are dropped for ONNX Runtime to infer.

    :param axes: ``{input or output name: {axis: free dimension name}}``.
    """
    import onnx

    proto = onnx.load_from_string(model)
    graph = proto.graph
    stored = {initializer.name for initializer in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] not in stored:
            for attribute in [a for a in node.attribute if a.name == "kernel_shape"]:
                node.attribute.remove(attribute)
    values = {value.name: value for value in [*graph.input, *graph.output]}
    for name, free in axes.items():
        if name not in values:
            raise ValueError(f"weight_axes names {name!r}, which is not an input or output of the model ({sorted(values)})")
        dims = values[name].type.tensor_type.shape.dim
        for axis, label in free.items():
            dims[axis].dim_param = label
    del graph.value_info[:]
    return proto.SerializeToString()


class OnnxRuntimeCNN(CNNRuntime):
    """The CNN exported to ONNX (batch and image size left free) and run by ONNX Runtime; the
    uint8 crops become float32 ``(N, C, H, W)`` in numpy on the way in.

    :param threads: ONNX Runtime's intra-op threads (the searcher passes ``torch.get_num_threads()``,
        so one ``torch.set_num_threads`` call sets both).
    """

    name = "onnxruntime"

    def __init__(self, cnn: SiameseCNN, image_shape: tuple[int, int, int], threads: int = 1) -> None:
        super().__init__(cnn)
        # The graph takes float pixels 0-255 in (N, C, H, W): converting the uint8 crops in numpy
        # and folding the 1/255 into the first convolution costs less than doing both in the graph.
        axes = {"images": {0: "n", 2: "h", 3: "w"}, "out": {0: "n"}}
        self._session = onnx_session(on_0_255_pixels(self.cnn), (torch.zeros(1, *image_shape),), ["images"], ["out"], axes,
                                     threads)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"images": images.transpose(0, 3, 1, 2).astype(np.float32)})[0]


def make_cnn_runtime(
    kind: str, cnn: SiameseCNN, image_shape: tuple[int, int, int], threads: Optional[int] = None
) -> CNNRuntime:
    """The CNN runtime ``kind`` (one of :data:`RUNTIMES`) for images of ``image_shape`` ``(C, H, W)``.

    ``"auto"`` is ONNX Runtime when ``onnxruntime`` is installed, else the TorchScript trace;
    if building either fails, it warns and falls back to the next (eager PyTorch last). A CNN on
    a GPU always runs in PyTorch. Asking
    for ``"onnxruntime"`` explicitly without the extra raises ``ImportError`` saying how to
    install it.
    """
    if kind not in RUNTIMES:
        raise ValueError(f"cnn_runtime must be one of {RUNTIMES}, got {kind!r}")
    if kind == "onnxruntime" and not onnxruntime_available():
        raise ImportError('cnn_runtime="onnxruntime" needs onnx and onnxruntime (matchenv installs them; here they are '
                          'missing): pip install onnx onnxruntime, or pass cnn_runtime="auto"')
    threads = torch.get_num_threads() if threads is None else threads
    on_cpu = next(cnn.parameters()).device.type == "cpu"
    if kind == "onnxruntime" and not on_cpu:
        raise ValueError('cnn_runtime="onnxruntime" runs on the CPU: load the agent with device="cpu", or use "torch"')
    if kind == "torch" or not on_cpu:  # a GPU runs the CNN in PyTorch
        return CNNRuntime(cnn)
    if kind == "onnxruntime" or (kind == "auto" and onnxruntime_available()):
        try:
            return OnnxRuntimeCNN(cnn, image_shape, threads)
        except Exception as err:  # noqa: BLE001  (a speed-up only: fall back rather than fail)
            if kind == "onnxruntime":
                raise
            warnings.warn(f"could not run the CNN in ONNX Runtime ({err}); using TorchScript", RuntimeWarning, stacklevel=3)
    try:
        return TorchScriptCNN(cnn, image_shape)
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"could not trace the CNN ({err}); using eager PyTorch", RuntimeWarning, stacklevel=3)
        return CNNRuntime(cnn)
