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

__all__ = ["EXACT_SESSION_CONFIG", "lossy_fusion_note", "session_options"]

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
    accuracy level other than 1 (their inputs quantized to 8 bits), or None."""
    import onnxruntime as ort

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
