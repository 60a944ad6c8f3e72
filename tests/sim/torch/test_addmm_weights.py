"""GPT-2's Conv1D: ``addmm(bias, x, weight)`` with the weight stored [in, out]. Its weight is
the third argument; the capture took the second (the activation) and left the weight float,
in the Sim and in the exported file alike."""

from __future__ import annotations

import torch
from torch import nn

import mixq


class Conv1D(nn.Module):
    """transformers' Conv1D: a linear layer whose weight is stored transposed."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.2)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], -1)


def test_addmm_weights_get_a_per_output_channel_quantizer_and_export(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(16, 12), nn.GELU(), Conv1D(12, 8)).eval()
    x = torch.randn(2, 5, 16)
    sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    weights = {n: q for n, q in sim.named_quantizers().items() if q.point.kind == "weight"}
    assert sorted(weights) == ["0.weight", "2.weight"]
    assert weights["0.weight"].encoding().scale is not None
    assert len(weights["0.weight"].encoding().scale) == 12  # one per output column
    sim.set_enabled([n for n in sim.quantizers if n not in weights], False)
    assert not torch.equal(sim(x), model(x))  # the weights really are quantized
    sim.set_enabled(list(sim.quantizers), True)
    report = sim.export_onnx(tmp_path / "conv1d.onnx")
    assert report.min_sqnr_db >= 35
