"""Name an exported file's Q / DQ nodes after the quantizers they stand for, and record them
in the file's ``mixq.quantizers`` metadata (what `mixq.export.ExportReport.quantizers` lists
and the analyses read back).

Example:
    >>> import onnx
    >>> name_qdq_nodes(onnx.ModelProto(), {})
    {}
"""

from __future__ import annotations

import json

import onnx

__all__ = ["name_qdq_nodes"]


def name_qdq_nodes(
    model: onnx.ModelProto, names: dict[str, str], dynamic: list[str] | None = None
) -> dict[str, dict[str, str]]:
    """Rename Q / DQ nodes after their quantizer (found via their scale initializer) and
    record them in the model's ``mixq.quantizers`` metadata. ``dynamic``: the dynamic
    quantizers, in the order their DynamicQuantizeLinear nodes appear (they have no scale
    initializer to be found by; the exporter keeps the traced order).

    Example:
        >>> import onnx
        >>> name_qdq_nodes(onnx.ModelProto(), {})
        {}
    """
    out: dict[str, dict[str, str]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            # the zero point fixes the type; an explicit output_dtype breaks ORT's s8 -> u8
            # rewrite of Q/DQ pairs ("output_dtype INT8 does not match y_zero_point UINT8")
            keep = [a for a in node.attribute if a.name != "output_dtype"]
            del node.attribute[:]
            node.attribute.extend(keep)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1:
            qname = names.get(node.input[1])
            if qname is not None:
                base = f"{qname}/{node.op_type}"
                taken = sum(1 for v in out.values() for n in v.values() if n.startswith(base))
                node.name = base if not taken else f"{base}_{taken}"
                out.setdefault(qname, {})[node.op_type if not taken else node.name] = node.name
    out.update(_name_dynamic_nodes(model, dynamic or []))
    model.metadata_props.add(key="mixq.quantizers", value=json.dumps(out))
    return out


def _name_dynamic_nodes(model: onnx.ModelProto, names: list[str]) -> dict[str, dict[str, str]]:
    nodes = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    if len(nodes) != len(names):
        return {}  # the coverage check then names the quantizers it cannot find
    readers = {i: n for n in model.graph.node for i in n.input}
    out = {}
    for node, qname in zip(nodes, names, strict=True):
        node.name = f"{qname}/DynamicQuantizeLinear"
        out[qname] = {"DynamicQuantizeLinear": node.name}
        dq = readers.get(node.output[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            dq.name = out[qname]["DequantizeLinear"] = f"{qname}/DequantizeLinear"
    return out
