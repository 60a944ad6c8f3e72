"""Files written for ONNX Runtime's CPU kernels (`mixq.export.ort_kernels`): a Q/DQ linear
with its bias becomes one MatMulIntegerToFloat, a constant CastLike a constant, a residual
Add before a LayerNorm a Sum; all exact.

Without them ORT ran every int8 linear's bias Add on its own (and the GELU after it as
BiasGelu), kept attention's scale as two Muls and ran its slow SkipLayerNormalization: the
real MiniLM's int8 file ran at 1.03-1.04x ORT's dynamic quantization (paired in one process),
0.93-0.97x with the first two rewrites and 0.74x with all three.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import mixq
from mixq.export.ort_kernels import (
    fold_castlike_constants,
    fuse_integer_linears,
    unfuse_residual_norms,
)

pytestmark = pytest.mark.onnx

K, N = 16, 24


def _linear_model(transposed: bool, extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(DQ(int8 weights, per channel)) -> Add(bias) -> Gelu, the way the
    torch exporter writes it (weights [N, K] behind a Transpose) or an ONNX file does ([K, N])."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (N, K) if transposed else (K, N)).astype(np.int8)
    inits = [
        nh.from_array(w, "w"),
        nh.from_array(rng.random(N).astype(np.float32) * 0.01 + 1e-3, "w_scale"),
        nh.from_array(np.zeros(N, np.int8), "w_zero"),
        nh.from_array(np.array(0.05, np.float32), "x_scale"),
        nh.from_array(np.array(128, np.uint8), "x_zero"),
        nh.from_array(rng.standard_normal(N).astype(np.float32), "bias"),
    ]
    nodes = [
        h.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="x/QuantizeLinear"),
        h.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"],
                    name="x/DequantizeLinear"),
        h.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"],
                    name="fc/DequantizeLinear", axis=0 if transposed else 1),
    ]  # fmt: skip
    b = "wd"
    if transposed:
        nodes.append(h.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]))
        b = "wt"
    nodes += [
        h.make_node("MatMul", ["xd", b], ["mm"]),
        h.make_node("Add", ["mm", "bias"], ["pre"]),
        h.make_node("Gelu", ["pre"], ["y"]),
    ]
    outputs = [h.make_tensor_value_info("y", T.FLOAT, [2, 8, N])]
    if extra_reader:  # something else reads the dequantized activation
        nodes.append(h.make_node("Relu", ["xd"], ["r"]))
        outputs.append(h.make_tensor_value_info("r", T.FLOAT, [2, 8, K]))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 8, K])], outputs)
    graph.initializer.extend(inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray, optimised: Path | None = None) -> list:
    opts = ort.SessionOptions()
    if optimised is not None:
        opts.optimized_model_filepath = str(optimised)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize("transposed", [True, False])
def test_qdq_linear_with_bias_becomes_one_integer_kernel_computing_the_same(transposed, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 8, K)).astype(np.float32) * 3
    before = _linear_model(transposed)
    after = _linear_model(transposed)
    removed = fuse_integer_linears(after)
    onnx.checker.check_model(after)

    ops = [n.op_type for n in after.graph.node]
    assert ops == ["QuantizeLinear", "MatMulIntegerToFloat", "Gelu"], ops
    fused = after.graph.node[1]
    assert fused.domain == "com.microsoft" and fused.input[6] == "bias"
    assert removed == {"fc/DequantizeLinear": fused.name, "x/DequantizeLinear": fused.name}
    assert [i.name for i in after.graph.initializer].count("w") == 0  # no weights twice
    np.testing.assert_allclose(_run(after, x)[0], _run(before, x)[0], rtol=1e-6, atol=1e-6)

    graph = onnx.load(str(_optimised(after, tmp_path))).graph
    kinds = Counter(n.op_type for n in graph.node)
    assert kinds["MatMulIntegerToFloat"] == 1 and "Add" not in kinds and "BiasGelu" not in kinds


def _optimised(model: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "opt.onnx"
    _run(model, np.zeros((2, 8, K), np.float32), optimised=path)
    return path


def test_an_activation_read_elsewhere_keeps_its_dequantize():
    model = _linear_model(True, extra_reader=True)
    fuse_integer_linears(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulIntegerToFloat"] == 1 and ops["DequantizeLinear"] == 1, ops


def test_a_16_bit_weight_is_left_as_qdq():
    model = _linear_model(True)
    w = next(i for i in model.graph.initializer if i.name == "w")
    w.CopyFrom(nh.from_array(nh.to_array(w).astype(np.int16), "w"))
    zero = next(i for i in model.graph.initializer if i.name == "w_zero")
    zero.CopyFrom(nh.from_array(np.zeros(N, np.int16), "w_zero"))
    assert fuse_integer_linears(model) == {}
    assert "MatMul" in [n.op_type for n in model.graph.node]


def test_signed_activations_with_unsigned_weights_stay_qdq():
    """ORT has MatMulIntegerToFloat for u8 x s8, u8 x u8 and s8 x s8, not s8 x u8 (an int8
    activation plan exported with u8_weights on a CPU without VNNI)."""
    model = _linear_model(True)
    for name, value in (("w", None), ("w_zero", np.full(N, 128, np.uint8)),
                        ("x_zero", np.array(0, np.int8))):  # fmt: skip
        init = next(i for i in model.graph.initializer if i.name == name)
        array = (
            (nh.to_array(init).astype(np.int16) + 128).astype(np.uint8) if value is None else value
        )
        init.CopyFrom(nh.from_array(array, name))
    before = model.SerializeToString()
    assert fuse_integer_linears(model) == {}
    assert model.SerializeToString() == before


def test_constant_castlike_is_folded_so_ort_folds_the_attention_scale(tmp_path):
    """The torch exporter's SDPA: q * sqrt(CastLike(scale, q)) before the MatMul."""
    nodes = [
        h.make_node("Constant", [], ["c"], value=nh.from_array(np.array(0.125, np.float64))),
        h.make_node("CastLike", ["c", "q"], ["s"]),
        h.make_node("Sqrt", ["s"], ["r"]),
        h.make_node("Mul", ["q", "r"], ["qs"]),
        h.make_node("MatMul", ["qs", "k"], ["y"]),
    ]
    io = [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in (("q", [2, 4, 8]), ("k", [2, 8, 4]))]
    out = [h.make_tensor_value_info("y", T.FLOAT, [2, 4, 4])]
    model = h.make_model(h.make_graph(nodes, "g", io, out), opset_imports=[h.make_opsetid("", 21)])
    q = np.random.default_rng(2).standard_normal((2, 4, 8)).astype(np.float32)
    k = np.random.default_rng(3).standard_normal((2, 8, 4)).astype(np.float32)

    def run(m: onnx.ModelProto, path: Path) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(path)
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {"q": q, "k": k})[0]

    before = run(model, tmp_path / "before.onnx")
    assert fold_castlike_constants(model) == 1
    assert "CastLike" not in [n.op_type for n in model.graph.node]
    np.testing.assert_allclose(run(model, tmp_path / "after.onnx"), before, rtol=1e-6)
    kinds = {n.op_type for n in onnx.load(str(tmp_path / "after.onnx")).graph.node}
    assert "Mul" not in kinds and "FusedMatMul" in kinds, kinds


def test_a_residual_add_before_a_layer_norm_becomes_a_sum_ort_does_not_fuse(tmp_path):
    """ORT 1.32's SkipLayerNormalization (its fusion of Add + LayerNormalization) ran 4-7x
    slower on CPU than the two ops; a bias add (a constant input) stays an Add."""
    shape = [2, 8, K]
    nodes = [
        h.make_node("Add", ["x", "r"], ["s"]),
        h.make_node("LayerNormalization", ["s", "g", "b"], ["n"], axis=-1),
        h.make_node("Add", ["n", "b"], ["nb"]),
        h.make_node("LayerNormalization", ["nb", "g", "b"], ["y"], axis=-1),
    ]
    inits = [
        nh.from_array(np.ones(K, np.float32), "g"),
        nh.from_array(np.zeros(K, np.float32), "b"),
    ]
    io = [h.make_tensor_value_info(n, T.FLOAT, shape) for n in ("x", "r")]
    graph = h.make_graph(nodes, "g", io, [h.make_tensor_value_info("y", T.FLOAT, shape)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    rng = np.random.default_rng(4)
    feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in ("x", "r")}

    def run(path: Path) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(path)
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        return sess.run(None, feeds)[0]

    before = run(tmp_path / "before.onnx")
    assert "SkipLayerNormalization" in {
        n.op_type for n in onnx.load(str(tmp_path / "before.onnx")).graph.node
    }
    assert unfuse_residual_norms(model) == 1
    assert [n.op_type for n in model.graph.node] == [
        "Sum",
        "LayerNormalization",
        "Add",
        "LayerNormalization",
    ]
    np.testing.assert_allclose(run(tmp_path / "after.onnx"), before, rtol=1e-5, atol=1e-5)
    assert "SkipLayerNormalization" not in {
        n.op_type for n in onnx.load(str(tmp_path / "after.onnx")).graph.node
    }


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(K, 48), torch.nn.Linear(48, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.mark.parametrize(("target", "fused"), [("ort-cpu", True), ("generic", False)])
def test_export_fuses_linears_under_ort_cpu_only(target, fused, tmp_path):
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(2, 8, K)
    sim = mixq.quantize(model, (x,), mixq.Config(default="int8", target=target))
    sim.calibrate([(torch.randn(2, 8, K),) for _ in range(4)], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    assert report.min_sqnr_db >= 35

    file = onnx.load(str(tmp_path / "m.onnx"))
    kinds = Counter(n.op_type for n in file.graph.node)
    assert (kinds["MatMulIntegerToFloat"] == 2) is fused, kinds
    assert ("MatMul" in kinds) is not fused, kinds
    names = {n.name for n in file.graph.node}
    meta = json.loads(next(p.value for p in file.metadata_props if p.key == "mixq.quantizers"))
    assert meta == report.quantizers
    assert all(node in names for roles in meta.values() for node in roles.values()), meta
