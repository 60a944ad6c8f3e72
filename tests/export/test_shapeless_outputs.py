"""ONNX models as converters write them export through the ONNX path (issue 11, class 6):
graph outputs with only an element type (or no type), and nodes nobody reads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import mixq
from mixq.export import ExportReport
from tests.conformance import corpus

pytestmark = pytest.mark.onnx


def _conv_relu(last: list[onnx.NodeProto], output: onnx.ValueInfoProto) -> onnx.ModelProto:
    """x -> Conv -> Relu (-> ``last``) -> ``output``; no value_info, and opset 21, so no
    version conversion infers the output's shape on the way."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r" if last else "y"], name="relu"),
        *last,
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    graph = helper.make_graph(nodes, "g", [x], [output], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _export(model: onnx.ModelProto, path) -> tuple[ExportReport, onnx.ModelProto]:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    report = sim.export_onnx(path)
    written = onnx.load(path)
    onnx.checker.check_model(written)
    return report, written


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param or None
        for d in value.type.tensor_type.shape.dim
    ]


def test_an_output_with_only_an_element_type_gets_the_inferred_shape(tmp_path):
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    report, written = _export(_conv_relu([], y), tmp_path / "m.onnx")
    assert report.min_sqnr_db >= 35, report.to_text()
    assert _dims(written.graph.output[0]) == ["n", 4, 8, 8]


def test_an_output_shape_inference_cannot_know_gets_its_rank_from_a_run(tmp_path):
    """Squeeze without axes on a symbolic batch: ONNX infers no shape, the Sim's run gives
    the rank; the dimensions stay unknown (any input size)."""
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    squeeze = [helper.make_node("Squeeze", ["r"], ["y"], name="squeeze")]
    report, written = _export(_conv_relu(squeeze, y), tmp_path / "m.onnx")
    assert report.min_sqnr_db >= 35, report.to_text()
    assert _dims(written.graph.output[0]) == [None] * 4


def test_an_output_without_a_type_exports(tmp_path):
    sigmoid = [helper.make_node("Sigmoid", ["r"], ["y"], name="sigmoid")]
    report, written = _export(
        _conv_relu(sigmoid, onnx.ValueInfoProto(name="y")), tmp_path / "m.onnx"
    )
    assert report.min_sqnr_db >= 35, report.to_text()
    assert written.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_dead_nodes_are_pruned_at_capture_and_the_model_exports(tmp_path):
    w2 = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2")
    dead = [
        helper.make_node("Sigmoid", ["r"], ["dead1"], name="dead_sigmoid"),
        helper.make_node("Conv", ["dead1", "w2"], ["dead2"], name="dead_conv"),
        helper.make_node("Identity", ["r"], ["y"], name="identity"),
    ]
    model = _conv_relu(dead, helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    model.graph.initializer.append(w2)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sim = mixq.quantize(model, (x,), "int8")
    assert sim.graph.dead == {"dead_sigmoid": "", "dead_conv": ""}
    assert not {"dead1", "dead2", "w2"} & set(sim.quantizers)
    options = ort.SessionOptions()  # as the Sim runs: no fusion that changes numerics
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    with sim.disabled():
        assert np.array_equal(sim(x).numpy(), session.run(["y"], {"x": x.numpy()})[0])
    sim.calibrate([(x,)], progress=False)
    assert sim.export_onnx(tmp_path / "m.onnx").min_sqnr_db >= 35
    written = onnx.load(tmp_path / "m.onnx").graph
    assert not {"dead_sigmoid", "dead_conv"} & {n.name for n in written.node}
    assert "w2" not in {i.name for i in written.initializer}


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_the_converter_style_text_recognizer_exports(precision, tmp_path):
    """The corpus' CRNN-like model: a Shape / Slice chain leaves its output shape unknown."""
    model, inputs = corpus.onnx_text_recognizer()
    config = "int8" if precision == "int8" else {"default": "fp16"}
    sim = mixq.quantize(model, inputs, config).calibrate([inputs], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    assert report.min_sqnr_db >= 35, report.to_text()
    assert len(onnx.load(tmp_path / "m.onnx").graph.output[0].type.tensor_type.shape.dim) == 3
