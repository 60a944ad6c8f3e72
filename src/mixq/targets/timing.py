"""Measure a latency table on this machine, in ONNX Runtime (`profile_target`).

For every op kind the cost model tells apart, one-op ONNX models are built at three sizes
and each precision the runtime can run it in: ``fp32`` (the float op), ``int8`` (the op
between QuantizeLinear / DequantizeLinear pairs, written the way mixq's exporter writes it,
so ONNX Runtime fuses it into its integer kernel: MatMulIntegerToFloat, QLinearConv,
QLinearAdd) and ``fp16`` (the op between Casts). Each model is run in a session with the
runtime's default options, warmed up, then timed (median of ``repeats``); a line (fixed
microseconds + nanoseconds per unit of work) is fitted to the three sizes. Conversions
(QuantizeLinear to 8 and 16 bits, DynamicQuantizeLinear, Cast to fp16) are timed the same
way, per element, and so is the cost of one call of a session (``call_us``).

Example:
    >>> # profile = profile_target("ort-cpu"); profile.save("my-cpu.yaml")
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mixq.core.progress import progress_bar
from mixq.targets.latency import COPY_KIND, FALLBACK_KIND, LatencyTable
from mixq.targets.loading import load_target
from mixq.targets.profile import TargetProfile

__all__ = ["SIZES", "profile_target"]

OPSET = 21
F32, F16, U8, I8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.INT8

# kind -> three sizes (small, medium, large); the shapes each builder reads from one size
SIZES: dict[str, list[tuple[int, ...]]] = {
    "linear": [(16, 64, 64), (64, 256, 256), (128, 384, 1536)],  # tokens, in, out
    "matmul": [(4, 16, 16, 16), (12, 64, 32, 64), (12, 128, 64, 128)],  # batch, m, k, n
    "conv": [(8, 16), (32, 32), (64, 56)],  # channels, image side (3x3, padding 1)
    "add": [(4096,), (65536,), (1048576,)],
    "softmax": [(64, 64), (512, 128), (2048, 384)],  # rows, columns
    "layer_norm": [(64, 64), (512, 128), (2048, 384)],
    "gelu": [(64, 64), (512, 128), (2048, 384)],
    FALLBACK_KIND: [(4096,), (65536,), (1048576,)],
    COPY_KIND: [(1, 16, 4, 16), (4, 64, 8, 32), (8, 128, 12, 64)],  # batch, tokens, heads, dim
}
# kinds the runtime may run in integer (when the target's integer_kernels lists them)
INTEGER = ("linear", "matmul", "conv", "add")


class _Graph:
    """A tiny ONNX graph under construction: initializers, nodes, Q/DQ and Cast helpers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, value: np.ndarray) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def qdq(self, x: str, dtype: type = np.uint8) -> str:
        """``x`` through a QuantizeLinear / DequantizeLinear pair (8-bit by default)."""
        scale, zero = self.const(np.array(0.05, np.float32)), self.const(np.array(0, dtype))
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, scale, zero]),
                                              scale, zero])  # fmt: skip

    def weight(self, shape: tuple[int, ...], precision: str) -> str:
        """A weight initializer: int8 behind a DequantizeLinear, fp16 or fp32."""
        rng = np.random.default_rng(0)
        if precision == "int8":
            w = self.const(rng.integers(-127, 128, shape).astype(np.int8))
            scale, zero = self.const(np.array(0.01, np.float32)), self.const(np.array(0, np.int8))
            return self.node("DequantizeLinear", [w, scale, zero])
        value = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        return self.const(value.astype(np.float16) if precision == "fp16" else value)

    def model(self, inputs: dict[str, tuple[int, ...]], output: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "one_op",
            [helper.make_tensor_value_info(n, F32, list(s)) for n, s in inputs.items()],
            [helper.make_tensor_value_info(output, F32, None)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 10
        return model


def _enter(g: _Graph, x: str, precision: str) -> str:
    """An activation input as the op reads it at ``precision``."""
    if precision == "int8":
        return g.qdq(x)
    return g.node("Cast", [x], to=F16) if precision == "fp16" else x


def _leave(g: _Graph, y: str, precision: str, requantize: bool = False) -> str:
    """The op's output back in fp32 (through a Q/DQ pair for a qlinear kernel)."""
    if precision == "int8" and requantize:
        return g.qdq(y)
    return g.node("Cast", [y], to=F32) if precision == "fp16" else y


Built = tuple[onnx.ModelProto, dict[str, tuple[int, ...]], int]


def _linear(size: tuple[int, ...], p: str) -> Built:
    m, k, n = size
    g = _Graph()
    # no bias: ORT fuses a linear's bias add into what follows (BiasGelu, SkipLayerNorm), and
    # a MatMul + Add of a constant alone would become a float Gemm
    y = g.node("MatMul", [_enter(g, "x", p), g.weight((k, n), p)])
    shape = (1, m, k)
    return g.model({"x": shape}, _leave(g, y, p)), {"x": shape}, m * k * n


def _matmul(size: tuple[int, ...], p: str) -> Built:
    b, m, k, n = size
    g = _Graph()
    y = g.node("MatMul", [_enter(g, "a", p), _enter(g, "b", p)])
    shapes: dict[str, tuple[int, ...]] = {"a": (b, m, k), "b": (b, k, n)}
    return g.model(shapes, _leave(g, y, p)), shapes, b * m * k * n


def _conv(size: tuple[int, ...], p: str) -> Built:
    c, side = size
    g = _Graph()
    bias = g.weight((c,), "fp16" if p == "fp16" else "fp32")
    y = g.node("Conv", [_enter(g, "x", p), g.weight((c, c, 3, 3), p), bias], pads=[1, 1, 1, 1])
    shape = (1, c, side, side)
    return g.model({"x": shape}, _leave(g, y, p, True)), {"x": shape}, c * c * 9 * side * side


def _binary(op: str) -> Callable[[tuple[int, ...], str], Built]:
    def build(size: tuple[int, ...], p: str) -> Built:
        g = _Graph()
        y = g.node(op, [_enter(g, "a", p), _enter(g, "b", p)])
        shapes = {"a": size, "b": size}
        return g.model(shapes, _leave(g, y, p, True)), shapes, int(np.prod(size))

    return build


def _unary(op: str, **attrs: Any) -> Callable[[tuple[int, ...], str], Built]:
    def build(size: tuple[int, ...], p: str) -> Built:
        g = _Graph()
        x = _enter(g, "x", p)
        extra = []
        if op == "LayerNormalization":
            dtype = np.float16 if p == "fp16" else np.float32
            extra = [g.const(np.ones(size[-1], dtype)), g.const(np.zeros(size[-1], dtype))]
        y = g.node(op, [x, *extra], **attrs)
        return g.model({"x": size}, _leave(g, y, p)), {"x": size}, int(np.prod(size))

    return build


BUILDERS: dict[str, Callable[[tuple[int, ...], str], Built]] = {
    "linear": _linear,
    "matmul": _matmul,
    "conv": _conv,
    "add": _binary("Add"),
    "softmax": _unary("Softmax", axis=-1),
    "layer_norm": _unary("LayerNormalization", axis=-1),
    "gelu": _unary("Gelu"),
    FALLBACK_KIND: _binary("Mul"),
    COPY_KIND: _unary("Transpose", perm=[0, 2, 1, 3]),
}


def _conversion(size: tuple[int, ...], p: str) -> Built:
    g = _Graph()
    if p == "fp16":
        y = g.node("Cast", [g.node("Cast", ["x"], to=F16)], to=F32)
    elif p == "dynamic":  # the range pass and the quantization (DynamicQuantizeLinear)
        outs = [g.name("dql") for _ in range(3)]
        g.nodes.append(helper.make_node("DynamicQuantizeLinear", ["x"], outs))
        y = g.node("Cast", [outs[0]], to=F32)
    else:
        scale = g.const(np.array(0.05, np.float32))
        zero = g.const(np.array(0, np.int16 if p == "int16" else np.uint8))
        y = g.node("QuantizeLinear", ["x", scale, zero])
        y = g.node("Cast", [y], to=F32)
    return g.model({"x": size}, y), {"x": size}, int(np.prod(size))


def _seconds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], repeats: int) -> float:
    """Median wall time of one run, in microseconds (after a warm-up)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _fit(points: list[tuple[int, float]], call_us: float) -> tuple[float, float]:
    """(fixed µs, ns per unit) of the line through (work, µs) points, the session's own
    call time taken out; both kept >= 0. The sizes span three orders of magnitude, so the
    fit weighs relative error: in absolute terms the largest point decides the line and
    the fixed cost every small op pays comes out several times too high (tiny models were
    predicted at 2-4x their measured latency)."""
    work = np.array([w for w, _ in points], dtype=np.float64)
    us = np.array([max(t - call_us, 0.0) for _, t in points], dtype=np.float64)
    slope, fixed = np.polyfit(work, us, 1, w=1.0 / np.maximum(us, 1e-3))
    if slope <= 0:
        return float(us.mean()), 0.0
    return max(float(fixed), 0.0), float(slope) * 1000.0


def profile_target(
    base: str | TargetProfile = "ort-cpu",
    name: str | None = None,
    repeats: int = 60,
    progress: bool = True,
) -> TargetProfile:
    """``base`` with a latency table measured here, in ONNX Runtime's CPU provider.

    Args:
        base: the profile whose precisions and placement the measured one keeps.
        name: the new profile's name (default: ``<base>-measured``).
        repeats: timed runs per model (the median counts).

    Returns:
        A `TargetProfile` whose ``latency`` makes ``plan.cost().latency`` a prediction in
        microseconds; ``save`` it and pass the file as ``target=``.
    """
    import onnxruntime as ort

    profile = base if isinstance(base, TargetProfile) else load_target(base)
    jobs = [(k, p) for k in BUILDERS for p in ("fp32", "int8", "fp16")
            if p != "int8" or (k in INTEGER and profile.kernel(k) is not None)]  # fmt: skip
    conversions = ("int8", "int16", "fp16", "dynamic")
    call_us = _seconds(*_unary("Identity")((1,), "fp32")[:2], repeats=repeats)
    ops: dict[str, dict[str, tuple[float, float]]] = {}
    steps = [*jobs, *(("convert", p) for p in conversions)]
    for kind, p in progress_bar(steps, "timing one-op models", disable=not progress):
        builder = _conversion if kind == "convert" else BUILDERS[kind]
        sizes = SIZES[FALLBACK_KIND] if kind == "convert" else SIZES[kind]
        points = []
        for size in sizes:
            model, shapes, work = builder(size, p)
            points.append((work, _seconds(model, shapes, repeats)))
        ops.setdefault(kind, {})[p] = _fit(points, call_us)
    convert = {p: slope for p, (_, slope) in ops.pop("convert").items()}
    table = LatencyTable(
        ops,
        convert,
        f"onnxruntime {ort.__version__} CPUExecutionProvider, default session options",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        call_us=call_us,
    )
    return replace(profile, name=name or f"{profile.name}-measured", latency=table)
