"""Export: the ONNX Q/DQ model of a Sim (`export_onnx`, torch and ONNX Sims alike) and vendor
files (`mixq.export.formats`).

Both Sims share one exporter core (`mixq.export.core`: options, report, save, ORT check);
`mixq.export.qdq_torch` and `mixq.export.qdq_onnx` each rewrite their kind of Sim into ONNX.

Example:
    >>> ExportOptions(check=False).float_islands
    True
"""

from __future__ import annotations

from pathlib import Path

from mixq.export import qdq_onnx, qdq_torch
from mixq.export.check import ExportCheckError
from mixq.export.core import DEFAULT_MIN_SQNR_DB, ExportOptions, ExportReport
from mixq.sim.onnx.sim import OnnxSim
from mixq.sim.protocol import SimLike

__all__ = ["ExportCheckError", "ExportOptions", "ExportReport", "export_onnx"]


def export_onnx(
    sim: SimLike,
    path: str | Path,
    check: bool = True,
    u8_weights: bool | None = None,
    float_islands: bool = True,
    keep_io_types: bool = True,
    min_sqnr_db: float | None = DEFAULT_MIN_SQNR_DB,
) -> ExportReport:
    """Write ``sim`` as an ONNX Q/DQ model (opset 21) at ``path``; with ``check``, run it.

    Args:
        sim: a calibrated torch Sim or `mixq.sim.onnx.OnnxSim`.
        path: where to write the ``.onnx`` file (atomically: a failed export leaves nothing).
        check: run the file in ONNX Runtime (CPU, default optimisations) on the Sim's example
            inputs and report SQNR(Sim vs ORT) per output.
        u8_weights: store int8 weights as uint8 with the zero point moved by 128 (the same
            grid; ORT's x86 kernels without VNNI saturate u8 x s8 products); None decides
            from this machine's CPU.
        float_islands: ops planned in fp16 / bf16 compute in that type (parameters
            converted, fp16 ones clamped; model inputs and outputs stay fp32); False keeps
            fp32 compute with Cast pairs that round the outputs, as the Sim does.
        keep_io_types: model inputs and outputs stay fp32 (ONNX converters' default);
            False gives those the plan runs in fp16 / bf16 that element type, without the
            Casts at the boundary (`mixq.export.io_types`); the check then feeds inputs in
            that type and compares outputs as float.
        min_sqnr_db: the check fails (`ExportCheckError`, naming the output and the first
            value where Sim and file part; the file is removed) below this SQNR(Sim vs ORT);
            None keeps only the failures no threshold excuses (NaN, a constant output where
            the Sim's varies, a different number of outputs).

    Raises:
        MixqError: a quantizer is not calibrated or missing from the result, or (``check``)
            ONNX Runtime's CPU provider has no kernel for a node (the file is removed).

    Example:
        >>> # report = export_onnx(sim, "model.onnx"); print(report.to_text())
    """
    options = ExportOptions(check, u8_weights, float_islands, keep_io_types, min_sqnr_db)
    if isinstance(sim, OnnxSim):
        return qdq_onnx.export_onnx(sim, path, options)
    return qdq_torch.export_onnx(sim, path, options)
