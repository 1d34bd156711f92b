"""Exporting PyTorch modules to ONNX and loading them into ONNX Runtime, for every fast path.

``onnx`` and ``onnxruntime`` are core dependencies of matchenv (``onnx`` to export, ``onnxruntime``
to run); a platform without their wheels falls back to TorchScript where a runtime is chosen
(:class:`~matchenv.agents.exported_module.ExportedModule`).
"""

from __future__ import annotations

import io
import warnings
from typing import Optional

import torch
from torch import nn


def onnxruntime_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` are installed (matchenv depends on them; a platform
    without their wheels falls back to TorchScript)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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
