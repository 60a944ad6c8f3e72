"""Lookup tables stored in 8 bits, dequantized after the lookup (``ort-cpu``).

An embedding's quantized table is written ``Gather(DequantizeLinear(table), ids)``. ONNX
Runtime does not constant-fold a DequantizeLinear, so it would dequantize the whole table on
every run (11.7 M values for a BERT's word embeddings) to read a few rows. That is why
``ort-cpu`` plans used to keep embedding tables in fp32: the real MiniLM's int8 file was
59.7 MB, 47 MB of it the float word embeddings, against ORT dynamic's 23 MB.
`gather_quantized_rows` makes the Gather read the integer table and dequantizes only the
rows it took: a per-tensor or per-column DequantizeLinear moves after the Gather; a per-row
scale (and zero point), or one per block along the rows, is gathered with the rows and read
by a blocked DequantizeLinear. The values do not change.

Example:
    >>> from onnx import helper
    >>> gather_quantized_rows(helper.make_model(helper.make_graph([], "empty", [], [])))
    {}
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from mixq.export.ort_kernels import GraphIndex, int_attr, splice

__all__ = ["gather_quantized_rows"]


def _lookups(
    g: GraphIndex, dq: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], tuple[int, ...]] | None:
    """The Gathers reading rows of ``dq``'s 8- or 16-bit constant table, if nothing else
    reads it (ORT gathers no 4-bit tensors), and the table's shape."""
    if dq.output[0] not in g.consumers or g.consumers[dq.output[0]][0].op_type != "Gather":
        return None  # spares converting a linear's weights
    table = g.const(dq.input[0])
    # numpy kinds: 8- and 16-bit integers ("i", "u"); 4-bit ones are ml_dtypes' "V"
    if table is None or table.ndim != 2 or table.dtype.kind not in "iu" or table.dtype.itemsize > 2:
        return None
    if any(g.const(i) is None for i in dq.input[1:] if i):
        return None
    if int_attr(dq, "block_size", 0) and int_attr(dq, "axis", 1) % 2 != 1:
        return None  # blocks down the columns: a row's values span several scales
    out = dq.output[0]
    readers = g.consumers[out]
    if g.readers[out] != len(readers):
        return None  # a graph output reads it too
    if any(r.op_type != "Gather" or r.input[0] != out or int_attr(r, "axis", 0) for r in readers):
        return None  # a tied head's MatMul, or a Gather along the columns
    return readers, table.shape


def _after_gather(
    g: GraphIndex, dq: onnx.NodeProto, lookup: onnx.NodeProto, name: str, shape: tuple[int, ...]
) -> list[onnx.NodeProto]:
    """Gather the integer rows, then dequantize them as ``dq`` would have: a scale per
    tensor or per column as it is; one per row, or per block along the rows, gathered with
    the rows (a row's scale is one block spanning it)."""
    ids, out = lookup.input[1], lookup.output[0]
    rows = helper.make_node("Gather", [dq.input[0], ids], [f"{out}/rows"], name=f"{name}/Gather")
    scale = g.const(dq.input[1])
    assert scale is not None  # `_lookups` checked
    block = int_attr(dq, "block_size", 0)
    if scale.size == 1 or (not block and int_attr(dq, "axis", 1) % 2 == 1):
        moved = helper.make_node(
            "DequantizeLinear", [rows.output[0], *dq.input[1:]], [out], name=name, axis=-1
        )
        return [rows, moved]
    nodes, inputs = [rows], [rows.output[0]]
    for i, tag in ((1, "scale"), (2, "zero_point")):
        value = g.const(dq.input[i]) if len(dq.input) > i and dq.input[i] else None
        if value is None:
            continue
        per_row = f"{name}/{tag}"  # [rows, blocks]
        g.graph.initializer.append(numpy_helper.from_array(value.reshape(shape[0], -1), per_row))
        taken = helper.make_node("Gather", [per_row, ids], [f"{out}/{tag}"], name=f"{name}/{tag}")
        nodes.append(taken)
        inputs.append(taken.output[0])
    size = block or shape[1]
    dequantize = helper.make_node(
        "DequantizeLinear", inputs, [out], name=name, axis=-1, block_size=size
    )
    return [*nodes, dequantize]


def gather_quantized_rows(model: onnx.ModelProto) -> dict[str, str]:
    """Rewrite each ``Gather(DequantizeLinear(8- or 16-bit table), ids)`` of ``model`` (in place)
    to gather the integer rows and dequantize only those.

    Returns:
        Each DequantizeLinear node removed → the node that now dequantizes (named
        ``<quantizer>/DequantizeRows``; more lookups of one table get ``_1``, ``_2``, ...).

    Example:
        >>> # gather_quantized_rows(model)  # {"emb/DequantizeLinear": "emb/DequantizeRows"}
    """
    g = GraphIndex(model.graph)
    removed: dict[str, str] = {}
    drop: set[str] = set()
    after: dict[str, list[onnx.NodeProto]] = {}
    for dq in list(model.graph.node):
        if dq.op_type != "DequantizeLinear":
            continue
        found = _lookups(g, dq)
        if found is None:
            continue
        lookups, shape = found
        base = f"{dq.name.rsplit('/', 1)[0] or dq.output[0]}/DequantizeRows"
        drop.add(dq.output[0])
        for i, lookup in enumerate(lookups):
            name = base if i == 0 else f"{base}_{i}"
            drop.add(lookup.output[0])
            after[lookup.output[0]] = _after_gather(g, dq, lookup, name, shape)
        removed[dq.name] = base
    splice(model, drop, after)
    return removed
