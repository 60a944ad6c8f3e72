"""Resolve a Config against a Graph into a Plan.

Precedence (one rule, documented here and tested case by case):

1. Every op starts at the config's default precision (rule ``default``).
2. Requests apply in the order they were made; a later request on the same op wins
   (rule ``ops['name']`` names the request that decided).
3. Ops fused into one group run at one precision: the request on the group's member
   made last wins, else the anchor's (rule ``group <anchor>`` on the other members).
4. Data-movement ops (reshape, transpose, dropout, max-pool...) take the precision of the
   tensor they read (rule ``inherits <tensor>``); a request on them is ignored.

Example:
    >>> # cfg = Config(default="int8").set_precision("fc", activation="int16")
    >>> # resolve(graph, cfg)["fc"].output == ("int16",)
"""

from __future__ import annotations

from mixq.config import Config, Precision, Request
from mixq.errors import ConfigError
from mixq.graph.fusion import FusionGroup, find_fusion_groups
from mixq.graph.ir import Graph, Op
from mixq.graph.kinds import is_data_movement
from mixq.plan import OpPlan, Plan
from mixq.qtypes import qtype

__all__ = ["aliases", "resolve", "tensor_precisions"]


def _requests(graph: Graph, config: Config) -> dict[str, tuple[Precision, str]]:
    """Op name -> (requested precision, rule), applying requests in order."""
    chosen = {op.name: (config.default, "default") for op in graph}
    for i, req in enumerate(config.rules):
        if req.target not in graph.ops:
            raise ConfigError(_unknown_target(graph, req))
        old, _ = chosen[req.target]
        new = Precision(req.activation or old.activation, req.weight or old.weight)
        chosen[req.target] = (new, f"rules[{i}] {req.target!r}")
    return chosen


def _unknown_target(graph: Graph, req: Request) -> str:
    close = [n for n in graph.ops if req.target.split(".")[-1] in n][:5]
    hint = f"; similar op names: {close}" if close else ""
    return (
        f"no op named {req.target!r} in the model{hint}. "
        f"Run `mixq plan` (or sim.plan.table()) to list the op names"
    )


def _group_request(
    group: FusionGroup, chosen: dict[str, tuple[Precision, str]]
) -> tuple[Precision, str]:
    explicit = [chosen[n] for n in group.ops if chosen[n][1] != "default"]
    if explicit:
        return max(explicit, key=lambda pr: int(pr[1].split("]")[0].split("[")[-1]))
    return chosen[group.anchor]


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


def tensor_precisions(graph: Graph, ops: dict[str, OpPlan]) -> dict[str, str]:
    """Precision of every quantizable root tensor as produced.

    A model input has no producer: it takes the highest precision its readers ask for.
    """
    root = aliases(graph)
    result: dict[str, str] = {}
    reads: dict[str, list[str]] = {}
    for op in graph:
        if op.name not in ops or (is_data_movement(op.kind) and graph.float_inputs(op)):
            continue
        plan = ops[op.name]
        for t, p in zip(graph.float_outputs(op), plan.output, strict=True):
            result[t] = p
        for t, p in zip(graph.float_inputs(op), plan.input, strict=True):
            reads.setdefault(root[t], []).append(p)
    for t in graph.inputs:
        if graph.tensors[t].quantizable:
            result[t] = _highest(reads.get(t, [])) if reads.get(t) else "fp32"
    return result


def _highest(precisions: list[str]) -> str:
    return max(precisions, key=lambda p: qtype(p).rank())


def resolve(graph: Graph, config: Config) -> Plan:
    """The Plan for ``graph`` under ``config`` (see the module docstring for precedence)."""
    chosen = _requests(graph, config)
    groups = find_fusion_groups(graph)
    ops = {
        op.name: _compute_op(graph, op, groups[op.name], chosen)
        for op in graph
        if graph.is_quantizable(op)
    }
    root = aliases(graph)
    produced = tensor_precisions(graph, ops)
    for op in graph:
        ins = graph.float_inputs(op)
        if op.name in ops and is_data_movement(op.kind) and ins:
            read = tuple(produced.get(root[t], "fp32") for t in ins)
            out = (read[0],) * len(graph.float_outputs(op))
            ops[op.name] = OpPlan(
                op.name, op.kind, op.module, read, out, {}, f"inherits {root[ins[0]]}"
            )
    return Plan(ops=ops, default=config.default, scheme=config.scheme, target=config.target)


def _compute_op(
    graph: Graph, op: Op, group: FusionGroup, chosen: dict[str, tuple[Precision, str]]
) -> OpPlan:
    precision, rule = _group_request(group, chosen) if len(group.ops) > 1 else chosen[op.name]
    if len(group.ops) > 1 and op.name != group.anchor and rule == "default":
        rule = f"group {group.anchor}"
    act = precision.activation or "fp32"
    n_in, n_out = len(graph.float_inputs(op)), len(graph.float_outputs(op))
    weight = {role: precision.weight or "fp32" for role in op.weights}
    return OpPlan(op.name, op.kind, op.module, (act,) * n_in, (act,) * n_out, weight, rule)
