"""The per-op SQNR chart names its ops on the x axis (short names, so a screenshot says
which op drops), read back from the plotly JSON in the written page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

import mixq
from mixq.analysis.html import short_names
from mixq.analysis.quant_analysis import QuantAnalysis
from mixq.analysis.report import write_report


def plotly_figures(page: str) -> list[dict[str, Any]]:
    """Every ``Plotly.newPlot("id", data, layout, ...)`` of ``page`` as {"data", "layout"}."""
    decoder, figures = json.JSONDecoder(), []
    for found in re.finditer(r'Plotly\.newPlot\(\s*"mixq-plot-\d+",\s*', page):
        data, end = decoder.raw_decode(page, found.end())
        layout, _ = decoder.raw_decode(page, page.index("{", end))
        figures.append({"data": data, "layout": layout})
    return figures


class _Named(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.ModuleDict({"fc": torch.nn.Linear(8, 16), "act": torch.nn.GELU()})
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder["act"](self.encoder["fc"](x)))


def test_the_sqnr_axis_holds_op_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [(torch.randn(8, 8),) for _ in range(2)]
    sim = mixq.quantize(_Named().eval(), data[0], "int8").calibrate(data, progress=False)
    qa = QuantAnalysis(sim)
    table = qa.compare_layers("accumulated", data=data, progress=False)
    page = write_report(tmp_path / "report.html", qa).read_text()
    (fig,) = [f for f in plotly_figures(page) if "SQNR" in str(f["layout"].get("title"))]
    ops = [str(r["op"]) for r in table.rows]
    assert fig["data"][0]["x"] == short_names(ops)
    assert {"encoder.fc", "encoder.act", "head"} <= set(fig["data"][0]["x"])
    axis = fig["layout"]["xaxis"]
    assert axis["type"] == "category" and axis["tickangle"] == -60


def test_short_names_are_the_last_two_parts_and_distinct() -> None:
    names = [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.1.attention.self.query",
        "encoder.layer.0.output.dense",
        "fc",
    ]
    short = short_names(names)
    assert short == ["0.attention.self.query", "1.attention.self.query", "output.dense", "fc"]
    assert len(set(short_names(["a.b", "a.b"]))) == 2
