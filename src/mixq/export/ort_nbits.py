"""Linears with 4-bit weights, and 8-bit weights read by a float input, as ONNX Runtime
runs them fast and as written (``ort-cpu``).

`fuse_nbits_linears` (run after `mixq.export.weight_storage.store_integer_weights`, which
stores 4-bit weights as INT4 / UINT4 initializers, and after
`mixq.export.ort_kernels.fuse_integer_linears`, which takes the int8 x int8 ones): a MatMul
whose weight is ``DQ(4- or 8-bit constant)`` (through the ``Transpose`` of a torch Linear)
becomes one ``com.microsoft.MatMulNBits`` that also adds the bias.

Left as Q/DQ, ORT dequantized the whole weight on every run (a DequantizeLinear is not
constant-folded), so the real MiniLM with int4 weights ran 3.4x slower than ORT's dynamic
int8. ORT fuses DQ + MatMul into MatMulNBits itself only where the activation is float and
the weight already [K, N], and then at its session's default accuracy level 4, which
quantizes the activation again per block (32.5 dB from the Q/DQ file on the MiniLM, and
slower there than level 1). The same fusion takes 8-bit weights read by a float or 16-bit
input (`mixq.export.ort_accuracy`). mixq writes ``accuracy_level=1`` (float arithmetic): the
same values as the Q/DQ form. A per-channel scale becomes blocks of 32 along K that repeat
it: the same grid.

Example:
    >>> from onnx import helper
    >>> model = helper.make_model(helper.make_graph([], "empty", [], []))
    >>> fuse_nbits_linears(model)
    {}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mixq.export.ort_kernels import (
    MS_DOMAIN,
    GraphIndex,
    absorb,
    bias_add,
    int_attr,
    splice,
    swaps_2d,
)

__all__ = ["fuse_nbits_linears"]

_BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8}
_CHANNEL_BLOCK = 32  # blocks a per-channel scale is repeated over (MatMulNBits has no other)


@dataclass
class _NBits:
    matmul: onnx.NodeProto
    weight_dq: onnx.NodeProto
    transpose: onnx.NodeProto | None
    bits: int  # 4 or 8
    ints: np.ndarray  # [N, K] unsigned, zero point 2 ** (bits - 1) for signed weights
    scales: np.ndarray  # [N, blocks] float32
    zero_points: np.ndarray  # [N, blocks] unsigned
    block: int
    bias_add: onnx.NodeProto | None
    bias: str


def _per_block(
    values: np.ndarray, n: int, blocks: int, blocked: bool, transposed: bool
) -> np.ndarray:
    """A DequantizeLinear's scale or zero point as [N, blocks]."""
    if blocked:
        return values if transposed else values.T
    return np.broadcast_to(values.reshape(-1, 1) if values.size > 1 else values, (n, blocks))


def _nbits(g: GraphIndex, matmul: onnx.NodeProto) -> _NBits | None:
    """The MatMulNBits form of ``matmul`` where its B is a 4- or 8-bit DequantizeLinear."""
    name, transpose = matmul.input[1], g.made_by(matmul.input[1], "Transpose")
    if transpose is not None:
        if not swaps_2d(transpose) or not g.only_reader(transpose.output[0]):
            return None
        name = transpose.input[0]
    dq = g.made_by(name, "DequantizeLinear")
    if dq is None or not g.only_reader(dq.output[0]):
        return None
    w, scale = g.const(dq.input[0]), g.const(dq.input[1])
    zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if w is None or scale is None or w.ndim != 2 or str(w.dtype) not in _BITS:
        return None
    if scale.dtype != np.float32 or (len(dq.input) > 2 and dq.input[2] and zp is None):
        return None
    nk = w if transpose is not None else w.T
    n, k = nk.shape
    block, axis = int_attr(dq, "block_size", 0), int_attr(dq, "axis", 1) % 2
    k_axis = 1 if transpose is not None else 0
    if block:
        if axis != k_axis or block < 16 or block & (block - 1):
            return None  # MatMulNBits blocks run along K, a power of two >= 16 long
    elif scale.size > 1 and axis == k_axis:
        return None  # a scale per input channel: no MatMulNBits form
    size = block or _CHANNEL_BLOCK
    blocks = -(-k // size)
    bits = _BITS[str(w.dtype)]
    shift = 2 ** (bits - 1) if str(w.dtype).startswith("int") else 0
    zeros = np.zeros_like(scale, dtype=np.int64) if zp is None else zp.astype(np.int64)
    add, bias = bias_add(g, matmul, n)
    return _NBits(
        matmul, dq, transpose, bits,
        ints=nk.astype(np.int64) + shift,
        scales=np.ascontiguousarray(_per_block(scale, n, blocks, bool(block), k_axis == 1)),
        zero_points=_per_block(zeros, n, blocks, bool(block), k_axis == 1) + shift,
        block=size, bias_add=add, bias=bias,
    )  # fmt: skip


def _packed(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values along the last axis as bytes: 8-bit ones as they are, pairs of 4-bit
    ones with the first in the low nibble."""
    if bits == 8:
        return values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros_like(values[..., :1])], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _fused_node(graph: onnx.GraphProto, lin: _NBits) -> onnx.NodeProto:
    n, k = lin.ints.shape
    blocks = lin.scales.shape[1]
    padded = np.zeros((n, blocks * lin.block), np.int64)
    padded[:, :k] = lin.ints
    base = lin.weight_dq.name.rsplit("/", 1)[0] or lin.matmul.name
    weights, scales, zps = (f"{base}/MatMulNBits/{s}" for s in ("B", "scales", "zero_points"))
    graph.initializer.extend(
        [
            numpy_helper.from_array(
                _packed(padded.reshape(n, blocks, lin.block), lin.bits), weights
            ),
            numpy_helper.from_array(lin.scales.astype(np.float32).reshape(-1), scales),
        ]
    )
    zero_points = ""
    if (lin.zero_points != 2 ** (lin.bits - 1)).any():  # the kernel's default
        graph.initializer.append(numpy_helper.from_array(_packed(lin.zero_points, lin.bits), zps))
        zero_points = zps
    inputs = [lin.matmul.input[0], weights, scales, zero_points]
    if lin.bias_add is not None:
        inputs += ["", lin.bias]  # no g_idx
    output = (lin.bias_add or lin.matmul).output[0]
    return helper.make_node(
        "MatMulNBits", inputs, [output], name=f"{base}/MatMulNBits", domain=MS_DOMAIN,
        K=k, N=n, bits=lin.bits, block_size=lin.block, accuracy_level=1,
    )  # fmt: skip


def fuse_nbits_linears(model: onnx.ModelProto) -> dict[str, str]:
    """Rewrite every MatMul of ``model`` whose weight is a 4- or 8-bit DequantizeLinear (in
    place) as MatMulNBits.

    Returns:
        Each DequantizeLinear node removed → the MatMulNBits node that replaced it.

    Example:
        >>> # fuse_nbits_linears(model)  # {"fc.weight/DequantizeLinear": "fc.weight/MatMulNBits"}
    """
    g = GraphIndex(model.graph)
    found = [f for f in (_nbits(g, n) for n in model.graph.node if n.op_type == "MatMul") if f]
    removed: dict[str, str] = {}
    drop: set[str] = set()
    after: dict[str, onnx.NodeProto] = {}
    for lin in found:
        absorb(lin, _fused_node(model.graph, lin), drop, after, removed)
    splice(model, drop, after)
    return removed
