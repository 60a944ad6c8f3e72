"""Quantized lookup tables and integer weights in the file (`mixq.export.ort_gather`,
`mixq.export.weight_storage`).

Before, ``ort-cpu`` plans kept embedding tables in fp32 (ORT would have dequantized a whole
table on every run) and every exported integer weight was stored as int16 behind a Cast: the
real MiniLM's int8 file was 59.7 MB against ORT dynamic's 23.4 MB; now 24.1 MB, with the
same cosines (0.9930 / 0.9737) and latency.
"""

from __future__ import annotations

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
from mixq.export.ort_gather import gather_quantized_rows

pytestmark = pytest.mark.onnx

V, D = 50, 12


def _table_model(granularity: str, tied: bool = False, dtype: type = np.int8) -> onnx.ModelProto:
    """Two lookups of one DequantizeLinear'd integer table (and, ``tied``, a MatMul reading
    it)."""
    rng = np.random.default_rng(0)
    shape = {"row": (V,), "column": (D,), "tensor": (), "block": (V, D // 4)}[granularity]
    inits = [
        nh.from_array(rng.integers(-128, 128, (V, D)).astype(dtype) * 3, "table"),
        nh.from_array((rng.random(shape) * 0.1 + 0.01).astype(np.float32), "scale"),
        nh.from_array(rng.integers(-5, 6, shape).astype(dtype), "zero"),
    ]
    nodes = [
        h.make_node("DequantizeLinear", ["table", "scale", "zero"], ["t"],
                    name="emb.weight/DequantizeLinear", axis=0 if granularity == "row" else 1,
                    **({"block_size": 4} if granularity == "block" else {})),
        h.make_node("Gather", ["t", "ids"], ["a"]),
        h.make_node("Gather", ["t", "ids2"], ["b"]),
        h.make_node("Add", ["a", "b"], ["y"]),
    ]  # fmt: skip
    outputs = [h.make_tensor_value_info("y", T.FLOAT, [2, 7, D])]
    if tied:
        nodes.append(h.make_node("MatMul", ["y", "t"], ["logits"], name="head"))
        nodes[-1].input[1] = "tT"
        nodes.insert(1, h.make_node("Transpose", ["t"], ["tT"], perm=[1, 0]))
        outputs.append(h.make_tensor_value_info("logits", T.FLOAT, [2, 7, V]))
    ids = [h.make_tensor_value_info(n, T.INT64, [2, 7]) for n in ("ids", "ids2")]
    graph = h.make_graph(nodes, "g", ids, outputs)
    graph.initializer.extend(inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    g = np.random.default_rng(1)
    feeds = {n: g.integers(0, V, (2, 7)).astype(np.int64) for n in ("ids", "ids2")}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize(
    ("granularity", "dtype"),
    [
        ("row", np.int8),
        ("column", np.int8),
        ("tensor", np.int8),
        ("block", np.int8),
        ("row", np.int16),
    ],
)
def test_lookups_gather_integer_rows_and_compute_the_same(granularity, dtype):
    model = _table_model(granularity, dtype=dtype)
    want = _run(model)
    removed = gather_quantized_rows(model)
    onnx.checker.check_model(model)
    assert removed == {"emb.weight/DequantizeLinear": "emb.weight/DequantizeRows"}
    # the lookups read the int8 table itself; only gathered rows are dequantized
    readers = [n for n in model.graph.node if "table" in n.input]
    assert [n.op_type for n in readers] == ["Gather", "Gather"], readers
    kinds = Counter(n.op_type for n in model.graph.node)
    assert kinds["DequantizeLinear"] == 2, kinds  # one after each lookup
    np.testing.assert_array_equal(_run(model)[0], want[0])


def test_a_table_read_by_something_else_stays_as_it_is():
    model = _table_model("row", tied=True)
    before = model.SerializeToString()
    assert gather_quantized_rows(model) == {}
    assert model.SerializeToString() == before


class _Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = torch.nn.Embedding(300, 32), torch.nn.Linear(32, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))


@pytest.mark.parametrize("target", ["ort-cpu", "generic"])
def test_exported_integer_weights_are_stored_in_their_own_type(target, tmp_path):
    torch.manual_seed(0)
    model, ids = _Embedder().eval(), torch.randint(0, 300, (2, 9))
    sim = mixq.quantize(model, (ids,), mixq.Config(default="int8", target=target))
    assert sim.plan.ops["emb"].weight == {"weight": "int8"}  # a lookup table: 8 bits anywhere
    sim.calibrate([(torch.randint(0, 300, (2, 9)),) for _ in range(3)], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    assert report.min_sqnr_db >= 35
    file = onnx.load(str(tmp_path / "m.onnx"))
    cast_to = [
        a for n in file.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"
    ]
    integer_casts = [a for a in cast_to if a.i in (T.INT8, T.UINT8)]
    assert integer_casts == []
    tables = [t for t in file.graph.initializer if tuple(t.dims) == (300, 32)]
    assert [t.data_type for t in tables] in ([T.INT8], [T.UINT8]), tables
    readers = {n.op_type for n in file.graph.node if tables[0].name in n.input}
    assert readers == ({"Gather"} if target == "ort-cpu" else {"DequantizeLinear"}), readers
