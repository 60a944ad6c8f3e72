"""The resolution report (as AIMET's mixed-precision log): requests as given, after
preprocessing (expanded to ops), after propagation (the final plan and its conversions).

Example:
    >>> from mixq.rules.config import Config
    >>> from mixq.graph.ir import Graph, Op
    >>> from mixq.rules.resolve import resolve_with_report
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("fc", "linear", "fc", inputs=["x"], outputs=["fc"]))
    >>> res = resolve_with_report(g, Config().set_precision("fc", activation="int16"))
    >>> print(report_text(g, res).splitlines()[0])
    Mixed-precision resolution report
"""

from __future__ import annotations

import json
from typing import Any

from mixq.graph.ir import Graph
from mixq.plan.points import QuantPoint, quantization_points
from mixq.plan.tensors import aliases, tensor_precisions
from mixq.rules.resolve import Resolution

__all__ = ["report_dict", "report_json", "report_text"]

_RULE = "-" * 100


def _conversions(graph: Graph, res: Resolution, points: list[QuantPoint]) -> list[dict[str, Any]]:
    produced = tensor_precisions(graph, res.plan.ops, res.plan.inputs)
    root = aliases(graph)
    return [
        {
            "tensor": p.target,
            "from": produced.get(root[p.target], "fp32"),
            "to": p.precision,
            "readers": list(p.readers),
        }
        for p in points
        if p.readers
    ]


def report_dict(
    graph: Graph, res: Resolution, points: list[QuantPoint] | None = None
) -> dict[str, Any]:
    """The report as data (what `report_json` writes)."""
    points = quantization_points(graph, res.plan) if points is None else points
    return {
        "requests": res.requests,
        "after_preprocessing": res.expanded,
        "after_propagation": res.plan.table().rows,
        "model_inputs": dict(res.plan.inputs),
        "conversions": _conversions(graph, res, points),
        "quantizers": len(points),
        "notes": list(res.notes),
    }


def report_json(graph: Graph, res: Resolution, points: list[QuantPoint] | None = None) -> str:
    return json.dumps(report_dict(graph, res, points), indent=2, default=str)


def _expanded_line(entry: dict[str, Any]) -> str:
    items = entry.get("ops", entry.get("tensors", []))
    shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
    return f"  {entry['rule']:<50} -> {shown or '(nothing)'}"


def report_text(graph: Graph, res: Resolution, points: list[QuantPoint] | None = None) -> str:
    """The report as text: three sections, then conversions and notes."""
    data = report_dict(graph, res, points)
    lines = ["Mixed-precision resolution report", _RULE, "Requests as given:"]
    lines += [f"  {i}: {r}" for i, r in enumerate(data["requests"])] or ["  (none)"]
    lines += [_RULE, "After preprocessing (expanded to ops):"]
    lines += [_expanded_line(e) for e in data["after_preprocessing"]] or ["  (nothing)"]
    lines += [_RULE, "After propagation (final):", res.plan.table().to_text()]
    lines += [f"model inputs: {data['model_inputs']}"]
    lines += [_RULE, f"Conversions ({len(data['conversions'])}):"]
    lines += [
        f"  {c['tensor']}: {c['from']} -> {c['to']} for {', '.join(c['readers'])}"
        for c in data["conversions"]
    ] or ["  (none)"]
    lines += [f"Quantizers: {data['quantizers']}", _RULE, f"Notes ({len(res.notes)}):"]
    lines += [f"  {n}" for n in res.notes] or ["  (none)"]
    return "\n".join(lines)
