"""Exports of Sims whose quantizers pass attention masks: the file writes the same
``Where(Abs(x) >= MASK_MAGNITUDE, x, DQ(Q(x)))`` the Sim computes, and only for them.

Measured on `MaskedAttention` (int8): SQNR(Sim vs ORT) inf for both exporters; SQNR(ORT vs
the float model) 38.4 dB (torch Sim's file) and 40.1 dB (ONNX Sim's file).
"""

from __future__ import annotations

import warnings

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import mixq
from mixq.analysis.metrics import sqnr
from tests.observers.test_masks import MaskedAttention, _inputs, export_masked

pytestmark = pytest.mark.onnx
FLOOR_DB = 35.0  # SQNR(Sim vs ORT), as for every export


def _source(backend, model, inputs, tmp_path):
    return model if backend == "torch" else export_masked(model, inputs, tmp_path / "f.onnx")


def _ort(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return torch.from_numpy(session.run(None, feeds)[0])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_export_keeps_padded_keys_masked(backend, tmp_path):
    model, inputs = MaskedAttention().eval(), _inputs()
    source = _source(backend, model, inputs, tmp_path)
    sim = mixq.quantize(source, inputs, "int8").calibrate([inputs], progress=False)
    report = sim.export_onnx(tmp_path / "q.onnx")
    assert report.min_sqnr_db >= FLOOR_DB
    assert float(sqnr(model(*inputs), _ort(report.path, inputs))) > 20
    ops = [n.op_type for n in onnx.load(report.path).graph.node]
    assert ops.count("Where") == ops.count("GreaterOrEqual") == 2  # the mask term and the add


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_ordinary_tensors_export_no_where(backend, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(4, 8)
    source = model if backend == "torch" else tmp_path / "f.onnx"
    if backend == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(source), dynamo=False, input_names=["x"])
    sim = mixq.quantize(source, (x,), "int8").calibrate([(x,)], progress=False)
    report = sim.export_onnx(tmp_path / "q.onnx")
    ops = {n.op_type for n in onnx.load(report.path).graph.node}
    assert not ops & {"Where", "Abs", "GreaterOrEqual"}
    assert "QuantizeLinear" in ops
