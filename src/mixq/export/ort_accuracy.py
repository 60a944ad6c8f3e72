"""ONNX Runtime's one lossy rewrite of a Q/DQ file: linears with integer weights and a float
input, run as ``MatMulNBits`` at accuracy level 4.

Where a MatMul reads a weight through DequantizeLinear (int8 or int4, per channel or per
block) and its input is not itself an 8-bit DequantizeLinear, ORT's CPU session fuses the
two into ``com.microsoft.MatMulNBits`` with the session's default accuracy level 4, which
quantizes the input to 8 bits on the fly. That is a speed choice of the runtime, not what
the file says: a 16-bit activation (an a16w8 plan) or a float one (weight-only) loses its
precision. On the real MiniLM's a16w8 export the file ran 32.3 dB from the Sim by default,
56.0 dB with the fused kernels at level 1 (fp32 arithmetic, what the file says).

So the export check runs the file with ``session.qdq_matmulnbits_accuracy_level`` at 1
(`EXACT_SESSION_CONFIG`), and `lossy_fusion_note` counts the linears a default session
would fuse at level 4 and tells the user which option runs them as written. Under
``ort-cpu`` the export writes those kernels itself, at level 1 (`mixq.export.ort_nbits`),
so a default session runs them as written.

Example:
    >>> EXACT_SESSION_CONFIG
    {'session.qdq_matmulnbits_accuracy_level': '1'}
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx

from mixq.export.ort_kernels import int_attr

__all__ = ["ACCURACY_KEY", "EXACT_SESSION_CONFIG", "lossy_fusion_note", "session_options"]

ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
EXACT_SESSION_CONFIG = {ACCURACY_KEY: "1"}


def session_options(exact: bool = True) -> Any:
    """ORT CPU session options: quiet logs and, ``exact``, fused MatMulNBits at level 1."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact:
        for key, value in EXACT_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
    return options


def lossy_fusion_note(path: Path) -> str | None:
    """A sentence naming how many linears ORT's default session runs as MatMulNBits at an
    accuracy level other than 1 (their inputs quantized to 8 bits), or None. A file with no
    MatMul of that pattern is answered without building a session."""
    import onnxruntime as ort

    if not _fusable(onnx.load(str(path), load_external_data=False).graph):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(exact=False)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    levels = [
        next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
        for n in graph.node
        if n.op_type == "MatMulNBits"
    ]
    lossy = sum(1 for level in levels if level not in (0, 1))
    if not lossy:
        return None
    return (
        f"ONNX Runtime's default CPU session runs {lossy} linear(s) of this file (integer "
        "weights, a 16-bit or float input) as MatMulNBits at accuracy level 4, which "
        "quantizes their inputs to 8 bits: set the session option "
        f"'{ACCURACY_KEY}' to '1' to run them as written (the export check does)"
    )


def _fusable(graph: onnx.GraphProto) -> bool:
    """Whether some MatMul reads constant weights through a DequantizeLinear (through a
    Transpose) and its input is not an 8-bit DequantizeLinear's output (through data
    movement): the pattern ORT
    fuses into MatMulNBits. An int8 x int8 file (ORT's integer kernels) and a float one
    have none; where a type cannot be told, the answer is yes (a session decides)."""
    made = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        b = made.get(node.input[1])
        if b is not None and b.op_type == "Transpose":
            b = made.get(b.input[0])
        if b is None or b.op_type != "DequantizeLinear" or b.input[0] not in inits:
            continue  # ORT fuses constant weights only
        a = made.get(node.input[0])
        while a is not None and a.op_type in _MOVES:
            a = made.get(a.input[0])
        if a is None or a.op_type != "DequantizeLinear":
            return True
        if _element_type(made, inits, a.input[0]) not in _EIGHT_BIT:
            return True
    return False


_EIGHT_BIT = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
# between an 8-bit DequantizeLinear and the MatMul reading it (ORT moves the DQ past them)
_MOVES = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice"})


def _element_type(made: dict[str, onnx.NodeProto], inits: dict[str, int], name: str) -> int | None:
    """The element type of a DequantizeLinear's input: an initializer's, or what its
    QuantizeLinear writes (its zero point's type, ``output_dtype``, else uint8)."""
    if name in inits:
        return inits[name]
    q = made.get(name)
    if q is None or q.op_type != "QuantizeLinear":
        return None
    if len(q.input) > 2 and q.input[2]:
        return inits.get(q.input[2])
    return int_attr(q, "output_dtype", 0) or onnx.TensorProto.UINT8
