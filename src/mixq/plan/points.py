"""Quantization points: where a quantizer sits, given a Graph and a Plan.

- an activation point on every model input and every fusion-group output (data-movement
  outputs carry their input's encoding and get none); the groups are the plan's target's
  (with ``ort-cpu`` a residual add is not fused, so a conv's output before it is a point);
- a conversion point where an op reads a tensor at a lower precision than it was produced
  (e.g. an int16 tensor read by an int8 op), shared by all readers at that precision; under
  a runtime's placement (``ort-cpu``: layer norms, GELU, residual adds in float) a float-
  produced tensor that integer kernels read gets its one quantizer here, on the readers'
  edge (the Q/K/V linears after a LayerNorm share one), not on the producer's output;
- a weight point per quantized weight (named by its parameter).

fp32 needs no quantizer, so no point is made for it.

Example:
    >>> # [p.name for p in quantization_points(graph, plan)]
    >>> # ['x', 'conv1.weight', 'layer1.0.relu', 'layer1.0.relu@int8', ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixq.core.qtypes import qtype
from mixq.graph.fusion import FusionGroup
from mixq.graph.ir import Graph, Op
from mixq.graph.kinds import is_data_movement
from mixq.plan.tensors import aliases, tensor_precisions
from mixq.plan.types import Granularity
from mixq.targets.fusion import target_fusion_groups

if TYPE_CHECKING:
    from mixq.plan.plan import Plan

__all__ = ["QuantPoint", "quantization_points"]


@dataclass(frozen=True)
class QuantPoint:
    """One quantizer.

    Attributes:
        name: unique; the tensor name, ``tensor@precision`` for a conversion, or the
            parameter name for a weight.
        kind: ``activation`` or ``weight``.
        target: the tensor (activation) or parameter (weight) it quantizes.
        precision: a name from `mixq.core.qtypes`.
        op: the op producing the tensor (None for a model input) or reading the weight.
        readers: for a conversion, the ops it feeds; empty means every reader.
        axis / block_size: weight granularity (None, None = per tensor).
        symmetric: whether the zero point is fixed at the middle of the grid.
        reciprocal_scale: the scale is ``1 / k`` for an integer ``k`` (8-bit softmax
            outputs: integer softmax kernels such as ONNX Runtime's QLinearSoftmax
            multiply by ``floor(1 / scale)``); see `mixq.core.primitives.reciprocal_scale`.
    """

    name: str
    kind: str
    target: str
    precision: str
    op: str | None = None
    readers: tuple[str, ...] = ()
    axis: int | None = None
    block_size: int | None = None
    symmetric: bool = False
    reciprocal_scale: bool = False

    @property
    def is_float(self) -> bool:
        return qtype(self.precision).is_floating_point


def _is_int8(precision: str) -> bool:
    t = qtype(precision)
    return t.bits == 8 and not t.is_floating_point


def _lower(a: str, b: str) -> bool:
    return qtype(a).rank() < qtype(b).rank()


def _activation_points(
    graph: Graph, plan: Plan, produced: dict[str, str], groups: dict[str, FusionGroup]
) -> list[QuantPoint]:
    sym = plan.scheme.activation_symmetric
    points = [
        QuantPoint(t, "activation", t, produced[t], None, symmetric=sym)
        for t in graph.inputs
        if t in produced
    ]
    for op in graph:
        if op.name not in plan.ops or (is_data_movement(op.kind) and graph.float_inputs(op)):
            continue
        if groups[op.name].ops[-1] != op.name:
            continue
        points += [
            QuantPoint(
                t,
                "activation",
                t,
                produced[t],
                op.name,
                symmetric=sym,
                reciprocal_scale=op.kind == "softmax" and _is_int8(produced[t]),
            )
            for t in graph.float_outputs(op)
        ]
    return points


def _conversion_points(
    graph: Graph, plan: Plan, produced: dict[str, str], groups: dict[str, FusionGroup]
) -> list[QuantPoint]:
    root = aliases(graph)
    readers: dict[tuple[str, str], list[str]] = {}
    for op in graph:
        if op.name not in plan.ops or is_data_movement(op.kind):
            continue
        for t, p in zip(graph.float_inputs(op), plan.ops[op.name].input, strict=True):
            producer = graph.tensors[t].producer
            if producer is not None and producer in groups[op.name].ops:
                continue  # inside a fused group: no quantizer
            src = produced.get(root[t], "fp32")
            if p != src and p != "fp32" and _lower(p, src):
                readers.setdefault((t, p), []).append(op.name)
    sym = plan.scheme.activation_symmetric
    return [
        QuantPoint(
            f"{t}@{p}", "activation", t, p, graph.tensors[t].producer, tuple(ops), symmetric=sym
        )
        for (t, p), ops in readers.items()
    ]


def _weight_points(graph: Graph, plan: Plan) -> list[QuantPoint]:
    scheme = plan.scheme
    seen: set[str] = set()
    points = []
    for op in graph:
        if op.name not in plan.ops:
            continue
        for role, param in op.weights.items():
            precision = plan.ops[op.name].weight.get(role, "fp32")
            name = param if param not in seen else f"{op.name}.{role}"
            seen.add(param)
            axis, block = _weight_granularity(
                op, scheme.weight_granularity, scheme.weight_block_size
            )
            points.append(
                QuantPoint(
                    name,
                    "weight",
                    param,
                    precision,
                    op.name,
                    axis=axis,
                    block_size=block,
                    symmetric=scheme.weight_symmetric,
                )
            )
    return points


def _weight_granularity(
    op: Op, granularity: Granularity, block_size: int | None
) -> tuple[int | None, int | None]:
    axis = op.attrs.get("weight_axis", 0)
    if granularity is Granularity.PER_TENSOR:
        return None, None
    if granularity is Granularity.PER_BLOCK:
        # Blocks run along the reduction (input-channel) axis, one scale row per output channel.
        return int(op.attrs.get("weight_in_axis", 1)), block_size  # type: ignore[call-overload]
    return int(axis), None  # type: ignore[call-overload]


def quantization_points(graph: Graph, plan: Plan) -> list[QuantPoint]:
    """Every quantizer the plan needs, in graph order; fp32 points are left out."""
    produced = tensor_precisions(graph, plan.ops, plan.inputs)
    groups = target_fusion_groups(graph, plan.target)
    points = (
        _activation_points(graph, plan, produced, groups)
        + _conversion_points(graph, plan, produced, groups)
        + _weight_points(graph, plan)
    )
    return [p for p in points if p.precision != "fp32"]
