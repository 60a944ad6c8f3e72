"""Linears an int8 kernel runs, computed in the Sim as the kernel does (`mixq.sim.torch.
integer_linear`): integer products summed exactly, scaled once, then the bias.

The Sim multiplied dequantized floats and let the BLAS sum them with the bias folded in;
ONNX Runtime's MatMulIntegerToFloat sums integers and scales the sum. They agreed to
float32's last bits, so a value within those bits of a rounding boundary of the next
quantizer took the neighbouring code. The stack below exported at 135.1 dB Sim vs ORT under
`ort-cpu` before (80.3 dB with a GELU between its linears; measured 2026-12-06), the real
MiniLM embedder under the generic target at 30.4 dB end to end from three such codes. Both
are bit-identical now."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.sim.torch.integer_linear import IntegerLinear

pytestmark = pytest.mark.onnx


class Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.up(self.norm(x)))


def residual_stack(blocks: int = 6, d: int = 64, h: int = 256) -> nn.Module:
    """Pre-norm residual blocks with one outlier channel in the stream, as trained
    transformers have."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, d), *[Block(d, h) for _ in range(blocks)])
    with torch.no_grad():
        model[0].weight[3] *= 20
    return model.eval()


def _batches() -> list[torch.Tensor]:
    return [torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]


def test_an_int8_transformer_stack_exports_bit_identical_to_its_sim(tmp_path):
    model, batches = residual_stack(), _batches()
    sim = mixq.quantize(model, batches[0], mixq.Config(default="int8", target="ort-cpu"))
    sim.calibrate(batches, progress=False)
    assert len(sim.integer_linears) == 13  # every linear reads an int8 tensor
    report = sim.export_onnx(tmp_path / "stack.onnx")
    assert math.isinf(report.min_sqnr_db), report.to_text()


def test_the_sim_linear_is_the_integer_sum_scaled_once():
    model, batches = residual_stack(blocks=1, d=64, h=512), _batches()
    sim = mixq.quantize(model, batches[0], "int8").calibrate(batches, progress=False)
    integer = sim.module.get_submodule("mixq_linear1")  # block 0's up projection
    assert isinstance(integer, IntegerLinear)
    act, weight = integer.act, integer.weight
    x = act(model[1].norm(model[0](batches[1])).detach())
    w = weight(model[1].up.weight.detach())
    b = model[1].up.bias.detach()
    w_codes = torch.round(w / weight.scale.reshape(-1, 1))
    codes = torch.round(x / act.scale).double() @ w_codes.double().T
    assert codes.abs().max() < 2**24  # exact in float32 too
    want = (codes.float() * (act.scale * weight.scale.flatten())) + b
    got = integer(x, w, b)
    assert torch.equal(got, want)
    assert not torch.equal(F.linear(x, w, b), want)  # what the Sim computed before


def test_training_keeps_the_float_linears_gradient():
    model, batches = residual_stack(blocks=1), _batches()
    sim = mixq.quantize(model, batches[0], "int8").calibrate(batches, progress=False)
    integer = sim.module.get_submodule("mixq_linear1")
    x = integer.act(torch.randn(4, 64)).requires_grad_()
    w = integer.weight(model[1].up.weight.detach()).clone().requires_grad_()
    y = integer(x, w, None)
    with torch.no_grad():
        assert torch.equal(y, integer(x, w, None))  # the same value with and without grad
    y.sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.linear(x2, w2).sum().backward()
    assert x.grad is not None and w.grad is not None
    assert torch.equal(x.grad, x2.grad) and torch.equal(w.grad, w2.grad)


@pytest.mark.parametrize(
    "config",
    [
        mixq.Config(default=("int16", "int8")),
        mixq.Config(default=("int8", "int4")),
        mixq.Config(default="fp16"),
    ],
    ids=["a16w8", "w4a8", "fp16"],
)
def test_linears_no_int8_kernel_runs_stay_float_matmuls(config):
    model, batches = residual_stack(blocks=1), _batches()
    sim = mixq.quantize(model, batches[0], config).calibrate(batches, progress=False)
    assert sim.integer_linears == []


def test_an_off_or_observing_quantizer_gives_the_float_linear():
    model, batches = residual_stack(blocks=1), _batches()
    sim = mixq.quantize(model, batches[0], "int8").calibrate(batches, progress=False)
    with sim.disabled():
        assert torch.equal(sim(batches[1]), model(batches[1]))
    integer = sim.module.get_submodule("mixq_linear1")
    x, w = torch.randn(4, 64), model[1].up.weight.detach()
    integer.act.observing = True
    try:
        assert torch.equal(integer(x, w, None), F.linear(x, w))
    finally:
        integer.act.observing = False
