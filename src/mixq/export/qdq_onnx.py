"""Export an ONNX Sim as a deployable ONNX Q/DQ model (opset 21), checked in ONNX Runtime.

The Sim's model switches every quantizer with ``Where(enabled, quantized, x)`` and reads
scales, zero points and switches from graph inputs. The export fixes the Sim's current
state: an enabled quantizer keeps its ``QuantizeLinear -> DequantizeLinear`` (scale and
zero point now initializers, nodes named ``<quantizer>/QuantizeLinear`` and
``<quantizer>/DequantizeLinear``), its Cast pair (float precisions) or its
``DequantizeLinear`` of integer weights; a disabled one is dropped and ``x`` passes
through. Every Where and every control input goes, so the file takes the original
model's inputs and gives its outputs, under their original names.

int8 activations are written as uint8 with the zero point moved by 128 (the same grid),
as the torch exporter does: ORT's CPU kernels fuse u8 activations with s8 weights.

As in the torch exporter, a batch-norm whose scale is folded into a conv's weight grid is
folded into the conv (``DQ -> Conv`` with the folded bias, no ``Div`` / batch-norm), so ORT
fuses ``DQ -> Conv -> Q`` into ``QLinearConv``; and ops planned in fp16 / bf16 compute in
that type (float islands, see `mixq.export.islands`; model inputs and outputs stay fp32
unless ``keep_io_types=False``, see `mixq.export.io_types`).

The rewriting is `mixq.export.onnx_freeze` (with `mixq.export.onnx_islands`); this module
checks its result and hands it to the shared tail, `mixq.export.core.finish_export`.

Example:
    >>> # report = sim.export_onnx("model.onnx")    # sim = mixq.quantize("model.onnx", ...)
    >>> # report.min_sqnr_db >= 35
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from mixq.analysis.metrics import sqnr
from mixq.core.errors import MixqError
from mixq.export.core import (
    U8_WEIGHTS_NOTE,
    ExportOptions,
    ExportReport,
    finish_export,
    lost_quantizers,
)
from mixq.export.io_types import float_io, io_precisions, ort_session
from mixq.export.onnx_freeze import SimFreezer
from mixq.sim.onnx.quantizer import OnnxWeightQuantizer

if TYPE_CHECKING:
    from mixq.sim.onnx.sim import OnnxSim

__all__ = ["export_onnx"]


def _require_calibrated(sim: OnnxSim) -> None:
    quantizers = sim.named_quantizers().items()
    missing = [n for n, q in quantizers if q.enabled and not q.has_qparams]
    if missing:
        raise MixqError(
            f"quantizers {missing[:5]} ({len(missing)} in all) have no scale: calibrate "
            "before exporting (sim.calibrate(batches)), or disable them"
        )


def _check_coverage(
    sim: OnnxSim, model: onnx.ModelProto, names: dict[str, Any], islands: bool
) -> None:
    """Every enabled quantizer is in the file (with islands, the integer ones: an island
    drops the rounding Cast pairs of its type)."""
    present = {n.name for n in model.graph.node}
    lost = [
        n
        for n, q in sim.named_quantizers().items()
        if q.enabled
        and not (islands and q.qtype.is_floating_point)
        and (n not in names or not set(names[n].values()) <= present)
    ]
    if lost:
        raise lost_quantizers(lost)


def _drop_folded_names(model: onnx.ModelProto, names: dict[str, dict[str, str]]) -> None:
    """Forget the Cast pairs that fp16 / bf16 model inputs and outputs made redundant."""
    present = {n.name for n in model.graph.node}
    for q in [q for q, v in names.items() if not set(v.values()) <= present]:
        del names[q]
    meta = next(p for p in model.metadata_props if p.key == "mixq.quantizers")
    meta.value = json.dumps(names)


def _has_int8_weights(sim: OnnxSim) -> bool:
    return any(
        isinstance(q, OnnxWeightQuantizer) and q.enabled and q.qtype.name == "int8"
        for q in sim.named_quantizers().values()
    )


def _compare(path: Path, sim: OnnxSim) -> list[float]:
    """SQNR(Sim vs ORT with default optimisations) per float output on the example inputs."""
    run = ort_session(path)
    args, kwargs = sim.example_inputs
    feeds = sim.input_feeds(kwargs or args)
    want = sim.run_feeds(feeds, sim.output_names)
    got = run(feeds)
    return [
        sqnr(torch.from_numpy(np.asarray(w)), torch.from_numpy(np.asarray(g)))
        for w, g in zip(want, got, strict=True)
        if np.issubdtype(np.asarray(w).dtype, np.floating)
    ]


def export_onnx(sim: OnnxSim, path: str | Path, options: ExportOptions) -> ExportReport:
    """Write the ONNX Sim's current state as an ONNX Q/DQ model; with ``options.check``, run
    it in ORT (the options: `mixq.export.export_onnx`).

    Raises:
        MixqError: an enabled integer quantizer is not calibrated (nothing is written), a
            quantizer is missing from the result, or (``check``) ONNX Runtime's CPU
            provider has no kernel for a node (the file is removed).

    Example:
        >>> # report = export_onnx(sim, "model.onnx", ExportOptions()); print(report.to_text())
    """
    _require_calibrated(sim)
    u8 = options.resolved_u8_weights()
    freezer = SimFreezer(sim, u8, options.float_islands)
    model = freezer.run()
    _check_coverage(sim, model, freezer.names, options.float_islands)
    notes = list(freezer.islands)
    if not options.keep_io_types:
        notes += float_io(model, *io_precisions(sim.graph, sim.plan))
        _drop_folded_names(model, freezer.names)
    report = ExportReport(Path(path), freezer.names, notes=notes)
    if u8 and _has_int8_weights(sim):
        report.notes.append(U8_WEIGHTS_NOTE)
    compare = functools.partial(_compare, sim=sim)
    return finish_export(model, report, sim, compare, options.check, freezer.islands)
