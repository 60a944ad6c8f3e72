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

Example:
    >>> # report = sim.export_onnx("model.onnx")    # sim = mixq.quantize("model.onnx", ...)
    >>> # report.min_sqnr_db >= 35
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mixq.analysis.metrics import sqnr
from mixq.errors import MixqError
from mixq.export.onnx_export import OPSET, ExportReport, _has_vnni
from mixq.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer
from mixq.onnx.rewrite import ONNX_TYPES

if TYPE_CHECKING:
    from mixq.onnx.sim import OnnxSim

__all__ = ["export_onnx"]

_NUMPY: dict[int, type[np.generic]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16,
}


def _tensor(name: str, values: Any, elem: int) -> onnx.TensorProto:
    """An initializer of ONNX type ``elem`` (4-bit and bf16 values through make_tensor)."""
    array = np.asarray(values)
    if elem in _NUMPY:
        return numpy_helper.from_array(array.astype(_NUMPY[elem]), name)
    flat = array.reshape(-1).tolist()
    return helper.make_tensor(name, elem, list(array.shape), flat)


class _Exporter:
    """Fixes the Sim's switches into a copy of its model and strips the control inputs."""

    def __init__(self, sim: OnnxSim, u8_weights: bool) -> None:
        self.sim, self.u8_weights = sim, u8_weights
        self.model = onnx.ModelProto()
        self.model.CopyFrom(sim.model)
        self.g = self.model.graph
        del self.g.output[len(sim.output_names) :]  # the values the Sim exposes for analyses
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.inits = {i.name: i for i in self.g.initializer}
        self.used = set(self.producer) | set(self.inits) | {v.name for v in self.g.input}
        self.names: dict[str, dict[str, str]] = {}

    def run(self) -> onnx.ModelProto:
        for q in self.sim._quantizers.values():
            where = self.producer[q.output_name]
            keep = where.input[1] if q.enabled else where.input[2]
            if q.enabled:
                self._keep(q, where.input[1])
            self._replace(q.output_name, keep)
        self._prune()
        self._restore_output_names()
        self.model.metadata_props.add(key="mixq.quantizers", value=json.dumps(self.names))
        return _to_opset(self.model)

    def _fresh(self, name: str) -> str:
        out, n = name, 1
        while out in self.used:
            out, n = f"{name}_{n}", n + 1
        self.used.add(out)
        return out

    def _replace(self, old: str, new: str) -> None:
        for node in self.g.node:
            for i, t in enumerate(node.input):
                if t == old:
                    node.input[i] = new
        for out in self.g.output:
            if out.name == old:
                out.name = new

    # -- what an enabled quantizer keeps -----------------------------------------------------
    def _keep(self, q: OnnxQuantizer, quantized: str) -> None:
        if q.qtype.is_floating_point:
            back = self.producer[quantized]
            cast = self.producer[back.input[0]]
            cast.name, back.name = f"{q.name}/Cast", f"{q.name}/Cast_1"
            self.names[q.name] = {"Cast": cast.name, "Cast_1": back.name}
        elif isinstance(q, OnnxWeightQuantizer):
            self._weight(q, quantized)
        else:
            assert isinstance(q, OnnxActivationQuantizer)
            self._activation(q, quantized)

    def _weight(self, q: OnnxWeightQuantizer, quantized: str) -> None:
        dq = self.producer[quantized]
        while dq.op_type != "DequantizeLinear":  # back through the bn-unfold Div / Cast
            dq = self.producer[dq.input[0]]
        dq.name = f"{q.name}/DequantizeLinear"
        self.names[q.name] = {"DequantizeLinear": dq.name}
        if self.u8_weights and q.qtype.name == "int8":
            for i in (0, 2):  # the same grid as uint8 with the zero point moved by 128
                init = self.inits[dq.input[i]]
                moved = numpy_helper.to_array(init).astype(np.int16) + 128
                init.CopyFrom(numpy_helper.from_array(moved.astype(np.uint8), init.name))

    def _activation(self, q: OnnxActivationQuantizer, quantized: str) -> None:
        dq = self.producer[quantized]
        qn = self.producer[dq.input[0]]
        assert q.scale is not None and q.zero_point is not None
        elem, zp = ONNX_TYPES[q.qtype.name], q.zero_point.reshape(()).to(torch.int64)
        if q.qtype.name == "int8":
            elem, zp = TensorProto.UINT8, zp + 128
        x_elem = helper.np_dtype_to_tensor_dtype(
            np.dtype(self.sim.graph.tensors[q.point.target].dtype)
        )
        scale = _tensor(self._fresh(f"{q.name}/scale"), q.scale.reshape(()).numpy(), x_elem)
        zero = _tensor(self._fresh(f"{q.name}/zero_point"), zp.numpy(), elem)
        self.g.initializer.extend([scale, zero])
        for node in (qn, dq):
            node.input[1], node.input[2] = scale.name, zero.name
        qn.name, dq.name = f"{q.name}/QuantizeLinear", f"{q.name}/DequantizeLinear"
        self.names[q.name] = {"QuantizeLinear": qn.name, "DequantizeLinear": dq.name}

    # -- clean-up --------------------------------------------------------------------------
    def _prune(self) -> None:
        """Drop nodes, initializers and inputs nothing reads (the Wheres, control inputs)."""
        live = {o.name for o in self.g.output}
        kept = []
        for node in reversed(self.g.node):  # the Sim's nodes are in topological order
            if any(o in live for o in node.output):
                kept.append(node)
                live.update(node.input)
                live.update(_subgraph_inputs(node))
        del self.g.node[:]
        self.g.node.extend(reversed(kept))
        inits = [i for i in self.g.initializer if i.name in live]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)
        inputs = [v for v in self.g.input if v.name in self.sim.input_names]
        del self.g.input[:]
        self.g.input.extend(inputs)
        value_info = [v for v in self.g.value_info if v.name in live]
        del self.g.value_info[:]
        self.g.value_info.extend(value_info)

    def _restore_output_names(self) -> None:
        """A quantized model output gets the original output's name back."""
        inputs = {v.name for v in self.g.input} | {i.name for i in self.g.initializer}
        for out, orig in zip(self.g.output, self.sim.source.graph.output, strict=True):
            if out.name == orig.name or out.name in inputs or orig.name in inputs:
                continue
            self._rename(orig.name, self._fresh(f"{orig.name}/float"))
            self._rename(out.name, orig.name)
            out.name = orig.name

    def _rename(self, old: str, new: str) -> None:
        for node in self.g.node:
            for values in (node.input, node.output):
                for i, t in enumerate(values):
                    if t == old:
                        values[i] = new
        for v in self.g.value_info:
            if v.name == old:
                v.name = new


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names read inside an If / Loop / Scan body (they may come from the outer graph)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else []
        for graph in [*graphs, *attr.graphs]:
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names


def _to_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    have = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    if have < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as exc:  # the converter raises plain RuntimeErrors and friends
            raise MixqError(
                f"could not upgrade the exported model from opset {have} to {OPSET} "
                f"({str(exc).strip().splitlines()[0][:200]}); re-export the float model "
                f"at opset {OPSET} and quantize that"
            ) from exc
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR 10
    return model


def _require_calibrated(sim: OnnxSim) -> None:
    missing = [n for n, q in sim._quantizers.items() if q.enabled and not q.has_qparams]
    if missing:
        raise MixqError(
            f"quantizers {missing[:5]} ({len(missing)} in all) have no scale: calibrate "
            "before exporting (sim.calibrate(batches)), or disable them"
        )


def _check_coverage(sim: OnnxSim, model: onnx.ModelProto, names: dict[str, Any]) -> None:
    present = {n.name for n in model.graph.node}
    lost = [
        n
        for n, q in sim._quantizers.items()
        if q.enabled and (n not in names or not set(names[n].values()) <= present)
    ]
    if lost:
        raise MixqError(
            f"the ONNX export lost quantizers {lost[:5]} ({len(lost)} in all); "
            "please report this with the model"
        )


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Write through a temporary file, so a failed write leaves nothing at ``path``."""
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent if path.parent.exists() else None)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _compare(sim: OnnxSim, path: Path) -> list[float]:
    """SQNR(Sim vs ORT with default optimisations) per float output on the example inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args, kwargs = sim.example_inputs
    feeds = sim.input_feeds(kwargs or args)
    want = sim.run_feeds(feeds, sim.output_names)
    got = session.run([o.name for o in session.get_outputs()], feeds)
    return [
        sqnr(torch.from_numpy(np.asarray(w)), torch.from_numpy(np.asarray(g)))
        for w, g in zip(want, got, strict=True)
        if np.issubdtype(np.asarray(w).dtype, np.floating)
    ]


def export_onnx(
    sim: OnnxSim, path: str | Path, check: bool = True, u8_weights: bool | None = None
) -> ExportReport:
    """Write the ONNX Sim's current state as an ONNX Q/DQ model; with ``check``, run it.

    Args:
        sim: a calibrated `mixq.onnx.OnnxSim`.
        path: where to write the ``.onnx`` file.
        check: run the file in ONNX Runtime (CPU, default optimisations) on
            ``sim.example_inputs`` and report SQNR(Sim vs ORT) per output.
        u8_weights: store int8 weights as uint8 with the zero point moved by 128 (the same
            grid; ORT's x86 kernels without VNNI saturate u8 x s8 products); None decides
            from this machine's CPU.

    Raises:
        MixqError: an enabled integer quantizer is not calibrated (nothing is written), or
            a quantizer is missing from the result.

    Example:
        >>> # report = export_onnx(sim, "model.onnx"); print(report.to_text())
    """
    path = Path(path)
    _require_calibrated(sim)
    u8 = not _has_vnni() if u8_weights is None else u8_weights
    exporter = _Exporter(sim, u8)
    model = exporter.run()
    _check_coverage(sim, model, exporter.names)
    onnx.checker.check_model(model)
    report = ExportReport(path, exporter.names)
    if u8 and any(isinstance(q, OnnxWeightQuantizer) and q.enabled and q.qtype.name == "int8"
                  for q in sim._quantizers.values()):  # fmt: skip
        report.notes.append(
            "int8 weights stored as uint8 (zero point + 128, same grid) for "
            "ORT's CPU kernels without VNNI"
        )
    _save(model, path)
    report.simulated_16bit = [
        n
        for n, q in sim._quantizers.items()
        if q.enabled and q.qtype.bits == 16 and not q.qtype.is_floating_point
    ]
    if check:
        report.sqnr_db = _compare(sim, path)
    return report
