"""Float islands of the ONNX export: ops planned in fp16 / bf16 compute in that type.

As `mixq.export.islands` does for the torch export: float inputs cast down (initializers and
Constant nodes converted offline, their finite values beyond the type's range clamped to its
largest finite value, not turned into inf: see there), float outputs cast back to fp32,
neighbouring island ops of one type connected directly, the Sim's rounding Cast pair after
an island op dropped. Model inputs and outputs stay fp32 (``keep_io_types=False`` retypes
them afterwards, `mixq.export.io_types`).

Example:
    >>> # notes = OnnxIslands(edit).run()    # edit: a `ModelEdit` of an ONNX Sim
    >>> # ['3 ops run in fp16: fc1, relu, fc2']
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mixq.core.qtypes import qtype
from mixq.export.islands import clamped_note
from mixq.export.onnx_edit import FLOAT_TYPES, ModelEdit, cast_target, initializer
from mixq.graph.kinds import is_data_movement
from mixq.sim.onnx.capture import elem_type
from mixq.sim.onnx.rewrite import toposort

__all__ = ["OnnxIslands"]


def _name_of(elem: int) -> str:
    names: dict[int, str] = {int(v): k for k, v in FLOAT_TYPES.items()}
    return names.get(elem, "fp32")


def finite_in(values: np.ndarray, elem: int) -> np.ndarray:
    """``values`` with finite ones beyond ONNX type ``elem``'s range clamped to its largest
    finite value (ONNX Runtime's float16 converter's ``max_finite_val``); inf stays inf.

    Example:
        >>> finite_in(np.array([-3.4e38, -np.inf, 1.0]), TensorProto.FLOAT16).tolist()
        [-65504.0, -inf, 1.0]
    """
    big = qtype(_name_of(elem)).max_finite
    return np.where(np.isinf(values), values, np.clip(values, -big, big)).astype(values.dtype)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The float32 value of a ``Constant`` node (None for other nodes and types)."""
    if node.op_type != "Constant" or len(node.attribute) != 1:
        return None
    value = helper.get_attribute_value(node.attribute[0])
    if isinstance(value, onnx.TensorProto):
        array = numpy_helper.to_array(value) if value.data_type == TensorProto.FLOAT else None
    elif node.attribute[0].name in ("value_float", "value_floats"):
        array = np.asarray(value, dtype=np.float32)
    else:
        array = None
    return array


def _elem_types(edit: ModelEdit) -> dict[str, int]:
    """Element type per value name: the Sim's tensors, refined by ONNX shape inference."""
    types = {n: elem_type(t.dtype) for n, t in edit.sim.graph.tensors.items()}
    try:
        graph = onnx.shape_inference.infer_shapes(edit.model).graph
    except Exception:  # inference is a refinement: unknown values stay as they are
        graph = edit.g
    types.update({i.name: i.data_type for i in graph.initializer})
    for v in [*graph.input, *graph.value_info, *graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


class OnnxIslands:
    """Makes the ops the plan runs in fp16 / bf16 compute in that type, in ``edit``."""

    def __init__(self, edit: ModelEdit) -> None:
        self.ex, self.g = edit, edit.g
        self.types = _elem_types(edit)
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.back: dict[str, tuple[str, int]] = {}  # fp32 value -> (island output, type)
        self.down: dict[tuple[str, int], str] = {}  # (value, type) -> converted / cast down
        self.clamped: set[str] = set()  # converted constants that held values beyond the type

    def run(self) -> list[str]:
        """Rewrite every island op; one note per precision, naming its ops."""
        done: dict[str, list[str]] = {}
        clamped: dict[str, list[str]] = {}
        nodes = {n.name: n for n in self.g.node}
        for op in self.ex.sim.graph:
            plan = self.ex.sim.plan.ops.get(op.name)
            if plan is None or is_data_movement(op.kind) or not plan.output:
                continue
            if plan.output[0] in FLOAT_TYPES and op.name in nodes:
                if self._island(nodes[op.name], FLOAT_TYPES[plan.output[0]]):
                    clamped.setdefault(plan.output[0], []).append(op.name)
                done.setdefault(plan.output[0], []).append(op.name)
        available = {v.name for v in self.g.input} | {i.name for i in self.g.initializer}
        nodes_in_order = toposort(list(self.g.node), available)
        del self.g.node[:]
        self.g.node.extend(nodes_in_order)
        notes = [f"{len(ops)} ops run in {p}: {', '.join(ops[:6])}" for p, ops in done.items()]
        return notes + [clamped_note(p, ops) for p, ops in clamped.items()]

    def _island(self, node: onnx.NodeProto, elem: int) -> bool:
        """Make ``node`` compute in ``elem``; True if a constant it reads was clamped."""
        for i, t in enumerate(node.input):
            if t:
                node.input[i] = self._down(t, elem)
        clamped = any(t in self.clamped for t in node.input)
        for k, out in enumerate(node.output):
            if out and self.types.get(out) == TensorProto.FLOAT:
                raw = self.ex.fresh(f"{out}/{_name_of(elem)}")
                node.output[k] = raw
                self._cast(raw, TensorProto.FLOAT, out)
                self.back[out] = (raw, elem)
                self._drop_rounding(out, elem)
        return clamped

    def _drop_rounding(self, out: str, elem: int) -> None:
        """The Sim's ``Cast(elem) -> Cast(float)`` after ``out`` is a no-op now."""
        for low in [n for n in self.g.node if out in n.input and cast_target(n) == elem]:
            for up in [n for n in self.g.node if low.output[0] in n.input]:
                if cast_target(up) == TensorProto.FLOAT:
                    self.ex.replace(up.output[0], out)

    def _down(self, t: str, elem: int) -> str:
        """``t`` in type ``elem``: an island output, a converted constant or a Cast."""
        if t in self.back and self.back[t][1] == elem:
            return self.back[t][0]  # the neighbouring island op's own output
        low = self._rounding(t, elem)
        if low is not None:  # a value the Sim rounds to this type anyway
            return self._rounded(low, elem)
        if (t, elem) in self.down:
            return self.down[t, elem]
        values = self._constant(t)
        if values is not None:
            return self._converted(t, elem, values)
        if self.types.get(t) != TensorProto.FLOAT:
            return t
        self.down[t, elem] = self._cast(t, elem)
        return self.down[t, elem]

    def _rounded(self, low: onnx.NodeProto, elem: int) -> str:
        """The source of the Sim's rounding Cast ``low`` in type ``elem``."""
        source = low.input[0]
        if source in self.back and self.back[source][1] == elem:
            return self.back[source][0]
        if (source, elem) in self.down:
            return self.down[source, elem]
        values = self._constant(source)
        return low.output[0] if values is None else self._converted(source, elem, values)

    def _rounding(self, t: str, elem: int) -> onnx.NodeProto | None:
        """The ``Cast(elem)`` of the Sim's rounding pair ``Cast(elem) -> Cast(float)``
        that gives ``t`` (None if ``t`` is not one)."""
        up = self.producer.get(t)
        if up is None or cast_target(up) != TensorProto.FLOAT:
            return None
        low = self.producer.get(up.input[0])
        return low if low is not None and cast_target(low) == elem else None

    def _constant(self, t: str) -> np.ndarray | None:
        """The value of ``t`` if it is a float32 initializer or Constant (None otherwise)."""
        if t in self.ex.inits:
            init = self.ex.inits[t]
            return numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        node = self.producer.get(t)
        return None if node is None else _constant_value(node)

    def _converted(self, name: str, elem: int, values: np.ndarray) -> str:
        """The constant ``name`` (of ``values``) as an initializer of type ``elem``, clamped
        (see the module)."""
        if (name, elem) not in self.down:
            finite = finite_in(values, elem)
            tensor = initializer(self.ex.fresh(f"{name}/{_name_of(elem)}"), finite, elem)
            self.g.initializer.append(tensor)
            self.ex.inits[tensor.name] = tensor
            self.down[name, elem] = tensor.name
            if not np.array_equal(finite, values, equal_nan=True):
                self.clamped.add(tensor.name)
        return self.down[name, elem]

    def _cast(self, x: str, elem: int, out: str | None = None) -> str:
        name = self.ex.fresh(f"{x}/to_{_name_of(elem)}")
        out = out or name
        node = helper.make_node("Cast", [x], [out], name=name, to=elem)
        self.g.node.append(node)
        self.producer[out] = node
        return out
