"""Insert the quantizers into an ONNX model: one small subgraph per quantization point.

Every quantizer ends in ``Where(enabled, quantized, x)`` with ``enabled`` a bool graph
input, so switching a quantizer is a feed and an "off" quantizer passes ``x`` through
bit for bit. Integer activations: ``QuantizeLinear -> DequantizeLinear`` with the scale
(float32) and zero point (int32, cast to the type in the graph) as graph inputs, fed from
the calibrated values at every run. Float precisions: ``Cast -> Cast``. Weights:
``DequantizeLinear`` of an integer initializer computed at build (per channel along the
op's output axis, or blocked), divided by a folded batch-norm's factor where there is one.
An integer activation quantizer with ``mask_passthrough`` (its calibration saw attention
masks) is on only where ``|x| < MASK_MAGNITUDE``: its Where reads ``And(enabled,
Less(Abs(x), MASK_MAGNITUDE))``, so mask values pass unquantized; the Sim rebuilds its model
when a calibration changes which quantizers those are (`mask_passthrough_names`).

Example:
    >>> # rewritten = Rewriter(model, graph, quantizers).run()
    >>> # [n.op_type for n in rewritten.graph.node][:5]
    >>> # ['Cast', 'QuantizeLinear', 'DequantizeLinear', 'Where', 'Gemm']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mixq.core.errors import ConfigError
from mixq.graph.fusion import find_fusion_groups
from mixq.graph.ir import Graph, Op
from mixq.observers.base import MASK_MAGNITUDE
from mixq.sim.onnx.bias import BiasFeed, bias_feeds
from mixq.sim.onnx.capture import constant_names, elem_type
from mixq.sim.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer

__all__ = [
    "ONNX_TYPES",
    "OpsetUpgradeError",
    "Rewriter",
    "ensure_opset",
    "fresh_name",
    "mask_passthrough_names",
    "required_opset",
    "upgrade_opset",
]

ONNX_TYPES = {
    "int4": TensorProto.INT4,
    "uint4": TensorProto.UINT4,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
    "fp16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "fp8_e4m3": TensorProto.FLOAT8E4M3FN,
    "fp8_e5m2": TensorProto.FLOAT8E5M2,
}
_NUMPY_TYPES: dict[int, type[np.generic]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16,
}
_NEEDS_21 = {"int4", "uint4", "int16", "uint16"}


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def required_opset(quantizers: list[OnnxQuantizer]) -> tuple[int, str]:
    """The lowest opset the quantizers need, and why (``(13, "")`` when nothing special)."""
    for q in quantizers:
        if q.qtype.name in _NEEDS_21 or q.point.block_size:
            what = "blocked" if q.point.block_size else q.qtype.name
            return 21, f"{what} QuantizeLinear / DequantizeLinear (quantizer {q.name!r})"
        if q.qtype.name.startswith("fp8"):
            return 19, f"Cast to {q.qtype.name} (quantizer {q.name!r})"
    return 13, ""


def ensure_opset(model: onnx.ModelProto, quantizers: list[OnnxQuantizer]) -> onnx.ModelProto:
    """``model``, upgraded with `onnx.version_converter` if its opset is below what the
    quantizers need.

    Raises:
        ConfigError: the upgrade failed; says why the opset is needed and what to do.
    """
    need, why = required_opset(quantizers)
    try:
        return upgrade_opset(model, need)
    except OpsetUpgradeError as exc:
        raise ConfigError(
            f"the plan needs ONNX opset {need} for {why or 'per-axis DequantizeLinear'}, but "
            f"the model is opset {exc.have} and onnx.version_converter could not upgrade it "
            f"({exc.detail}). Re-export the model at opset >= {need}, or choose int8 / uint8 / "
            "fp16 precisions instead"
        ) from exc


class OpsetUpgradeError(Exception):
    """`onnx.version_converter` could not bring a model from opset ``have`` up."""

    def __init__(self, have: int, detail: str) -> None:
        super().__init__(detail)
        self.have, self.detail = have, detail


def upgrade_opset(model: onnx.ModelProto, need: int) -> onnx.ModelProto:
    """``model`` at opset ``need`` at least (upgraded when older), with the IR version that
    opset needs.

    Raises:
        OpsetUpgradeError: the converter failed (its first line is the ``detail``).
    """
    have = _opset(model)
    if have >= need:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, need)
    except Exception as exc:  # the converter raises plain RuntimeErrors and friends
        raise OpsetUpgradeError(have, str(exc).strip().splitlines()[0][:200]) from exc
    upgraded.ir_version = max(upgraded.ir_version, helper.find_min_ir_version_for([
        helper.make_opsetid("", need)]))  # fmt: skip
    return upgraded


def mask_passthrough_names(quantizers: Mapping[str, OnnxQuantizer]) -> frozenset[str]:
    """The integer activation quantizers whose subgraph passes mask values unquantized.

    Example:
        >>> mask_passthrough_names({})
        frozenset()
    """
    return frozenset(
        name
        for name, q in quantizers.items()
        if isinstance(q, OnnxActivationQuantizer)
        and q.mask_passthrough
        and not q.qtype.is_floating_point
    )


def toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where each runs after its inputs' producers (stable otherwise)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    done, order, state = set(available), [], [0] * len(nodes)
    for start in range(len(nodes)):
        stack = [start]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            state[i] = 1
            deps = [producer[t] for t in nodes[i].input if t and t not in done and t in producer]
            todo = [d for d in deps if state[d] == 0]
            if todo:
                stack.extend(todo)
                continue
            state[i] = 2
            stack.pop()
            order.append(nodes[i])
            done.update(nodes[i].output)
    return order


def fresh_name(name: str, used: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2`` ... if taken; the result is added to ``used``."""
    out, n = name, 1
    while out in used:
        out, n = f"{name}_{n}", n + 1
    used.add(out)
    return out


class Rewriter:
    """Builds the Sim's model: the captured model with every quantizer's subgraph."""

    def __init__(
        self,
        model: onnx.ModelProto,
        graph: Graph,
        quantizers: dict[str, OnnxQuantizer],
        fuse_add: bool = True,
    ) -> None:
        self.model, self.graph, self.quantizers = model, graph, quantizers
        self.g = model.graph
        self.constants = constant_names(self.g)
        self.elem = {name: elem_type(t.dtype) for name, t in graph.tensors.items()}
        self.current = {t: t for t in graph.tensors}
        self.used = {v for n in self.g.node for v in [*n.input, *n.output]}
        self.used |= {v.name for v in self.g.input} | set(self.constants)
        self.groups = find_fusion_groups(graph, fuse_add)  # the plan's target's groups
        self.masked = mask_passthrough_names(quantizers)
        self.bias_feeds: list[BiasFeed] = []  # convs an int8 kernel runs (mixq.sim.onnx.bias)

    def fresh(self, name: str) -> str:
        return fresh_name(name, self.used)

    def _input(self, name: str, elem: int) -> str:
        name = self.fresh(name)
        self.g.input.append(helper.make_tensor_value_info(name, elem, []))
        return name

    def _node(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = self.fresh(name)
        self.g.node.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def run(self) -> onnx.ModelProto:
        for q in self.quantizers.values():
            if isinstance(q, OnnxWeightQuantizer):
                self._weight(q)
            elif q.point.readers:
                self._conversion(q)
            else:
                self._activation(q)
        self.bias_feeds = bias_feeds(self)
        inputs = {v.name for v in self.g.input} | set(self.constants)
        nodes = toposort(list(self.g.node), inputs)
        del self.g.node[:]
        self.g.node.extend(nodes)
        return self.model

    # -- the quantizer subgraphs -----------------------------------------------------------
    def _switched(
        self, q: OnnxQuantizer, x: str, quantized: str, elem: int = TensorProto.FLOAT
    ) -> str:
        q.enabled_input = self._input(f"mixq/{q.name}/enabled", TensorProto.BOOL)
        q.input_name = x
        on = self._unmasked(q, x, elem) if q.name in self.masked else q.enabled_input
        q.output_name = self._node("Where", [on, quantized, x], f"{q.name}/mixq")
        return q.output_name

    def _unmasked(self, q: OnnxQuantizer, x: str, elem: int) -> str:
        """``enabled and |x| < MASK_MAGNITUDE`` (compared in float32, where a float16 mask
        is an infinity)."""
        if elem != TensorProto.FLOAT:
            x = self._node("Cast", [x], f"{q.name}/mixq_mask_input", to=TensorProto.FLOAT)
        bound = self._initializer(
            f"{q.name}/mixq_mask_magnitude", torch.tensor(MASK_MAGNITUDE), TensorProto.FLOAT
        )
        magnitude = self._node("Abs", [x], f"{q.name}/mixq_abs")
        unmasked = self._node("Less", [magnitude, bound], f"{q.name}/mixq_unmasked")
        return self._node("And", [q.enabled_input, unmasked], f"{q.name}/mixq_on")

    def _cast(self, q: OnnxQuantizer, x: str, elem: int) -> str:
        low = self._node("Cast", [x], f"{q.name}/mixq_cast", to=ONNX_TYPES[q.qtype.name])
        return self._node("Cast", [low], f"{q.name}/mixq_uncast", to=elem)

    def _qdq(self, q: OnnxActivationQuantizer, x: str, elem: int) -> str:
        q.scale_input = self._input(f"mixq/{q.name}/scale", TensorProto.FLOAT)
        q.zero_point_input = self._input(f"mixq/{q.name}/zero_point", TensorProto.INT32)
        scale = q.scale_input
        if elem != TensorProto.FLOAT:
            scale = self._node("Cast", [scale], f"{q.name}/mixq_scale", to=elem)
        to = ONNX_TYPES[q.qtype.name]
        zp = self._node("Cast", [q.zero_point_input], f"{q.name}/mixq_zero_point", to=to)
        quant = self._node("QuantizeLinear", [x, scale, zp], f"{q.name}/mixq_q")
        return self._node("DequantizeLinear", [quant, scale, zp], f"{q.name}/mixq_dq")

    def _dynamic_qdq(self, q: OnnxActivationQuantizer, x: str, elem: int) -> str:
        """DynamicQuantizeLinear -> DequantizeLinear (it reads float32 only: a float16
        tensor is cast there and back)."""
        x32 = (
            x
            if elem == TensorProto.FLOAT
            else self._node("Cast", [x], f"{q.name}/mixq_f32", to=TensorProto.FLOAT)
        )
        outs = [self.fresh(f"{q.name}/mixq_dyn{i}") for i in range(3)]
        self.g.node.append(helper.make_node("DynamicQuantizeLinear", [x32], outs, name=outs[0]))
        y = self._node("DequantizeLinear", outs, f"{q.name}/mixq_dq")
        return (
            y
            if elem == TensorProto.FLOAT
            else self._node("Cast", [y], f"{q.name}/mixq_back", to=elem)
        )

    def _activation_out(self, q: OnnxQuantizer) -> str:
        assert isinstance(q, OnnxActivationQuantizer)
        x, elem = self.current[q.point.target], self.elem[q.point.target]
        if q.qtype.is_floating_point:
            inner = self._cast(q, x, elem)
        elif q.qtype.dynamic:
            inner = self._dynamic_qdq(q, x, elem)
        else:
            inner = self._qdq(q, x, elem)
        return self._switched(q, x, inner, elem)

    def _activation(self, q: OnnxQuantizer) -> None:
        x = self.current[q.point.target]
        before = len(self.g.node)
        y = self._activation_out(q)
        self._rewire(x, y, list(self.g.node[:before]))
        for out in self.g.output:
            if out.name == x:
                out.name = y
        self.current[q.point.target] = y

    def _conversion(self, q: OnnxQuantizer) -> None:
        x = self.current[q.point.target]
        y = self._activation_out(q)
        readers = set(q.point.readers)
        self._rewire(x, y, [n for n in self.g.node if n.name in readers])

    @staticmethod
    def _rewire(old: str, new: str, nodes: list[onnx.NodeProto]) -> None:
        for node in nodes:
            for i, t in enumerate(node.input):
                if t == old:
                    node.input[i] = new

    def _weight(self, q: OnnxQuantizer) -> None:
        assert q.point.op is not None
        w, op = q.point.target, self.graph.ops[q.point.op]
        value = self.constants.get(w)
        if value is None:
            raise ConfigError(f"weight {w!r} of {op.name!r} is not a constant tensor")
        array = numpy_helper.to_array(value)
        elem = int(value.data_type)
        if q.qtype.is_floating_point:
            inner = self._cast(q, w, elem)
        else:
            assert isinstance(q, OnnxWeightQuantizer)
            inner = self._weight_dq(q, torch.from_numpy(array.astype(np.float32)), op, elem)
        y = self._switched(q, w, inner)
        self._rewire(w, y, [n for n in self.g.node if n.name == op.name])

    def _initializer(self, name: str, values: torch.Tensor, elem: int) -> str:
        name = self.fresh(name)
        if elem in _NUMPY_TYPES:
            tensor = numpy_helper.from_array(values.numpy().astype(_NUMPY_TYPES[elem]), name)
        else:  # 4-bit types: make_tensor packs two values per byte
            ints = values.to(torch.int64).flatten().tolist()
            tensor = helper.make_tensor(name, elem, list(values.shape), ints)
        self.g.initializer.append(tensor)
        self.constants[name] = tensor
        return name

    def _weight_dq(self, q: OnnxWeightQuantizer, w: torch.Tensor, op: Op, elem: int) -> str:
        fold = self.bn_fold(op, w)
        ints = q.quantize(w, fold)
        assert q.scale is not None and q.zero_point is not None
        to = ONNX_TYPES[q.qtype.name]
        names = [
            self._initializer(f"{q.name}/mixq_int", ints, to),
            self._initializer(f"{q.name}/mixq_scale", q.scale, TensorProto.FLOAT),
            self._initializer(f"{q.name}/mixq_zero_point", q.zero_point, to),
        ]
        attrs: dict[str, object] = {}
        if q.point.axis is not None:
            attrs["axis"] = q.point.axis
        if q.point.block_size:
            attrs["block_size"] = q.point.block_size
        out = self._node("DequantizeLinear", names, f"{q.name}/mixq_dq", **attrs)
        if fold is not None:
            f = self._initializer(f"{q.name}/mixq_bn_fold", fold, TensorProto.FLOAT)
            out = self._node("Div", [out, f], f"{q.name}/mixq_unfold")
        if elem != TensorProto.FLOAT:
            out = self._node("Cast", [out], f"{q.name}/mixq_weight", to=elem)
        return out

    def bn_fold(self, op: Op, w: torch.Tensor) -> torch.Tensor | None:
        """``gamma / sqrt(var + eps)`` shaped along the weight's output axis, for a
        batch-norm fused after ``op`` (None without one)."""
        bn = self.batch_norm_after(op)
        if bn is None or not bn.attrs.get("bn_running_var"):
            return None
        var = self.array(bn.attrs["bn_running_var"])
        gamma = self.array(bn.attrs.get("bn_weight"))
        if var is None:
            return None
        s = torch.rsqrt(var + float(bn.attrs.get("bn_eps", 1e-5)))  # type: ignore[arg-type]
        s = s * gamma if gamma is not None else s
        s = torch.where(s == 0, torch.ones_like(s), s)
        shape = [1] * w.ndim
        shape[int(op.attrs.get("weight_axis", 0))] = -1  # type: ignore[call-overload]
        return s.reshape(shape)

    def batch_norm_after(self, op: Op) -> Op | None:
        """The batch-norm of the plan's fusion group ``op`` anchors (None without one)."""
        group = self.groups[op.name]
        if group.anchor != op.name:
            return None
        ops = (self.graph.ops[n] for n in group.ops[1:])
        return next((o for o in ops if o.kind == "batch_norm"), None)

    def array(self, name: object) -> torch.Tensor | None:
        value = self.constants.get(str(name)) if name else None
        if value is None:
            return None
        return torch.from_numpy(numpy_helper.to_array(value).astype(np.float32))
