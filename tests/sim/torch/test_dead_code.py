"""Ops a model computes but never returns get no quantizer (issue 11, class 1)."""

from __future__ import annotations

import torch
from torch import nn

import mixq


class UnusedHead(nn.Module):
    """Returns the body's output; the head (like BertModel's pooler under mean pooling) and
    a zeros_like (like DeBERTa-v2's) are computed and dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.body(x))
        _ = torch.tanh(self.head(y))
        _ = torch.zeros_like(y)
        return y * 2


def test_dead_ops_get_no_quantizer_are_listed_and_export(tmp_path):
    torch.manual_seed(0)
    model, x = UnusedHead().eval(), torch.randn(4, 8)
    sim = mixq.quantize(model, (x,), "int8")
    assert not [q for q in sim.quantizers if q.startswith("head")]
    assert "head.linear" in sim.graph.dead
    with sim.disabled():
        assert torch.equal(sim(x), model(x))
    sim.calibrate([(x,)], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    assert report.min_sqnr_db > 35
    unused = [r["module"] for r in mixq.check(model, (x,), "int8").unused.rows]
    assert "head.linear" in unused
