"""4-bit weights in the exported file (`mixq.export.ort_nbits`): stored packed on every target,
and under ``ort-cpu`` run as ``com.microsoft.MatMulNBits`` computing what the Q/DQ form does.

Before, a 4-bit weight was an int16 initializer behind a Cast (the file larger than int8's),
and ORT dequantized it on every run: the real MiniLM with int4 weights ran 3.4x slower than
ORT's dynamic int8; as MatMulNBits, 2.1x (0.90x its fp32 model).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import mixq
from mixq.export.ort_nbits import fuse_nbits_linears
from mixq.export.weight_storage import store_integer_weights

pytestmark = pytest.mark.onnx

BLOCK32 = mixq.Scheme(weight_granularity="per_block", weight_block_size=32)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 96), torch.nn.Linear(96, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _export(config: mixq.Config, tmp_path) -> tuple[onnx.ModelProto, mixq.export.ExportReport]:
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(2, 8, 64)
    sim = mixq.quantize(model, (x,), config)
    sim.calibrate([(torch.randn(2, 8, 64),) for _ in range(4)], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    return onnx.load(str(tmp_path / "m.onnx")), report


def _four_bit_casts(model: onnx.ModelProto) -> int:
    targets = {T.INT4, T.UINT4}
    return sum(
        1
        for n in model.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i in targets for a in n.attribute)
    )


@pytest.mark.parametrize(
    ("activation", "weight", "scheme"),
    [
        ("int8", "int4", BLOCK32),
        ("fp32", "int4", BLOCK32),
        ("fp32", "int4", mixq.Scheme()),
        ("fp32", "int8", mixq.Scheme()),
    ],
    ids=["w4a8-block", "w4-block", "w4-per-channel", "w8-per-channel"],
)
def test_ort_cpu_runs_nbit_linears_as_matmul_nbits_matching_the_sim(
    activation, weight, scheme, tmp_path
):
    """int8 weights read by a float input too: ORT's own fusion would run them at accuracy
    level 4, quantizing that input to 8 bits (`mixq.export.ort_accuracy`)."""
    file, report = _export(
        mixq.Config(default=(activation, weight), target="ort-cpu", scheme=scheme), tmp_path
    )
    # float activations: the Sim's arithmetic exactly; int8 ones: their rounding flips
    assert report.min_sqnr_db >= (90 if activation == "fp32" else 40), report.sqnr_db
    kinds = Counter(n.op_type for n in file.graph.node)
    assert kinds["MatMulNBits"] == 2 and "MatMul" not in kinds and "Add" not in kinds, kinds
    assert _four_bit_casts(file) == 0
    fused = [n for n in file.graph.node if n.op_type == "MatMulNBits"]
    assert all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 1 for n in fused)
    bits = {next(a.i for a in n.attribute if a.name == "bits") for n in fused}
    assert bits == {4 if weight == "int4" else 8}
    assert not any("accuracy level 4" in note for note in report.notes), report.notes
    names = {n.name for n in file.graph.node}
    meta = json.loads(next(p.value for p in file.metadata_props if p.key == "mixq.quantizers"))
    assert meta == report.quantizers
    assert all(node in names for roles in meta.values() for node in roles.values()), meta


def test_other_targets_store_4bit_weights_packed_and_keep_qdq(tmp_path):
    file, report = _export(mixq.Config(default=("int8", "int4"), scheme=BLOCK32), tmp_path)
    assert report.min_sqnr_db >= 35
    kinds = Counter(n.op_type for n in file.graph.node)
    assert "MatMulNBits" not in kinds and _four_bit_casts(file) == 0, kinds
    four_bit = [t for t in file.graph.initializer if t.data_type == T.INT4]
    # the weights and their zero points (per block of 32)
    assert sorted(tuple(t.dims) for t in four_bit) == [(40, 3), (40, 96), (96, 2), (96, 64)]


def _qdq_linear(k: int, n: int, block: int, transposed: bool, bits: int = 4) -> onnx.ModelProto:
    """x -> MatMul(DQ(uint4 / uint8 weights with zero points, blocked along K)) -> Add(bias);
    K not a multiple of the block (the last block is short)."""
    rng = np.random.default_rng(0)
    blocks = -(-k // block)
    shape, s_shape, axis = ((n, k), (n, blocks), 1) if transposed else ((k, n), (blocks, n), 0)
    inits = [
        nh.from_array(rng.integers(0, 2**bits, shape).astype(np.uint8), "w8"),
        nh.from_array(rng.integers(0, 2**bits, s_shape).astype(np.uint8), "z8"),
        nh.from_array((rng.random(s_shape) * 0.1 + 0.01).astype(np.float32), "s"),
        nh.from_array(rng.standard_normal(n).astype(np.float32), "bias"),
    ]
    casts = [h.make_node("Cast", [f"{v}8"], [v], to=T.UINT4) for v in ("w", "z")]
    w, z = ("w", "z") if bits == 4 else ("w8", "z8")
    nodes = [
        *(casts if bits == 4 else []),
        h.make_node("DequantizeLinear", [w, "s", z], ["wd"], name="fc/DequantizeLinear",
                    axis=axis, block_size=block),
    ]  # fmt: skip
    b = "wd"
    if transposed:
        nodes.append(h.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]))
        b = "wt"
    nodes += [h.make_node("MatMul", ["x", b], ["mm"]), h.make_node("Add", ["mm", "bias"], ["y"])]
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 5, k])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 5, n])],
    )  # fmt: skip
    graph.initializer.extend(inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("transposed", [True, False], ids=["torch-linear", "onnx-kn"])
def test_asymmetric_short_block_weights_fuse_exactly(transposed, bits):
    model = _qdq_linear(k=40, n=24, block=16, transposed=transposed, bits=bits)
    x = np.random.default_rng(1).standard_normal((2, 5, 40)).astype(np.float32)
    want = _run(model, x)

    assert store_integer_weights(model) == (2 if bits == 4 else 0)
    assert _four_bit_casts(model) == 0
    np.testing.assert_array_equal(_run(model, x), want)
    assert fuse_nbits_linears(model) == {"fc/DequantizeLinear": "fc/MatMulNBits"}
    kinds = Counter(n.op_type for n in model.graph.node)
    assert kinds == {"MatMulNBits": 1}, kinds
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)


def test_blocks_across_output_channels_stay_qdq():
    model = _qdq_linear(k=40, n=24, block=16, transposed=False)
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    next(a for a in dq.attribute if a.name == "axis").i = 1  # blocks along N: not MatMulNBits
    for t in model.graph.initializer:
        if t.name in ("s", "z8"):  # [K, N / 16] now
            t.CopyFrom(nh.from_array(np.ones((40, 2), nh.to_array(t).dtype), t.name))
    store_integer_weights(model)
    assert fuse_nbits_linears(model) == {}
    assert Counter(n.op_type for n in model.graph.node)["MatMul"] == 1
