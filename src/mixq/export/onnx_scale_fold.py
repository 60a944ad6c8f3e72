"""Fold a per-channel constant scale into the float linears that read it.

``MatMul(Mul(x, c), W)`` is ``MatMul(x, diag(c) W)``: where a Mul by a constant vector
along the last axis is read only by float linears with constant weights, the scale goes into
the weights and the Mul leaves the file. Smoothing (`mixq.transforms`) writes such a Mul in
front of every linear it smooths; it is needed where the linear's input is quantized, and a
pass over the activation for nothing where the plan keeps the linear in float (the real
MiniLM with 5 of 36 linears in fp32: 0.5-4 % of its ORT time in four paired runs). The
values change by float rounding only.

Example:
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> c = numpy_helper.from_array(np.array([2.0, 0.5], np.float32), "c")
    >>> w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Mul", ["x", "c"], ["xs"]),
    ...      helper.make_node("MatMul", ["xs", "w"], ["y"])],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [c, w])
    >>> model = helper.make_model(graph)
    >>> fold_scales_into_linears(model), [n.op_type for n in model.graph.node]
    (1, ['MatMul'])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from mixq.export.ort_kernels import GraphIndex, drop_unread, int_attr, swaps_2d

__all__ = ["fold_scales_into_linears"]


def _vector(value: np.ndarray | None) -> np.ndarray | None:
    """``value`` as a float32 vector if it scales only the last axis (shape ``[K]`` or
    ``[1, ..., K]``)."""
    if value is None or value.dtype != np.float32 or value.ndim == 0:
        return None
    if any(d != 1 for d in value.shape[:-1]):
        return None
    return value.reshape(-1)


def _weight(g: GraphIndex, reader: onnx.NodeProto, out: str) -> tuple[str, int, bool] | None:
    """Where ``reader`` (a MatMul, or a Gemm without transA) reads ``out`` as A and a
    2-D float32 initializer as B: (initializer, its K axis, whether the reader reads it
    through a Transpose). None for anything else."""
    linear = reader.op_type == "MatMul" or (
        reader.op_type == "Gemm" and not int_attr(reader, "transA", 0)
    )
    if not linear or reader.input[0] != out or out in reader.input[1:]:
        return None
    source, k_axis, through = reader.input[1], 0, False
    transpose = g.made_by(source, "Transpose") if reader.op_type == "MatMul" else None
    if reader.op_type == "Gemm":
        k_axis = int_attr(reader, "transB", 0)
    elif transpose is not None:
        if not swaps_2d(transpose):
            return None
        source, k_axis, through = transpose.input[0], 1, True
    init = g.constants.get(source) if source not in g.producer else None  # initializers only
    if init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
        return None
    return source, k_axis, through


def _scaled(g: GraphIndex, weight: tuple[str, int, bool], scale: np.ndarray) -> np.ndarray | None:
    """The weights with each K row multiplied by its scale, as the reader will read them
    (a transposed initializer comes back as [K, N]); None if K differs."""
    source, k_axis, through = weight
    values = g.const(source)
    if values is None or values.shape[k_axis] != scale.size:
        return None
    scaled = values * (scale[:, None] if k_axis == 0 else scale[None, :])
    return np.ascontiguousarray(scaled.T if through else scaled, dtype=np.float32)


def fold_scales_into_linears(model: onnx.ModelProto) -> int:
    """Fold each constant per-channel ``Mul`` read only by float linears (MatMul or Gemm
    reading it as input A, with constant float32 weights, a MatMul's possibly through a
    Transpose) into those weights (in place); returns how many Muls left.

    Each linear gets weights of its own (``<linear>/scaled``), so a weight shared with
    another reader stays as it was.
    """
    g = GraphIndex(model.graph)
    folded: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        pairs = ((node.input[0], node.input[1]), (node.input[1], node.input[0]))
        found = next(
            (
                (x, s)
                for x, c in pairs
                if g.const(x) is None and (s := _vector(g.const(c))) is not None
            ),
            None,
        )
        out = node.output[0]
        readers = g.consumers.get(out, [])
        if found is None or not readers or g.readers[out] != len(readers):
            continue  # not a scale, or read by a graph output / twice by one node
        x, scale = found
        weights = [_weight(g, r, out) for r in readers]
        scaled = [None if w is None else _scaled(g, w, scale) for w in weights]
        if any(s is None for s in scaled):
            continue
        for reader, weight, values in zip(readers, weights, scaled, strict=True):
            assert weight is not None and values is not None
            name = f"{reader.name or reader.output[0]}/scaled"
            model.graph.initializer.append(numpy_helper.from_array(values, name))
            reader.input[0], reader.input[1] = x, name
            replaced.add(weight[0])
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    if folded:
        drop_unread(model.graph, replaced)
    return len(folded)
