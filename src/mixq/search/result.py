"""What a search returns and writes: the chosen plan, every point, the Pareto front, a page.

Example:
    >>> # result = mixq.search(...); result.save("out")   # plan.yaml, points.json, search.html
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from mixq.analysis.html import Page, html_table, short_names
from mixq.core.table import Table
from mixq.plan.plan import Plan
from mixq.search.engine import Point, Trials
from mixq.search.space import parse_candidates

__all__ = ["SearchResult", "pareto_front", "precision_pair", "write_search_report"]


def pareto_front(points: list[Point], cost_key: str, higher_is_better: bool) -> list[Point]:
    """The points no other point beats on both cost and score, cheapest first; along it
    the score only improves as the cost grows."""
    sign = 1.0 if higher_is_better else -1.0
    ordered = sorted(points, key=lambda p: (p.cost[cost_key], -sign * _num(p.score)))
    front: list[Point] = []
    for p in ordered:
        if not front or sign * _num(p.score) > sign * _num(front[-1].score):
            front.append(p)
    return front


def _num(score: float) -> float:
    return -math.inf if score != score else score


@dataclass
class SearchResult:
    """The outcome of `mixq.search`: never empty, also when the target is missed.

    Attributes:
        plan: the chosen plan (loadable by ``mixq.quantize(model, x, plan)``).
        best: its point (score, cost, assignment).
        points: every evaluated point, in order.
        met_target: whether ``best`` reaches the target.
        miss: how far the best score is from the target (0 when met), in metric units.
        threshold / baseline: the score to reach, and the float model's.
        reference: the all-int8 plan's cost, which ``relative`` costs divide by.
        anchors: uniform plans (``all int8`` ...) -> their point keys.
        evaluations / reused: plans evaluated now / taken from the history.
    """

    plan: Plan
    best: Point
    points: list[Point]
    met_target: bool
    miss: float
    threshold: float
    baseline: float
    metric: str
    higher_is_better: bool
    strategy: str
    cost_key: str
    reference: dict[str, float]
    anchors: dict[str, str]
    evaluations: int
    reused: int
    seconds: float
    note: str = ""
    log: list[str] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls, trials: Trials, strategy: str, baseline: float, anchors: dict[str, str], note: str
    ) -> SearchResult:
        best = trials.best()
        space = trials.space
        assignment = {u: parse_candidates([c])[0] for u, c in best.assignment.items()}
        plan = space.plan(assignment)
        plan.bind_stats(space.graph, lambda: space.stats)
        miss = 0.0 if best.met else abs(trials.threshold - _num(best.score))
        return cls(
            plan=plan,
            best=best,
            points=list(trials.points.values()),
            met_target=best.met,
            miss=miss,
            threshold=trials.threshold,
            baseline=baseline,
            metric=trials.evaluator.name,
            higher_is_better=trials.evaluator.higher_is_better,
            strategy=strategy,
            cost_key=trials.cost_key,
            reference=trials.reference,
            anchors=anchors,
            evaluations=trials.evaluations,
            reused=sum(p.reused for p in trials.points.values()),
            seconds=trials.elapsed(),
            note=note,
            log=list(trials.log),
            limits=dict(trials.limits),
        )

    def relative(self, point: Point, key: str | None = None) -> float:
        """A point's cost as a fraction of the all-int8 plan's."""
        key = key or self.cost_key
        return point.cost[key] / self.reference[key] if self.reference.get(key) else math.inf

    def front(self) -> list[Point]:
        return pareto_front(self.points, self.cost_key, self.higher_is_better)

    def summary(self) -> str:
        """A few lines: what was found, against what target, at what cost."""
        b = self.best
        status = "met" if self.met_target else f"MISSED by {self.miss:.4g}"
        lines = [
            f"strategy {self.strategy}: {self.metric} {b.score:.6g} (target {self.threshold:.6g}, "
            f"float {self.baseline:.6g}): {status}",
            f"cost: {self.cost_key} {self.relative(b):.3f} x all-int8, weights "
            f"{b.cost['weight_bytes']:.0f} B ({b.cost['effective_bits']:.2f} effective bits), "
            f"{b.cost['conversions']} conversions",
            f"{self.evaluations} plans evaluated ({self.reused} from the history) in "
            f"{self.seconds:.1f} s",
        ]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """`table`'s rows: one per evaluated point (what every result a user reads has)."""
        return self.table().rows

    def table(self) -> Table:
        """One row per evaluated point, in evaluation order."""
        rows = [
            {
                "label": p.label,
                "score": p.score,
                "met": p.met,
                f"{self.cost_key} / int8": self.relative(p),
                "weight_bytes": p.cost["weight_bytes"],
                "effective_bits": p.cost["effective_bits"],
                "seconds": p.seconds,
                "chosen": p.key == self.best.key,
            }
            for p in self.points
        ]
        return Table(rows, title=f"search points ({self.strategy}, {self.metric})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "met_target": self.met_target,
            "miss": self.miss,
            "cost_key": self.cost_key,
            "reference_cost": self.reference,
            "budget": self.limits,
            "best": self.best.key,
            "anchors": self.anchors,
            "front": [p.key for p in self.front()],
            "evaluations": self.evaluations,
            "reused": self.reused,
            "seconds": self.seconds,
            "note": self.note,
            "points": [p.to_dict() for p in self.points],
        }

    def report(self, path: str | Path) -> Path:
        return write_search_report(self, path)

    def save(self, out_dir: str | Path) -> list[Path]:
        """plan.yaml (the chosen plan), points.json (everything) and search.html."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan = self.plan.save(out / "plan.yaml")
        points = out / "points.json"
        points.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        return [plan, points, self.report(out / "search.html")]


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# -- the page ------------------------------------------------------------------------------------
def write_search_report(result: SearchResult, path: str | Path) -> Path:
    """search.html: the cost / score plane with the front, the chosen point and the uniform
    anchors; the per-op precision map; the points and the log."""
    page = Page()
    page.text(result.summary().replace("\n", " | "), "note")
    page.heading("Cost and score of every plan evaluated")
    page.plot(_front_figure(result), _READ_FRONT.format(key=result.cost_key))
    page.heading("Precision per op of the chosen plan")
    page.plot(_map_figure(result), _READ_MAP)
    page.heading("Points")
    page.parts.append(html_table(result.table()))
    page.heading("Chosen plan")
    page.parts.append(html_table(result.plan.table()))
    page.heading("Log")
    page.parts.append("<pre>" + html.escape("\n".join(result.log)) + "</pre>")
    out = Path(path)
    out.write_text(page.html(f"mixq search ({result.strategy})"))
    return out


_READ_FRONT = (
    "Each dot is a plan the search evaluated: {key} relative to the all-int8 plan (x) against "
    "the score (y). The line joins the Pareto front (no plan is both cheaper and better); the "
    "star is the chosen plan; diamonds are the uniform plans; the dashed line is the target."
)
_READ_MAP = (
    "One bar per op of the chosen plan, one colour per (output, weight) precision pair: "
    "'int16 / int8 weights' is an int16 output with int8 weights, 'int8' means int8 output "
    "and weights (or no weights). Data-movement ops carry what they read; the hover shows each "
    "op's name and the rule that set it, the chosen-plan table below lists every op."
)


def _front_figure(result: SearchResult) -> go.Figure:
    fig = go.Figure()
    x = [result.relative(p) for p in result.points]
    y = [_num(p.score) for p in result.points]
    labels = [html.escape(p.label) for p in result.points]
    fig.add_scatter(x=x, y=y, mode="markers", name="evaluated", text=labels, marker={"size": 7})
    front = result.front()
    fig.add_scatter(
        x=[result.relative(p) for p in front],
        y=[_num(p.score) for p in front],
        mode="lines",
        name="Pareto front",
    )
    by_key = {p.key: p for p in result.points}
    anchors = [(name, by_key[k]) for name, k in result.anchors.items() if k in by_key]
    fig.add_scatter(
        x=[result.relative(p) for _, p in anchors],
        y=[_num(p.score) for _, p in anchors],
        mode="markers+text",
        text=[n for n, _ in anchors],
        textposition="top center",
        marker={"symbol": "diamond", "size": 11},
        name="uniform plans",
    )
    fig.add_scatter(
        x=[result.relative(result.best)],
        y=[_num(result.best.score)],
        mode="markers",
        marker={"symbol": "star", "size": 18},
        name="chosen",
    )
    fig.add_hline(y=result.threshold, line_dash="dash", annotation_text="target")
    fig.update_layout(
        xaxis_title=f"{result.cost_key} / all-int8", yaxis_title=result.metric, height=460
    )
    return fig


def precision_pair(output: str, weights: Iterable[str]) -> str:
    """The strip's label of an op: its output precision, and its weights' where they differ
    (an op without weights reads like one whose weights match, so a uniform plan is one
    colour).

    Example:
        >>> precision_pair("int8", []), precision_pair("int8", ["int8"])
        ('int8', 'int8')
        >>> precision_pair("int16", ["int8"])
        'int16 / int8 weights'
    """
    other = sorted(set(weights) - {output})
    return output + (f" / {','.join(sorted(set(weights)))} weights" if other else "")


_COLOURS = {"fp32": "#7f7f7f", "bf16": "#9467bd", "fp16": "#c5b0d5", "int16": "#ff7f0e"}
_COLOURS |= {"int8": "#1f77b4", "int4": "#2ca02c", "fp8_e4m3": "#8c564b"}
_MORE = ("#d62728", "#e377c2", "#bcbd22", "#17becf", "#98df8a", "#ffbb78", "#aec7e8", "#c49c94")
MAX_TICKS = 24  # op names written under the strip; the rest are in the hover and the table


def _map_figure(result: SearchResult) -> go.Figure:
    fig = go.Figure()
    ops = [o for o in result.plan if o.output]
    labels = [precision_pair(o.output[0], o.weight.values()) for o in ops]
    names = short_names([o.name for o in ops])
    extra = iter(_MORE * (1 + len(labels) // len(_MORE)))
    for label in dict.fromkeys(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        fig.add_bar(
            x=idx,
            y=[1] * len(idx),
            width=1.0,
            name=label,
            marker_color=_COLOURS.get(label) or next(extra),
            hovertext=[html.escape(_hover(ops[i], label)) for i in idx],
            hovertemplate="%{hovertext}<extra></extra>",
        )
    step = max(1, math.ceil(len(ops) / MAX_TICKS))
    ticks = list(range(0, len(ops), step))
    fig.update_layout(
        barmode="overlay",
        bargap=0.05,
        showlegend=True,
        height=320,
        yaxis={"visible": False},
        xaxis={
            "tickvals": ticks,
            "ticktext": [names[i] for i in ticks],
            "tickangle": -45,
            "automargin": True,
            "range": [-0.5, len(ops) - 0.5],
            "title": f"{len(ops)} ops in graph order"
            + (f" (every {step}th named; hover for each)" if step > 1 else ""),
        },
    )
    return fig


def _hover(op: Any, label: str) -> str:
    weights = ",".join(op.weight.values()) or "-"
    return f"{op.name}: {label}<br>{op.kind}; weight {weights}<br>{op.rule}"
