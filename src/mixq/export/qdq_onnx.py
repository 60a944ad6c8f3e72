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
as the torch exporter does: ORT's CPU kernels fuse u8 activations with s8 weights. A
quantizer that passes attention masks (``mask_passthrough``) is written as the torch
exporter writes it, ``Where(Abs(x) >= MASK_MAGNITUDE, x, DQ(Q(x)))``.

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
from onnx import TensorProto, helper

from mixq.core.errors import MixqError
from mixq.export.check import Checked, check_outputs, local_divergence, locate_divergence
from mixq.export.core import (
    U8_WEIGHTS_NOTE,
    ExportOptions,
    ExportReport,
    finish_export,
    lost_quantizers,
)
from mixq.export.io_types import float_io, io_precisions, ort_session
from mixq.export.onnx_edit import initializer
from mixq.export.onnx_freeze import SimFreezer
from mixq.observers.base import MASK_MAGNITUDE
from mixq.sim.onnx.quantizer import OnnxWeightQuantizer
from mixq.sim.onnx.rewrite import fresh_name, mask_passthrough_names

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


def _pass_masks(sim: OnnxSim, model: onnx.ModelProto, names: dict[str, dict[str, str]]) -> None:
    """``x -> Q -> DQ`` becomes ``Where(Abs(x) >= MASK_MAGNITUDE, x, DQ(Q(x)))`` for each
    enabled quantizer with ``mask_passthrough``; its readers keep reading the same name."""
    g = model.graph
    used = {v for n in g.node for v in [*n.input, *n.output]} | {i.name for i in g.initializer}
    for qname in sorted(mask_passthrough_names(sim.named_quantizers())):
        q = sim.quantizer(qname)
        if not q.enabled or qname not in names:
            continue
        index = {n.name: i for i, n in enumerate(g.node)}
        at = index[names[qname]["DequantizeLinear"]]
        dq, x = g.node[at], g.node[index[names[qname]["QuantizeLinear"]]].input[0]
        out, dq.output[0] = dq.output[0], fresh_name(f"{qname}/quantized", used)
        is_float32 = sim.graph.tensors[q.point.target].dtype == "float32"
        nodes = _mask_test(g, qname, x, is_float32, used)
        where = fresh_name(f"{qname}/Where", used)
        nodes.append(
            helper.make_node("Where", [nodes[-1].output[0], x, dq.output[0]], [out], name=where)
        )
        for i, node in enumerate(nodes):
            g.node.insert(at + 1 + i, node)


def _mask_test(
    g: onnx.GraphProto, qname: str, x: str, is_float32: bool, used: set[str]
) -> list[onnx.NodeProto]:
    """The nodes of ``Abs(x) >= MASK_MAGNITUDE``, compared in float32 (where a float16 mask
    is an infinity) as the Sim compares it; the bound goes into ``g``'s initializers."""
    bound = initializer(
        fresh_name(f"{qname}/mask_magnitude", used), MASK_MAGNITUDE, TensorProto.FLOAT
    )
    g.initializer.append(bound)
    nodes: list[onnx.NodeProto] = []

    def add(op: str, inputs: list[str], **attrs: Any) -> str:
        out = fresh_name(f"{qname}/{op}", used)
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    value = x if is_float32 else add("Cast", [x], to=TensorProto.FLOAT)
    add("GreaterOrEqual", [add("Abs", [value]), bound.name])
    return nodes


def _has_int8_weights(sim: OnnxSim) -> bool:
    return any(
        isinstance(q, OnnxWeightQuantizer) and q.enabled and q.qtype.name == "int8"
        for q in sim.named_quantizers().values()
    )


def _compare(path: Path, min_db: float | None, sim: OnnxSim) -> Checked:
    """SQNR(Sim vs ORT with default optimisations) per float output on the example inputs;
    where ORT does not reproduce the Sim, `mixq.export.check.ExportCheckError` names the
    output and the first value that parts."""
    run = ort_session(path)
    args, kwargs = sim.example_inputs
    batch = kwargs or args
    feeds = sim.input_feeds(batch)
    want = [w for w in sim.run_feeds(feeds, sim.output_names) if w.dtype.kind == "f"]
    floats = [(n, g) for n, g in zip(run.names, run(feeds), strict=True) if g.dtype.kind == "f"]
    return check_outputs(
        [n for n, _ in floats],
        [torch.from_numpy(np.asarray(w)) for w in want],
        [torch.from_numpy(g) for _, g in floats],
        min_db,
        lambda: locate_divergence(path, feeds, sim, batch, min_db),
        lambda: local_divergence(path, feeds, sim, batch, min_db),
    )


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
    _pass_masks(sim, model, freezer.names)
    _check_coverage(sim, model, freezer.names, options.float_islands)
    notes = list(freezer.islands)
    if not options.keep_io_types:
        notes += float_io(model, *io_precisions(sim.graph, sim.plan))
        _drop_folded_names(model, freezer.names)
    report = ExportReport(Path(path), freezer.names, notes=notes)
    if u8 and _has_int8_weights(sim):
        report.notes.append(U8_WEIGHTS_NOTE)
    compare = functools.partial(_compare, sim=sim)
    return finish_export(model, report, sim, compare, options, freezer.islands)
