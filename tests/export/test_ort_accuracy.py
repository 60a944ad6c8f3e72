"""ONNX Runtime fuses a linear with integer weights and a 16-bit or float input into
MatMulNBits at accuracy level 4, which quantizes the input to 8 bits
(`mixq.export.ort_accuracy`). The export check runs the file as written (level 1) and the
report says what a default session does (the real MiniLM's a16w8 export: 32.3 dB from the
Sim in a default session, 56.0 dB as written; measured 2026-12-06)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import mixq
from mixq.analysis.metrics import sqnr
from mixq.export.ort_accuracy import ACCURACY_KEY, session_options

pytestmark = pytest.mark.onnx


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).eval()


def _run(path, x: torch.Tensor, exact: bool) -> torch.Tensor:
    session = ort.InferenceSession(
        str(path), session_options(exact), providers=["CPUExecutionProvider"]
    )
    return torch.from_numpy(
        np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    )


def test_a16w8_linears_are_checked_as_written_and_the_report_names_the_default(tmp_path):
    x = torch.randn(8, 16, 64)
    sim = mixq.quantize(_mlp(), (x,), mixq.Config(default=("int16", "int8")))
    sim.calibrate([(x,)], progress=False)
    report = sim.export_onnx(tmp_path / "a16w8.onnx")
    with torch.no_grad():
        want = sim(x)
    as_written = sqnr(want, _run(report.path, x, exact=True))
    default = sqnr(want, _run(report.path, x, exact=False))
    assert as_written > default + 20  # the default session quantized the 16-bit inputs
    assert report.min_sqnr_db == pytest.approx(as_written, abs=0.5)
    assert any(ACCURACY_KEY in note and "2 linear(s)" in note for note in report.notes)


def test_int8_linears_run_as_integer_kernels_get_no_note(tmp_path):
    x = torch.randn(8, 16, 64)
    sim = mixq.quantize(_mlp(), (x,), mixq.Config(default="int8", target="ort-cpu"))
    sim.calibrate([(x,)], progress=False)
    report = sim.export_onnx(tmp_path / "int8.onnx")
    assert not any(ACCURACY_KEY in note for note in report.notes)
