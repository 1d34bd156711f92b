"""A PyTorch module run on numpy arrays, exported where that is faster: ONNX Runtime, a TorchScript
trace, or the module itself.

Why: at batch 1 a decision of a search policy is a few dozen tiny tensor operations, and eager
PyTorch spends several microseconds of dispatch on each, more than their arithmetic. The same
module exported to ONNX and run by ONNX Runtime costs a fraction of that (measured on this
project's CPU, 2026-12-06: one decision of the ``mixed-mnist`` policy took 57 us in ONNX Runtime,
180 us through a TorchScript trace and 359 us in eager PyTorch). Exporting the module, rather than
writing its arithmetic again for speed, keeps one definition of what the model computes.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from matchenv.agents.onnx_export import onnx_session, onnxruntime_available

KINDS = ("auto", "onnxruntime", "torchscript", "torch")


class ExportedModule:
    """``module``'s forward from numpy arrays to a tuple of numpy arrays, in the runtime ``kind``.

    Every input and output has a free first (batch) axis; other axes are those of the example.
    The module's weights are a snapshot taken here (the exported copies do not follow later
    training); the ``"torch"`` runtime runs the module itself, on its own device.

    :param module: a module whose forward takes tensors and returns a tensor or a tuple of tensors.
    :param example: one example input per argument (batch 1), as tensors.
    :param input_names: / :param output_names: names for the graph (ONNX needs them).
    :param kind: ``"onnxruntime"``, ``"torchscript"``, ``"torch"``, or ``"auto"`` (ONNX Runtime
        when installed, else TorchScript; each falls back to the next with a warning if the export
        fails). A module on a GPU always runs in PyTorch.
    :param threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``).
    :param free_axes: further axes left free besides the batch, ``{input or output name: {axis:
        name}}`` (e.g. an image's height and width).
    """

    def __init__(self, module: nn.Module, example: Sequence[torch.Tensor], input_names: Sequence[str],
                 output_names: Sequence[str], kind: str = "auto", threads: Optional[int] = None,
                 free_axes: Optional[dict[str, dict[int, str]]] = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "onnxruntime" and not onnxruntime_available():
            raise ImportError('kind="onnxruntime" needs onnx and onnxruntime: pip install onnx onnxruntime, or pass kind="auto"')
        self.module = module.eval()
        parameter = next(module.parameters(), None)
        self.device = torch.device("cpu") if parameter is None else parameter.device
        self.input_names, self.output_names = list(input_names), list(output_names)
        threads = torch.get_num_threads() if threads is None else int(threads)
        self._session = self._traced = None
        #: the runtime in use: "onnxruntime", "torchscript" or "torch"
        self.name = "torch"
        if kind == "torch" or self.device.type != "cpu":
            return
        if kind == "onnxruntime" or (kind == "auto" and onnxruntime_available()):
            try:
                axes = {name: {0: "n", **(free_axes or {}).get(name, {})} for name in [*self.input_names, *self.output_names]}
                self._session = onnx_session(module, tuple(example), self.input_names, self.output_names, axes, threads)
                # The exporter drops inputs the graph does not read (e.g. a similarity map a
                # policy without a pointer head ignores): feed only those it kept.
                kept = {i.name for i in self._session.get_inputs()}
                self._kept = [(index, name) for index, name in enumerate(self.input_names) if name in kept]
                self.name = "onnxruntime"
                return
            except Exception as err:  # noqa: BLE001  (a speed-up only: fall back rather than fail)
                if kind == "onnxruntime":
                    raise
                warnings.warn(f"could not export {type(module).__name__} to ONNX Runtime ({err}); using TorchScript",
                              RuntimeWarning, stacklevel=3)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated (not gone); tracer notes are expected
                self._traced = torch.jit.freeze(torch.jit.trace(self.module, tuple(example), check_trace=False))
            self.name = "torchscript"
        except Exception as err:  # noqa: BLE001
            if kind == "torchscript":
                raise
            warnings.warn(f"could not trace {type(module).__name__} ({err}); using eager PyTorch", RuntimeWarning, stacklevel=3)

    def bound(self, **constants: np.ndarray) -> Callable[..., tuple[np.ndarray, ...]]:
        """:meth:`__call__` with the inputs named in ``constants`` fixed: the returned function takes
        the other inputs, in ``input_names`` order. For a graph called many times with inputs that
        stay the same (a search's constants), ONNX Runtime's input mapping is built once."""
        rest = [name for name in self.input_names if name not in constants]
        unknown = sorted(set(constants) - set(self.input_names))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not inputs of this module ({', '.join(self.input_names)})")
        if self._session is None:
            def call(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
                given = dict(zip(rest, arrays), **constants)
                return self(*(given[name] for name in self.input_names))
            return call
        kept = {name for _, name in self._kept}
        feed = {name: value for name, value in constants.items() if name in kept}
        varying = [(index, name) for index, name in enumerate(rest) if name in kept]
        run = self._session.run

        def call(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
            for index, name in varying:
                feed[name] = arrays[index]
            return tuple(run(None, feed))
        return call

    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """:param arrays: one array per input, in ``input_names`` order (float32 unless the
        module takes another type). :return: one array per output."""
        if self._session is not None:
            return tuple(self._session.run(None, {name: arrays[index] for index, name in self._kept}))
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.require(a, requirements=['C', 'W'])).to(self.device) for a in arrays]
            out = (self.module if self._traced is None else self._traced)(*tensors)
        return tuple(t.cpu().numpy() for t in (out if isinstance(out, tuple) else (out,)))
