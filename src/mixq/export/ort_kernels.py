"""Write a file the way ONNX Runtime's CPU kernels want it, without changing what it computes.

Three rewrites, all exact (the values do not change, only which kernels compute them):

- `fuse_integer_linears`: a linear written as Q/DQ (``DQ(x_q)``, ``DQ(w_q)`` [``Transpose``],
  ``MatMul``, then ``Add(bias)``) becomes one ``com.microsoft.MatMulIntegerToFloat`` with its
  bias; ``x_q`` may come from a DynamicQuantizeLinear (a dynamic precision), whose scale and
  zero point the kernel then reads as computed. ORT turns the Q/DQ form into the same kernel
  itself, but without the bias: the Add then runs on its own (and a GELU after it as
  BiasGelu), which on a BERT costs 4-10 % of the int8 model's time. ORT's own fusion of the
  portable spelling (MatMulInteger, Cast, Mul) never fires on a calibrated file: constant
  folding merges the two scales first.
- `fold_castlike_constants`: ``CastLike(constant, x)`` becomes a constant of ``x``'s type. The
  torch exporter writes attention's scale that way; ORT cannot fold it (``x`` is not
  constant), so the scale stays two Muls on q and k instead of folding into the MatMul.
- `unfuse_residual_norms`: a residual ``Add`` read only by a LayerNormalization is written as
  ``Sum``. ORT 1.32 fuses Add + LayerNormalization into SkipLayerNormalization, whose CPU
  kernel took 327 us on one [4, 48, 384] tensor where Sum + LayerNormalization took 44 us
  (1 thread; 172 us against 27 + 14 us with 2); the real MiniLM's int8 file ran 25 %
  faster without the fusion (35.2 -> 26.3 ms).

Example:
    >>> from onnx import helper
    >>> graph = helper.make_graph([], "empty", [], [])
    >>> fuse_integer_linears(helper.make_model(graph))
    {}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mixq.export.onnx_edit import cast_target, inferred_values
from mixq.sim.onnx.capture import constant_names, prune_dead_nodes, subgraph_inputs

__all__ = [
    "MS_DOMAIN",
    "FusedLinear",
    "GraphIndex",
    "absorb",
    "bias_add",
    "drop_unread",
    "fold_castlike_constants",
    "fuse_integer_linears",
    "int_attr",
    "node_key",
    "splice",
    "swaps_2d",
    "unfuse_residual_norms",
]

MS_DOMAIN = "com.microsoft"


class GraphIndex:
    """Lookups over one graph: producers, reader counts, constant values."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers = Counter(i for n in graph.node for i in n.input)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}  # graph outputs not included
        for node in graph.node:
            for i in dict.fromkeys(node.input):
                self.consumers.setdefault(i, []).append(node)
        self.readers.update(o.name for o in graph.output)
        self.constants = constant_names(graph)

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer, a Constant node or a Cast of one (the torch
        exporter's typed constants); None for a computed tensor."""
        if name in self.constants:
            tensor = self.constants[name]
            return None if tensor is None else numpy_helper.to_array(tensor)
        node = self.producer.get(name)
        to = cast_target(node) if node is not None else None
        if node is None or to is None:
            return None
        value = self.const(node.input[0])
        return None if value is None else value.astype(helper.tensor_dtype_to_np_dtype(to))

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_reader(self, name: str) -> bool:
        return self.readers[name] == 1


@dataclass
class _Linear:
    matmul: onnx.NodeProto
    act_dq: onnx.NodeProto
    weight_dq: onnx.NodeProto
    transpose: onnx.NodeProto | None
    weight_kn: np.ndarray  # [K, N], int8 / uint8
    scale: np.ndarray  # scalar or [N]
    zero_point: np.ndarray
    bias_add: onnx.NodeProto | None
    bias: str


def int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    """An integer attribute of ``node`` (``default`` where it has none)."""
    return next((a.i for a in node.attribute if a.name == name), default)


def swaps_2d(transpose: onnx.NodeProto) -> bool:
    """Whether a Transpose swaps the two axes of a matrix (``perm`` [1, 0], the default)."""
    return next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0]) == [1, 0]


def _weight(g: GraphIndex, name: str) -> tuple | None:
    """(DQ, Transpose or None, [K, N] weights, scale, zero point) of a MatMul's B input."""
    transpose = g.made_by(name, "Transpose")
    if transpose is not None:
        if not swaps_2d(transpose) or not g.only_reader(transpose.output[0]):
            return None
        name = transpose.input[0]
    dq = g.made_by(name, "DequantizeLinear")
    if dq is None or len(dq.input) < 3 or not g.only_reader(dq.output[0]):
        return None
    w, scale, zp = (g.const(i) for i in dq.input[:3])
    if w is None or scale is None or zp is None:
        return None
    if w.ndim != 2 or w.dtype not in (np.int8, np.uint8):
        return None
    # the axis of the output channels in the stored weights: N is w's last axis after the
    # transpose, if any; a per-channel scale must run along it
    n_axis = 0 if transpose is not None else 1
    if scale.size > 1 and (int_attr(dq, "axis", 1) % 2 != n_axis or scale.ndim != 1):
        return None
    kn = w.T if transpose is not None else w
    return dq, transpose, np.ascontiguousarray(kn), scale, zp


def bias_add(g: GraphIndex, matmul: onnx.NodeProto, n: int) -> tuple[onnx.NodeProto | None, str]:
    """The Add reading only ``matmul``'s output with a constant [N] bias, and that bias."""
    out = matmul.output[0]
    if not g.only_reader(out):  # a graph output counts as a reader
        return None, ""
    add = g.consumers[out][0] if out in g.consumers else None
    if add is None or add.op_type != "Add":
        return None, ""
    other = add.input[1] if add.input[0] == out else add.input[0]
    value = g.const(other)
    if value is None or value.dtype != np.float32 or value.size != n or value.shape[-1] != n:
        return None, ""
    return add, other


def _linears(g: GraphIndex) -> list[_Linear]:
    found = []
    for node in g.graph.node:
        if node.op_type != "MatMul":
            continue
        act_dq = g.made_by(node.input[0], "DequantizeLinear")
        weight = _weight(g, node.input[1])
        if act_dq is None or weight is None or len(act_dq.input) < 3:
            continue
        a_scale: np.ndarray | None
        a_zp: np.ndarray | None
        if _dynamic_input(g, act_dq):  # u8 with a float32 scale, computed per call
            a_scale, a_zp = np.ones(1, np.float32), np.zeros(1, np.uint8)
        else:
            a_scale, a_zp = g.const(act_dq.input[1]), g.const(act_dq.input[2])
        if a_scale is None or a_zp is None or a_scale.size != 1 or a_zp.dtype.itemsize != 1:
            continue
        dq, transpose, kn, scale, zp = weight
        if a_scale.dtype != np.float32 or scale.dtype != np.float32:
            continue  # the kernel computes in float32
        if a_zp.dtype == np.int8 and kn.dtype == np.uint8:
            continue  # ORT has no s8 x u8 kernel (u8 x s8, u8 x u8 and s8 x s8 it has)
        add, bias = bias_add(g, node, kn.shape[1])
        found.append(_Linear(node, act_dq, dq, transpose, kn, scale, zp, add, bias))
    return found


def _dynamic_input(g: GraphIndex, act_dq: onnx.NodeProto) -> bool:
    """Whether the DequantizeLinear reads all three outputs of one DynamicQuantizeLinear
    (a dynamic precision: its scale and zero point are computed, not constants)."""
    dql = g.made_by(act_dq.input[0], "DynamicQuantizeLinear")
    return dql is not None and list(act_dq.input[:3]) == list(dql.output[:3])


def fuse_integer_linears(model: onnx.ModelProto) -> dict[str, str]:
    """Rewrite every 8-bit Q/DQ linear of ``model`` (in place) as MatMulIntegerToFloat.

    Returns:
        Each DequantizeLinear node removed → the fused node that now reads its input (an
        activation's DequantizeLinear stays while anything else reads it).

    Example:
        >>> # fuse_integer_linears(model)  # {"fc/DequantizeLinear": "fc/MatMulIntegerToFloat"}
    """
    g = GraphIndex(model.graph)
    linears = _linears(g)
    removed: dict[str, str] = {}
    drop: set[str] = set()  # nodes by their first output (names are optional, outputs unique)
    after: dict[str, onnx.NodeProto] = {}  # the fused node goes where its last node was
    for lin in linears:
        fused = _fused_node(model.graph, lin)
        absorb(lin, fused, drop, after, removed)
        g.readers[lin.act_dq.output[0]] -= 1
        if g.readers[lin.act_dq.output[0]] == 0:
            drop.add(lin.act_dq.output[0])
            removed.setdefault(lin.act_dq.name, fused.name)
    splice(model, drop, after)
    return removed


class FusedLinear(Protocol):
    """The nodes of a linear that one fused node replaces."""

    matmul: onnx.NodeProto
    weight_dq: onnx.NodeProto
    transpose: onnx.NodeProto | None
    bias_add: onnx.NodeProto | None


def absorb(
    lin: FusedLinear,
    fused: onnx.NodeProto,
    drop: set[str],
    after: dict[str, onnx.NodeProto],
    removed: dict[str, str],
) -> None:
    """Record, for `splice`, that ``fused`` replaces ``lin``'s MatMul, weight
    DequantizeLinear, Transpose and bias Add, where the last of them was."""
    after[(lin.bias_add or lin.matmul).output[0]] = fused
    for node in (lin.matmul, lin.weight_dq, lin.transpose, lin.bias_add):
        if node is not None:
            drop.add(node.output[0])
    removed[lin.weight_dq.name] = fused.name


def node_key(node: onnx.NodeProto) -> str:
    """A node's identity for `splice` (names are optional, first outputs unique)."""
    return node.output[0] if node.output else ""


def splice(
    model: onnx.ModelProto,
    drop: set[str],
    after: Mapping[str, onnx.NodeProto | list[onnx.NodeProto]],
) -> None:
    """Remove the nodes keyed in ``drop`` and put the new nodes of ``after`` where the node
    with their key was; then drop what only the removed nodes read, and declare the
    com.microsoft domain where a new node is in it (in place)."""
    read = {i for n in model.graph.node if node_key(n) in drop for i in n.input}
    added = [n for v in after.values() for n in (v if isinstance(v, list) else [v])]
    nodes = []
    for node in model.graph.node:
        if node_key(node) not in drop:
            nodes.append(node)
        new = after.get(node_key(node))
        if new is not None:
            nodes.extend(new if isinstance(new, list) else [new])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if after:
        drop_unread(model.graph, read)
    domains = {o.domain for o in model.opset_import}
    if any(n.domain == MS_DOMAIN for n in added) and MS_DOMAIN not in domains:
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _fused_node(graph: onnx.GraphProto, lin: _Linear) -> onnx.NodeProto:
    base = lin.weight_dq.name.rsplit("/", 1)[0] or lin.matmul.name
    name = f"{base}/MatMulIntegerToFloat"
    weights = f"{lin.weight_dq.input[0]}/kn"
    scale, zp = f"{weights}/scale", f"{weights}/zero_point"
    graph.initializer.extend(
        [
            numpy_helper.from_array(lin.weight_kn, weights),
            numpy_helper.from_array(lin.scale.reshape(-1), scale),
            numpy_helper.from_array(lin.zero_point.reshape(-1), zp),
        ]
    )
    a = lin.act_dq.input
    inputs = [a[0], weights, a[1], scale, a[2], zp] + ([lin.bias] if lin.bias_add else [])
    output = (lin.bias_add or lin.matmul).output[0]
    return helper.make_node("MatMulIntegerToFloat", inputs, [output], name=name, domain=MS_DOMAIN)


def drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Drop what only the replaced nodes read: their initializers and, through
    `prune_dead_nodes`, the typed-constant Casts the torch exporter puts before weights (so
    the file does not hold its weights twice)."""
    prune_dead_nodes(graph)
    read = {i for n in graph.node for i in [*n.input, *subgraph_inputs(n)]}
    read |= {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read or i.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fold_castlike_constants(model: onnx.ModelProto) -> int:
    """Replace each ``CastLike(constant, x)`` whose ``x`` has a known element type by a
    constant of that type (in place); returns how many were folded.

    Example:
        >>> # fold_castlike_constants(model)  # 12 on a 6-layer BERT (q and k scales)
    """
    if not any(n.op_type == "CastLike" for n in model.graph.node):
        return 0  # spare the type inference
    g = GraphIndex(model.graph)
    types = _elem_types(model)
    folded = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "CastLike":
            continue
        value, elem = g.const(node.input[0]), types.get(node.input[1])
        if value is None or elem is None:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        tensor = numpy_helper.from_array(value.astype(dtype), node.output[0])
        constant = helper.make_node("Constant", [], [node.output[0]], name=node.name, value=tensor)
        model.graph.node[i].CopyFrom(constant)
        folded += 1
    return folded


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value ONNX's type inference knows, initializers included."""
    values = inferred_values(model).values()
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def unfuse_residual_norms(model: onnx.ModelProto) -> int:
    """Write each residual ``Add`` (two computed inputs) that only a LayerNormalization
    reads as ``Sum`` (in place); returns how many. Sum of two tensors is Add, and ORT does
    not fuse it into its slower SkipLayerNormalization.

    Example:
        >>> # unfuse_residual_norms(model)  # 13 on a 6-layer BERT
    """
    g = GraphIndex(model.graph)
    count = 0
    for node in model.graph.node:
        if node.op_type != "LayerNormalization":
            continue
        add = g.made_by(node.input[0], "Add")
        if add is None or not g.only_reader(add.output[0]):
            continue
        if any(g.const(i) is not None for i in add.input):
            continue  # a bias, not a residual
        add.op_type = "Sum"
        count += 1
    return count
