"""An average pool whose ``ceil_mode`` window hangs over its input's end (EfficientNet's
pooler: ``AvgPool2d(hidden_dim, ceil_mode=True)``, a 1280 window over a 7 x 7 map, or 320
over 1 x 1 from a tiny config). PyTorch and ORT's float AveragePool divide by the covered
part; ORT's QLinearAveragePool, fused from DequantizeLinear -> AveragePool ->
QuantizeLinear, divided by the whole window under ``count_include_pad=1`` (PyTorch's
default), and the int8 export's pooled output was all zeros (the corpus EfficientNet: export
check failed, inf dB after, measured 2026-12-03)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import mixq

pytestmark = pytest.mark.onnx


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(32, ceil_mode=True)  # one window larger than the map
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_a_pool_window_over_the_input_end_exports_the_mean(tmp_path):
    torch.manual_seed(0)
    model, x = Head().eval(), torch.randn(4, 3, 14, 14)
    sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    report = sim.export_onnx(tmp_path / "head.onnx")
    assert report.min_sqnr_db >= 35


def test_an_onnx_file_with_such_a_pool_exports_the_mean(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("AveragePool", ["r"], ["y"], "pool", kernel_shape=[16, 16],
                         strides=[16, 16], ceil_mode=1, count_include_pad=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 1, 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = torch.from_numpy(rng.standard_normal((4, 3, 7, 7)).astype(np.float32))
    sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    path = tmp_path / "pooled.onnx"
    report = sim.export_onnx(path)
    assert report.min_sqnr_db >= 35
    pool = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "AveragePool")
    include = next(a for a in pool.attribute if a.name == "count_include_pad")
    assert helper.get_attribute_value(include) == 0
