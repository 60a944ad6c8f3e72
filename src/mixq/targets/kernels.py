"""How a runtime runs an op kind in integer: the styles a profile's ``integer_kernels`` names.

A profile that lists ``integer_kernels`` (``ort-cpu``) runs only those kinds in integer;
every other kind computes in float there, so it gets no activation quantizer. A profile
without the entry (the NPU targets) runs every kind in integer (`QLINEAR`).

- ``qlinear``: quantized inputs and a quantized output (QLinearConv: the output stays a
  quantization point);
- ``to_float``: quantized inputs, float output (MatMulIntegerToFloat, DynamicQuantizeMatMul):
  the quantizer sits on the integer readers' input edge, not on the producer's output;
- ``qlinear_if_quantized``: ``qlinear`` when every input already arrives quantized (a CNN's
  residual add after QLinearConvs: QLinearAdd), else float (a transformer's residual add,
  whose inputs are float: quantizing them would cost accuracy and buy no speed).

Example:
    >>> checked_kernels({"conv": "qlinear", "matmul": "to_float"}, "mine")
    {'conv': 'qlinear', 'matmul': 'to_float'}
    >>> checked_kernels({"conv": "int8"}, "mine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mixq.core.errors.ConfigError: target profile 'mine' integer_kernels: conv: 'int8' is not...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixq.core.errors import ConfigError
from mixq.graph.ir import Graph, Op

__all__ = [
    "KERNEL_STYLES",
    "QLINEAR",
    "QLINEAR_IF_QUANTIZED",
    "TO_FLOAT",
    "checked_kernels",
    "writes_as_gemm",
]

QLINEAR = "qlinear"
TO_FLOAT = "to_float"
QLINEAR_IF_QUANTIZED = "qlinear_if_quantized"
KERNEL_STYLES: tuple[str, ...] = (QLINEAR, TO_FLOAT, QLINEAR_IF_QUANTIZED)


def checked_kernels(value: Any, name: str) -> dict[str, str] | None:
    """``value`` as a kind → style mapping (None stays None: every kind in integer).

    Raises:
        ConfigError: not a mapping, or a style not in `KERNEL_STYLES`.
    """
    if value is None:
        return None
    where = f"target profile {name!r} integer_kernels"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must map op kinds to kernel styles, got {value!r}")
    bad = [f"{k}: {v!r}" for k, v in value.items() if v not in KERNEL_STYLES]
    if bad:
        raise ConfigError(f"{where}: {'; '.join(bad)} is not one of {', '.join(KERNEL_STYLES)}")
    return {str(k): str(v) for k, v in value.items()}


def writes_as_gemm(graph: Graph, op: Op) -> bool:
    """A linear ONNX writes as Gemm: an ONNX model's Gemm node, or a linear on a 2-D input
    (where the capture knows the shape). ONNX Runtime fuses a Gemm into an integer kernel
    only with a quantized output (QGemm), so a ``to_float`` linear runs ``qlinear`` there."""
    if op.attrs.get("onnx_op_type") == "Gemm":
        return True
    ins = graph.float_inputs(op)
    shape = graph.tensors[ins[0]].shape if ins and op.kind == "linear" else None
    return shape is not None and len(shape) == 2
