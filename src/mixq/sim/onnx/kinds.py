"""ONNX op types -> mixq's canonical op kinds (`mixq.graph.kinds`), and where weights sit.

Example:
    >>> canonical_kind("Gemm"), canonical_kind("GlobalAveragePool"), canonical_kind("MyOp")
    ('linear', 'avg_pool', 'my_op')
    >>> weight_slot("Gemm", {"transB": 1}, [None, 2, 1])
    (1, {'weight_axis': 0, 'weight_in_axis': 1})
"""

from __future__ import annotations

import re

__all__ = ["canonical_kind", "weight_slot"]

_KINDS = {
    "Conv": "conv",
    "ConvTranspose": "conv_transpose",
    "Gemm": "linear",
    "MatMul": "matmul",
    "Einsum": "matmul",
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Relu": "relu",
    "Clip": "clamp",
    "Gelu": "gelu",
    "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
    "LayerNormalization": "layer_norm",
    "BatchNormalization": "batch_norm",
    "InstanceNormalization": "instance_norm",
    "GroupNormalization": "group_norm",
    "Reshape": "reshape",
    "Transpose": "transpose",
    "Flatten": "flatten",
    "Squeeze": "squeeze",
    "Unsqueeze": "unsqueeze",
    "Slice": "slice",
    "Gather": "gather",
    "GatherElements": "gather",
    "Split": "split",
    "Expand": "expand",
    "Tile": "repeat",
    "Pad": "pad",
    "MaxPool": "max_pool",
    "GlobalMaxPool": "max_pool",
    "AveragePool": "avg_pool",
    "GlobalAveragePool": "avg_pool",
    "Identity": "identity",
    "Dropout": "dropout",
    "DepthToSpace": "pixel_shuffle",
    "Concat": "cat",
    "ReduceMean": "mean",
    "ReduceSum": "sum",
    "ReduceMax": "amax",
    "ReduceMin": "amin",
    "Max": "maximum",
    "Min": "minimum",
    "HardSigmoid": "hardsigmoid",
    "HardSwish": "hardswish",
    "LeakyRelu": "leaky_relu",
    "Cast": "alias",
}

# Op types that may read one constant operand as a weight.
_WEIGHT_SLOTS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")


def canonical_kind(op_type: str, attrs: dict[str, object] | None = None) -> str:
    """The canonical kind of an ONNX op; unknown ops get their type in snake case."""
    if op_type == "Resize" and (attrs or {}).get("mode", b"nearest") in (b"nearest", "nearest"):
        return "upsample_nearest"
    if op_type in _KINDS:
        return _KINDS[op_type]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op_type).lower()


def _axes(op_type: str, index: int, attrs: dict[str, object], ndim: int) -> tuple[int, int]:
    if op_type == "ConvTranspose":
        return 1, 0
    if op_type == "Gemm":
        trans = bool(attrs.get("transB" if index == 1 else "transA", 0))
        out_first = trans if index == 1 else not trans
        return (0, 1) if out_first else (1, 0)
    if op_type == "MatMul":
        return (ndim - 1, ndim - 2) if index == 1 else (ndim - 2, ndim - 1)
    return 0, 1  # Conv (output channels first), Gather (one row per index)


def weight_slot(
    op_type: str, attrs: dict[str, object], ranks: list[int | None]
) -> tuple[int, dict[str, object]] | None:
    """Which operand of the op is its weight, and the weight's output / input axes.

    Args:
        op_type: the ONNX op type.
        attrs: the node's attributes by name.
        ranks: per operand, the rank of a constant (an initializer or a Constant's
            output), or None for an activation.

    Returns:
        ``(operand index, {"weight_axis": ..., "weight_in_axis": ...})``, or None when the
        op reads no weight (e.g. a MatMul of two activations).
    """
    if op_type not in _WEIGHT_SLOTS or len(ranks) < 2:
        return None
    first, second = ranks[0] is not None, ranks[1] is not None
    index: int | None = None
    if op_type == "Gather" or (op_type in ("Gemm", "MatMul") and first and not second):
        index = 0 if first and not second else None
    elif second and not first:
        index = 1
    if index is None:
        return None
    axis, in_axis = _axes(op_type, index, attrs, ranks[index] or 2)
    return index, {"weight_axis": axis, "weight_in_axis": in_axis}
