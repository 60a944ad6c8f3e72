"""Check a model before quantizing it: what Horizon's ``model_check_result.txt`` reports.

`check` runs a copy of the model once with a hook on every module, resolves the config into
a Plan, and reports six tables: call counts, shared modules (with each call's output range),
unused modules, fusable ops that did not fuse, each layer's precision, and configurations
worth a second look. Nothing is calibrated and the user's model is never touched.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> result = check(model, (torch.randn(2, 4),))
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from mixq.analysis.metrics import float_leaves
from mixq.api import ConfigLike, quantize
from mixq.config import Config, Granularity
from mixq.graph.fusion import (
    _IDENTITY,
    FusionGroup,
    _stages,
    find_fusion_groups,
    target_fusion_groups,
)
from mixq.graph.ir import Graph, Op
from mixq.graph.resolve import aliases, resolve, tensor_precisions
from mixq.plan import OpPlan, Plan
from mixq.qtypes import qtype
from mixq.table import Table
from mixq.targets import fuses_residual_add, load_target
from mixq.torch.capture import split_inputs

if TYPE_CHECKING:
    import onnx

    from mixq.torch.sim import Sim

__all__ = ["CheckResult", "ModuleCalls", "check", "record_calls", "unfused_rows"]

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
# Never called by design: they only hold their children.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
# A shared module whose calls' ranges differ by more than this wants a quantizer per call.
_SEPARATE_RATIO = 2.0
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


def check(
    model: nn.Module | str | Path | onnx.ModelProto,
    example_inputs: Any,
    config: ConfigLike = None,
    strict: bool = False,
    out_dir: str | Path | None = None,
) -> CheckResult:
    """Check ``model`` and its ``config`` for what makes quantization go wrong.

    Args:
        model: the float model (a copy is run; the model itself is never changed), or an
            ONNX model (an ``.onnx`` path or a ``ModelProto``): then nothing is recorded,
            every node is listed with one call and the shared / unused sections say they
            do not apply.
        example_inputs: a tensor, a tuple of inputs or a dict of keyword inputs.
        config: anything `mixq.quantize` accepts (None means all int8).
        strict: True raises on a target conflict (as `mixq.quantize`) instead of reporting it.
        out_dir: if given, `CheckResult.save` writes the report there.

    Returns:
        The `CheckResult`; ``print(result)`` shows the whole report.

    Example:
        >>> import torch
        >>> relu = torch.nn.ReLU()
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), relu, torch.nn.Linear(4, 4), relu)
        >>> result = check(model, torch.randn(2, 4))
        >>> [(r["module"], r["calls"]) for r in result.shared.rows]
        [('1', 2)]
    """
    onnx_model = _is_onnx(model)
    records = {} if onnx_model else record_calls(cast(nn.Module, model), example_inputs)
    sim = quantize(model, example_inputs, config, strict=strict)
    requested = _requested_plan(model, sim.graph, sim.plan, config)
    call_sections = _onnx_call_sections(sim.source) if onnx_model else _call_sections(records)
    result = CheckResult(
        *call_sections,
        unfused=_table("unfused", unfused_rows(sim.graph, fuses_residual_add(sim.plan.target))),
        layers=_table("layers", _layer_rows(sim)),
        unusual=_table("unusual", _unusual_rows(sim.graph, sim.plan, requested)),
    )
    if out_dir is not None:
        result.save(out_dir)
    return result


def _table(key: str, rows: list[dict[str, Any]], note: str = "") -> Table:
    title, columns = _SECTIONS[key]
    return Table(rows, title=title + note, columns=columns.split("|"))


def _is_onnx(model: Any) -> bool:
    """An ``.onnx`` path or an ``onnx.ModelProto`` (checked without importing onnx)."""
    if isinstance(model, (str, Path)):
        return str(model).lower().endswith(".onnx")
    return type(model).__name__ == "ModelProto"


def _call_sections(records: dict[str, ModuleCalls]) -> tuple[Table, Table, Table]:
    calls = [
        {"module": r.name, "type": r.type, "calls": r.calls, "shared": r.calls > 1}
        for r in records.values()
    ]
    return (
        _table("calls", calls),
        _table("shared", [_shared_row(r) for r in records.values() if r.calls > 1]),
        _table("unused", [{"module": r.name, "type": r.type} for r in _unused(records)]),
    )


def _onnx_call_sections(model: Any) -> tuple[Table, Table, Table]:
    """An ONNX graph runs every node once: each node with 1 call, nothing shared or unused."""
    calls = [
        {"module": n.name, "type": n.op_type, "calls": 1, "shared": False} for n in model.graph.node
    ]
    note = " (not applicable to ONNX models: every node runs once)"
    return _table("calls", calls), _table("shared", [], note), _table("unused", [], note)


# -- call counts -----------------------------------------------------------------------------
@dataclass
class ModuleCalls:
    """One module's calls: the output range ``(min, max)`` of each (None: no float output)."""

    name: str
    type: str
    container: bool = False
    ranges: list[tuple[float, float] | None] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.ranges)


def record_calls(model: nn.Module, example_inputs: Any) -> dict[str, ModuleCalls]:
    """Run a copy of ``model`` in eval mode once and record every module's calls.

    Example:
        >>> relu = torch.nn.ReLU()
        >>> calls = record_calls(torch.nn.Sequential(relu, relu), torch.tensor([-1.0, 2.0]))
        >>> calls["0"].ranges
        [(0.0, 2.0), (0.0, 2.0)]
    """
    copied = copy.deepcopy(model).eval()
    records = {
        name: ModuleCalls(name, type(m).__name__, isinstance(m, _CONTAINERS))
        for name, m in copied.named_modules()
    }
    handles = [
        m.register_forward_hook(_recorder(records[name])) for name, m in copied.named_modules()
    ]
    args, kwargs = split_inputs(example_inputs)
    try:
        with torch.no_grad():
            copied(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _recorder(record: ModuleCalls) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        record.ranges.append(_output_range(output))

    return hook


def _output_range(output: Any) -> tuple[float, float] | None:
    leaves = [t for t in float_leaves(output) if t.numel()]
    if not leaves:
        return None
    return min(float(t.min()) for t in leaves), max(float(t.max()) for t in leaves)


def _shared_row(r: ModuleCalls) -> dict[str, Any]:
    ratio = _range_ratio([x for x in r.ranges if x is not None])
    return {
        "module": r.name,
        "type": r.type,
        "calls": r.calls,
        "ranges": ["-" if x is None else f"[{x[0]:.4g}, {x[1]:.4g}]" for x in r.ranges],
        "range_ratio": ratio,
        "separate_quantizers": "yes (mixq gives every call its own)",
        "needs_separate": ratio is not None and ratio > _SEPARATE_RATIO,
    }


def _range_ratio(ranges: list[tuple[float, float]]) -> float | None:
    """Width of the range covering every call / the narrowest call's width: how much coarser
    one shared scale is for the tightest call (it catches shifted ranges as well as wider)."""
    if not ranges:
        return None
    union = max(hi for _, hi in ranges) - min(lo for lo, _ in ranges)
    narrowest = min(hi - lo for lo, hi in ranges)
    if narrowest > 0:
        return union / narrowest
    return 1.0 if union == 0 else math.inf


def _unused(records: dict[str, ModuleCalls]) -> list[ModuleCalls]:
    """Modules never called, other than the root, containers, and parents of called ones."""
    parents_of_called = {
        name.rsplit(".", i)[0]
        for name, r in records.items()
        if r.calls
        for i in range(1, name.count(".") + 1)
    }
    return [
        r
        for name, r in records.items()
        if name and not r.calls and not r.container and name not in parents_of_called
    ]


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
    stages = _stages(graph.ops[group.anchor].kind, fuse_add)
    if op.name != group.anchor:
        if op.kind in _IDENTITY:
            return frozenset()
        done = next((i for i, s in enumerate(stages) if op.kind in s), len(stages))
        stages = stages[done + 1 :]
    return frozenset().union(*stages)


def _successors(graph: Graph, tensor: str, path: tuple[str, ...] = ()) -> Iterator[Any]:
    """Every reader of ``tensor`` as (identity ops passed through, op), in graph order."""
    for op in graph.consumers(tensor):
        if op.kind in _IDENTITY and len(op.outputs) == 1:
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


def _requested_plan(model: Any, graph: Graph, plan: Plan, config: ConfigLike) -> Plan:
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
