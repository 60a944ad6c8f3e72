"""`mixq.check` on ONNX models: no call recording, the Graph / Plan sections as for torch."""

from __future__ import annotations

import json

import onnx
import pytest

from mixq.api import check
from tests.sim.onnx.conftest import batches
from tests.sim.onnx.models import cnn, mlp

pytestmark = pytest.mark.onnx


def test_check_on_a_model_proto_saves_both_files(tmp_path):
    model = cnn()
    result = check(model, batches((2, 3, 8, 8))[0], "int8", out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model_check_result.json",
        "model_check_result.txt",
    ]
    names = [n.name for n in model.graph.node]
    assert [r["module"] for r in result.calls.rows] == names
    assert all(r["calls"] == 1 and not r["shared"] for r in result.calls.rows)
    assert not result.shared.rows and not result.unused.rows
    assert "not applicable to ONNX models" in result.shared.title
    layers = {r["op"] for r in result.layers.rows}
    assert {"conv1", "conv2", "fc"} <= layers <= set(names)
    data = json.loads((tmp_path / "model_check_result.json").read_text())
    assert [r["op"] for r in data["layers"]["rows"]] == [r["op"] for r in result.layers.rows]
    text = (tmp_path / "model_check_result.txt").read_text()
    assert "not applicable to ONNX models" in text and "conv2" in text


def test_check_on_an_onnx_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    result = check(str(path), batches((4, 16))[0])
    assert [r["op"] for r in result.layers.rows] == ["fc1", "relu1", "fc2"]
    issues = [r["issue"] for r in result.unusual.rows]
    assert any("last layer outputs int8" in i for i in issues)
