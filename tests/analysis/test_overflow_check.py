"""fp16 / bf16 overflow is reported, not silently NaN (issue 11, class 5): `mixq.check` and
the advisor name a tensor whose range exceeds the type, and the first NaN the Sim makes
(see mixq.analysis.overflow); mask sentinels are deliberate and never named.
"""

from __future__ import annotations

import torch
from torch import nn

import mixq
from mixq.analysis.quant_analysis import QuantAnalysis
from tests.observers.test_masks import MaskedAttention, _inputs


def _loud(norm: bool = False) -> nn.Module:
    """A Linear whose weights make ~1e5 activations (beyond fp16's 65504, inside bf16's)."""
    torch.manual_seed(0)
    fc = nn.Linear(4, 4)
    with torch.no_grad():
        fc.weight.mul_(1e5)
    return nn.Sequential(fc, nn.LayerNorm(4)).eval() if norm else nn.Sequential(fc).eval()


def _quiet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _x() -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(0))


class _PaddedQueries(nn.Module):
    """DeBERTa-v2's mask: query x key, so a padded query's row is fully masked with
    finfo(float32).min; in float its softmax is uniform (fp16 saturates the sentinel to
    -65504, so it stays uniform: -inf everywhere would give NaN)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = x @ x.transpose(1, 2)
        keep = (mask[:, None, :] * mask[:, :, None]).bool()
        scores = scores.masked_fill(~keep, torch.finfo(torch.float32).min)
        return torch.softmax(scores, -1) @ x


def _overflow_rows(result) -> list[dict[str, str]]:
    return [r for r in result.unusual.rows if "finite range" in r["issue"]]


def _nan_rows(result) -> list[dict[str, str]]:
    return [r for r in result.unusual.rows if "output holds NaN" in r["issue"]]


def test_check_names_a_tensor_beyond_fp16():
    rows = _overflow_rows(mixq.check(_loud(), (_x(),), "fp16"))
    assert [r["op/tensor"] for r in rows] == ["0"]
    assert "exceeds fp16's finite range +-65504" in rows[0]["issue"]
    assert "set_precision('0', activation='fp32')" in rows[0]["advice"]
    assert "int16 / bf16" in rows[0]["advice"]
    result = mixq.check(_quiet(), (_x(),), "fp16")  # a normal model
    assert _overflow_rows(result) == [] and _nan_rows(result) == []
    for config in ["bf16", "int8", {"default": "int16"}]:  # types that hold it, or quantize
        assert _overflow_rows(mixq.check(_loud(), (_x(),), config)) == []


def test_check_names_a_weight_beyond_fp16():
    model = _quiet()
    with torch.no_grad():
        model[0].weight[0, 0] = 1e6
    rows = _overflow_rows(mixq.check(model, (_x(),), {"default": "fp16"}))
    weight = [r for r in rows if r["op/tensor"] == "0.weight"]
    assert weight and "weight='fp32'" in weight[0]["advice"]


def test_check_names_the_first_nan_and_the_overflow_feeding_it():
    result = mixq.check(_loud(norm=True), (_x(),), "fp16")
    (row,) = _nan_rows(result)
    assert row["op/tensor"] == "1"  # the LayerNorm: inf - inf
    assert "fed inf by 0" in row["issue"] and "keep '0' and '1' fp32" in row["advice"]


def test_mask_sentinels_are_neither_overflow_nor_a_source_of_nan():
    for model in (MaskedAttention(), _PaddedQueries()):  # the second: fully masked rows
        result = mixq.check(model.eval(), _inputs(), {"default": "fp16"})
        assert _overflow_rows(result) == [] and _nan_rows(result) == [], type(model).__name__


def _advice(model, inputs, config) -> list[dict[str, str]]:
    sim = mixq.quantize(model, inputs, config).calibrate([inputs], progress=False)
    qa = QuantAnalysis(sim)
    qa.find_bad_cases([inputs], progress=False)
    return qa.advise().rows


def test_advisor_names_a_tensor_beyond_fp16():
    rows = _advice(_loud(), (_x(),), "fp16")
    (row,) = [r for r in rows if "finite range" in r["issue"]]
    assert row["op"] == "0" and "keep it fp32" in row["advice"]


def test_advisor_says_nothing_for_a_normal_model_or_mask_sentinels():
    assert _advice(_quiet(), (_x(),), "fp16") == []
    assert _advice(MaskedAttention().eval(), _inputs(), {"default": "fp16"}) == []
