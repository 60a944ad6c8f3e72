"""Small ONNX models built with `onnx.helper`, and a float reference session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from mixq import zoo
from mixq.sim.onnx import session_options

__all__ = ["cnn", "export_zoo_mlp", "float_session", "mlp", "run_float"]


def _init(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x (N, 16) -> fc1 (Gemm, transB) -> relu1 -> fc2 (Gemm, no transB) -> y (N, 8)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], name="fc2"),
    ]
    inits = [
        _init(rng, "fc1.weight", 32, 16),
        _init(rng, "fc1.bias", 32),
        _init(rng, "fc2.weight", 32, 8),
        _init(rng, "fc2.bias", 8),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    return _model(nodes, [x], [y], inits, opset)


def cnn(opset: int = 21, seed: int = 0) -> onnx.ModelProto:
    """conv1 -> relu1 -> conv2 -> bn2 -> add (residual) -> relu2 -> pool -> flatten -> fc."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "conv2.weight"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c2", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"],
          ["b2"], name="bn2"),
        n("Add", ["b2", "r1"], ["a"], name="add"),
        n("Relu", ["a"], ["r2"], name="relu2"),
        n("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flatten"),
        n("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]  # fmt: skip
    inits = [
        _init(rng, "conv1.weight", 8, 3, 3, 3),
        _init(rng, "conv1.bias", 8),
        _init(rng, "conv2.weight", 8, 8, 3, 3, scale=0.2),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "bn2.scale"),
        _init(rng, "bn2.bias", 8),
        _init(rng, "bn2.mean", 8),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "bn2.var"),
        _init(rng, "fc.weight", 4, 8),
        _init(rng, "fc.bias", 4),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return _model(nodes, [x], [y], inits, opset)


def export_zoo_mlp(path: Path) -> tuple[Path, torch.nn.Module]:
    """`mixq.zoo.mlp` exported with the dynamo exporter; the output is named distinctly."""
    model, inputs = zoo.mlp()
    torch.onnx.export(
        model, inputs, str(path), dynamo=True, input_names=["image"], output_names=["logits"],
        verbose=False,
    )  # fmt: skip
    return path, model


def float_session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """A plain ORT session of the original model, with the Sim's options."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])


def run_float(session: ort.InferenceSession, *inputs: torch.Tensor) -> torch.Tensor:
    names = [i.name for i in session.get_inputs()]
    feeds = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
    return torch.from_numpy(session.run(None, feeds)[0])
