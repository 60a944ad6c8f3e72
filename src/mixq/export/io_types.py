"""Model inputs and outputs in the plan's float precision (``keep_io_types=False``).

ONNX converters keep a model's inputs and outputs fp32 around fp16 / bf16 parts
(``keep_io_types=True``, mixq's default too). With ``keep_io_types=False`` a graph input or
output whose plan precision is fp16 or bf16 takes that element type, and the Casts at the
boundary go: ``Cast(t) <- Cast(float) <- v`` is ``v`` when ``v`` already has type ``t``
(fp16 / bf16 -> fp32 is exact), so the Sim's rounding pair on an fp16 input and the
island's cast back to fp32 on an fp16 output fold away. Shape-only readers (``Shape``,
``Size``) read the retyped input directly.

`ort_session` runs such a file the way the export checks do: inputs fed in the file's
types (bf16 through an `OrtValue`), outputs read back as float32.

Example:
    >>> # notes = float_io(model, {"x": "fp16"}, {"y": "fp16"})
    >>> # ['fp16 inputs: x', 'fp16 outputs: y']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from mixq.export.onnx_edit import FLOAT_TYPES, cast_target
from mixq.export.ort_accuracy import session_options
from mixq.sim.onnx.rewrite import fresh_name

__all__ = ["IO_TYPES", "OrtSession", "float_io", "io_precisions", "ort_session"]

IO_TYPES = FLOAT_TYPES
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_BF16 = TensorProto.BFLOAT16


def io_precisions(graph: Any, plan: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The plan's precision of each model input and output tensor (mixq Graph names)."""
    inputs = {t: plan.inputs[t] for t in graph.inputs if t in plan.inputs}
    outputs: dict[str, str] = {}
    for t in graph.outputs:
        producer = graph.tensors[t].producer if t in graph.tensors else None
        op = plan.ops.get(producer) if producer is not None else None
        floats = graph.float_outputs(graph.ops[producer]) if op is not None else []
        if op is not None and t in floats and len(op.output) == len(floats):
            outputs[t] = op.output[floats.index(t)]
        elif t in plan.inputs:
            outputs[t] = plan.inputs[t]
    return inputs, outputs


class _Retyper:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.g = model, model.graph
        self.used = {v for n in self.g.node for v in [*n.input, *n.output]}
        self.used |= {v.name for v in [*self.g.input, *self.g.output]}
        self.used |= {i.name for i in self.g.initializer}
        self.types: dict[str, int] = {}

    def fresh(self, name: str) -> str:
        return fresh_name(name, self.used)

    def rename_uses(self, old: str, new: str, skip: onnx.NodeProto | None = None) -> None:
        for node in self.g.node:
            if node is skip:
                continue
            for i, t in enumerate(node.input):
                if t == old:
                    node.input[i] = new

    def retype_input(self, value: onnx.ValueInfoProto, elem: int) -> None:
        name = value.name
        value.type.tensor_type.elem_type = elem
        up = self.fresh(f"{name}/to_fp32")
        for node in self.g.node:
            if node.op_type not in _SHAPE_ONLY:
                node.input[:] = [up if t == name else t for t in node.input]
        self.g.node.insert(0, helper.make_node("Cast", [name], [up], name=up, to=TensorProto.FLOAT))

    def retype_output(self, value: onnx.ValueInfoProto, elem: int) -> None:
        name = value.name
        wide = self.fresh(f"{name}/fp32")
        for node in self.g.node:
            node.output[:] = [wide if t == name else t for t in node.output]
        self.rename_uses(name, wide)
        value.type.tensor_type.elem_type = elem
        self.g.node.append(helper.make_node("Cast", [wide], [name], name=f"{name}/to_io", to=elem))

    def simplify(self) -> None:
        """Fold ``Cast(t) <- Cast(float) <- v`` (``v`` of type ``t``) into ``v``."""
        self.types = self._infer_types()
        while self._fold_one():
            pass
        self._prune_casts()
        del self.g.value_info[:]  # renamed values: let consumers infer types afresh

    def _infer_types(self) -> dict[str, int]:
        try:
            graph = onnx.shape_inference.infer_shapes(self.model).graph
        except Exception:  # inference is a refinement: Cast outputs are known anyway
            graph = self.g
        types = {i.name: i.data_type for i in graph.initializer}
        for v in [*graph.input, *graph.value_info, *graph.output]:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        for node in self.g.node:
            to = cast_target(node)
            if to is not None:
                types[node.output[0]] = to
        return types

    def _fold_one(self) -> bool:
        producer = {o: n for n in self.g.node for o in n.output if o}
        outputs = {v.name for v in self.g.output}
        fixed = {v.name for v in self.g.input} | {i.name for i in self.g.initializer}
        for node in self.g.node:
            to = cast_target(node)
            if to is None or to not in IO_TYPES.values():
                continue
            up = producer.get(node.input[0])
            if up is None or cast_target(up) != TensorProto.FLOAT:
                continue
            source = up.input[0]
            if self.types.get(source) != to:
                continue
            out = node.output[0]
            if out not in outputs:
                self.rename_uses(out, source)
            elif source in fixed or source in outputs:
                continue  # an output cannot take the name of an input or another output
            else:
                producer[source].output[:] = [
                    out if t == source else t for t in producer[source].output
                ]
                self.rename_uses(source, out)
                self.types[out] = to
            self.g.node.remove(node)
            return True
        return False

    def _prune_casts(self) -> None:
        while True:
            read = {t for n in self.g.node for t in n.input} | {v.name for v in self.g.output}
            dead = [n for n in self.g.node if n.op_type == "Cast" and n.output[0] not in read]
            if not dead:
                return
            for node in dead:
                self.g.node.remove(node)


def float_io(
    model: onnx.ModelProto, inputs: Mapping[str, str], outputs: Mapping[str, str]
) -> list[str]:
    """Give the named graph inputs / outputs their fp16 / bf16 precision, in place.

    Args:
        model: the exported model (fp32 inputs and outputs).
        inputs: graph input name -> precision; only fp16 / bf16 on a float input change.
        outputs: graph output name -> precision, the same way.

    Returns:
        Notes for the export report (which inputs and outputs changed type).
    """
    r = _Retyper(model)
    changed: dict[str, list[str]] = {}
    float32 = TensorProto.FLOAT
    for values, wanted, retype, role in (
        (model.graph.input, inputs, r.retype_input, "inputs"),
        (model.graph.output, outputs, r.retype_output, "outputs"),
    ):
        for value in values:
            precision = wanted.get(value.name)
            if precision in IO_TYPES and value.type.tensor_type.elem_type == float32:
                retype(value, IO_TYPES[precision])
                changed.setdefault(f"{precision} {role}", []).append(value.name)
    if changed:
        r.simplify()
    return [f"{what}: {', '.join(names)}" for what, names in changed.items()]


class OrtSession:
    """A file run in ONNX Runtime (CPU, default optimisations; fused MatMulNBits at accuracy
    level 1, as the file says: `mixq.export.ort_accuracy`), as `ort_session` makes it.

    Attributes:
        names: the file's output names, in order (a run returns those, then the extras).
    """

    def __init__(self, source: str | bytes, names: list[str], fetch: list[str]) -> None:
        import onnxruntime as ort

        self.names, self.fetch = names, fetch
        self.session = ort.InferenceSession(
            source, session_options(), providers=["CPUExecutionProvider"]
        )

    def __call__(self, arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        inputs = self.session.get_inputs()
        if isinstance(arrays, Mapping):
            arrays = [arrays[i.name] for i in inputs]
        feeds = {i.name: _feed(a, i.type) for i, a in zip(inputs, arrays, strict=True)}
        got = [np.asarray(g) for g in self.session.run(self.fetch, feeds)]
        return [g.astype(np.float32) if g.dtype == np.float16 else g for g in got]


def ort_session(path: Any, extra: Sequence[str] = ()) -> OrtSession:
    """Run ``path`` in ONNX Runtime (CPU): float32 arrays in (a list in input order, or
    by input name), float32 arrays out.

    Inputs are converted to the file's input types (fp16, bf16); fp16 / bf16 outputs are
    read back as float32 (bf16 through a Cast added to the session's copy of the model,
    as NumPy has no bf16). ``extra`` names intermediate values to return after the outputs,
    as float32, each through a Cast (a QuantizeLinear's output: its DequantizeLinear) made a
    graph output of the session's copy: ORT then no longer fuses the nodes around them, so
    they locate a difference rather than measure it.

    Example:
        >>> # run = ort_session("model.onnx"); outputs = run([x]); run.names
    """
    model = onnx.load(str(path))
    names = [o.name for o in model.graph.output]
    bf16 = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == _BF16}
    widen = bf16 | set(extra)
    wide = {n: f"{n}/mixq_check_fp32" for n in [*names, *extra] if n in widen}
    quantized = {o: n for n in model.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    for name, to_fp32 in wide.items():
        model.graph.node.append(_as_float(name, to_fp32, quantized.get(name)))
        model.graph.output.append(helper.make_tensor_value_info(to_fp32, TensorProto.FLOAT, None))
    source = model.SerializeToString() if wide else str(path)
    return OrtSession(source, names, [wide.get(n, n) for n in [*names, *extra]])


def _as_float(name: str, out: str, quantize: onnx.NodeProto | None) -> onnx.NodeProto:
    """A node reading ``name`` as float32: a Cast, or for a QuantizeLinear's output the
    DequantizeLinear of the same scale (the value a Q/DQ pair would have passed on)."""
    if quantize is None:
        return helper.make_node("Cast", [name], [out], to=TensorProto.FLOAT)
    axis = [a for a in quantize.attribute if a.name in ("axis", "block_size")]
    dq = helper.make_node("DequantizeLinear", [name, *quantize.input[1:3]], [out])
    dq.attribute.extend(axis)
    return dq


def _feed(array: np.ndarray, ort_type: str) -> Any:
    if ort_type == "tensor(float16)":
        return np.asarray(array, dtype=np.float16)
    if ort_type == "tensor(bfloat16)":
        import ml_dtypes
        import onnxruntime as ort

        bits = np.asarray(array, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, TensorProto.BFLOAT16)
    return array
