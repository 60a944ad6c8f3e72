"""ONNX Runtime sessions for the Sim, and model inputs turned into feeds.

Graph optimisations are off (``ORT_DISABLE_ALL``): even ORT's basic level folds and fuses
nodes (Conv + BatchNorm, DequantizeLinear into integer kernels), which would change the
simulated numerics. The CPU provider is used so results do not depend on the machine's GPU.
`split_inputs` lives in `mixq.sim.inputs` and is importable from here too.

Example:
    >>> as_array([1.5, 2.0], "float16").dtype
    dtype('float16')
    >>> from mixq.graph.ir import Graph
    >>> g = Graph(); g.add_input("x", "float32", (None, 3)); g.add_input("ids", "int64", (2,))
    >>> [(tuple(t.shape), t.dtype) for t in random_inputs(g, dim=4)]
    [((4, 3), torch.float32), ((2,), torch.int64)]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mixq.core.errors import ConfigError
from mixq.graph.ir import Graph
from mixq.sim.inputs import split_inputs  # re-exported: its home is mixq.sim.inputs

__all__ = ["as_array", "make_session", "random_inputs", "session_options", "split_inputs"]


def session_options() -> ort.SessionOptions:
    """ORT options that keep the simulated numerics: no graph optimisation, quiet logs."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return so


def as_array(x: Any, dtype: str) -> np.ndarray:
    """A tensor / array / list as a numpy array of ``dtype`` (what ORT is fed)."""
    value = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    try:
        return value.astype(np.dtype(dtype), copy=False)
    except TypeError:  # a dtype numpy does not know: feed as given
        return value


def make_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session with `session_options`; says what to do when ORT lacks a kernel for
    an inserted quantizer at the model's opset."""
    try:
        return ort.InferenceSession(
            model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        if "/mixq" not in str(exc):
            raise
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        raise ConfigError(
            f"ONNX Runtime {ort.__version__} cannot run the quantizers mixq inserted at the "
            f"model's opset {opset}: {str(exc).strip()[:200]}. Re-export the model at an "
            "opset this ONNX Runtime supports (21 works for every precision)"
        ) from exc


def random_inputs(graph: Graph, dim: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the declared shapes (``dim`` for unnamed / symbolic dimensions): standard
    normal floats, zeros for integers (valid indices) and True for bools."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = [d if d is not None else dim for d in (t.shape or ())]
        dtype = getattr(torch, t.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"model input {name!r} has type {t.dtype}: pass example inputs")
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        else:
            out.append(
                torch.ones(shape, dtype=dtype)
                if dtype == torch.bool
                else torch.zeros(shape, dtype=dtype)
            )
    return tuple(out)
