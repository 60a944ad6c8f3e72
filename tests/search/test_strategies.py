"""Each strategy on the trained digits CNN and on BERT with planted outliers."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import mixq
from mixq.analysis.metrics import sqnr
from mixq.search.result import pareto_front

STRATEGIES = ["ratio", "fallback", "pareto", "budget"]
CANDIDATES = [("int8", "int4"), "int8", "int16"]


def _uniform_sqnr(model, example, calib, data, precision) -> float:
    sim = mixq.quantize(model, example, precision).calibrate(calib, progress=False)
    with torch.no_grad():
        ref = torch.cat([model(*b).flatten() for b in data])
        out = torch.cat([sim(*b).flatten() for b in data])
    return sqnr(ref, out)


@pytest.fixture(scope="module")
def digits_target(digits):
    """An SQNR between the all-w4a8 and all-int8 plans' (reachable within all-int8's BOPs,
    not met by the cheapest plan): 70 % of the way up from all-w4a8."""
    model, example, calib, data, _ = digits
    low = _uniform_sqnr(model, example, calib, data, ("int8", "int4"))
    high = _uniform_sqnr(model, example, calib, data, "int8")
    return low + 0.7 * (high - low)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_meets_a_reachable_target_on_digits(digits, digits_target, strategy):
    model, example, calib, data, _ = digits
    result = mixq.search(
        model, example, calib=calib, data=data, evaluate="sqnr", target=digits_target,
        candidates=CANDIDATES, strategy=strategy, budget={"bops": 1.0}, progress=False,
    )  # fmt: skip
    assert result.met_target and result.miss == 0
    assert result.relative(result.best) <= 1.0 + 1e-6  # no dearer than all-int8
    assert result.best.score >= digits_target
    cheapest = result.points[0]  # the first anchor: every unit at its cheapest option
    assert cheapest.label == "all int8/int4" and not cheapest.met
    # the plan reloads and scores what the search measured
    sim = mixq.quantize(model, example, result.plan).calibrate(calib, progress=False)
    with torch.no_grad():
        ref = torch.cat([model(*b).flatten() for b in data])
        out = torch.cat([sim(*b).flatten() for b in data])
    assert sqnr(ref, out) == pytest.approx(result.best.score, rel=1e-6)


def test_budget_respects_the_budget_exactly(digits, digits_target):
    model, example, calib, data, _ = digits
    for fraction in (0.7, 1.5):
        result = mixq.search(
            model, example, calib=calib, data=data, evaluate="sqnr", target=digits_target,
            candidates=CANDIDATES, strategy="budget", budget={"bops": fraction}, progress=False,
        )  # fmt: skip
        limit = fraction * result.reference["bops"]
        assert result.best.cost["bops"] <= limit
        assert result.plan.cost().bops == result.best.cost["bops"]
        # every plan the repair tried after the program kept to the budget too
        tried = [p for p in result.points if not p.label.startswith("all ")]
        assert tried and all(p.cost["bops"] <= limit * (1 + 1e-9) for p in tried)


def test_budget_evaluates_the_programs_top_k_distinct_plans(digits):
    model, example, calib, data, _ = digits
    result = mixq.search(
        model, example, calib=calib, data=data, evaluate="sqnr", target=200.0,
        candidates=CANDIDATES, strategy="budget", budget={"bops": 0.8}, top_k=3,
        max_trials=len(CANDIDATES) + 3, progress=False,
    )  # fmt: skip
    program = [p for p in result.points if p.label.startswith("budget: integer program")]
    assert len(program) == 3 and len({p.key for p in program}) == 3
    limit = 0.8 * result.reference["bops"]
    assert all(p.cost["bops"] <= limit * (1 + 1e-9) for p in program)


def test_pareto_front_is_monotone_and_spans_the_curve(digits, digits_target):
    model, example, calib, data, _ = digits
    result = mixq.search(
        model, example, calib=calib, data=data, evaluate="sqnr", target=digits_target,
        candidates=CANDIDATES, strategy="pareto", points=8, progress=False,
    )  # fmt: skip
    curve = [p for p in result.points if p.label.startswith("pareto")]
    assert len(curve) >= 6  # a curve, not one point (its two ends are the anchors)
    front = result.front()
    costs = [p.cost["bops"] for p in front]
    scores = [p.score for p in front]
    assert costs == sorted(costs) and scores == sorted(scores)
    assert len(front) >= 3
    assert front == pareto_front(result.points, "bops", higher_is_better=True)


def test_fallback_is_never_worse_than_the_cheapest_plan(digits):
    model, example, calib, data, labels = digits
    for target in (0.99, 1.01):  # accuracy: reachable or not, the result is no worse
        result = mixq.search(
            model, example, calib=calib, data=data, labels=labels, evaluate="accuracy",
            target=target, candidates=[("int4", "int4"), "int8"], strategy="fallback",
            progress=False,
        )  # fmt: skip
        cheapest = result.points[0]
        assert result.best.score >= cheapest.score
    assert not result.met_target and result.miss > 0


def test_accuracy_drop_target(digits):
    model, example, calib, data, labels = digits
    result = mixq.search(
        model, example, calib=calib, data=data, labels=labels, evaluate="accuracy",
        target={"drop": 0.01}, candidates=CANDIDATES, strategy="fallback", progress=False,
    )  # fmt: skip
    assert result.threshold == pytest.approx(result.baseline - 0.01)
    assert result.met_target


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_meets_a_reachable_target_on_outlier_bert(outlier_bert, strategy):
    model, inputs, batches = outlier_bert
    result = mixq.search(
        model, inputs, calib=batches, data=batches[:2], evaluate="sqnr", target=38,
        candidates=["int8", ("int16", "int8"), "int16"], strategy=strategy,
        budget={"bops": 1.6}, progress=False,
    )  # fmt: skip
    anchors = {p.label: p for p in result.points if p.label.startswith("all ")}
    assert not anchors["all int8"].met  # the outliers make int8 miss the target
    assert result.met_target, result.summary()
    if strategy == "budget":
        assert result.best.cost["bops"] <= 1.6 * result.reference["bops"]
    # cheaper than raising everything
    assert result.best.cost["bops"] < anchors["all int16/int8"].cost["bops"]


def test_unreachable_target_returns_the_best_plan_and_the_miss(digits, tmp_path):
    model, example, calib, data, _ = digits
    result = mixq.search(
        model, example, calib=calib, data=data, evaluate="sqnr", target=500,
        candidates=["int8", "int16"], strategy="fallback", progress=False,
    )  # fmt: skip
    assert not result.met_target
    best_score = max(p.score for p in result.points)
    assert result.best.score == best_score
    assert result.miss == pytest.approx(500 - best_score)
    assert "MISSED" in result.summary()
    paths = result.save(tmp_path)
    assert [p.name for p in paths] == ["plan.yaml", "points.json", "search.html"]
    saved = json.loads((tmp_path / "points.json").read_text())
    assert saved["met_target"] is False and saved["best"] == result.best.key
    page = (tmp_path / "search.html").read_text()
    assert page.count('class="plot"') == 2 and "Pareto front" in page


def test_onnx_model_search(tmp_path):
    import onnx

    from tests.sim.onnx.conftest import batches
    from tests.sim.onnx.models import cnn

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), path)
    calib = batches((4, 3, 8, 8), 4)
    result = mixq.search(
        str(path), calib[0], calib=calib, evaluate="sqnr", target=45,
        candidates=CANDIDATES, strategy="fallback", progress=False,
    )  # fmt: skip
    assert result.met_target
    assert result.best.cost["bops"] < max(p.cost["bops"] for p in result.points)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="rendering needs headless Chromium")
def test_search_page_renders_both_plots_without_errors(digits, digits_target, tmp_path):
    from tests.analysis.test_report import drawn_plots, render

    model, example, calib, data, _ = digits
    result = mixq.search(
        model, example, calib=calib, data=data, evaluate="sqnr", target=digits_target,
        candidates=CANDIDATES, strategy="pareto", progress=False,
    )  # fmt: skip
    dom, errors = render(result.report(tmp_path / "search.html"), tmp_path / "profile")
    assert errors == []
    assert drawn_plots(dom) == 2  # the cost / score plane and the per-op map
    assert "Pareto front" in dom and "chosen" in dom


def test_ratio_bisects_then_keeps_searching_down(digits, digits_target):
    """Ranked once, bisected (about log2(units) plans, not one per unit), then raised units
    go back down while the target holds: the cheapest passing plan wins, not the first."""
    model, example, calib, data, _ = digits
    result = mixq.search(
        model, example, calib=calib, data=data, evaluate="sqnr", target=digits_target,
        candidates=CANDIDATES, strategy="ratio", progress=False,
    )  # fmt: skip
    ratio = [p for p in result.points if p.label.startswith("ratio top")]
    prune = [p for p in result.points if p.label.startswith("prune")]
    units = int(ratio[0].label.split("/")[1].split(",")[0])
    assert len(ratio) <= 2 + math.ceil(math.log2(units)) + 1 and prune
    met = [p for p in result.points if p.met]
    assert result.best.cost["bops"] == min(p.cost["bops"] for p in met)


def test_prune_lowers_each_raised_unit_as_far_as_the_target_holds(monkeypatch):
    """With three options a unit (int8 < dynamic int8 < fp32) raised to fp32 that the target
    lets back to int8 must get there: one step each left the MiniLM search with 16 linears
    at dynamic int8 that int8 served as well (3 after this change, same held-out cosines)."""
    from types import SimpleNamespace

    from mixq.search import strategies
    from mixq.search.space import Candidate, Unit

    low, mid, top = (
        Candidate("int8", "int8"),
        Candidate("uint8_dynamic", "int8"),
        Candidate("fp32", "fp32"),
    )
    units = [Unit("a", ("a",), "linear", options=[low, mid, top]),
             Unit("b", ("b",), "linear", options=[low, mid, top])]  # fmt: skip
    need = {"a": 1, "b": 0}  # the lowest option index at which the target holds
    tried: list[str] = []

    def evaluate(assignment, label):
        tried.append(label)
        ok = all(u.options.index(assignment[u.name]) >= need[u.name] for u in units)
        return SimpleNamespace(met=ok)

    space = SimpleNamespace(free=units, uniform=lambda i: {u.name: u.options[i] for u in units})
    trials = SimpleNamespace(space=space, evaluate=evaluate, progress=None)
    errors = {"a": {str(low): 2.0}, "b": {str(low): 1.0}}
    monkeypatch.setattr(strategies, "unit_errors", lambda *a, **k: errors)
    strategies._prune(trials, {"a": top, "b": top}, batch=None)
    assert tried == [
        "prune lower b to uint8_dynamic/int8", "prune lower b to int8",  # b first: less harm
        "prune lower a to uint8_dynamic/int8", "prune lower a to int8",  # the last one misses
    ]  # fmt: skip
