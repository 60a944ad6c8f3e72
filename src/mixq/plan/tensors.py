"""Tensor-level view of a Plan: which tensor carries whose encoding (data-movement outputs
carry their input's) and the precision each tensor is produced at."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mixq.core.qtypes import qtype
from mixq.graph.ir import Graph
from mixq.graph.kinds import is_data_movement

if TYPE_CHECKING:
    from mixq.plan.plan import OpPlan

__all__ = ["aliases", "tensor_precisions"]


def aliases(graph: Graph) -> dict[str, str]:
    """Tensor -> the tensor whose encoding it carries (itself unless a data-movement output)."""
    root: dict[str, str] = {}
    for op in graph:
        ins = graph.float_inputs(op)
        for t in graph.float_outputs(op):
            root[t] = root.get(ins[0], ins[0]) if is_data_movement(op.kind) and ins else t
    for t in graph.inputs:
        root.setdefault(t, t)
    return root


def tensor_precisions(
    graph: Graph, ops: dict[str, OpPlan], inputs: dict[str, str] | None = None
) -> dict[str, str]:
    """Precision of every quantizable root tensor as produced.

    A model input takes ``inputs[name]`` if given, else the highest precision its readers
    ask for.
    """
    root = aliases(graph)
    result: dict[str, str] = {}
    reads: dict[str, list[str]] = {}
    for op in graph:
        if op.name not in ops or (is_data_movement(op.kind) and graph.float_inputs(op)):
            continue
        plan = ops[op.name]
        result.update(zip(graph.float_outputs(op), plan.output, strict=True))
        for t, p in zip(graph.float_inputs(op), plan.input, strict=True):
            reads.setdefault(root[t], []).append(p)
    for t in graph.inputs:
        if graph.tensors[t].quantizable:
            given = (inputs or {}).get(t)
            result[t] = given or max(reads.get(t, ["fp32"]), key=lambda p: qtype(p).rank())
    return result
