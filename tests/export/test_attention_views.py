"""Export of attention whose output is reshaped after a transpose (BEiT, Swin, ViT-likes with
a relative position bias): capture records the ``reshape`` of SDPA's transposed output as a
``view`` (the CPU kernel's output strides make it contiguous), the ONNX exporter decomposes
SDPA with other strides and refused the view ("Cannot view a tensor with shape ..."). The
export turns reshapes and views into one opaque reshape op (ONNX Reshape), keeping the
input shapes dynamic."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mixq

pytestmark = pytest.mark.onnx


class BiasedAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, tokens: int = 9) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(1, heads, tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias[:, :, :n, :n])
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


def test_attention_reshaped_after_a_transpose_exports_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = BiasedAttention().eval()
    x = torch.randn(2, 9, 32)
    sim = mixq.quantize(model, x, "int8")
    sim.calibrate([x, torch.randn(2, 9, 32)], progress=False)
    report = sim.export_onnx(tmp_path / "attn.onnx")
    assert report.min_sqnr_db >= 35, report.to_text()
    session = ort.InferenceSession(str(tmp_path / "attn.onnx"), providers=["CPUExecutionProvider"])
    other = np.random.default_rng(0).standard_normal((5, 9, 32)).astype(np.float32)
    (y,) = session.run(None, {session.get_inputs()[0].name: other})
    assert y.shape == (5, 9, 32)
    assert not [n for n in report.notes if "input shapes only" in n]
