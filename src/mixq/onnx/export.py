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

Example:
    >>> # report = sim.export_onnx("model.onnx")    # sim = mixq.quantize("model.onnx", ...)
    >>> # report.min_sqnr_db >= 35
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mixq.analysis.metrics import sqnr
from mixq.errors import MixqError
from mixq.export.io_types import float_io, io_precisions, ort_session
from mixq.export.onnx_export import OPSET, ExportReport, _has_vnni
from mixq.graph.kinds import is_data_movement
from mixq.onnx.capture import elem_type
from mixq.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer
from mixq.onnx.rewrite import ONNX_TYPES, _toposort, fresh_name

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
_ISLAND_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def _tensor(name: str, values: Any, elem: int) -> onnx.TensorProto:
    """An initializer of ONNX type ``elem`` (4-bit and bf16 values through make_tensor)."""
    array = np.asarray(values)
    if elem in _NUMPY:
        return numpy_helper.from_array(array.astype(_NUMPY[elem]), name)
    flat = array.reshape(-1).tolist()
    return helper.make_tensor(name, elem, list(array.shape), flat)


class _Exporter:
    """Fixes the Sim's switches into a copy of its model and strips the control inputs."""

    def __init__(self, sim: OnnxSim, u8_weights: bool, float_islands: bool = True) -> None:
        self.sim, self.u8_weights, self.float_islands = sim, u8_weights, float_islands
        self.model = onnx.ModelProto()
        self.model.CopyFrom(sim.model)
        self.g = self.model.graph
        del self.g.output[len(sim.output_names) :]  # the values the Sim exposes for analyses
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.inits = {i.name: i for i in self.g.initializer}
        self.used = set(self.producer) | set(self.inits) | {v.name for v in self.g.input}
        self.names: dict[str, dict[str, str]] = {}
        self.folds: list[tuple[OnnxWeightQuantizer, onnx.NodeProto]] = []  # (q, its Div)
        self.islands: list[str] = []

    def run(self) -> onnx.ModelProto:
        for q in self.sim._quantizers.values():
            where = self.producer[q.output_name]
            keep = where.input[1] if q.enabled else where.input[2]
            if q.enabled:
                self._keep(q, where.input[1])
            self._replace(q.output_name, keep)
        for q, dq in self.folds:
            _fold_batch_norm(self, q, dq)
        self._prune()
        if self.float_islands:
            self.islands = _Islands(self).run()
            self._prune()
            present = {n.name for n in self.g.node}  # an island drops its rounding Casts
            self.names = {q: v for q, v in self.names.items() if set(v.values()) <= present}
        self._restore_output_names()
        self.model.metadata_props.add(key="mixq.quantizers", value=json.dumps(self.names))
        return _to_opset(self.model)

    def _fresh(self, name: str) -> str:
        return fresh_name(name, self.used)

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
        if dq.op_type == "Div":  # the bn unfold: folded into the conv (see _fold_batch_norm)
            self.folds.append((q, dq))
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


def _batch_norm_after(ex: _Exporter, conv: onnx.NodeProto) -> onnx.NodeProto | None:
    """The inference-mode batch-norm that alone reads ``conv``'s output, its parameters
    initializers (None otherwise)."""
    readers = [n for n in ex.g.node if conv.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization":
        return None
    bn = readers[0]
    training = any(a.name == "training_mode" and a.i for a in bn.attribute)
    if training or len(bn.output) > 1 or not all(t in ex.inits for t in bn.input[1:5]):
        return None
    return bn


def _fold_batch_norm(ex: _Exporter, q: OnnxWeightQuantizer, div: onnx.NodeProto) -> None:
    """``DQ -> Div(fold) -> Conv -> BatchNormalization`` becomes ``DQ -> Conv`` with the bias
    ``(b - mean) * fold + beta``, as the torch exporter's ``_fold_batch_norm``: the weight
    grid is already on the folded weight, and ORT fuses ``DQ -> Conv -> Q`` into
    ``QLinearConv`` only without the Div. Anything else (a ``fold`` that is not the
    batch-norm's factor, where a zero gamma was replaced by 1) keeps the Div and the
    batch-norm, which is exact too."""
    conv = next((n for n in ex.g.node if n.name == q.point.op), None)
    if conv is None or conv.op_type != "Conv" or conv.input[1] != div.output[0]:
        return
    bn = _batch_norm_after(ex, conv)
    if bn is None or div.input[1] not in ex.inits:
        return
    gamma, beta, mean, var = (numpy_helper.to_array(ex.inits[t]) for t in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    fold = numpy_helper.to_array(ex.inits[div.input[1]]).reshape(-1).astype(np.float64)
    if fold.shape != gamma.shape or not np.allclose(fold, gamma / np.sqrt(var + eps), 1e-5):
        return
    has_bias = len(conv.input) > 2 and conv.input[2] in ex.inits
    bias = numpy_helper.to_array(ex.inits[conv.input[2]]) if has_bias else np.zeros_like(fold)
    folded = (bias - mean) * fold + beta
    tensor = numpy_helper.from_array(folded.astype(np.float32), ex._fresh(f"{conv.name}/bias"))
    ex.g.initializer.append(tensor)
    ex.inits[tensor.name] = tensor
    conv.input[1] = div.input[0]
    if len(conv.input) > 2:
        conv.input[2] = tensor.name
    else:
        conv.input.append(tensor.name)
    conv.output[0] = bn.output[0]  # the batch-norm's readers (or model output) read the conv
    ex.g.node.remove(bn)
    ex.producer[conv.output[0]] = conv


class _Islands:
    """Ops planned in fp16 / bf16 compute in that type, as `mixq.export.islands` does for
    the torch export: float inputs cast down (initializers converted, fp16 ones clamped to
    the largest finite value), float outputs cast back to fp32, neighbouring island ops of
    one type connected directly, the Sim's rounding Cast pair after an island op dropped.
    Model inputs and outputs stay fp32 (``keep_io_types=False`` retypes them afterwards)."""

    def __init__(self, ex: _Exporter) -> None:
        self.ex, self.g = ex, ex.g
        self.types = _elem_types(ex)
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.back: dict[str, tuple[str, int]] = {}  # fp32 value -> (island output, type)
        self.down: dict[tuple[str, int], str] = {}  # (value, type) -> converted / cast down

    def run(self) -> list[str]:
        done: dict[str, list[str]] = {}
        nodes = {n.name: n for n in self.g.node}
        for op in self.ex.sim.graph:
            plan = self.ex.sim.plan.ops.get(op.name)
            if plan is None or is_data_movement(op.kind) or not plan.output:
                continue
            if plan.output[0] in _ISLAND_TYPES and op.name in nodes:
                self._island(nodes[op.name], _ISLAND_TYPES[plan.output[0]])
                done.setdefault(plan.output[0], []).append(op.name)
        available = {v.name for v in self.g.input} | {i.name for i in self.g.initializer}
        nodes_in_order = _toposort(list(self.g.node), available)
        del self.g.node[:]
        self.g.node.extend(nodes_in_order)
        return [f"{len(ops)} ops run in {p}: {', '.join(ops[:6])}" for p, ops in done.items()]

    def _island(self, node: onnx.NodeProto, elem: int) -> None:
        for i, t in enumerate(node.input):
            if t:
                node.input[i] = self._down(t, elem)
        for k, out in enumerate(node.output):
            if out and self.types.get(out) == TensorProto.FLOAT:
                raw = self.ex._fresh(f"{out}/{_name_of(elem)}")
                node.output[k] = raw
                self._cast(raw, TensorProto.FLOAT, out)
                self.back[out] = (raw, elem)
                self._drop_rounding(out, elem)

    def _drop_rounding(self, out: str, elem: int) -> None:
        """The Sim's ``Cast(elem) -> Cast(float)`` after ``out`` is a no-op now."""
        for low in [n for n in self.g.node if out in n.input and _cast_to(n) == elem]:
            for up in [n for n in self.g.node if low.output[0] in n.input]:
                if _cast_to(up) == TensorProto.FLOAT:
                    self.ex._replace(up.output[0], out)

    def _down(self, t: str, elem: int) -> str:
        if t in self.back and self.back[t][1] == elem:
            return self.back[t][0]  # the neighbouring island op's own output
        low = self._rounding(t, elem)
        if low is not None:  # a value the Sim rounds to this type anyway
            source = low.input[0]
            if source in self.back and self.back[source][1] == elem:
                return self.back[source][0]
            return self._converted(source, elem) if source in self.ex.inits else low.output[0]
        if t in self.ex.inits and self.ex.inits[t].data_type == TensorProto.FLOAT:
            return self._converted(t, elem)
        if self.types.get(t) != TensorProto.FLOAT:
            return t
        if (t, elem) not in self.down:
            self.down[t, elem] = self._cast(t, elem)
        return self.down[t, elem]

    def _rounding(self, t: str, elem: int) -> onnx.NodeProto | None:
        """The ``Cast(elem)`` of the Sim's rounding pair ``Cast(elem) -> Cast(float)``
        that gives ``t`` (None if ``t`` is not one)."""
        up = self.producer.get(t)
        if up is None or _cast_to(up) != TensorProto.FLOAT:
            return None
        low = self.producer.get(up.input[0])
        return low if low is not None and _cast_to(low) == elem else None

    def _converted(self, name: str, elem: int) -> str:
        if (name, elem) not in self.down:
            values = numpy_helper.to_array(self.ex.inits[name])
            if elem == TensorProto.FLOAT16:
                values = np.clip(values, np.finfo(np.float16).min, np.finfo(np.float16).max)
            tensor = _tensor(self.ex._fresh(f"{name}/{_name_of(elem)}"), values, elem)
            self.g.initializer.append(tensor)
            self.ex.inits[tensor.name] = tensor
            self.down[name, elem] = tensor.name
        return self.down[name, elem]

    def _cast(self, x: str, elem: int, out: str | None = None) -> str:
        name = self.ex._fresh(f"{x}/to_{_name_of(elem)}")
        out = out or name
        node = helper.make_node("Cast", [x], [out], name=name, to=elem)
        self.g.node.append(node)
        self.producer[out] = node
        return out


def _name_of(elem: int) -> str:
    names: dict[int, str] = {int(v): k for k, v in _ISLAND_TYPES.items()}
    return names.get(elem, "fp32")


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _elem_types(ex: _Exporter) -> dict[str, int]:
    """Element type per value name: the Sim's tensors, refined by ONNX shape inference."""
    types = {n: elem_type(t.dtype) for n, t in ex.sim.graph.tensors.items()}
    try:
        graph = onnx.shape_inference.infer_shapes(ex.model).graph
    except Exception:  # inference is a refinement: unknown values stay as they are
        graph = ex.g
    types.update({i.name: i.data_type for i in graph.initializer})
    for v in [*graph.input, *graph.value_info, *graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


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


def _check_coverage(
    sim: OnnxSim, model: onnx.ModelProto, names: dict[str, Any], islands: bool
) -> None:
    """Every enabled quantizer is in the file (with islands, the integer ones: an island
    drops the rounding Cast pairs of its type)."""
    present = {n.name for n in model.graph.node}
    lost = [
        n
        for n, q in sim._quantizers.items()
        if q.enabled
        and not (islands and q.qtype.is_floating_point)
        and (n not in names or not set(names[n].values()) <= present)
    ]
    if lost:
        raise MixqError(
            f"the ONNX export lost quantizers {lost[:5]} ({len(lost)} in all); "
            "please report this with the model"
        )


def _drop_folded_names(model: onnx.ModelProto, names: dict[str, dict[str, str]]) -> None:
    """Forget the Cast pairs that fp16 / bf16 model inputs and outputs made redundant."""
    present = {n.name for n in model.graph.node}
    for q in [q for q, v in names.items() if not set(v.values()) <= present]:
        del names[q]
    meta = next(p for p in model.metadata_props if p.key == "mixq.quantizers")
    meta.value = json.dumps(names)


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


def _not_implemented(exc: Exception, islands: list[str]) -> MixqError:
    """ORT's CPU provider has no kernel for a node (a bf16 op, say): name it."""
    message = str(exc).strip().splitlines()[0]
    found = re.search(r"node with name '([^']*)'", message)
    node = f"node {found.group(1)!r}" if found else "a node"
    return MixqError(
        f"ONNX Runtime's CPU provider cannot run {node} of this export ({message[:300]}). "
        f"The plan asks for {'; '.join(islands) or 'these precisions'}. Export with "
        "float_islands=False (fp32 compute, outputs rounded as the Sim does), or choose a "
        "precision the provider runs (fp16 instead of bf16)"
    )


def export_onnx(
    sim: OnnxSim,
    path: str | Path,
    check: bool = True,
    u8_weights: bool | None = None,
    float_islands: bool = True,
    keep_io_types: bool = True,
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
        float_islands: ops planned in fp16 / bf16 compute in that type (parameters
            converted, fp16 ones clamped; model inputs and outputs stay fp32); False keeps
            fp32 compute with the Cast pairs that round their outputs, as the Sim does.
        keep_io_types: model inputs and outputs stay fp32; False gives those the plan
            runs in fp16 / bf16 that element type, without the boundary Casts (the check
            feeds inputs in that type and compares outputs as float).

    Raises:
        MixqError: an enabled integer quantizer is not calibrated (nothing is written), a
            quantizer is missing from the result, or (``check``) ONNX Runtime's CPU
            provider has no kernel for a node (the file is removed).

    Example:
        >>> # report = export_onnx(sim, "model.onnx"); print(report.to_text())
    """
    path = Path(path)
    _require_calibrated(sim)
    u8 = not _has_vnni() if u8_weights is None else u8_weights
    exporter = _Exporter(sim, u8, float_islands)
    model = exporter.run()
    _check_coverage(sim, model, exporter.names, float_islands)
    notes = list(exporter.islands)
    if not keep_io_types:
        notes += float_io(model, *io_precisions(sim.graph, sim.plan))
        _drop_folded_names(model, exporter.names)
    onnx.checker.check_model(model)
    report = ExportReport(path, exporter.names, notes=notes)
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
        try:
            report.sqnr_db = _compare(sim, path)
        except Exception as exc:
            path.unlink(missing_ok=True)
            if "NOT_IMPLEMENTED" not in str(exc):
                raise
            raise _not_implemented(exc, exporter.islands) from exc
    return report
