"""Export a torch Sim to ONNX with Q/DQ (opset 21), checked against the Sim in ONNX Runtime.

Each enabled quantizer becomes QuantizeLinear -> DequantizeLinear (activations), an integer
initializer -> DequantizeLinear (weights, per channel with ``axis``), or a Cast pair (float
precisions). A quantizer that passes attention masks (``mask_passthrough``) is wrapped in
``Where(Abs(x) >= MASK_MAGNITUDE, x, DQ(Q(x)))``, as the Sim computes it. Batch-norms whose
scale is folded into a conv's weight grid are folded into the conv, so the exported weight
is exactly the integer grid the Sim used.

Example:
    >>> # report = export_onnx(sim, "model.onnx")   # sim.export_onnx("model.onnx")
    >>> # report.min_sqnr_db >= 35
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, cast

import onnx
import torch
from torch import fx

from mixq.analysis.metrics import float_leaves
from mixq.core import primitives as P
from mixq.core.errors import MixqError
from mixq.core.quiet import quiet_dependencies
from mixq.export.check import Checked, check_outputs, local_divergence, locate_divergence
from mixq.export.core import (
    OPSET,
    U8_WEIGHTS_NOTE,
    ExportOptions,
    ExportReport,
    finish_export,
    lost_quantizers,
)
from mixq.export.io_types import float_io, io_precisions, ort_session
from mixq.export.islands import make_float_islands
from mixq.export.onnx_ops import TRANSLATIONS
from mixq.export.qdq_names import name_qdq_nodes
from mixq.observers.base import MASK_MAGNITUDE
from mixq.sim.torch.capture import dynamic_shapes, split_inputs
from mixq.sim.torch.quantizer import ActivationQuantizer, WeightQuantizer
from mixq.targets.fusion import target_fusion_groups

__all__ = ["export_onnx", "name_qdq_nodes"]


class _Rewriter:
    """Turns the Sim's quantizer modules into export ops on a copy of its graph module."""

    def __init__(self, sim: Any, u8_weights: bool = False) -> None:
        self.u8_weights = u8_weights
        sim.compute_weight_qparams()
        self.sim = sim
        with quiet_dependencies():
            self.gm: fx.GraphModule = copy.deepcopy(sim.module)
        self.graph = self.gm.graph
        self.count = 0
        self.names: dict[str, str] = {}  # buffer prefix -> quantizer name
        self.dynamic: list[str] = []  # dynamic quantizers, in graph order

    def _buffer(self, kind: str, value: torch.Tensor, qname: str) -> fx.Node:
        name = f"mixq_{kind}_{self.count}"
        self.gm.register_buffer(name, value.detach().clone())
        self.names[name] = qname
        return self.graph.get_attr(name)

    def run(self) -> fx.GraphModule:
        self._freeze_biases()
        self._plain_linears()
        for node in list(self.graph.nodes):
            if node.op == "call_module" and str(node.target).startswith("mixq_q"):
                self._replace(node, self.gm.get_submodule(str(node.target)))
        for name in [n for n, _ in self.gm.named_children() if n.startswith("mixq_q")]:
            delattr(self.gm, name)
        self._views_as_reshapes()
        self.graph.lint()
        self.gm.recompile()
        return self.gm

    def _freeze_biases(self) -> None:
        """Each conv bias the Sim rounds (`mixq.sim.torch.bias`) becomes a constant holding
        the rounded value, which the batch-norm fold then reads."""
        attrs = dict(self.gm.named_parameters()) | dict(self.gm.named_buffers())
        for node in list(self.graph.nodes):
            if not (node.op == "call_module" and str(node.target).startswith("mixq_bias")):
                continue
            values = [attrs.get(str(a.target)) if isinstance(a, fx.Node) else a for a in node.args]
            with torch.no_grad():
                bias = self.gm.get_submodule(str(node.target))(*values)
            replacement: fx.Node | None = None
            if bias is not None:
                name = f"{node.target}_value"
                self.gm.register_buffer(name, bias.detach().clone())
                with self.graph.inserting_before(node):
                    replacement = self.graph.get_attr(name)
            for user in list(node.users):
                user.args = tuple(replacement if a is node else a for a in user.args)
            self.graph.erase_node(node)
            delattr(self.gm, str(node.target))

    def _plain_linears(self) -> None:
        """Each `IntegerLinear` (`mixq.sim.torch.integer_linear`) is written as the linear
        it computes: ONNX Runtime's integer kernel does the arithmetic the Sim imitates."""
        for node in list(self.graph.nodes):
            if node.op == "call_module" and str(node.target).startswith("mixq_linear"):
                delattr(self.gm, str(node.target))
                node.op, node.target = "call_function", torch.ops.aten.linear.default

    def _views_as_reshapes(self) -> None:
        """Every ``reshape`` / ``view`` becomes ``mixq::reshape`` (ONNX Reshape). Exporting
        traces a ``reshape`` as a ``view`` when the traced strides allow it (SDPA's CPU kernel
        returns an output whose transpose is contiguous); the ONNX exporter then decomposes
        SDPA into ops with other strides, and the view fails ("Cannot view a tensor with
        shape ...": BEiT, Swin). The custom op is opaque to those decompositions."""
        views = (torch.ops.aten.view.default, torch.ops.aten.reshape.default)
        for node in self.graph.nodes:
            if node.op == "call_function" and node.target in views:
                node.target = torch.ops.mixq.reshape.default

    def _replace(self, node: fx.Node, q: Any) -> None:
        self.count += 1
        with self.graph.inserting_before(node):
            if not q.enabled:
                new = cast(fx.Node, node.args[0])
            elif q.qtype.is_floating_point:
                new = self.graph.call_function(
                    torch.ops.mixq.cast.default, (node.args[0], q.qtype.name)
                )
            elif isinstance(q, WeightQuantizer):
                new = self._weight(node, q)
            else:
                new = self._activation(node, q)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)

    def _activation(self, node: fx.Node, q: ActivationQuantizer) -> fx.Node:
        if q.qtype.dynamic:
            self.dynamic.append(q.name)
            return self.graph.call_function(torch.ops.mixq.dynamic_qdq.default, (node.args[0],))
        if q.scale is None or q.zero_point is None:
            raise MixqError(f"quantizer {q.name!r} has no scale: calibrate before exporting")
        dtype, zero_point = q.qtype.name, q.zero_point.reshape(()).float()
        if dtype == "int8":
            # the same grid as uint8 with the zero point moved by 128: ORT's CPU kernels fuse
            # u8 activations with s8 weights
            dtype, zero_point = "uint8", zero_point + 128
        s = self._buffer("s", q.scale.reshape(()).float(), q.name)
        z = self._buffer("z", zero_point, q.name)
        x = node.args[0]
        qdq = self.graph.call_function(torch.ops.mixq.qdq.default, (x, s, z, dtype))
        if not q.mask_passthrough:
            return qdq
        # attention-mask values pass unquantized, as in the Sim: Abs, GreaterOrEqual, Where
        magnitude = self.graph.call_function(torch.abs, (x,))
        big = self.graph.call_function(torch.ge, (magnitude, MASK_MAGNITUDE))
        return self.graph.call_function(torch.where, (big, x, qdq))

    def _weight(self, node: fx.Node, q: WeightQuantizer) -> fx.Node:
        w, *bn = self.sim.weight_args(q.name)
        fold = q.fold_scale(w, *bn) if bn else None
        wf = w.detach() * fold if fold is not None else w.detach()
        assert q.scale is not None and q.zero_point is not None
        point = q.point
        ints = P.quantize(wf, q.scale, q.zero_point, q.qtype, point.axis, point.block_size)
        dtype, zero_point = q.qtype.name, q.zero_point.float()
        storage = {"uint16": torch.int32, "int16": torch.int16}.get(dtype, torch.int16)
        ints = ints.to(storage)
        if dtype == "int8" and self.u8_weights:
            # the same grid as uint8 with the zero point moved by 128: on x86 without VNNI,
            # ORT's u8 x s8 kernels saturate 16-bit sums, u8 x u8 ones do not
            dtype, ints, zero_point = "uint8", ints + 128, zero_point + 128
        qi = self._buffer("w", ints, q.name)
        s = self._buffer("s", q.scale.float(), q.name)
        z = self._buffer("z", zero_point, q.name)
        axis = -1 if point.axis is None else point.axis
        new = self.graph.call_function(
            torch.ops.mixq.dq.default, (qi, s, z, dtype, axis, point.block_size or 0)
        )
        if fold is not None:
            self._fold_batch_norm(node, q, fold)
        return new

    def _fold_batch_norm(self, node: fx.Node, q: WeightQuantizer, fold: torch.Tensor) -> None:
        """conv -> batch_norm becomes one conv: its bias is (b - mean) * fold + beta."""
        conv = next(iter(node.users))
        bn_of = _batch_norm_of(self.sim.graph, str(q.point.op), self.sim.plan.target)
        bn_name = self.sim.op_nodes[bn_of]
        bn_node = next(n for n in self.graph.nodes if n.name == bn_name)
        beta, mean = bn_node.args[2], bn_node.args[3]
        tensors = {**dict(self.gm.named_parameters()), **dict(self.gm.named_buffers())}

        def value(a: Any) -> torch.Tensor:
            if not isinstance(a, fx.Node):
                return torch.zeros_like(fold.flatten())
            return tensors[str(a.target)].detach()

        bias = value(conv.args[2] if len(conv.args) > 2 else None)
        new_bias = (bias - value(mean)) * fold.flatten() + value(beta)
        with self.graph.inserting_before(conv):
            b = self._buffer("b", new_bias.float(), q.name)
        conv.args = (*conv.args[:2], b, *conv.args[3:])
        bn_node.replace_all_uses_with(conv)
        self.graph.erase_node(bn_node)


def _batch_norm_of(graph: Any, op: str, target: str) -> str:
    """The batch-norm fused after ``op`` (the one whose scale is folded into its weight)."""
    group = target_fusion_groups(graph, target)[op].ops
    return next(n for n in group if graph.ops[n].kind == "batch_norm")


def _check_integer_coverage(sim: Any, report: ExportReport) -> None:
    missing = [
        n
        for n, q in sim.named_quantizers().items()
        if q.enabled and not q.qtype.is_floating_point and n not in report.quantizers
    ]
    if missing:
        raise lost_quantizers(missing)


def _check_coverage(
    sim: Any, model: onnx.ModelProto, report: ExportReport, float_islands: bool
) -> None:
    """Every enabled quantizer must appear in the file: integers as named Q/DQ nodes, float
    precisions as Cast pairs (unless float islands compute in those types)."""
    _check_integer_coverage(sim, report)
    if float_islands:
        return
    quantizers = sim.named_quantizers().values()
    floats = sum(1 for q in quantizers if q.enabled and q.qtype.is_floating_point)
    casts = sum(
        1
        for n in model.graph.node
        if n.op_type == "Cast"
        and any(a.name == "to" and a.i != onnx.TensorProto.FLOAT for a in n.attribute)
    )
    if casts < floats:
        raise MixqError(
            f"the ONNX export has {casts} float casts for {floats} float "
            "quantizers; please report this with the model"
        )


def _io_by_onnx_name(sim: Any, model: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str]]:
    """The plan's input / output precisions under the exported graph's names (the export
    keeps the order of the Sim's tensor inputs and outputs, not always their names)."""
    inputs, outputs = io_precisions(sim.graph, sim.plan)
    pairs = []
    for onnx_values, names, wanted in (
        (model.graph.input, sim.graph.inputs, inputs),
        (model.graph.output, sim.graph.outputs, outputs),
    ):
        if len(onnx_values) != len(names):
            raise MixqError(
                f"keep_io_types=False: the export has {len(onnx_values)} model inputs / "
                f"outputs where the Sim has {len(names)} ({names[:4]}); export with "
                "keep_io_types=True"
            )
        pairs.append(
            {v.name: wanted[t] for v, t in zip(onnx_values, names, strict=True) if t in wanted}
        )
    return pairs[0], pairs[1]


def _check(path: Path, min_db: float | None, sim: Any, batch: Any) -> Checked:
    """SQNR(Sim vs ORT) per float output on ``batch``; where ORT does not reproduce the Sim,
    `mixq.export.check.ExportCheckError` names the output and the first value that parts."""
    run = ort_session(path)
    args, kwargs = split_inputs(batch)
    feeds = [t.numpy() for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)]
    got = run(feeds)
    with torch.no_grad():
        want = float_leaves(sim(*args, **kwargs))
    floats = [(n, g) for n, g in zip(run.names, got, strict=True) if g.dtype.kind == "f"]
    return check_outputs(
        [n for n, _ in floats],
        want,
        [torch.from_numpy(g) for _, g in floats],
        min_db,
        lambda: locate_divergence(path, feeds, sim, batch, min_db),
        lambda: local_divergence(path, feeds, sim, batch, min_db),
    )


def _softmax_notes(sim: Any) -> list[str]:
    """8-bit softmax outputs whose scale is not 1 / k (a learned scale, say): ONNX Runtime's
    QLinearSoftmax multiplies by floor(1 / scale), so its outputs come out smaller."""
    notes = []
    for name, q in sim.named_quantizers().items():
        if not (q.enabled and q.point.reciprocal_scale and q.scale is not None):
            continue
        inverse = 1 / q.scale.detach().float().reshape(())
        k = torch.floor(inverse)
        if k >= 1 and inverse - k > 1e-5 * k:
            shrink = float(1 - k / inverse) * 100
            notes.append(
                f"{name}: scale {float(q.scale):.6g} is not 1 / k; ONNX Runtime's fused "
                f"QLinearSoftmax multiplies by floor(1 / scale) = {int(k)}, so its outputs "
                f"are {shrink:.2f}% smaller than the Sim's (recalibrate to fix)"
            )
    return notes


def _to_onnx(
    module: fx.GraphModule, args: Any, kwargs: Any, dynamic: bool
) -> tuple[onnx.ModelProto, list[str]]:
    """The dynamo export of the rewritten graph module, mixq's ops translated to Q/DQ, and
    notes: input shapes dynamic, or the example's where the Sim was captured for those."""
    if dynamic:
        return _dynamo_export(module, args, kwargs, dynamic_shapes(module, args, kwargs)), []
    return _dynamo_export(module, args, kwargs, None), [
        "exported for the example's input shapes only, as the Sim was captured"
    ]


def _dynamo_export(module: fx.GraphModule, args: Any, kwargs: Any, shapes: Any) -> onnx.ModelProto:
    with quiet_dependencies():
        program = torch.onnx.export(
            module,
            args,
            kwargs=kwargs,
            dynamo=True,
            opset_version=OPSET,
            custom_translation_table=TRANSLATIONS,
            dynamic_shapes=shapes,
            verbose=False,
            optimize=False,
        )
    if program is None:
        raise MixqError("torch.onnx.export returned nothing for the Sim")
    return program.model_proto


def export_onnx(sim: Any, path: str | Path, options: ExportOptions) -> ExportReport:
    """Write the torch Sim as an ONNX Q/DQ model at ``path``; with ``options.check``, run it
    in ORT (the options: `mixq.export.export_onnx`).

    With ``u8_weights`` int8 weights are stored as uint8: ORT's x86 kernels without VNNI
    saturate u8 x s8 products (measured: 18 dB instead of 46 dB Sim vs ORT on the digits CNN).

    Example:
        >>> # report = export_onnx(sim, "model.onnx", ExportOptions(check=False))
    """
    u8 = options.resolved_u8_weights()
    rewriter = _Rewriter(sim, u8_weights=u8)
    module = rewriter.run()
    islands = make_float_islands(module, sim) if options.float_islands else []
    dynamic = getattr(sim, "static_shapes", None) is None
    args, kwargs = sim.example_inputs
    model, shape_notes = _to_onnx(module, args, kwargs, dynamic)
    names = name_qdq_nodes(model, rewriter.names, rewriter.dynamic)
    report = ExportReport(Path(path), names, notes=islands)
    report.notes += shape_notes
    report.notes += _softmax_notes(sim) + ([U8_WEIGHTS_NOTE] if u8 else [])
    _check_coverage(sim, model, report, options.float_islands)
    if not options.keep_io_types:
        report.notes += float_io(model, *_io_by_onnx_name(sim, model))
    batch = sim.example_inputs[1] or sim.example_inputs[0]
    compare = functools.partial(_check, sim=sim, batch=batch)
    return finish_export(model, report, sim, compare, options, islands)
