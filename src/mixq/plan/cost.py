"""What a plan costs: MACs, bit-operations, weight and activation bytes, conversions, latency.

Everything is counted for one run of the model on its example inputs (the shapes measured
by `mixq.search.measure_stats`, or any ``{tensor: shape}`` you pass to `op_stats`).

- **MACs**: conv, conv_transpose and linear from the weight's shape; matmul from the
  reduced dimension; attention as its two matmuls. Other ops do no MACs but touch their
  output elements (``elements``), which the latency estimate counts.
- **BOPs**: MACs x activation bits x weight bits (the second operand's bits for a matmul of
  two activations). A float precision counts its bits times the target's cost ratio of it
  to the integer of the same width (fp16 on ``int8-int16-npu``: 16 x 8/2 = 64 bits), so a
  float MAC weighs what the target says it costs. An input counts at the precision it is
  read at: an int16 op (a linear fused with an int16 residual add) that reads an int8
  tensor multiplies 8-bit values (`as_read`).
- **weight bytes**: every parameter once, at its precision (fp32 when not quantized).
- **activation bytes**: every activation tensor as produced, plus every conversion.
- **latency**: sum over ops of work (MACs, else elements) x the target's relative cost
  of the op's most expensive precision, plus the conversions' elements at their cost;
  in int8-MAC units (int8 costs 1.0 in every built-in target). A profile with a measured
  ``latency`` table (`mixq profile-target`, `mixq.targets.latency`) predicts microseconds
  instead: each op at the kernel its inputs arrive in, every conversion, the quantization
  of the float model inputs and the fixed cost of a run.
- **effective bits**: the weights' bits averaged over their elements (ModelOpt's measure).

Example:
    >>> from mixq.graph.ir import Graph, Op
    >>> from mixq.plan import OpPlan, Plan
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("fc", "linear", "fc", inputs=["x"], outputs=["fc"],
    ...             weights={"weight": "fc.weight"}, attrs={"weight_axis": 0}))
    >>> stats = op_stats(g, {"x": (2, 8), "fc": (2, 4)}, {"fc.weight": (4, 8)})
    >>> stats["fc"].macs
    64
    >>> plan = Plan(ops={"fc": OpPlan("fc", "linear", "fc", ("int8",), ("int8",),
    ...                               {"weight": "int4"})}, inputs={"x": "int8"})
    >>> c = plan_cost(g, plan, stats)
    >>> c.bops, c.weight_bytes, c.effective_bits
    (2048.0, 16.0, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mixq.core.qtypes import qtype
from mixq.core.records import Record
from mixq.core.table import Table
from mixq.graph.ir import Graph, Op
from mixq.graph.kinds import is_data_movement
from mixq.plan.points import quantization_points
from mixq.plan.tensors import aliases, tensor_precisions
from mixq.targets.latency import kernel_precision
from mixq.targets.loading import load_target
from mixq.targets.profile import TargetProfile

if TYPE_CHECKING:
    from mixq.plan.plan import OpPlan, Plan

__all__ = ["OpStats", "PlanCost", "as_read", "cost_table", "op_cost", "op_stats", "plan_cost"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpStats:
    """The size of one op's work on the example inputs.

    Attributes:
        macs: multiply-accumulates.
        elements: float output elements.
        inputs: float input tensor -> its element count.
        weights: parameter name -> element count, for the parameters it reads.
        roles: weight role -> parameter name.
        scores: an attention's score elements (batch x heads x queries x keys).
        masked: whether an attention reads a mask.
    """

    macs: int = 0
    elements: int = 0
    inputs: dict[str, int] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    scores: int = 0
    masked: bool = False

    __hash__ = None  # type: ignore[assignment]


def _numel(shape: Shape | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _macs(op: Op, shapes: dict[str, Shape], weights: dict[str, Shape]) -> int:
    out = _numel(shapes.get(op.outputs[0])) if op.outputs else 0
    w = weights.get(op.weights.get("weight", ""))
    ins = [shapes.get(t) for t in op.inputs]
    if op.kind in ("conv", "linear", "matmul") and w:
        axis = int(op.attrs.get("weight_axis", 0))  # type: ignore[call-overload]
        return out * _numel(w) // max(w[axis], 1)
    if op.kind == "conv_transpose" and w and ins and ins[0]:
        axis = int(op.attrs.get("weight_in_axis", 0))  # type: ignore[call-overload]
        return _numel(ins[0]) * _numel(w) // max(w[axis], 1)
    if op.kind == "matmul" and ins and ins[0]:
        return out * ins[0][-1]
    if op.kind == "attention" and len(ins) >= 2 and ins[0] and ins[1]:
        q, k = ins[0], ins[1]
        return 2 * _numel(q) * k[-2]  # Q K^T, then the weights times V
    return 0


def op_stats(
    graph: Graph, shapes: dict[str, Shape], weight_shapes: dict[str, Shape]
) -> dict[str, OpStats]:
    """MACs, output elements and weight sizes of every op, from measured shapes."""
    stats = {}
    for op in graph:
        elements = sum(_numel(shapes.get(t)) for t in graph.float_outputs(op))
        inputs = {t: _numel(shapes.get(t)) for t in graph.float_inputs(op)}
        q, k = (shapes.get(t) for t in (op.inputs[:2] if len(op.inputs) > 1 else ("", "")))
        scores = _numel(q) // max(q[-1], 1) * k[-2] if op.kind == "attention" and q and k else 0
        stats[op.name] = OpStats(
            macs=_macs(op, shapes, weight_shapes),
            elements=elements,
            inputs=inputs,
            weights={p: _numel(weight_shapes.get(p)) for p in op.weights.values()},
            roles=dict(op.weights),
            scores=scores,
            masked=scores > 0 and len(op.inputs) > 3,  # a float or a boolean mask
        )
    return stats


def _bops_bits(precision: str, cost: dict[str, float]) -> float:
    t = qtype(precision)
    if not t.is_floating_point or t.is_identity:
        return float(t.bits)
    same_width_int = cost.get(f"int{t.bits}")
    ratio = cost.get(t.name, 1.0) / same_width_int if same_width_int else 1.0
    return t.bits * max(ratio, 1.0)


def op_cost(
    op: OpPlan, stats: OpStats, target: TargetProfile | dict[str, float]
) -> dict[str, float]:
    """BOPs and latency of one op at the precisions ``op`` gives it.

    ``target`` is the target profile (or its relative cost per precision,
    `TargetProfile.cost`); a profile with a measured ``latency`` table gives the latency in
    microseconds (`mixq.targets.latency`), else in relative units.
    """
    cost = target if isinstance(target, dict) else target.cost
    acts = op.input or op.output or ("fp32",)
    weights = list(op.weight.values())
    second = weights[0] if weights else (acts[1] if len(acts) > 1 else acts[0])
    bops = stats.macs * _bops_bits(acts[0], cost) * _bops_bits(second, cost)
    work = stats.macs or (0 if is_data_movement(op.kind) else stats.elements)
    if not isinstance(target, dict) and target.latency is not None:
        kernel = kernel_precision((*acts, *weights), target.kernel(op.kind) is not None)
        measured = target.latency.op_us(op.kind, kernel, stats.macs or stats.elements)
        measured += _score_us(target, stats) + _dynamic_us(op, stats, target)
        if kernel != "int8":  # a float kernel dequantizes integer inputs and weights each run
            sizes = [*zip(op.input, stats.inputs.values(), strict=False),
                     *((op.weight.get(r, "fp32"), _dequantized(op, stats, w))
                       for r, w in stats.roles.items())]  # fmt: skip
            measured += sum(target.latency.convert_us(p, n) for p, n in sizes if _integer(p))
        return {"bops": bops, "latency": measured}
    dearest = max(cost.get(p, 1.0) for p in (*acts, *op.output, *weights))
    return {"bops": bops, "latency": work * dearest}


def _dynamic_us(op: OpPlan, stats: OpStats, target: TargetProfile) -> float:
    """What reading dynamically quantized inputs costs over reading them at a calibrated
    scale: the range pass of each call. The op carries it, so that a search moving one op
    between ``uint8`` and ``uint8_dynamic`` sees it; `plan_cost` prices the conversion
    itself at the static rate. Never below 0: it does the static conversion's work and
    more, whatever a noisy table says (a 3-repeat profile timed it below QuantizeLinear)."""
    assert target.latency is not None
    return sum(
        max(target.latency.convert_us(p, n) - target.latency.convert_us("uint8", n), 0.0)
        for p, n in zip(op.input, stats.inputs.values(), strict=False)
        if qtype(p).dynamic
    )


def _score_us(target: TargetProfile, stats: OpStats) -> float:
    """What an attention computes over its scores besides the two matmuls, as the exported
    file does: the softmax and, with a mask, the mask's add and the exporter's guard for
    fully masked rows (IsNaN, Where): three passes over the scores."""
    if not stats.scores or target.latency is None:
        return 0.0
    passes = 3 if stats.masked else 0
    softmax = target.latency.op_us("softmax", "fp32", stats.scores)
    return softmax + passes * target.latency.op_us("add", "fp32", stats.scores)


def _dequantized(op: OpPlan, stats: OpStats, param: str) -> int:
    """Weight elements a float kernel dequantizes per run: an embedding with an 8- or 16-bit
    table only the rows it gathers (the export looks them up first,
    `mixq.export.ort_gather`), else all."""
    role = next((r for r, p in stats.roles.items() if p == param), "")
    t = qtype(op.weight.get(role, "fp32"))
    gathered = op.kind == "embedding" and not t.is_floating_point and t.bits >= 8
    return stats.elements if gathered else stats.weights.get(param, 0)


@dataclass(frozen=True)
class PlanCost(Record):
    """A plan's cost on the example inputs (see the module docstring for each figure)."""

    macs: int
    bops: float
    weight_bytes: float
    activation_bytes: float
    conversions: int
    conversion_bytes: float
    latency: float
    effective_bits: float
    target: str = "generic"


def _weight_totals(plan: Plan, stats: dict[str, OpStats]) -> tuple[float, float]:
    """Weight bytes and effective bits (bits averaged over the weights' elements)."""
    seen: dict[str, tuple[int, int]] = {}  # parameter -> (elements, bits); shared ones once
    for op in plan:
        s = stats.get(op.name)
        for role, param in (s.roles if s else {}).items():
            bits = qtype(op.weight.get(role, "fp32")).bits
            seen[param] = (s.weights[param], bits) if s else (0, bits)
    elements = sum(n for n, _ in seen.values())
    total_bits = sum(n * b for n, b in seen.values())
    return total_bits / 8, (total_bits / elements if elements else 32.0)


def as_read(graph: Graph, plan: Plan, produced: dict[str, str] | None = None) -> dict[str, OpPlan]:
    """The plan's ops with each input at the precision the op actually reads it at: an
    integer reader of a tensor produced at a lower integer precision reads the produced
    values (no conversion widens them; a linear fused with an int16 residual add that reads
    an int8 tensor multiplies 8-bit values). Other inputs stay at the op's own precision.
    ``produced``: `tensor_precisions` of the plan, if the caller has it."""
    if produced is None:
        produced = tensor_precisions(graph, plan.ops, plan.inputs)
    root = aliases(graph)
    ops = dict(plan.ops)
    for name, op in plan.ops.items():
        if name not in graph.ops:
            continue
        ins = graph.float_inputs(graph.ops[name])
        srcs = [produced.get(root.get(t, t), p) for p, t in zip(op.input, ins, strict=False)]
        read = tuple(
            src if _integer(p) and _integer(src) and qtype(src).rank() < qtype(p).rank() else p
            for p, src in zip(op.input, srcs, strict=False)
        )
        if read != op.input:
            ops[name] = replace(op, input=read)
    return ops


def plan_cost(
    graph: Graph, plan: Plan, stats: dict[str, OpStats], target: str | None = None
) -> PlanCost:
    """The cost of ``plan`` on ``graph`` (see the module docstring)."""
    profile = load_target(target or plan.target)
    produced = tensor_precisions(graph, plan.ops, plan.inputs)
    macs = bops = latency = 0.0
    for op in as_read(graph, plan, produced).values():
        if op.name in stats:
            c = op_cost(op, stats[op.name], profile)
            macs, bops, latency = (
                macs + stats[op.name].macs,
                bops + c["bops"],
                latency + c["latency"],
            )
    weight_bytes, effective_bits = _weight_totals(plan, stats)
    elements = _tensor_elements(graph, stats)
    act_bytes = sum(elements.get(t, 0) * qtype(p).bits / 8 for t, p in produced.items())
    conversions = [p for p in quantization_points(graph, plan) if p.readers]
    conv_bytes = sum(elements.get(p.target, 0) * qtype(p.precision).bits / 8 for p in conversions)
    latency += sum(_conversion(profile, _static(p.precision), elements.get(p.target, 0))
                   for p in conversions)  # fmt: skip
    if profile.latency is not None:  # the file's own run: a call, float inputs quantized
        latency += profile.latency.call_us + sum(
            profile.latency.convert_us(p, elements.get(t, 0)) for t, p in plan.inputs.items()
        )
    return PlanCost(
        macs=int(macs),
        bops=bops,
        weight_bytes=weight_bytes,
        activation_bytes=act_bytes + conv_bytes,
        conversions=len(conversions),
        conversion_bytes=conv_bytes,
        latency=latency,
        effective_bits=effective_bits,
        target=profile.name,
    )


def _integer(precision: str) -> bool:
    t = qtype(precision)
    return not t.is_floating_point and not t.is_identity


def _static(precision: str) -> str:
    """A dynamic precision's conversion at its calibrated twin's price: the ops that read
    it carry the rest (see `_dynamic_us`)."""
    return "uint8" if qtype(precision).dynamic else precision


def _conversion(profile: TargetProfile, precision: str, elements: int) -> float:
    """The latency of converting ``elements`` values to ``precision`` on ``profile``."""
    if profile.latency is not None:
        return profile.latency.convert_us(precision, elements)
    return elements * profile.cost.get(precision, 1.0)


def _tensor_elements(graph: Graph, stats: dict[str, OpStats]) -> dict[str, int]:
    """Elements per float tensor, from the ops that read it (or, for a tensor nothing
    reads, its producer's outputs, which share its count evenly)."""
    out: dict[str, int] = {}
    for op in graph:
        s = stats.get(op.name)
        if s is None:
            continue
        out.update(s.inputs)
        outs = graph.float_outputs(op)
        for t in outs:
            out.setdefault(t, s.elements // len(outs))
    return out


def cost_table(
    graph: Graph, plan: Plan, stats: dict[str, OpStats], target: str | None = None
) -> Table:
    """One row per op: kind, precisions, MACs, BOPs, weight bytes, latency (largest first)."""
    cost = load_target(target or plan.target)
    rows: list[dict[str, Any]] = []
    for op in as_read(graph, plan).values():
        s = stats.get(op.name, OpStats())
        c = op_cost(op, s, cost)
        wbytes = sum(
            s.weights.get(param, 0) * qtype(op.weight.get(role, "fp32")).bits / 8
            for role, param in s.roles.items()
        )
        rows.append(
            {
                "op": op.name,
                "kind": op.kind,
                "input": ",".join(op.input),
                "weight": ",".join(op.weight.values()),
                "macs": s.macs,
                "bops": c["bops"],
                "weight_bytes": wbytes,
                "latency": c["latency"],
            }
        )
    rows.sort(key=lambda r: -float(r["latency"]))
    return Table(rows, title=f"cost per op (target {load_target(target or plan.target).name})")
