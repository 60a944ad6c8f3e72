"""Check a model before quantizing it: what Horizon's ``model_check_result.txt`` reports.

`mixq.check` runs a copy of the model once with a hook on every module, resolves the config into
a Plan, and reports six tables: call counts, shared modules (with each call's output range),
unused modules, fusable ops that did not fuse, each layer's precision, and configurations
worth a second look (among them, with fp16 / bf16 in the plan, tensors whose range on the
example inputs overflows that type and the first NaN the Sim makes: `mixq.analysis.overflow`).
Nothing is calibrated and the user's model is never touched.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> result = mixq.check(model, (torch.randn(2, 4),))
    >>> [(r["module"], r["calls"]) for r in result.calls.rows], len(result.unfused)
    ([('', 1), ('0', 1), ('1', 1)], 0)
    >>> result.unusual.rows[0]["issue"]
    'last layer outputs int8; consider a float/int16 output'
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixq.analysis.calls import ModuleCalls, call_rows
from mixq.analysis.overflow import check_overflow
from mixq.core.qtypes import qtype
from mixq.core.table import Table
from mixq.graph.fusion import (
    IDENTITY_KINDS,
    FusionGroup,
    anchor_kind,
    find_fusion_groups,
    fusion_stages,
)
from mixq.graph.ir import Graph, Op
from mixq.plan.plan import OpPlan, Plan
from mixq.plan.tensors import aliases, tensor_precisions
from mixq.rules.config import Config, Granularity
from mixq.rules.resolve import resolve
from mixq.targets import fuses_residual_add, load_target
from mixq.targets.fusion import target_fusion_groups

if TYPE_CHECKING:
    from mixq.sim.torch.sim import Sim

__all__ = ["CheckResult", "check_sim", "unfused_rows"]

# Section -> (heading, columns), in the order model_check_result.txt prints them.
_SECTIONS = {
    "calls": ("Each module's call count", "module|type|calls|shared"),
    "shared": (
        "Modules called more than once",
        "module|type|calls|ranges|range_ratio|separate_quantizers|needs_separate",
    ),
    "unused": ("Modules never called", "module|type"),
    "unfused": ("Fusable ops that did not fuse", "ops|reason"),
    "layers": (
        "Each layer's precision",
        "op|kind|input dtype|output dtype|weight dtype|channel axis|observer|fused into",
    ),
    "unusual": ("Configurations to double-check", "op/tensor|issue|advice"),
}
_WEIGHT_GRANULAR = frozenset({"conv", "conv_transpose", "linear"})


@dataclass
class CheckResult:
    """The six tables of a model check (see the module docstring); one per section."""

    calls: Table
    shared: Table
    unused: Table
    unfused: Table
    layers: Table
    unusual: Table

    def sections(self) -> Iterator[tuple[str, Table]]:
        """(attribute name, table) pairs in report order."""
        for key in _SECTIONS:
            yield key, getattr(self, key)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every section's rows, each with its ``section`` name (what a table has)."""
        return [{"section": key, **row} for key, table in self.sections() for row in table.rows]

    def to_text(self) -> str:
        """The content of ``model_check_result.txt``: each section's heading and table."""
        parts = [
            table.to_text() + ("" if table.rows else "\n(none)") for _, table in self.sections()
        ]
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: section -> {title, columns, rows}; an infinite ratio becomes ``"inf"``."""
        return {
            key: {
                "title": table.title,
                "columns": list(table.columns),
                "rows": [
                    {k: "inf" if v == math.inf else v for k, v in row.items()} for row in table.rows
                ],
            }
            for key, table in self.sections()
        }

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``model_check_result.txt`` and ``model_check_result.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text, data = out / "model_check_result.txt", out / "model_check_result.json"
        text.write_text(self.to_text())
        data.write_text(json.dumps(self.to_dict(), indent=2))
        return [text, data]

    __str__ = to_text


def check_sim(
    model: Any, sim: Any, config: Any, records: dict[str, ModuleCalls] | None
) -> CheckResult:
    """The check of ``model`` once quantized as ``sim`` (what `mixq.check` returns).

    Args:
        model: the float model or ONNX model ``sim`` was built from (never changed).
        sim: the Sim of ``model`` under ``config``.
        config: what the Sim was resolved from (anything `mixq.quantize` accepts).
        records: `mixq.analysis.calls.record_calls` of a PyTorch model; None for ONNX.
    """
    requested = _requested_plan(model, sim.graph, sim.plan, config)
    call_sections = _onnx_call_sections(sim.source) if records is None else _call_sections(records)
    dead = [
        {"module": name, "type": "computed but no output reads it: pruned, no quantizer"}
        for name in sim.graph.dead
    ]
    if dead:
        unused = call_sections[2]
        call_sections = (*call_sections[:2], Table(unused.rows + dead, unused.title,
                                                   unused.columns))  # fmt: skip
    return CheckResult(
        *call_sections,
        unfused=_table("unfused", unfused_rows(sim.graph, fuses_residual_add(sim.plan.target))),
        layers=_table("layers", _layer_rows(sim)),
        unusual=_table(
            "unusual",
            _unusual_rows(sim.graph, sim.plan, requested) + _overflows(sim) + _capture_rows(sim),
        ),
    )


def _capture_rows(sim: Any) -> list[dict[str, str]]:
    """What capture noted about the model (cache outputs flattened, shapes kept static, the
    exported program parting from the eager model)."""
    notes = getattr(sim, "capture_notes", [])
    return [{"op/tensor": "(capture)", "issue": n, "advice": "informational"} for n in notes]


def _table(key: str, rows: list[dict[str, Any]], note: str = "") -> Table:
    title, columns = _SECTIONS[key]
    return Table(rows, title=title + note, columns=columns.split("|"))


def _call_sections(records: dict[str, ModuleCalls]) -> tuple[Table, Table, Table]:
    calls, shared, unused = call_rows(records)
    return _table("calls", calls), _table("shared", shared), _table("unused", unused)


def _onnx_call_sections(model: Any) -> tuple[Table, Table, Table]:
    """An ONNX graph runs every node once: each node with 1 call, nothing shared or unused."""
    calls = [
        {"module": n.name, "type": n.op_type, "calls": 1, "shared": False} for n in model.graph.node
    ]
    note = " (not applicable to ONNX models: every node runs once)"
    return _table("calls", calls), _table("shared", [], note), _table("unused", [], note)


# -- unfused patterns --------------------------------------------------------------------
def unfused_rows(graph: Graph, fuse_add: bool = True) -> list[dict[str, str]]:
    """One row per op whose next op would extend a fusion pattern but did not fuse.

    ``fuse_add`` is the target's (`mixq.targets.fuses_residual_add`): where it is False, a
    conv followed by a residual add is the target's layout, not a missed fusion.

    Example:
        >>> from mixq.graph.ir import Op
        >>> g = Graph(); g.add_input("x", "float32")
        >>> g.add_op(Op("fc", "linear", inputs=["x"], outputs=["fc"]))
        >>> g.add_op(Op("act", "relu", inputs=["fc"], outputs=["act"]))
        >>> g.outputs += ["fc", "act"]
        >>> unfused_rows(g)
        [{'ops': 'fc -> act', 'reason': "fc's output is a model output"}]
    """
    groups = find_fusion_groups(graph, fuse_add)
    rows = []
    for op in graph:
        allowed = _later_stages(graph, groups[op.name], op, fuse_add)
        if not allowed or len(op.outputs) != 1:
            continue
        for path, nxt in _successors(graph, op.outputs[0]):
            group = groups[nxt.name]
            if nxt.kind in allowed and group is not groups[op.name] and group.anchor == nxt.name:
                tensors = [op.outputs[0]] + [graph.ops[n].outputs[0] for n in path]
                chain = " -> ".join([op.name, *path, nxt.name])
                rows.append({"ops": chain, "reason": _why_unfused(graph, tensors, nxt.name)})
                break  # one row per op: the other candidates are named in the reason
    return rows


def _later_stages(graph: Graph, group: FusionGroup, op: Op, fuse_add: bool) -> frozenset[str]:
    """The kinds that could still follow ``op`` in the pattern its group started."""
    stages = fusion_stages(anchor_kind(graph.ops[group.anchor]), fuse_add)
    if op.name != group.anchor:
        if op.kind in IDENTITY_KINDS:
            return frozenset()
        done = next((i for i, s in enumerate(stages) if op.kind in s), len(stages))
        stages = stages[done + 1 :]
    return frozenset().union(*stages)


def _successors(graph: Graph, tensor: str, path: tuple[str, ...] = ()) -> Iterator[Any]:
    """Every reader of ``tensor`` as (identity ops passed through, op), in graph order."""
    for op in graph.consumers(tensor):
        if op.kind in IDENTITY_KINDS and len(op.outputs) == 1:
            yield from _successors(graph, op.outputs[0], (*path, op.name))
        else:
            yield path, op


def _why_unfused(graph: Graph, tensors: list[str], last: str) -> str:
    readers = [*(graph.tensors[t].producer for t in tensors[1:]), last]
    reasons = []
    for t, reader in zip(tensors, readers, strict=True):
        producer = graph.tensors[t].producer
        consumers = graph.tensors[t].consumers
        if len(consumers) > 1:
            others = ", ".join(c for c in consumers if c != reader)
            reasons.append(f"{producer}'s output also feeds {others} ({len(consumers)} consumers)")
        if t in graph.outputs:
            reasons.append(f"{producer}'s output is a model output")
    return "; ".join(reasons) or "not fused"


# -- layers and unusual configurations ----------------------------------------------------
def _layer_rows(sim: Sim) -> list[dict[str, Any]]:
    groups = target_fusion_groups(sim.graph, sim.plan.target)
    axes: dict[str, list[str]] = {}
    for p in sim.points:
        if p.kind == "weight" and p.op is not None:
            axis = "-" if p.axis is None else str(p.axis)
            block = f" (block {p.block_size})" if p.block_size else ""
            axes.setdefault(p.op, []).append(axis + block)
    return [
        {
            "op": op.name,
            "kind": op.kind,
            "input dtype": _joined(op.input),
            "output dtype": _joined(op.output),
            "weight dtype": _joined(op.weight.values()),
            "channel axis": _joined(axes.get(op.name, [])),
            "observer": _observer(op, sim.plan.scheme.observer),
            "fused into": groups[op.name].anchor if len(groups[op.name].ops) > 1 else "",
        }
        for op in sim.plan
    ]


def _joined(values: Iterable[str]) -> str:
    return ",".join(values) or "-"


def _observer(op: OpPlan, observer: str) -> str:
    if op.rule.startswith("inherits"):
        return "-"
    if any(not qtype(p).is_floating_point for p in op.output):
        return observer
    if any(not qtype(p).is_floating_point for p in op.weight.values()):
        return "minmax (weight)"
    return "-"


def _requested_plan(model: Any, graph: Graph, plan: Plan, config: Any) -> Plan:
    """The plan as requested, before best-effort moved ops onto what the target runs."""
    if isinstance(config, Plan) or plan.target == "generic":
        return plan
    yaml_path = isinstance(config, (str, Path)) and str(config).endswith((".yaml", ".yml"))
    if yaml_path and Plan.is_plan_file(str(config)):
        return plan
    unconstrained = copy.copy(Config.coerce(config))
    unconstrained.target = "generic"
    return resolve(graph, unconstrained.bind(model), strict=False)


def _unusual_rows(graph: Graph, plan: Plan, requested: Plan) -> list[dict[str, str]]:
    rows = _target_rows(plan, requested)
    advice = "calibration leaves it as is; check it covers the data"
    rows += [
        _row(t, f"fixed range [{lo:g}, {hi:g}]", advice)
        for t, (lo, hi) in plan.fixed_ranges.items()
    ]
    rows += _output_rows(graph, plan)
    for op in plan:
        rows += _op_rows(op, plan)
    return rows


def _row(name: str, issue: str, advice: str) -> dict[str, str]:
    return {"op/tensor": name, "issue": issue, "advice": advice}


def _overflows(sim: Any) -> list[dict[str, str]]:
    """Tensors beyond their fp16 / bf16 range on the example inputs, and the first NaN."""
    overflows, nan = check_overflow(sim)
    rows = [_row(o.tensor, o.issue, o.advice) for o in overflows]
    return rows + ([_row(nan.tensor, nan.issue, nan.advice)] if nan is not None else [])


def _target_rows(plan: Plan, requested: Plan) -> list[dict[str, str]]:
    target = load_target(plan.target)
    rows = []
    for op in requested:
        now = plan.ops.get(op.name, op)
        advice = (
            f"best effort runs it at {_joined(now.output)} activation, "
            f"{_joined(now.weight.values())} weight; request what the target runs"
        )
        rows += [_row(op.name, problem, advice) for problem in target.violations(op)]
    return rows


def _output_rows(graph: Graph, plan: Plan) -> list[dict[str, str]]:
    produced = tensor_precisions(graph, plan.ops, plan.inputs)
    root = aliases(graph)
    rows = []
    for t in graph.outputs:
        p = produced.get(root.get(t, t))
        if p is None:
            continue
        q = qtype(p)
        if q.is_floating_point:
            advice = "a float head is common; set_model_output_precision quantizes it"
            rows.append(_row(t, f"outputs in float ({p}): intended?", advice))
        elif q.bits <= 8:
            advice = "Config.set_model_output_precision(['fp32']) or ['int16'] keeps it precise"
            rows.append(_row(t, f"last layer outputs {p}; consider a float/int16 output", advice))
    return rows


def _op_rows(op: OpPlan, plan: Plan) -> list[dict[str, str]]:
    rows = []
    quantized_weight = any(not qtype(p).is_floating_point for p in op.weight.values())
    per_tensor = plan.scheme.weight_granularity is Granularity.PER_TENSOR
    if per_tensor and quantized_weight and op.kind in _WEIGHT_GRANULAR:
        advice = "per-channel is available: Scheme(weight_granularity='per_channel')"
        rows.append(_row(op.name, "per-tensor weight scale", advice))
    ins, outs = set(op.input), set(op.output)
    if ins and outs and ins != outs and not op.rule.startswith("inherits"):
        issue = f"mixed input dtype {_joined(op.input)} and output dtype {_joined(op.output)}"
        rows.append(_row(op.name, issue, "check the conversion inside this op is intended"))
    return rows
