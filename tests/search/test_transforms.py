"""Transforms as part of the search: int8 + smoothing competes with int16 on cost."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import mixq
from mixq.analysis.metrics import float_leaves, sqnr
from tests.transforms.models import bert_batches, outlier_bert


def _sqnr(model, sim, batches) -> float:
    with torch.no_grad():
        ref = torch.cat([t.flatten() for b in batches for t in float_leaves(model(*b))])
        out = torch.cat([t.flatten() for b in batches for t in float_leaves(sim(*b))])
    return sqnr(ref, out)


def test_smoothing_lets_the_search_keep_int8_where_it_would_raise_precision():
    model, inputs = outlier_bert()
    calib = bert_batches()
    kwargs = dict(
        calib=calib, evaluate="sqnr", target=30, strategy="fallback", progress=False,
        candidates=["int8", ("int16", "int8"), "int16"],
    )  # fmt: skip
    plain = mixq.search(model, inputs, **kwargs)
    smoothed = mixq.search(model, inputs, transforms=["smooth"], **kwargs)
    assert plain.met_target and smoothed.met_target
    # the planted outliers force int16 somewhere without smoothing; with it, int8 holds
    assert plain.relative(plain.best) > 1.2
    assert smoothed.relative(smoothed.best) < plain.relative(plain.best)
    assert [t["name"] for t in smoothed.plan.transforms] == ["smooth"]
    # the plan carries the transform: quantizing the original model with it reproduces it
    sim = mixq.quantize(model, inputs, smoothed.plan, calib=calib).calibrate(calib)
    assert _sqnr(model, sim, calib) == pytest.approx(smoothed.best.score, abs=1e-3)


def test_int4_candidates_are_scored_with_the_weights_gptq_rounds():
    """A weights transform runs once per layer and weight precision before the search; every
    Sim the search builds carries those weights, and the plan reproduces them."""
    model, inputs = outlier_bert()
    calib = bert_batches()
    kwargs = dict(
        calib=calib, evaluate="sqnr", target=0, strategy="fallback", progress=False,
        candidates=[("int8", "int4")],
    )  # fmt: skip
    plain = mixq.search(model, inputs, **kwargs)
    rounded = mixq.search(model, inputs, transforms=["smooth", "gptq"], **kwargs)
    smoothed = mixq.search(model, inputs, transforms=["smooth"], **kwargs)
    assert rounded.best.score >= smoothed.best.score + 3.0, (smoothed.best, rounded.best)
    assert rounded.best.score >= plain.best.score + 3.0
    assert [t["name"] for t in rounded.plan.transforms] == ["smooth", "gptq"]
    sim = mixq.quantize(model, inputs, rounded.plan, calib=calib).calibrate(calib)
    assert _sqnr(model, sim, calib) == pytest.approx(rounded.best.score, abs=1e-3)


def test_a_unit_error_counts_the_weights_gptq_rounded(tmp_path):
    """The sensitivity measures each unit against the float model. The Sims hold gptq's
    rounded weights (on the grid, so a weight quantizer switched on changes nothing); with
    them in the reference run too, every int4 option measured as free as int8."""
    model, inputs = outlier_bert()

    def errors(transforms: list[str]) -> dict[str, dict[str, float]]:
        history = tmp_path / f"{'-'.join(transforms)}.jsonl"
        mixq.search(model, inputs, calib=bert_batches(), evaluate="sqnr", target=0,
                    strategy="pareto", points=2, candidates=[("int16", "int4"), ("int16", "int8")],
                    transforms=transforms, history=history, progress=False)  # fmt: skip
        rows = [json.loads(line) for line in history.read_text().splitlines()]
        return next(r["value"] for r in rows if r.get("name") == "unit_errors")

    nearest, rounded = errors(["smooth"]), errors(["smooth", "gptq"])
    linears = [u for u, e in rounded.items() if "int16/int4" in e]
    assert len(linears) >= 4
    for unit in linears:
        int4, int8 = rounded[unit]["int16/int4"], rounded[unit]["int16/int8"]
        assert int4 > 10 * int8, (unit, rounded[unit])
        # gptq lowers the rounding error (26x below round-to-nearest on the first unit)
        assert int4 <= 1.2 * nearest[unit]["int16/int4"]


def test_weight_transforms_need_a_pytorch_model(tmp_path, mlp_model):
    model, inputs, calib = mlp_model
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        torch.onnx.export(model, inputs, str(path), dynamo=False)
    with pytest.raises(mixq.ConfigError, match="PyTorch"):
        mixq.search(str(path), inputs, calib=calib, transforms=["gptq"], progress=False)
