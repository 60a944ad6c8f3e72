"""A model whose code takes another path when traced. transformers builds its attention mask
only under torch.export (eager passes none), and BEiT adds that all-True boolean mask to its
float relative-position bias: every logit moves by 1.0, which softmax cancels up to rounding.
The exported program then differs from the eager model in the last bits; capture says so, the
Sim with every quantizer off equals the exported program bit for bit, and `mixq.check` lists
the note."""

from __future__ import annotations

import torch
from torch import nn

import mixq


class MaskOnlyWhenTraced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        scores = h @ h.transpose(-1, -2)
        if torch.compiler.is_exporting():
            keep = torch.ones(scores.shape, dtype=torch.bool)
            scores = scores + keep  # a boolean mask added as if it were additive
        return scores.softmax(-1) @ h


def _example() -> torch.Tensor:
    return torch.randn(2, 24, 16, generator=torch.Generator().manual_seed(0))


def test_capture_notes_a_program_that_parts_from_the_eager_model():
    model, x = MaskOnlyWhenTraced().eval(), _example()
    sim = mixq.quantize(model, x, "int8")
    notes = [n for n in sim.capture_notes if "differs from the eager model" in n]
    assert len(notes) == 1, sim.capture_notes
    program = torch.export.export(model, (x,), strict=False).module()
    with torch.no_grad(), sim.disabled():
        off, eager, traced = sim(x), model(x), program(x)
    assert not torch.equal(eager, traced)  # the pattern itself: the two paths round apart
    assert torch.equal(off, traced)
    issues = [r["issue"] for r in mixq.check(model, x).unusual.rows]
    assert any("differs from the eager model" in i for i in issues), issues


def test_a_model_traced_as_it_runs_gets_no_such_note():
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    sim = mixq.quantize(model, _example(), "int8")
    assert not any("differs from the eager model" in n for n in sim.capture_notes)
