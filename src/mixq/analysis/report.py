"""One self-contained HTML page of a `QuantAnalysis`: plots first, then every table.

The page embeds plotly.js, so it opens offline. Each section draws from the tables the
analyses left in ``qa.tables``; a section whose analysis was not run is replaced by a
one-line note saying what to run.

Example:
    >>> import tempfile, torch, mixq
    >>> from mixq.analysis.quant_analysis import QuantAnalysis
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> data = [(torch.randn(16, 4),) for _ in range(2)]
    >>> sim = mixq.quantize(model, data[0], "int8").calibrate(data, progress=False)
    >>> qa = QuantAnalysis(sim)
    >>> _ = qa.find_bad_cases(data, progress=False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     page = write_report(f"{d}/report.html", qa).read_text()
    >>> '<script src="http' in page, "Calibration ranges" in page
    (False, True)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from mixq.analysis.html import Page, cell, details, esc, finite, html_table, short_names
from mixq.core.qtypes import qtype
from mixq.core.table import Table
from mixq.sim.protocol import SimLike
from mixq.sim.torch.runner import Run

__all__ = ["Analysis", "write_report"]


class Analysis(Protocol):
    """What the page reads of a `mixq.QuantAnalysis`: its Sim, runner, tables and bad case."""

    sim: SimLike
    runner: Any
    tables: dict[str, Table]
    bad: Any


MAX_VALUES = 20_000  # per tensor in a histogram: enough for the shape, keeps the page small
WORST_OPS = 4
TOP_SENSITIVE = 30
_BLUE, _ORANGE, _RED, _GREY = "#1f77b4", "#ff7f0e", "#d62728", "#d9d9d9"
_TABLES = {  # table key -> what to run when it is missing
    **dict.fromkeys(("badcase_overall", "badcase_index", "badcase_value"), "find_bad_cases(data)"),
    **{f"compare_{v}": f'compare_layers(view="{v}")' for v in ("accumulated", "isolated")},
    **{f"sensitivity_{k}": f'sensitivity(kind="{k}")' for k in ("activation", "weight", "both")},
    "advice": "advise()",
}
_READ = {  # under each plot: how to read it
    "sqnr": "Higher is better; about 6 dB per bit. Accumulated: the whole model quantized, so a "
    "drop that persists marks where error enters. Isolated: only that op's own quantizers, so a "
    "low point is an op costly by itself. Gaps are ops identical to float (infinite SQNR).",
    "sensitivity": "The {n} quantizers that hurt the output most when switched on alone, worst "
    "at the top (blue activation, orange weight); a higher precision there helps most.",
    "ranges": "Grey: the representable range [(qmin - zp) * scale, (qmax - zp) * scale], scaled "
    "to [0, 1]. Blue / red: the float values seen. Red bars reach past the grid by more than half "
    "a step, so values are clipped (bars are cut one grid width past either end; hover for the "
    "values); a short bar uses few of the levels.",
    "histograms": "The {n} op outputs with the lowest accumulated SQNR, on the bad case (at most "
    "{max} values each). Orange spikes are the quantization levels; mass piled at the ends means "
    "clipping, few spikes a coarse grid.",
}


def write_report(path: str | Path, qa: Analysis, title: str = "mixq analysis") -> Path:
    """Write the analyses of ``qa`` as one HTML page that needs no network to open.

    Sections: summary; per-op SQNR (accumulated and isolated); sensitivity bars;
    calibration ranges against each quantizer's grid; histograms of the worst tensors on
    the bad case; every table. Run the analyses first; whatever is missing is noted.

    Args:
        path: the ``.html`` file to write (its folder must exist).
        qa: the `QuantAnalysis` whose tables and bad case are shown.
        title: the page heading.

    Returns:
        ``path`` as a `Path`.
    """
    page = Page()
    runs = _bad_case_runs(qa)
    _summary(page, qa)
    _sqnr_section(page, qa.tables)
    _sensitivity_section(page, qa.tables)
    _ranges_section(page, qa, runs)
    _histogram_section(page, qa, runs)
    _tables_section(page, qa)
    out = Path(path)
    out.write_text(page.html(title), encoding="utf-8")
    return out


def _bad_case_runs(qa: Analysis) -> tuple[Run, Run] | None:
    """(float run, quantized run) on the worst sample, or None without a bad case."""
    if qa.bad is None:
        return None
    batch = qa.bad.bad_case
    return qa.runner.run(batch, enabled=()), qa.runner.run(batch)


# -- summary ---------------------------------------------------------------------------------
def _summary(page: Page, qa: Analysis) -> None:
    sim, bad = qa.sim, qa.bad
    kinds = Counter(p.kind for p in sim.points)
    weights = Counter(p.precision for p in sim.points if p.kind == "weight")
    items = [
        ("ops in the plan", len(sim.plan.ops)),
        ("activation / weight quantizers", f"{kinds['activation']} / {kinds['weight']}"),
        ("op output precisions", dict(sorted(sim.plan.precision_counts().items()))),
        ("weight precisions", dict(sorted(weights.items())) or None),
        ("bad case", bad and f"sample {bad.worst_index(bad.metric)} (by {bad.metric.name})"),
        ("analyses run", ", ".join(qa.tables) or None),
    ]
    rows = [{"item": k, "value": v} for k, v in items]
    page.heading("Summary")
    page.parts.append(html_table(Table(rows), header=False))
    if qa.bad is None:
        page.note("No bad case: run qa.find_bad_cases(data) for the range and histogram plots.")


def _hbars(fig: go.Figure, y: list[str], x: Any, hover: list[str], **style: Any) -> None:
    template = "%{hovertext}<extra></extra>"
    fig.add_bar(y=y, x=x, hovertext=hover, hovertemplate=template, orientation="h", **style)


def _rows_axis(names: list[str]) -> dict[str, Any]:
    """A y axis listing ``names`` top to bottom in the given order."""
    return {"autorange": "reversed", "categoryorder": "array", "categoryarray": names}


def _sqnr_section(page: Page, tables: dict[str, Table]) -> None:
    page.heading("SQNR along the network")
    views = [v for v in ("accumulated", "isolated") if f"compare_{v}" in tables]
    if not views:
        page.note('Not available: run qa.compare_layers(view="accumulated") and/or "isolated".')
        return
    fig = go.Figure()
    for view, color in zip(views, (_BLUE, _ORANGE), strict=False):
        rows = tables[f"compare_{view}"].rows
        y = [finite(r["sqnr"]) for r in rows]
        hover = [f"{esc(r['op'])}<br>{r['kind']}, {r['precision']}" for r in rows]
        hover = [f"{h}<br>cosine {cell(r['cosine'])}" for h, r in zip(hover, rows, strict=True)]
        template = "%{hovertext}<br>SQNR %{y:.1f} dB<extra></extra>"
        style = {"mode": "lines+markers", "line_color": color, "hovertemplate": template}
        x = short_names([str(r["op"]) for r in rows])
        fig.add_scatter(x=x, y=y, name=view, hovertext=hover, **style)
    fig.update_layout(
        title="Per-op SQNR (dB)",
        height=520,
        xaxis={"title": "op, in graph order (last name parts; hover for the full name)"},
        yaxis_title="SQNR (dB)",
    )
    fig.update_xaxes(type="category", tickangle=-60, tickfont_size=10, automargin=True)
    page.plot(fig, _READ["sqnr"])


def _sensitivity_section(page: Page, tables: dict[str, Table]) -> None:
    page.heading("Sensitivity")
    keys = [k for k in tables if k.startswith("sensitivity_")]
    if not keys:
        page.note('Not available: run qa.sensitivity(kind="activation" | "weight" | "both").')
    for key in keys:
        rows = sorted(tables[key].rows, key=lambda r: r["rank"])[:TOP_SENSITIVE]
        fig = go.Figure()
        for kind, color in (("activation", _BLUE), ("weight", _ORANGE)):
            mine = [r for r in rows if r["kind"] == kind]
            hover = [
                f"#{r['rank']} {esc(r['quantizer'])} ({r['precision']})<br>"
                f"{r['metric']} {r['score']:.4g}"
                for r in mine
            ]
            names, scores = [r["quantizer"] for r in mine], [r["score"] for r in mine]
            if mine:
                _hbars(fig, names, scores, hover, name=kind, marker_color=color)
        metric = rows[0]["metric"] if rows else ""
        axis = {"xaxis_title": f"model-output {metric} with only this quantizer on"}
        fig.update_layout(
            title=tables[key].title,
            height=140 + 22 * len(rows),
            **axis,
            yaxis=_rows_axis([r["quantizer"] for r in rows]),
        )
        page.plot(fig, _READ["sensitivity"].format(n=len(rows)))


@dataclass
class _Range:
    name: str
    precision: str
    grid: tuple[float, float]
    data: tuple[float, float]
    step: float

    @property
    def exceeds(self) -> bool:
        """Data beyond half a step outside the grid: those values are clipped."""
        half = self.step / 2
        return self.data[0] < self.grid[0] - half or self.data[1] > self.grid[1] + half

    @property
    def position(self) -> tuple[float, float]:
        """The data range on the grid scaled to [0, 1] (0 = qmin, 1 = qmax), cut to [-1, 2]
        so one far outlier does not squash every other bar."""
        lo, hi = self.grid
        pos = ((v - lo) / (hi - lo) if hi > lo else 0.5 for v in self.data)
        lo_pos, hi_pos = (min(max(p, -1.0), 2.0) for p in pos)
        return lo_pos, hi_pos

    @property
    def hover(self) -> str:
        (dlo, dhi), (glo, ghi) = self.data, self.grid
        name = f"{esc(self.name)} ({self.precision})"
        return f"{name}<br>data [{dlo:.4g}, {dhi:.4g}]<br>grid [{glo:.4g}, {ghi:.4g}]"


def _ranges(qa: Analysis, float_run: Run) -> list[_Range]:
    """Integer activation quantizers: the grid and the float range of their tensor."""
    sim, encodings, out = qa.sim, qa.sim.encodings(), []
    for p in sim.points:
        q, enc = qtype(p.precision), encodings.items.get(p.name)
        if p.kind != "activation" or enc is None or enc.scale is None:
            continue
        value = qa.runner.value(float_run, p.target) if p.target in sim.value_nodes else None
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            scale = torch.tensor(enc.scale, dtype=torch.float64)
            zp = torch.tensor(enc.zero_point or [0], dtype=torch.float64)
            grid = (float(((q.qmin - zp) * scale).min()), float(((q.qmax - zp) * scale).max()))
            data = (float(value.min()), float(value.max()))
            out.append(_Range(p.name, q.name, grid, data, float(scale.max())))
    return out


def _ranges_section(page: Page, qa: Analysis, runs: tuple[Run, Run] | None) -> None:
    page.heading("Calibration ranges")
    ranges = _ranges(qa, runs[0]) if runs is not None else []
    if not ranges:
        page.note(
            "Not available: needs a bad case (qa.find_bad_cases(data)) and calibrated "
            "integer activation quantizers."
        )
        return
    names, n, fig = [r.name for r in ranges], len(ranges), go.Figure()
    grey = {"name": "grid [qmin, qmax]", "marker_color": _GREY, "base": [0.0] * n, "width": 0.8}
    _hbars(fig, names, [1.0] * n, [r.hover for r in ranges], **grey)
    for label, color, bad in (("data fits", _BLUE, False), ("data exceeds grid", _RED, True)):
        mine = [r for r in ranges if r.exceeds == bad]
        lo, hi = [r.position[0] for r in mine], [r.position[1] for r in mine]
        style = {"name": label, "marker_color": color, "base": lo, "width": 0.4}
        if mine:
            _hbars(
                fig, [r.name for r in mine], np.subtract(hi, lo), [r.hover for r in mine], **style
            )
    fig.update_layout(
        title="Float range on the bad case vs each quantizer's grid",
        barmode="overlay",
        height=140 + 20 * n,
        yaxis=_rows_axis(names),
        xaxis_title="position on the grid (0 = qmin, 1 = qmax)",
    )
    page.plot(fig, _READ["ranges"])
    flagged = [r.name for r in ranges if r.exceeds]
    if flagged:
        more = " ..." if len(flagged) > 20 else ""
        page.note(
            f"{len(flagged)} of {n} quantizers see data beyond their grid: "
            f"{', '.join(flagged[:20])}{more}"
        )


def _sample(values: torch.Tensor, index: torch.Tensor | None) -> np.ndarray:
    flat = values.detach().reshape(-1).to(torch.float32)
    return (flat if index is None else flat[index]).numpy()


def _histogram_section(page: Page, qa: Analysis, runs: tuple[Run, Run] | None) -> None:
    page.heading("Worst tensors on the bad case")
    if runs is None or "compare_accumulated" not in qa.tables:
        page.note(
            "Not available: needs qa.find_bad_cases(data) and "
            'qa.compare_layers(view="accumulated").'
        )
        return
    rows = [r for r in qa.tables["compare_accumulated"].rows if finite(r["sqnr"]) is not None]
    worst = sorted(rows, key=lambda r: r["sqnr"])[:WORST_OPS]
    if not worst:
        page.note("Every op matches float exactly: nothing to show.")
        return
    cols, gen = min(2, len(worst)), torch.Generator().manual_seed(0)
    titles = [f"{esc(r['op'])} ({r['sqnr']:.1f} dB)" for r in worst]
    fig = make_subplots(rows=math.ceil(len(worst) / cols), cols=cols, subplot_titles=titles)
    for i, row in enumerate(worst):
        tensor = qa.sim.graph.float_outputs(qa.sim.graph.ops[row["op"]])[0]
        ref, out = (qa.runner.value(run, tensor) for run in runs)
        n = ref.numel()
        index = torch.randperm(n, generator=gen)[:MAX_VALUES] if n > MAX_VALUES else None
        cell: dict[str, Any] = {"row": i // cols + 1, "col": i % cols + 1, "nbinsx": 80}
        cell.update(bingroup=i + 1, opacity=0.55, showlegend=i == 0)
        for name, values, color in (("float", ref, _BLUE), ("quantized", out, _ORANGE)):
            x = _sample(values, index)
            fig.add_histogram(x=x, name=name, legendgroup=name, marker_color=color, **cell)
    fig.update_layout(
        title="Float vs quantized values, lowest accumulated SQNR first",
        barmode="overlay",
        height=60 + 300 * math.ceil(len(worst) / cols),
        margin_t=110,
    )
    page.plot(fig, _READ["histograms"].format(n=len(worst), max=MAX_VALUES))


def _tables_section(page: Page, qa: Analysis) -> None:
    page.heading("Tables")
    page.text("Numbers rounded to 4 significant digits; click a title to open a table.")
    page.parts.append(details("plan", qa.sim.plan.table()))
    missing: dict[str, list[str]] = {}
    for key, how in _TABLES.items():
        if key in qa.tables:
            page.parts.append(details(key, qa.tables[key], open_=key == "advice"))
        else:
            missing.setdefault(how, []).append(key)
    page.parts += [details(k, t) for k, t in qa.tables.items() if k not in _TABLES]
    for how, keys in missing.items():
        page.note(f"Not run: {', '.join(keys)} (run qa.{how}).")
