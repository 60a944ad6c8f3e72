"""A per-channel constant Mul read only by float linears goes into their weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import mixq
from mixq.export.onnx_scale_fold import fold_scales_into_linears


def _graph() -> onnx.ModelProto:
    """Three scales: one read by two float MatMuls (one weight transposed), one also read
    by a Relu (stays), one feeding a MatMul through a DequantizeLinear weight (stays)."""
    rng = np.random.default_rng(0)

    def init(name, shape, dtype=np.float32):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)

    inits = [
        init("c", (4,)), init("w", (4, 3)), init("wt", (5, 4)),
        init("c2", (1, 1, 4)), init("w2", (4, 2)),
        init("c3", (4,)), numpy_helper.from_array(np.ones((4, 2), np.int8), "wq"),
        numpy_helper.from_array(np.float32(0.1), "ws"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["xs"]),
        helper.make_node("MatMul", ["xs", "w"], ["y1"], name="mm1"),
        helper.make_node("Transpose", ["wt"], ["wt_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["xs", "wt_t"], ["y2"], name="mm2"),
        helper.make_node("Mul", ["c2", "x"], ["xs2"]),
        helper.make_node("MatMul", ["xs2", "w2"], ["y3"], name="mm3"),
        helper.make_node("Relu", ["xs2"], ["y4"]),
        helper.make_node("Mul", ["x", "c3"], ["xs3"]),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["wdq"]),
        helper.make_node("MatMul", ["xs3", "wdq"], ["y5"], name="mm5"),
    ]
    outs = [("y1", 3), ("y2", 5), ("y3", 2), ("y4", 4), ("y5", 2)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 6, k]) for n, k in outs],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_only_scales_read_by_float_linears_alone_are_folded():
    model = _graph()
    x = np.random.default_rng(1).standard_normal((2, 6, 4)).astype(np.float32)
    before = _run(model, x)
    assert fold_scales_into_linears(model) == 1
    onnx.checker.check_model(model)
    kept = [(n.op_type, list(n.input)) for n in model.graph.node if n.op_type == "Mul"]
    assert kept == [("Mul", ["c2", "x"]), ("Mul", ["x", "c3"])]
    assert {n.input[0] for n in model.graph.node if n.name in ("mm1", "mm2")} == {"x"}
    names = {i.name for i in model.graph.initializer}
    assert "w" not in names and "wt" not in names  # replaced, not kept twice
    assert not any(n.op_type == "Transpose" for n in model.graph.node)
    for b, a in zip(before, _run(model, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


class _ScaledLinear(nn.Module):
    """A LayerNorm, a per-channel scale, a linear: what smoothing leaves in front of a
    linear it smooths."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 8)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x) * self.scale)


def test_a_float_linear_after_a_scale_exports_without_the_mul(tmp_path):
    torch.manual_seed(0)
    model, x = _ScaledLinear().eval(), torch.randn(4, 16)
    # the scale and the linear in fp32 (as a search leaves a smoothed linear it keeps
    # float), the LayerNorm in int8
    config = (
        mixq.Config(default="int8").set_precision("mul", "fp32").set_precision("fc", "fp32", "fp32")
    )
    sim = mixq.quantize(model, (x,), config)
    sim.calibrate([(torch.randn(4, 16),) for _ in range(4)], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(report.path)).graph.node]
    assert "Mul" not in ops and ("MatMul" in ops or "Gemm" in ops), ops
    assert min(report.sqnr_db) > 100  # float rounding only
