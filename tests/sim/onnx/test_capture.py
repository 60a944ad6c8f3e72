from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mixq import CaptureError
from mixq.sim.onnx import canonical_kind, capture
from tests.sim.onnx.models import cnn, mlp

pytestmark = pytest.mark.onnx


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_mlp_op_names_kinds_weights_and_axes():
    graph, _ = capture(mlp())
    assert [(op.name, op.kind) for op in graph] == [
        ("fc1", "linear"),
        ("relu1", "relu"),
        ("fc2", "linear"),
    ]
    fc1, fc2 = graph.ops["fc1"], graph.ops["fc2"]
    assert fc1.weights == {"weight": "fc1.weight"} and fc1.inputs == ["x"]
    assert fc1.attrs["weight_axis"] == 0  # transB=1: (out, in)
    assert fc2.attrs["weight_axis"] == 1 and fc2.attrs["weight_in_axis"] == 0  # (in, out)
    assert graph.inputs == ["x"] and graph.outputs == ["y"]
    assert graph.tensors["x"].shape == (None, 16) and graph.tensors["y"].dtype == "float32"
    assert graph.modules == {}


def test_cnn_kinds_and_batch_norm_constants():
    graph, _ = capture(cnn())
    kinds = {op.name: op.kind for op in graph}
    assert kinds == {
        "conv1": "conv",
        "relu1": "relu",
        "conv2": "conv",
        "bn2": "batch_norm",
        "add": "add",
        "relu2": "relu",
        "pool": "avg_pool",
        "flatten": "flatten",
        "fc": "linear",
    }
    assert graph.ops["add"].inputs == ["b2", "r1"]
    bn = graph.ops["bn2"]
    assert bn.inputs == ["c2"] and bn.attrs["bn_running_var"] == "bn2.var"


def test_matmul_gather_unnamed_nodes_and_initializer_inputs():
    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "emb.weight")
    w = numpy_helper.from_array(np.ones((4, 6), np.float32), "proj.weight")
    shape = numpy_helper.from_array(np.array([-1, 6], np.int64), "shape")
    nodes = [
        helper.make_node("Gather", ["emb.weight", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "proj.weight"], ["m"], name="proj"),
        helper.make_node("MatMul", ["m", "m2"], ["mm"], name="proj"),  # duplicate name
        helper.make_node("Shape", ["mm"], ["s"]),
        helper.make_node("Reshape", ["mm", "shape"], ["out"]),
    ]
    inputs = [
        _vi("ids", TensorProto.INT64, [2, 3]),
        _vi("m2", TensorProto.FLOAT, [6, 6]),
        _vi("proj.weight", TensorProto.FLOAT, [4, 6]),  # an initializer listed as input
    ]
    outputs = [_vi("out", TensorProto.FLOAT, None), _vi("s", TensorProto.INT64, None)]
    g = helper.make_graph(nodes, "g", inputs, outputs, [table, w, shape])  # "s" read: not dead
    graph, model = capture(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    assert [op.name for op in graph] == ["e", "proj", "proj_1", "s", "out"]
    assert [n.name for n in model.graph.node] == ["e", "proj", "proj_1", "s", "out"]
    assert graph.ops["e"].kind == "embedding" and graph.ops["e"].weights == {"weight": "emb.weight"}
    assert graph.ops["proj"].kind == "matmul" and graph.ops["proj"].attrs["weight_axis"] == 1
    assert graph.ops["proj_1"].weights == {}  # two activations
    assert graph.inputs == ["ids", "m2"]
    assert not graph.tensors["ids"].quantizable and graph.tensors["s"].dtype == "int64"
    assert not graph.tensors["s"].quantizable and graph.tensors["out"].quantizable


def test_gather_on_an_activation_is_data_movement():
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], name="pick", axis=1)]
    idx = numpy_helper.from_array(np.array([0, 2], np.int64), "i")
    g = helper.make_graph(
        nodes, "g", [_vi("x", TensorProto.FLOAT, [2, 4])], [_vi("y", TensorProto.FLOAT, [2, 2])],
        [idx],
    )  # fmt: skip
    graph, _ = capture(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    assert graph.ops["pick"].kind == "gather" and graph.ops["pick"].weights == {}


def test_dynamo_export_of_the_zoo_mlp(zoo_mlp_onnx):
    path, _, _ = zoo_mlp_onnx
    graph, _ = capture(path)
    assert [op.kind for op in graph] == ["reshape", "linear", "relu", "linear", "gelu", "linear"]
    assert [op.name for op in graph][1:3] == ["node_linear", "node_relu"]
    # module paths from the exporter's metadata, as torch capture names them
    assert [op.module for op in graph] == ["0", "1", "2", "3", "4", "5"]
    assert graph.inputs == ["image"] and graph.outputs == ["logits"]


@pytest.mark.parametrize(
    ("op_type", "kind"),
    [("Conv", "conv"), ("ConvTranspose", "conv_transpose"), ("Clip", "clamp"),
     ("LayerNormalization", "layer_norm"), ("AveragePool", "avg_pool"),
     ("MaxPool", "max_pool"), ("Transpose", "transpose"), ("Squeeze", "squeeze"),
     ("Dropout", "dropout"), ("Identity", "identity"), ("Softmax", "softmax"),
     ("NonMaxSuppression", "non_max_suppression")],
)  # fmt: skip
def test_kinds(op_type, kind):
    assert canonical_kind(op_type) == kind


def test_legacy_slash_names_give_module_paths():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="/encoder/layer.0/act/Relu")]
    g = helper.make_graph(
        nodes, "g", [_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT, [2])]
    )
    graph, _ = capture(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert graph.ops["/encoder/layer.0/act/Relu"].module == "encoder.layer.0.act"


def test_missing_file_is_a_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="no ONNX file"):
        capture(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CaptureError, match="not a readable ONNX model"):
        capture(bad)
