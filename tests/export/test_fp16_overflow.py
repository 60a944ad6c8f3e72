"""fp16 float islands convert the model's float32 constants with their finite values clamped
to fp16's largest (65504), as ONNX Runtime's float16 converter does, not rounded to inf
(issue 11, class 5).

Measured on `MaskedAttention` (``{"default": "fp16"}``): before, ``finfo(float32).min``
became -inf in the island, ``(1 - mask) * -inf`` was NaN where the mask is 1, and all 80
outputs of ORT were NaN (the export check failed); now SQNR(Sim vs ORT) is 66.3 dB (torch
Sim's file) and 67.4 dB (ONNX Sim's file), no NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import mixq
from tests.observers.test_masks import MaskedAttention, _inputs, export_masked

pytestmark = pytest.mark.onnx
FLOOR_DB = 35.0  # SQNR(Sim vs ORT), as for every export
BIG = float(torch.finfo(torch.float32).min)  # what exported BERTs add for padded keys


def _ort(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _fp16_values(path) -> np.ndarray:
    """Every fp16 value the file holds in initializers and Constant nodes, flattened."""
    model = onnx.load(str(path))
    tensors = [*model.graph.initializer]
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute]
    arrays = [numpy_helper.to_array(t).ravel() for t in tensors
              if t.data_type == TensorProto.FLOAT16]  # fmt: skip
    return np.concatenate(arrays) if arrays else np.zeros(0, np.float16)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("config", ["fp16", {"default": "fp16"}])
def test_masked_attention_in_fp16_islands_has_no_nan(backend, config, tmp_path):
    model, inputs = MaskedAttention().eval(), _inputs()
    source = model if backend == "torch" else export_masked(model, inputs, tmp_path / "f.onnx")
    sim = mixq.quantize(source, inputs, config).calibrate([inputs], progress=False)
    path = tmp_path / "fp16.onnx"
    report = sim.export_onnx(path)
    assert report.min_sqnr_db >= FLOOR_DB
    assert any("clamped to +-65504" in note for note in report.notes)
    (got,) = _ort(path, inputs)
    assert torch.isfinite(got).all()
    assert float(mixq.analysis.metrics.sqnr(model(*inputs), got)) > 50


class _AddsConstants(nn.Module):
    """x + buffer (one value beyond fp16, one -inf) and x * a scalar beyond fp16."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.tensor([BIG, 1e6, 2.0, float("-inf")]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.offset) * 1e-6 + x * -1e5


def _constants_onnx(path) -> str:
    """The same as an ONNX file: the buffer an initializer, the scalar a Constant node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    offset = numpy_helper.from_array(np.array([BIG, 1e6, 2.0, -np.inf], np.float32), "offset")
    nodes = [
        helper.make_node("Constant", [], ["big"], value_float=-1e5),
        helper.make_node("Add", ["x", "offset"], ["a"]),
        helper.make_node("Mul", ["x", "big"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y, helper.make_tensor_value_info(
        "a", TensorProto.FLOAT, [2, 4])], [offset])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _export_constants(backend: str, precision: str, tmp_path) -> tuple[Any, Any]:
    """The model with out-of-range constants in ``precision``, exported unchecked (the Sim
    rounds them to inf: it differs); (path, report)."""
    x = torch.randn(2, 4)
    source = _AddsConstants() if backend == "torch" else _constants_onnx(tmp_path / "c.onnx")
    sim = mixq.quantize(source, (x,), precision).calibrate([(x,)], progress=False)
    path = tmp_path / f"{precision}.onnx"
    return path, sim.export_onnx(path, check=False)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_constants_beyond_fp16_are_clamped_not_inf(backend, tmp_path):
    path, report = _export_constants(backend, "fp16", tmp_path)
    values = _fp16_values(path)
    assert {-65504.0, 65504.0} <= set(values[np.isfinite(values)].tolist())
    assert np.isneginf(values).sum() == 1  # the buffer's -inf stays -inf
    assert not np.isposinf(values).any()
    assert any("clamped to +-65504" in note for note in report.notes)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_bf16_clamps_only_beyond_its_own_range(backend, tmp_path):
    path, _ = _export_constants(backend, "bf16", tmp_path)
    model = onnx.load(str(path))
    bf16 = [i for i in model.graph.initializer if i.data_type == TensorProto.BFLOAT16]
    values = [float(v) for i in bf16 for v in numpy_helper.to_array(i).astype(np.float32).ravel()]
    assert float(torch.finfo(torch.bfloat16).min) in values  # finfo(float32).min, clamped
    assert float("-inf") in values  # -inf stays -inf
    assert 1e6 in [round(v, -4) for v in values]  # inside bf16's range: kept
