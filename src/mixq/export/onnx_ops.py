"""Torch custom ops that stand for quantizers during ONNX export, and their ONNX translations.

``mixq::qdq`` becomes QuantizeLinear -> DequantizeLinear, ``mixq::dynamic_qdq``
DynamicQuantizeLinear -> DequantizeLinear (a dynamic precision), ``mixq::dq`` (a weight
stored as integers) becomes DequantizeLinear, ``mixq::cast`` becomes a Cast to a float
precision and back. Their torch bodies compute what the Sim computes, so the exported
program runs too.

Example:
    >>> import torch
    >>> x = torch.tensor([0.26, -1.0])
    >>> torch.ops.mixq.qdq(x, torch.tensor(0.5), torch.tensor(0.0), "int8")
    tensor([ 0.5000, -1.0000])
"""

from __future__ import annotations

from typing import Any

import onnx
import torch
from onnxscript import opset21
from torch.library import custom_op

from mixq.core import primitives as P
from mixq.sim.onnx.rewrite import ONNX_TYPES

__all__ = ["ONNX_DTYPES", "TRANSLATIONS"]

op: Any = opset21  # onnxscript's typed opset is too strict for mypy with dynamic dtypes

ONNX_DTYPES = ONNX_TYPES  # mixq precision -> ONNX element type, as the ONNX Sim uses


@custom_op("mixq::qdq", mutates_args=())
def qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: str) -> torch.Tensor:
    """Per-tensor fake quantization (activations)."""
    return P.fake_quantize(x, scale, zero_point, dtype)


@qdq.register_fake
def _qdq_fake(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: str
) -> torch.Tensor:
    return torch.empty_like(x)


@custom_op("mixq::dynamic_qdq", mutates_args=())
def dynamic_qdq(x: torch.Tensor) -> torch.Tensor:
    """Fake quantization with this call's scale and zero point (uint8, ONNX
    DynamicQuantizeLinear)."""
    return P.fake_quantize(x, *P.dynamic_qparams(x), "uint8")


@dynamic_qdq.register_fake
def _dynamic_qdq_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@custom_op("mixq::dq", mutates_args=())
def dq(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: str,
    axis: int,
    block_size: int,
) -> torch.Tensor:
    """Dequantize integer weights (axis -1 / block 0: per tensor / not blocked)."""
    return P.dequantize(
        q, scale, zero_point, dtype, None if scale.ndim == 0 else axis, block_size or None
    )


@dq.register_fake
def _dq_fake(q: torch.Tensor, *qparams: Any) -> torch.Tensor:
    # the output's shape is the integers' shape; scale, zero point and layout do not matter
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


@custom_op("mixq::cast", mutates_args=())
def cast(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """Round to a float precision and back to float32."""
    return P.cast(x, dtype)


@cast.register_fake
def _cast_fake(x: torch.Tensor, dtype: str) -> torch.Tensor:
    return torch.empty_like(x)


@custom_op("mixq::reshape", mutates_args=())
def reshape(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """A reshape that keeps no view of ``x`` (the ONNX exporter's decompositions then cannot
    trip over strides a traced ``view`` assumed)."""
    return x.reshape(shape).clone()


@reshape.register_fake
def _reshape_fake(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return x.reshape(shape).clone()


def _reshape_onnx(x: Any, shape: Any) -> Any:
    return op.Reshape(x, shape)


def _qdq_onnx(x: Any, scale: Any, zero_point: Any, dtype: str) -> Any:
    zp = op.Cast(zero_point, to=ONNX_DTYPES[dtype])
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp), scale, zp)


def _dynamic_qdq_onnx(x: Any) -> Any:
    q, scale, zero_point = op.DynamicQuantizeLinear(x)
    return op.DequantizeLinear(q, scale, zero_point)


def _dq_onnx(q: Any, scale: Any, zero_point: Any, dtype: str, axis: int, block_size: int) -> Any:
    to = ONNX_DTYPES[dtype]
    if block_size:
        return op.DequantizeLinear(
            op.Cast(q, to=to), scale, op.Cast(zero_point, to=to), axis=axis, block_size=block_size
        )
    return op.DequantizeLinear(op.Cast(q, to=to), scale, op.Cast(zero_point, to=to), axis=axis)


def _cast_onnx(x: Any, dtype: str) -> Any:
    return op.Cast(op.Cast(x, to=ONNX_DTYPES[dtype]), to=onnx.TensorProto.FLOAT)


TRANSLATIONS: dict[Any, Any] = {
    torch.ops.mixq.qdq.default: _qdq_onnx,
    torch.ops.mixq.dynamic_qdq.default: _dynamic_qdq_onnx,
    torch.ops.mixq.dq.default: _dq_onnx,
    torch.ops.mixq.cast.default: _cast_onnx,
    torch.ops.mixq.reshape.default: _reshape_onnx,
}
