"""fp16 exports of models that cast explicitly (RMSNorm's upcast) load in ONNX Runtime
(issue 11, class 3)."""

from __future__ import annotations

import onnxruntime as ort
import torch
from torch import nn

import mixq


class RMSNormBlock(nn.Module):
    """Linear -> RMSNorm computed in float32 as Llama / Qwen2 / Mistral / T5 do -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        dtype = h.dtype
        h = h.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.fc2(self.weight * h.to(dtype))


def test_fp16_export_with_explicit_casts_loads_and_matches(tmp_path):
    model, x = RMSNormBlock().eval(), torch.randn(3, 8)
    sim = mixq.quantize(model, (x,), {"default": "fp16"}).calibrate([(x,)], progress=False)
    path = tmp_path / "rms.onnx"
    report = sim.export_onnx(path)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert report.min_sqnr_db > 35
