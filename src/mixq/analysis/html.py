"""Self-contained HTML pages: a `Page` collects headings, notes, plotly figures and tables
and renders one file that embeds plotly.js, so it opens offline (the analysis report and the
search report are both `Page` s).

Example:
    >>> from mixq.core.table import Table, cell_text
    >>> page = Page()
    >>> page.heading("Ops")
    >>> page.parts.append(html_table(Table([{"op": "fc", "sqnr": 31.25}])))
    >>> "<td>fc</td>" in page.html("demo")
    True
"""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from mixq.core.table import Table, cell_text

__all__ = ["Page", "cell", "details", "esc", "finite", "html_table", "short_names"]


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #ccc; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p.how { color: #555; font-size: 0.92em; margin-top: 0; } details { margin: 0.5em 0; }
p.note { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; } tr:nth-child(even) { background: #fafafa; }
div.scroll { overflow: auto; max-height: 40em; } details#table-advice td { white-space: normal; }
summary { cursor: pointer; font-weight: 600; }
"""


@dataclass
class Page:
    """The HTML body under construction and the number of plots drawn in it."""

    parts: list[str] = field(default_factory=list)
    plots: int = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, cls: str = "how") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def note(self, text: str) -> None:
        self.text(text, "note")

    def plot(self, fig: go.Figure, how_to_read: str) -> None:
        top, bottom = fig.layout.margin.t or 50, fig.layout.margin.b or 50
        margin = {"l": 60, "r": 20, "t": top, "b": bottom}
        fig.update_layout(template="plotly_white", margin=margin)
        self.plots += 1
        config = {"displaylogo": False, "responsive": True}
        div = fig.to_html(
            full_html=False, include_plotlyjs=False, config=config, div_id=f"mixq-plot-{self.plots}"
        )
        self.parts.append(f'<div class="plot">{div}</div>')
        self.text(how_to_read)

    def html(self, title: str) -> str:
        script = f'<script type="text/javascript">{get_plotlyjs()}</script>' if self.plots else ""
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>{script}</head>\n"
            f'<body data-mixq-plots="{self.plots}">\n<h1>{html.escape(title)}</h1>\n'
            + "\n".join(self.parts)
            + "\n</body></html>\n"
        )


# -- plots -----------------------------------------------------------------------------------
def finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def esc(value: Any) -> str:
    return html.escape(str(value))


def short_names(names: list[str], parts: int = 2) -> list[str]:
    """Axis labels: the last ``parts`` dotted parts of each name, with more parts where two
    would read the same (``layer.0.attention.self.query`` -> ``0.attention.self.query`` when
    layer 1 has one too), so every label is distinct.

    Example:
        >>> short_names(["encoder.layer.0.fc", "encoder.layer.1.fc", "head.out"])
        ['0.fc', '1.fc', 'head.out']
    """
    depth = dict.fromkeys(names, parts)
    while True:
        short = {n: ".".join(n.split(".")[-depth[n] :]) for n in names}
        counts = Counter(short.values())
        clash = [n for n in names if counts[short[n]] > 1 and depth[n] < n.count(".") + 1]
        if not clash:
            break
        for n in clash:
            depth[n] += 1
    seen: Counter[str] = Counter()
    labels = []
    for n in names:  # the same full name twice: number the repeats
        seen[short[n]] += 1
        labels.append(short[n] + (f" #{seen[short[n]]}" if seen[short[n]] > 1 else ""))
    return labels


# -- tables ----------------------------------------------------------------------------------
def cell(value: Any) -> str:
    """A table cell on the page: 4 significant digits (the text tables keep 6)."""
    return cell_text(value, digits=4)


def html_table(table: Table, header: bool = True) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(c)))}</td>" for c in table.columns) + "</tr>"
        for r in table.rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f'<div class="scroll"><table>{thead}<tbody>{body}</tbody></table></div>'


def details(key: str, table: Table, open_: bool = False) -> str:
    label = html.escape(f"{table.title or key} ({len(table.rows)} rows)")
    return (
        f'<details{" open" if open_ else ""} id="table-{html.escape(key)}">'
        f"<summary>{label}</summary>{html_table(table)}</details>"
    )
