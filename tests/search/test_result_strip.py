"""The search page's per-op strip: one colour per distinct (output, weight) precision pair,
labelled the same way, so a uniform plan is one colour; op names sampled, not crammed."""

from __future__ import annotations

from pathlib import Path

import torch

import mixq
from mixq.search.result import MAX_TICKS, SearchResult, precision_pair
from tests.analysis.test_report_labels import plotly_figures


def _result(candidates: list) -> SearchResult:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.Flatten()
    )
    data = [(torch.randn(32, 8),) for _ in range(2)]
    return mixq.search(
        model.eval(), data[0], calib=data, evaluate="sqnr", target=60,
        candidates=candidates, strategy="fallback", progress=False,
    )  # fmt: skip


def _strip(result: SearchResult, tmp_path: Path) -> dict:
    page = result.report(tmp_path / "search.html").read_text()
    return plotly_figures(page)[1]


def test_a_uniform_plan_is_one_colour(tmp_path: Path) -> None:
    result = _result(["int8"])
    strip = _strip(result, tmp_path)
    assert [t["name"] for t in strip["data"]] == ["int8"]
    assert sum(len(t["x"]) for t in strip["data"]) == len([o for o in result.plan if o.output])


def test_one_colour_per_distinct_pair(tmp_path: Path) -> None:
    result = _result(["int8", "int16", ("int16", "int8")])
    ops = [o for o in result.plan if o.output]
    pairs = {precision_pair(o.output[0], o.weight.values()) for o in ops}
    strip = _strip(result, tmp_path)
    assert {t["name"] for t in strip["data"]} == pairs
    colours = [t["marker"]["color"] for t in strip["data"]]
    assert len(set(colours)) == len(colours) == len(pairs)


def test_pair_labels() -> None:
    assert precision_pair("int8", []) == precision_pair("int8", ["int8"]) == "int8"
    assert precision_pair("int16", ["int8"]) == "int16 / int8 weights"
    assert precision_pair("fp16", ["fp16", "fp32"]) == "fp16 / fp16,fp32 weights"


def test_op_names_are_sampled(tmp_path: Path) -> None:
    result = _result(["int8"])
    axis = _strip(result, tmp_path)["layout"]["xaxis"]
    assert 0 < len(axis["ticktext"]) <= MAX_TICKS
    assert all(isinstance(t, str) and t for t in axis["ticktext"])
