"""The advisor: one test per finding it makes, each naming the op (see mixq.analysis.advisor)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.analysis.quant_analysis import QuantAnalysis
from mixq.core.table import Table
from mixq.rules.config import Scheme


def _linear(shift: float = 0.0) -> nn.Module:
    """One linear layer; ``shift`` moves every output (the bad case is a single sample)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    with torch.no_grad():
        model[0].bias.add_(shift)
    return model


def _data(scale: float = 1.0, offset: float = 0.0, seed: int = 0) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=gen) * scale + offset,) for _ in range(2)]


def _advice(model, config, calib, data) -> list[dict[str, str]]:
    sim = mixq.quantize(model, calib[0], config).calibrate(calib, progress=False)
    qa = QuantAnalysis(sim)
    qa.find_bad_cases(data, progress=False)
    return qa.advise().rows


def _issues(rows, op: str) -> list[str]:
    return [r["issue"] for r in rows if r["op"] == op]


def test_range_too_wide_for_int8_suggests_int16():
    rows = _advice(_linear(shift=30.0), "int8", _data(), _data())
    (row,) = [r for r in rows if "wide for int8" in r["issue"]]
    assert row["op"] == "0" and "set_precision('0', activation='int16')" in row["advice"]
    assert not [r for r in _advice(_linear(), "int8", _data(), _data()) if "wide" in r["issue"]]


def test_scale_that_does_not_cover_the_input_blames_the_calibration_data():
    rows = _advice(_linear(), "int8", _data(scale=0.05), _data(seed=1))
    assert any(i.startswith("scale covers") for i in _issues(rows, "0"))
    assert any("calibration data too small or biased" in r["advice"] for r in rows)


def test_input_far_from_symmetric_with_symmetric_activations():
    data = _data(scale=0.5, offset=5.0)
    symmetric = mixq.Config(scheme=Scheme(activation_symmetric=True))
    sim_input = mixq.quantize(_linear(), data[0], symmetric).graph.inputs[0]
    rows = _advice(_linear(), symmetric, data, data)
    assert any("far from symmetric" in i for i in _issues(rows, sim_input))
    asymmetric = _advice(_linear(), "int8", data, data)  # the default scheme is asymmetric
    assert not any("far from symmetric" in r["issue"] for r in asymmetric)


def test_integer_model_output_suggests_a_float_output():
    rows = _advice(_linear(), "int8", _data(), _data())
    assert _issues(rows, "0") == ["model output leaves the model as int8"]
    fp32_out = mixq.Config().set_model_output_precision(["fp32"])
    assert _advice(_linear(), fp32_out, _data(), _data()) == []


@pytest.fixture
def quiet_qa():
    """A QuantAnalysis of a model that gives no findings of its own (fp32 output)."""
    config = mixq.Config().set_model_output_precision(["fp32"])
    data = _data()
    sim = mixq.quantize(_linear(), data[0], config).calibrate(data, progress=False)
    return QuantAnalysis(sim)


def test_nan_or_inf_in_a_compared_output_is_named(quiet_qa):
    row = {"op": "0", "precision": "int8", "scale": None, "float_min": -1.0, "float_max": 1.0}
    quiet_qa.tables["compare_accumulated"] = Table(
        [{**row, "quant_min": float("nan"), "quant_max": 1.0}]
    )
    assert [(r["op"], r["issue"]) for r in quiet_qa.advise().rows] == [
        ("0", "NaN / Inf in the output")
    ]


def test_op_whose_activation_and_weight_are_both_sensitive(quiet_qa):
    def table(kind: str, ops: list[str]) -> Table:
        rows = [{"op": op, "kind": kind, "score": 10.0 - i} for i, op in enumerate(ops)]
        return Table(rows, title=f"sensitivity (l1, {kind}, mode=exact)")

    quiet_qa.tables["sensitivity_activation"] = table("activation", ["fc", *"abcdefghi"])
    quiet_qa.tables["sensitivity_weight"] = table("weight", ["fc", *"jklmnopqr"])
    rows = quiet_qa.advise().rows
    assert [r["op"] for r in rows] == ["fc"]
    assert "both its activation and its weight" in rows[0]["issue"]
    assert "int16" in rows[0]["advice"] and "fp16" in rows[0]["advice"]


class _WideIntoNorm(nn.Module):
    """A linear whose outputs reach +-30, read by a LayerNorm after a reshape (data movement)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.norm = nn.Linear(4, 8), nn.LayerNorm(8)
        with torch.no_grad():
            self.fc.bias.add_(30.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x).reshape(-1, 8))


def test_wide_int8_advice_names_the_readers_that_would_requantize_it_to_int8():
    model = _WideIntoNorm().eval()
    rows = _advice(model, "int8", _data(), _data())
    (row,) = [r for r in rows if "wide for int8" in r["issue"] and r["op"] == "fc"]
    assert "set_precision('fc', activation='int16')" in row["advice"]
    assert "set_precision('norm', activation='int16')" in row["advice"]

    def conversions(ops: list[str]) -> list[str]:
        config = mixq.Config(default="int8")
        for op in ops:
            config.set_precision(op, activation="int16")
        sim = mixq.quantize(model, _data()[0], config)
        return [q for q in sim.quantizers if q.endswith("@int8")]

    # the fc alone at int16: the LayerNorm still reads it through an int8 quantizer
    assert conversions(["fc"]) == ["reshape@int8"]
    assert conversions(["fc", "norm"]) == []
