"""The ONNX backend: ONNX models in, simulated in ONNX Runtime.

`mixq.quantize("model.onnx", ...)` is the front door. `capture` builds the
framework-neutral Graph from an ONNX graph; `OnnxSim` inserts QuantizeLinear /
DequantizeLinear and Cast nodes per the Plan and runs them in ONNX Runtime, with every
quantizer switchable by name; `OnnxRunner` is the value-level runner the analyses use.

Example:
    >>> import numpy as np, torch, mixq
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> w = numpy_helper.from_array(np.ones((2, 4), np.float32), "fc.weight")
    >>> g = helper.make_graph(
    ...     [helper.make_node("MatMul", ["x", "fc.weight"], ["y"], name="fc")], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [w])
    >>> model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    >>> x = torch.randn(3, 2)
    >>> sim = mixq.quantize(model, (x,), {"default": "int8",
    ...                     "ops": {"fc": {"activation": "int16"}}})
    >>> sim.plan["fc"].output, sim.quantizer("fc.weight").point.axis
    (('int16',), 1)
"""

from mixq.sim.onnx.capture import capture, load_model
from mixq.sim.onnx.kinds import canonical_kind
from mixq.sim.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer
from mixq.sim.onnx.runner import OnnxRunner, ValueNode
from mixq.sim.onnx.session import random_inputs, session_options
from mixq.sim.onnx.sim import OnnxSim, build_sim

__all__ = [
    "OnnxActivationQuantizer",
    "OnnxQuantizer",
    "OnnxRunner",
    "OnnxSim",
    "OnnxWeightQuantizer",
    "ValueNode",
    "build_sim",
    "canonical_kind",
    "capture",
    "load_model",
    "random_inputs",
    "session_options",
]
