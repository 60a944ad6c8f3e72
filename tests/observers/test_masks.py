"""Attention masks: -inf / finfo.min inside the model is data, not a calibration error, and
the quantizers that carry it pass it through (issue 11, class 2).

Measured on `MaskedAttention` (int8, SQNR of the Sim vs the float model): torch Sim 38.4 dB,
ONNX Sim 40.1 dB with the pass-through; 3.7 dB for both without it (masked scores clamped to
the range's low end, softmax leaking onto the padded keys).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mixq
from mixq.observers import make_observer


class MaskedAttention(nn.Module):
    """Scores + (1 - mask) * finfo.min -> softmax, as exported BERTs spell their mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2)
        scores = scores + (1.0 - mask[:, None, :]) * torch.finfo(torch.float32).min
        return torch.softmax(scores, -1) @ x


def _inputs():
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    return x, mask


def export_masked(model, inputs, path):
    """``model`` as an opset-14 ONNX file with inputs ``x`` and ``mask``; returns the path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=14,
                          input_names=["x", "mask"])  # fmt: skip
    return str(path)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_observers_leave_mask_values_out(observer):
    obs = make_observer(observer)
    x = torch.tensor([-1.0, 0.5, 2.0, float("-inf"), torch.finfo(torch.float32).min])
    obs.update(x)
    lo, hi = obs.compute_range()
    assert -1.5 <= float(lo) <= 0 and 0 < float(hi) <= 2.5


def test_mask_add_calibrates_in_both_backends(tmp_path):
    model, (x, mask) = MaskedAttention().eval(), _inputs()
    sim = mixq.quantize(model, (x, mask), "int8").calibrate([(x, mask)], progress=False)
    assert torch.isfinite(sim(x, mask)).all()
    path = export_masked(model, (x, mask), tmp_path / "masked.onnx")
    onnx_sim = mixq.quantize(path, (x, mask), "int8")
    onnx_sim.calibrate([(x, mask)], progress=False)
    got = onnx_sim(x, mask)
    assert torch.isfinite(got).all()


def test_masked_positions_stay_masked():
    model, (x, mask) = MaskedAttention().eval(), _inputs()
    sim = mixq.quantize(model, (x, mask), "int8").calibrate([(x, mask)], progress=False)
    assert float(mixq.analysis.metrics.sqnr(model(x, mask), sim(x, mask))) > 20


@pytest.mark.onnx
def test_masked_positions_stay_masked_on_the_onnx_path(tmp_path):
    model, (x, mask) = MaskedAttention().eval(), _inputs()
    path = export_masked(model, (x, mask), tmp_path / "masked.onnx")
    sim = mixq.quantize(path, (x, mask), "int8").calibrate([(x, mask)], progress=False)
    assert float(mixq.analysis.metrics.sqnr(model(x, mask), sim(x, mask))) > 20


def test_fp16_saturates_mask_values_and_softmax_still_masks():
    """fp16 needs no pass-through: finfo(float32).min saturates to fp16's largest negative
    value (as the export clamps the constant), which softmax reads as a mask too."""
    model, (x, mask) = MaskedAttention().eval(), _inputs()
    sim = mixq.quantize(model, (x, mask), "fp16").calibrate([(x, mask)], progress=False)
    q = sim.quantizer("add")
    assert not q.mask_passthrough
    got = q(torch.tensor([torch.finfo(torch.float32).min, -float("inf"), 1e6]))
    assert got.tolist() == [-65504.0, -float("inf"), float("inf")]  # only sentinels saturate
    assert float(mixq.analysis.metrics.sqnr(model(x, mask), sim(x, mask))) > 50


class FullyMaskedRows(nn.Module):
    """DeBERTa's mask: a padded query's whole row is finfo.min, so float softmax gives a
    uniform row there."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = x @ x.transpose(1, 2)
        both = (mask[:, :, None] * mask[:, None, :]).bool()
        scores = scores.masked_fill(~both, torch.finfo(torch.float32).min)
        return torch.softmax(scores, -1) @ x


def test_fp16_sim_gives_no_nan_on_fully_masked_rows():
    model, (x, mask) = FullyMaskedRows().eval(), _inputs()
    sim = mixq.quantize(model, (x, mask), "fp16").calibrate([(x, mask)], progress=False)
    got = sim(x, mask)
    assert not got.isnan().any()
    assert float(mixq.analysis.metrics.sqnr(model(x, mask), got)) > 50


def test_inf_in_a_model_input_is_still_an_error():
    model, (x, mask) = MaskedAttention().eval(), _inputs()
    x[0, 0, 0] = float("inf")
    sim = mixq.quantize(model, (x, mask), "int8")
    with pytest.raises(mixq.CalibrationError, match="holds Inf"):
        sim.calibrate([(x, mask)], progress=False)
