"""Fusion groups: ops a compiler runs as one kernel, with no quantizer between them.

Patterns, each link only through a tensor with a single consumer (identity ops such as
dropout in eval mode are skipped over):

- conv / conv_transpose / linear (or a MatMul by a weight), then an optional add of a
  constant (its bias), optional batch_norm, optional residual add, optional relu-like
  activation;
- add or batch_norm, then optional relu-like activation;
- a layer / RMS norm or a GELU spelled out op by op (mean, sub, pow, sqrt, div, erf, ...),
  found by `mixq.graph.composites.composite_regions`: the whole region, in graph order.

With ``fuse_add=False`` (targets whose kernels do not fuse the residual add, such as ONNX
Runtime's CPU provider: QLinearConv then QLinearAdd) an anchor's group ends before the add,
so the add reads quantized inputs and starts a group of its own (add, then relu). A
target profile says which with its ``fuse_residual_add`` field;
`mixq.targets.fuses_residual_add` reads it by target name.

Example:
    >>> from mixq.graph.ir import Graph, Op
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("conv", "conv", inputs=["x"], outputs=["conv"]))
    >>> g.add_op(Op("bn", "batch_norm", inputs=["conv"], outputs=["bn"]))
    >>> g.add_op(Op("add", "add", inputs=["bn", "x"], outputs=["add"]))
    >>> g.add_op(Op("relu", "relu", inputs=["add"], outputs=["relu"]))
    >>> find_fusion_groups(g)["bn"].ops
    ('conv', 'bn', 'add', 'relu')
    >>> unfused = find_fusion_groups(g, fuse_add=False)
    >>> unfused["bn"].ops, unfused["add"].ops
    (('conv', 'bn'), ('add', 'relu'))
"""

from __future__ import annotations

from dataclasses import dataclass

from mixq.graph.composites import composite_regions
from mixq.graph.ir import Graph, Op
from mixq.graph.kinds import FUSABLE_ACTIVATIONS, IDENTITY_KINDS

__all__ = ["IDENTITY_KINDS", "FusionGroup", "find_fusion_groups"]

_ANCHORS = frozenset({"conv", "conv_transpose", "linear"})


@dataclass(frozen=True)
class FusionGroup:
    """Ops fused into one kernel; only ``output`` (the last op's tensor) is quantized."""

    ops: tuple[str, ...]
    output: str

    @property
    def anchor(self) -> str:
        return self.ops[0]


# a stage that takes an add of a constant (a MatMul's bias, written as its own Add in ONNX)
BIAS = "bias_add"


def fusion_stages(kind: str, fuse_add: bool = True) -> list[frozenset[str]]:
    if kind in _ANCHORS:
        add = [frozenset({"add"})] if fuse_add else []
        return [frozenset({BIAS}), frozenset({"batch_norm"}), *add, FUSABLE_ACTIVATIONS]
    if kind in {"add", "batch_norm"}:
        return [FUSABLE_ACTIVATIONS]
    return []


def _next_op(graph: Graph, tensor: str) -> tuple[list[str], Op | None]:
    """The single consumer of ``tensor``, skipping identity ops; also the skipped ops."""
    skipped: list[str] = []
    while True:
        consumers = graph.consumers(tensor)
        if len(consumers) != 1 or tensor in graph.outputs:
            return skipped, None
        op = consumers[0]
        if op.kind not in IDENTITY_KINDS or len(op.outputs) != 1:
            return skipped, op
        skipped.append(op.name)
        tensor = op.outputs[0]


def anchor_kind(op: Op) -> str:
    """A MatMul by a weight (ONNX's spelling of a linear layer) anchors as a linear."""
    return "linear" if op.kind == "matmul" and op.weights else op.kind


def _takes(graph: Graph, stage: frozenset[str], op: Op) -> bool:
    if BIAS in stage:
        return op.kind == "add" and len(graph.float_inputs(op)) == 1
    return op.kind in stage


def _grow(graph: Graph, start: Op, taken: set[str], fuse_add: bool) -> list[str]:
    members = [start.name]
    for stage in fusion_stages(anchor_kind(start), fuse_add):
        tail = graph.ops[members[-1]]
        if len(tail.outputs) != 1:
            break
        skipped, nxt = _next_op(graph, tail.outputs[0])
        if nxt is not None and _takes(graph, stage, nxt) and nxt.name not in taken:
            members += [*skipped, nxt.name]
    return members


def find_fusion_groups(graph: Graph, fuse_add: bool = True) -> dict[str, FusionGroup]:
    """Map every op name to its group (single ops form a group of one).

    Args:
        graph: the model.
        fuse_add: whether a conv / linear group takes in the residual add after it (NPU
            compilers); False ends the group before the add (ORT's CPU kernels). Callers
            with a Plan use `target_fusion_groups`.
    """
    groups: dict[str, FusionGroup] = {}
    for region in composite_regions(graph):  # a spelled-out norm or GELU: one kernel
        group = FusionGroup(region, graph.ops[region[-1]].outputs[0])
        groups.update(dict.fromkeys(region, group))
    for op in graph:
        if op.name in groups:
            continue
        members = _grow(graph, op, set(groups), fuse_add)
        last = graph.ops[members[-1]]
        group = FusionGroup(tuple(members), last.outputs[0] if last.outputs else "")
        for name in members:
            groups[name] = group
    return groups
