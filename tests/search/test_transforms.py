"""Transforms as part of the search: int8 + smoothing competes with int16 on cost."""

from __future__ import annotations

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


def test_weight_transforms_are_refused_with_what_to_do(mlp_model):
    model, inputs, calib = mlp_model
    with pytest.raises(mixq.ConfigError, match="need a Sim"):
        mixq.search(model, inputs, calib=calib, transforms=["adaround"], progress=False)
