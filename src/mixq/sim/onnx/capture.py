"""Describe an ONNX model as a `Graph`: op names are ONNX node names, tensors ONNX values.

Initializers (and the outputs of Constant nodes) are constants: they are never op inputs;
a weighted op's constant operand becomes its ``weight`` (see `mixq.sim.onnx.kinds`). Element
types come from the model's value_info after ONNX shape inference. Nodes no graph output
depends on are pruned first (`prune_dead_nodes`) and listed in ``Graph.dead``.

Example:
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> import numpy as np
    >>> w = numpy_helper.from_array(np.ones((2, 4), np.float32), "fc.weight")
    >>> g = helper.make_graph(
    ...     [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], name="fc", transB=1),
    ...      helper.make_node("Relu", ["y"], ["z"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
    ...     [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 2])], [w])
    >>> graph, model = capture(helper.make_model(g))
    >>> [(op.name, op.kind) for op in graph], graph.inputs, graph.outputs
    ([('fc', 'linear'), ('z', 'relu')], ['x'], ['z'])
    >>> fc = graph.ops["fc"]
    >>> fc.weights, fc.attrs["weight_axis"]
    ({'weight': 'fc.weight'}, 0)
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from mixq.core.errors import CaptureError
from mixq.graph.ir import Graph, Op
from mixq.sim.onnx.kinds import canonical_kind, weight_slot

__all__ = [
    "capture",
    "constant_names",
    "dtype_name",
    "elem_type",
    "load_model",
    "prune_dead_nodes",
    "subgraph_inputs",
]

Shape = tuple[int | None, ...] | None


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (a ModelProto, or a path to an ``.onnx`` file)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = Path(model)
    if not path.is_file():
        raise CaptureError(f"no ONNX file at {str(path)!r}: check the path")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CaptureError(f"{str(path)!r} is not a readable ONNX model: {exc}") from exc


def dtype_name(elem_type: int) -> str:
    """ONNX element type -> numpy-style name (``float32``, ``int64``, ``bool``...)."""
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return "unknown"


def elem_type(dtype: str) -> int:
    """Numpy-style name -> ONNX element type (float32 for names numpy does not know)."""
    try:
        return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except TypeError:
        return int(TensorProto.FLOAT)


def constant_names(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | None]:
    """Initializers and Constant-node outputs (value tensor where it has one)."""
    out: dict[str, onnx.TensorProto | None] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            out[node.output[0]] = value
    return out


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name (its first output's name when it has none)."""
    used: set[str] = set()
    for i, node in enumerate(graph.node):
        base = node.name or next((o for o in node.output if o), f"{node.op_type}_{i}")
        name, n = base, 1
        while name in used:
            name, n = f"{base}_{n}", n + 1
        node.name = name
        used.add(name)


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names read inside an If / Loop / Scan body (they may come from the outer graph)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else []
        for graph in [*graphs, *attr.graphs]:
            for inner in graph.node:
                names.update(inner.input)
                names.update(subgraph_inputs(inner))
    return names


def _live_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes some graph output depends on."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    live: set[int] = set()
    stack = [o.name for o in graph.output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        i = producer[name]
        if i not in live:
            live.add(i)
            node = graph.node[i]
            stack.extend(t for t in [*node.input, *subgraph_inputs(node)] if t)
    return live


def prune_dead_nodes(graph: onnx.GraphProto) -> dict[str, str]:
    """Remove the nodes no graph output depends on, in place; return them as
    ``{node name: module path}`` (Constant nodes left out).

    Converters leave such nodes (a branch of a training graph, a shape computation nobody
    reads). Left in, they would get quantizers that never affect an output and calibrate on
    values nobody reads, and the export, which keeps only what the outputs need, would lose
    those quantizers (the torch capture prunes the same way, `prune_dead_code`). Initializers
    only dead nodes read go too; graph inputs stay (they are the model's signature).

    Example:
        >>> from onnx import TensorProto, helper
        >>> g = helper.make_graph(
        ...     [helper.make_node("Relu", ["x"], ["y"], name="relu"),
        ...      helper.make_node("Sigmoid", ["x"], ["unused"], name="sigmoid")], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        >>> prune_dead_nodes(g), [n.name for n in g.node]
        ({'sigmoid': ''}, ['relu'])
    """
    live = _live_nodes(graph)
    if len(live) == len(graph.node):
        return {}
    dead = [n for i, n in enumerate(graph.node) if i not in live]
    kept = [n for i, n in enumerate(graph.node) if i in live]
    read = {t for n in kept for t in [*n.input, *subgraph_inputs(n)]}
    read |= {o.name for o in graph.output} | {v.name for v in graph.input}
    gone = {t for n in dead for t in [*n.input, *n.output]} - read
    names = {n.name: _module(n)[0] for n in dead if n.op_type != "Constant"}
    del graph.node[:]
    graph.node.extend(kept)
    for values in (graph.initializer, graph.value_info):
        keep = [v for v in values if v.name not in gone]
        del values[:]
        values.extend(keep)
    return names


def _value_types(model: onnx.ModelProto) -> dict[str, tuple[str, Shape]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # a model ONNX cannot infer still runs: fall back to what it declares
        inferred = model
    g = inferred.graph
    out: dict[str, tuple[str, Shape]] = {}
    for v in [*g.input, *g.value_info, *g.output]:
        if v.type.HasField("tensor_type"):
            tt = v.type.tensor_type
            shape = (
                tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                if tt.HasField("shape")
                else None
            )
            out[v.name] = (dtype_name(tt.elem_type), shape)
    return out


def _module(node: onnx.NodeProto) -> tuple[str, str]:
    """(module path, class) from the torch exporters' metadata or ``/``-separated names."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        names = ast.literal_eval(scopes)
        classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        cls = classes[-2].rsplit(".", 1)[-1] if len(classes) >= 2 else ""
        return (names[-2] if len(names) >= 2 else ""), cls
    path = ""
    for part in node.name.split("/")[1:-1] if node.name.startswith("/") else []:
        path = part if part.startswith(path + ".") else f"{path}.{part}".lstrip(".")
    return path, ""


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.constants = constant_names(model.graph)
        self.types = _value_types(model)
        self.graph = Graph()

    def build(self) -> Graph:
        for v in self.model.graph.input:
            if v.name not in self.constants:
                dtype, shape = self.types.get(v.name, ("unknown", None))
                self.graph.add_input(v.name, dtype, shape)
        for node in self.model.graph.node:
            if node.output and node.output[0] in self.constants:
                continue  # a Constant node
            self._add(node)
        self.graph.outputs = [
            o.name for o in self.model.graph.output if o.name in self.graph.tensors
        ]
        return self.graph

    def _add(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kind = canonical_kind(node.op_type, attrs)
        inputs = [t for t in dict.fromkeys(node.input) if t and t not in self.constants]
        unknown = [t for t in inputs if t not in self.graph.tensors]
        if unknown:
            raise CaptureError(
                f"node {node.name!r} ({node.op_type}) reads {unknown[0]!r}, which no node, "
                "graph input or initializer provides: is the model topologically sorted?"
            )
        weights, op_attrs = self._weights(node, attrs)
        if weights and kind == "gather":
            kind = "embedding"
        module, module_type = _module(node)
        outputs = [t for t in node.output if t]
        op = Op(node.name, kind, module, module_type, inputs, outputs, weights, op_attrs)
        op.attrs["onnx_op_type"] = node.op_type
        self.graph.add_op(op, {t: self.types[t][0] for t in outputs if t in self.types})
        for t in outputs:
            self.graph.tensors[t].shape = self.types.get(t, ("", None))[1]

    def _weights(
        self, node: onnx.NodeProto, attrs: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, object]]:
        if node.op_type == "BatchNormalization":
            return {}, self._bn_attrs(node, attrs)
        ranks = [self._rank(t) for t in node.input]
        slot = weight_slot(node.op_type, attrs, ranks)
        if slot is None or self.constants.get(node.input[slot[0]]) is None:
            return {}, {}
        index, axes = slot
        return {"weight": node.input[index]}, {**axes, "weight_input": index}

    def _rank(self, tensor: str) -> int | None:
        if tensor not in self.constants:
            return None
        value = self.constants[tensor]
        return len(value.dims) if value is not None else 0

    def _bn_attrs(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, object]:
        """The batch-norm constants a preceding conv's weight quantizer folds in."""

        def const(i: int) -> str | None:
            t = node.input[i] if len(node.input) > i else ""
            return t if t in self.constants else None

        return {
            "bn_weight": const(1),
            "bn_bias": const(2),
            "bn_running_mean": const(3),
            "bn_running_var": const(4),
            "bn_eps": attrs.get("epsilon", 1e-5),
        }


def capture(model: str | Path | onnx.ModelProto) -> tuple[Graph, onnx.ModelProto]:
    """Build the Graph of an ONNX model.

    Args:
        model: a path to an ``.onnx`` file or a ``ModelProto`` (never modified).

    Returns:
        ``(graph, model)``: the Graph and a copy of the model whose nodes all have unique,
        non-empty names (the Graph's op names), without the nodes no output depends on
        (``graph.dead`` lists them), which the ONNX Sim rewrites.

    Raises:
        CaptureError: the file is missing or unreadable, or a node reads an unknown value.
    """
    proto = load_model(model)
    _name_nodes(proto.graph)
    dead = prune_dead_nodes(proto.graph)
    graph = _Builder(proto).build()
    graph.dead = dead
    return graph, proto
