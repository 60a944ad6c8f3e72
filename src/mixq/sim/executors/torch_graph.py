"""The float fx graph of a torch Sim as plain data, and the `Captured` rebuilt from it.

A worker on another process or machine rebuilds the Sim with the same constructor the user's
came from (``Sim(captured, plan)``), so it needs the captured float module: the Sim's graph
with its quantizer nodes taken out again, the parameters and buffers its nodes read, and
which node holds each tensor and op. Node names are kept, so quantizer names, the runner's
node maps and every table key come out the same. Operator overloads travel by their
qualified name (they do not pickle); the pytree spec of the inputs travels as it is.

Example:
    >>> import torch, mixq
    >>> sim = mixq.quantize(torch.nn.Linear(4, 2), (torch.randn(3, 4),), "int8")
    >>> float_graph = pack_float_graph(sim)
    >>> captured = unpack_float_graph(float_graph, sim.graph, sim.example_inputs)
    >>> [n.op for n in captured.module.graph.nodes][-1]
    'output'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from mixq.graph.ir import Graph

__all__ = ["FloatGraph", "pack_captured", "pack_float_graph", "unpack_float_graph"]


@dataclass(frozen=True)
class _Ref:
    """A reference to another node of the graph, by name."""

    name: str


@dataclass(frozen=True)
class _OpRef:
    """An operator overload (``aten::linear`` + ``default``) or higher-order op by name."""

    name: str
    overload: str | None = None


@dataclass
class _NodeSpec:
    name: str
    op: str
    target: Any
    args: Any
    kwargs: Any
    dtype: torch.dtype | None  # the dtype of meta["val"], which the analyses read


@dataclass
class FloatGraph:
    """What rebuilds the float `Captured` of a torch Sim (picklable)."""

    nodes: list[_NodeSpec]
    # qualified name -> (param | buffer | attr | module | guards, value)
    attrs: dict[str, tuple[str, Any]]
    pytree_info: Any
    tensor_nodes: dict[str, str]
    op_nodes: dict[str, str]
    notes: list[str] = field(default_factory=list)
    static: bool = False  # captured for the example's shapes only


def _target(node: fx.Node) -> Any:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return _OpRef(t._schema.name, t._overloadname)
    if isinstance(t, torch._ops.HigherOrderOperator):
        return _OpRef(t.name())
    return t


def _resolve_target(t: Any) -> Any:
    if not isinstance(t, _OpRef):
        return t
    if t.overload is None:
        return getattr(torch.ops.higher_order, t.name)
    namespace, name = t.name.split("::")
    return getattr(getattr(getattr(torch.ops, namespace), name), t.overload)


def _map(value: Any, fn: Any) -> Any:
    """``value`` with every node (or `_Ref`) replaced by ``fn(it)``, as plain containers."""
    if isinstance(value, (fx.Node, _Ref)):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map(v, fn) for v in value)
    if isinstance(value, list):
        return [_map(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_map(value.start, fn), _map(value.stop, fn), _map(value.step, fn))
    return value


def _dtype(node: fx.Node) -> torch.dtype | None:
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _attr_entry(gm: fx.GraphModule, target: str) -> tuple[str, Any]:
    *path, leaf = target.split(".")
    owner: nn.Module = gm.get_submodule(".".join(path)) if path else gm
    value = getattr(owner, leaf)
    if isinstance(value, nn.Parameter):
        return "param", (value.detach(), value.requires_grad)
    if leaf in owner._buffers:
        return "buffer", value.detach() if value is not None else None
    if type(value).__name__ == "GuardsFn":
        # torch.export's input-shape guards (a generated, unpicklable function): the driver
        # already ran them on these inputs, so the worker gets a fresh one that checks nothing
        return "guards", None
    if isinstance(value, nn.Module):
        return "module", value
    return "attr", value.detach() if isinstance(value, torch.Tensor) else value


def pack_float_graph(sim: Any) -> FloatGraph:
    """The Sim's module without its quantizers (and bias roundings, and with its integer
    linears plain linears again): nodes, what they read, node maps."""
    return _pack(
        sim.module,
        set(sim.quantizer_nodes.values()) | set(getattr(sim, "bias_nodes", ())),
        dict(sim.value_nodes),
        dict(sim.op_nodes),
        list(getattr(sim, "capture_notes", [])),
        getattr(sim, "static_shapes", None) is not None,
        set(getattr(sim, "integer_linears", ())),
    )


def pack_captured(captured: Any) -> FloatGraph:
    """A `Captured` (the float module before any Sim is built on it) as a `FloatGraph`."""
    return _pack(
        captured.module,
        set(),
        {t: n.name for t, n in captured.tensor_nodes.items()},
        {o: n.name for o, n in captured.op_nodes.items()},
        list(captured.notes),
        captured.static,
    )


def _pack(
    gm: fx.GraphModule,
    quantizers: set[str],
    value_nodes: dict[str, str],
    op_nodes: dict[str, str],
    notes: list[str],
    static: bool,
    linears: frozenset[str] | set[str] = frozenset(),
) -> FloatGraph:

    def source(node: Any) -> _Ref | None:
        while node is not None and node.name in quantizers:
            node = node.args[0]  # a conv without bias reads None through its bias rounding
        return None if node is None else _Ref(node.name)

    def name_of(node: Any) -> str:
        ref = source(node)
        if ref is None:
            raise ValueError(f"node {node.name!r} stands for no value")
        return ref.name

    nodes, attrs = [], {}
    for n in gm.graph.nodes:
        if n.name in quantizers:
            continue
        args, kwargs = _map(n.args, source), _map(dict(n.kwargs), source)
        if n.name in linears:  # the Sim builds its IntegerLinear again
            target = _OpRef("aten::linear", "default")
            nodes.append(_NodeSpec(n.name, "call_function", target, args, kwargs, _dtype(n)))
            continue
        nodes.append(_NodeSpec(n.name, n.op, _target(n), args, kwargs, _dtype(n)))
        if n.op in ("get_attr", "call_module"):
            attrs[str(n.target)] = _attr_entry(gm, str(n.target))
    by_name = {n.name: n for n in gm.graph.nodes}
    return FloatGraph(
        nodes,
        attrs,
        gm.graph._codegen.pytree_info,  # type: ignore[attr-defined]
        {t: name_of(by_name[v]) for t, v in value_nodes.items()},
        {op: name_of(by_name[v]) for op, v in op_nodes.items()},
        notes,
        static,
    )


def _root(attrs: dict[str, tuple[str, Any]]) -> nn.Module:
    root = nn.Module()
    for target, (kind, value) in attrs.items():
        *path, leaf = target.split(".")
        owner = root
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        if kind == "param":
            owner.register_parameter(leaf, nn.Parameter(value[0], requires_grad=value[1]))
        elif kind == "buffer":
            owner.register_buffer(leaf, value)
        elif kind == "module":
            owner.add_module(leaf, value)
        elif kind == "guards":
            from torch.export._unlift import GuardsFn

            owner.add_module(leaf, GuardsFn())
        else:
            setattr(owner, leaf, value)
    return root


def unpack_float_graph(state: FloatGraph, graph: Graph, example_inputs: Any) -> Any:
    """The `Captured` a `Sim` is built from, with the node names the original had."""
    from mixq.sim.torch.capture import Captured

    fx_graph = fx.Graph()
    made: dict[str, fx.Node] = {}
    for spec in state.nodes:
        args = _map(spec.args, lambda r: made[r.name])
        kwargs = _map(spec.kwargs, lambda r: made[r.name])
        node = fx_graph.create_node(
            spec.op, _resolve_target(spec.target), args, kwargs, name=spec.name
        )
        if node.name != spec.name:
            raise RuntimeError(f"fx renamed node {spec.name!r} to {node.name!r}")
        if spec.dtype is not None:
            node.meta["val"] = torch.empty(0, dtype=spec.dtype)
        made[spec.name] = node
    fx_graph._codegen = fx.graph._PyTreeCodeGen(state.pytree_info)
    module = fx.GraphModule(_root(state.attrs), fx_graph)
    return Captured(
        module,
        graph,
        {t: made[n] for t, n in state.tensor_nodes.items()},
        {o: made[n] for o, n in state.op_nodes.items()},
        example_inputs,
        list(state.notes),
        state.static,
    )
