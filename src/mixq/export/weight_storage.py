"""Integer weights stored in their own type.

The torch exporter writes an integer weight (and its zero point) as a wider initializer and
a ``Cast``: int8 and int4 as int16, uint16 as int32. ONNX Runtime folds the Cast when it
loads the file, but the file holds every weight at twice (int8) or four times (int4) its
size: the real MiniLM's int8 file for ``ort-cpu`` was 36 MB where its integer weights take
22 MB. `store_integer_weights` stores each in the type the DequantizeLinear reads (INT4 /
UINT4 packed two to a byte).

Example:
    >>> from onnx import helper
    >>> store_integer_weights(helper.make_model(helper.make_graph([], "empty", [], [])))
    0
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

from mixq.export.onnx_edit import cast_target
from mixq.export.ort_kernels import GraphIndex, drop_unread

__all__ = ["store_integer_weights"]

_INTEGERS = {
    TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8,
    TensorProto.INT16, TensorProto.UINT16,
}  # fmt: skip
_READS = {"DequantizeLinear": (0, 2), "QuantizeLinear": (2,)}  # integer inputs: values, zero point


def store_integer_weights(model: onnx.ModelProto) -> int:
    """Replace each ``Cast(constant)`` to an integer type that a DequantizeLinear reads as its
    values, or a Q / DQ as its zero point, by an initializer of that type (in place); returns
    how many."""
    g = GraphIndex(model.graph)
    stored: set[str] = set()
    wide: set[str] = set()  # what the Casts read
    for node in model.graph.node:
        if node.op_type not in _READS:
            continue
        for i, name in enumerate(node.input):
            cast = g.producer.get(name) if i in _READS[node.op_type] and name else None
            if cast is None or cast_target(cast) not in _INTEGERS:
                continue
            value = g.const(name)
            if value is None:
                continue
            typed = f"{name}/stored"
            if typed not in stored:
                model.graph.initializer.append(numpy_helper.from_array(value, typed))
                stored.add(typed)
            node.input[i] = typed
            wide.add(cast.input[0])
    if stored:
        drop_unread(model.graph, wide)
    return len(stored)
