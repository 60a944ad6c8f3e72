"""Weights a model computes from its parameters (weight norm, spectral norm: wav2vec2's
positional conv, HuBERT, WavLM, EnCodec). The conv read an ordinary tensor, so it got no
weight quantizer, and ONNX Runtime parted from the Sim there (wav2vec2 from a config: 19.6 dB
at that conv, 29.6 dB Sim vs ORT at the output; after the fold inf, measured 2026-12-03).
The capture evaluates such a weight once and reads it as a parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import mixq


class PositionalConv(nn.Module):
    """A grouped, weight-normed conv over time added back to its input, then a spectrally
    normed projection: the positional-embedding pattern of the speech encoders."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        conv = nn.Conv1d(c, c, 8, padding=4, groups=2)
        self.conv = parametrizations.weight_norm(conv, name="weight", dim=2)
        self.proj = parametrizations.spectral_norm(nn.Linear(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, time, channels]
        h = self.conv(x.transpose(1, 2))[..., :-1]
        x = x + nn.functional.gelu(h).transpose(1, 2)
        return self.proj(x)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    m = PositionalConv()
    m(torch.randn(2, 20, 16))  # spectral norm's power iteration settles in train mode
    return m.eval()


def test_computed_weights_get_a_weight_quantizer(model):
    x = torch.randn(2, 20, 16)
    sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    weights = {n: q for n, q in sim.named_quantizers().items() if q.point.kind == "weight"}
    assert sorted(weights) == ["conv.weight", "proj.weight"]
    assert len(weights["conv.weight"].encoding().scale) == 16  # per output channel
    assert any("folded" in note and "conv.weight" in note for note in sim.capture_notes)
    assert parametrize.is_parametrized(model.conv)  # the user's model keeps its parametrization
    sim.set_enabled(list(sim.quantizers), False)
    assert torch.allclose(sim(x), model(x), atol=1e-6)


@pytest.mark.onnx
def test_computed_weights_export_as_the_sim_computes_them(model, tmp_path):
    x = torch.randn(2, 20, 16)
    sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    report = sim.export_onnx(tmp_path / "positional.onnx")
    assert report.min_sqnr_db >= 35
