"""Float islands of the ONNX export: ops planned in fp16 / bf16 compute in that type.

As `mixq.export.islands` does for the torch export: float inputs cast down (initializers
converted, fp16 ones clamped to the largest finite value), float outputs cast back to fp32,
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

from mixq.export.onnx_edit import FLOAT_TYPES, ModelEdit, cast_target, initializer
from mixq.graph.kinds import is_data_movement
from mixq.sim.onnx.capture import elem_type
from mixq.sim.onnx.rewrite import toposort

__all__ = ["OnnxIslands"]


def _name_of(elem: int) -> str:
    names: dict[int, str] = {int(v): k for k, v in FLOAT_TYPES.items()}
    return names.get(elem, "fp32")


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

    def run(self) -> list[str]:
        """Rewrite every island op; one note per precision, naming its ops."""
        done: dict[str, list[str]] = {}
        nodes = {n.name: n for n in self.g.node}
        for op in self.ex.sim.graph:
            plan = self.ex.sim.plan.ops.get(op.name)
            if plan is None or is_data_movement(op.kind) or not plan.output:
                continue
            if plan.output[0] in FLOAT_TYPES and op.name in nodes:
                self._island(nodes[op.name], FLOAT_TYPES[plan.output[0]])
                done.setdefault(plan.output[0], []).append(op.name)
        available = {v.name for v in self.g.input} | {i.name for i in self.g.initializer}
        nodes_in_order = toposort(list(self.g.node), available)
        del self.g.node[:]
        self.g.node.extend(nodes_in_order)
        return [f"{len(ops)} ops run in {p}: {', '.join(ops[:6])}" for p, ops in done.items()]

    def _island(self, node: onnx.NodeProto, elem: int) -> None:
        for i, t in enumerate(node.input):
            if t:
                node.input[i] = self._down(t, elem)
        for k, out in enumerate(node.output):
            if out and self.types.get(out) == TensorProto.FLOAT:
                raw = self.ex.fresh(f"{out}/{_name_of(elem)}")
                node.output[k] = raw
                self._cast(raw, TensorProto.FLOAT, out)
                self.back[out] = (raw, elem)
                self._drop_rounding(out, elem)

    def _drop_rounding(self, out: str, elem: int) -> None:
        """The Sim's ``Cast(elem) -> Cast(float)`` after ``out`` is a no-op now."""
        for low in [n for n in self.g.node if out in n.input and cast_target(n) == elem]:
            for up in [n for n in self.g.node if low.output[0] in n.input]:
                if cast_target(up) == TensorProto.FLOAT:
                    self.ex.replace(up.output[0], out)

    def _down(self, t: str, elem: int) -> str:
        """``t`` in type ``elem``: an island output, a converted initializer or a Cast."""
        if t in self.back and self.back[t][1] == elem:
            return self.back[t][0]  # the neighbouring island op's own output
        low = self._rounding(t, elem)
        if low is not None:  # a value the Sim rounds to this type anyway
            return self._rounded(low, elem)
        if t in self.ex.inits and self.ex.inits[t].data_type == TensorProto.FLOAT:
            return self._converted(t, elem)
        if self.types.get(t) != TensorProto.FLOAT:
            return t
        if (t, elem) not in self.down:
            self.down[t, elem] = self._cast(t, elem)
        return self.down[t, elem]

    def _rounded(self, low: onnx.NodeProto, elem: int) -> str:
        """The source of the Sim's rounding Cast ``low`` in type ``elem``."""
        source = low.input[0]
        if source in self.back and self.back[source][1] == elem:
            return self.back[source][0]
        return self._converted(source, elem) if source in self.ex.inits else low.output[0]

    def _rounding(self, t: str, elem: int) -> onnx.NodeProto | None:
        """The ``Cast(elem)`` of the Sim's rounding pair ``Cast(elem) -> Cast(float)``
        that gives ``t`` (None if ``t`` is not one)."""
        up = self.producer.get(t)
        if up is None or cast_target(up) != TensorProto.FLOAT:
            return None
        low = self.producer.get(up.input[0])
        return low if low is not None and cast_target(low) == elem else None

    def _converted(self, name: str, elem: int) -> str:
        if (name, elem) not in self.down:
            values = numpy_helper.to_array(self.ex.inits[name])
            if elem == TensorProto.FLOAT16:
                values = np.clip(values, np.finfo(np.float16).min, np.finfo(np.float16).max)
            tensor = initializer(self.ex.fresh(f"{name}/{_name_of(elem)}"), values, elem)
            self.g.initializer.append(tensor)
            self.ex.inits[tensor.name] = tensor
            self.down[name, elem] = tensor.name
        return self.down[name, elem]

    def _cast(self, x: str, elem: int, out: str | None = None) -> str:
        name = self.ex.fresh(f"{x}/to_{_name_of(elem)}")
        out = out or name
        node = helper.make_node("Cast", [x], [out], name=name, to=elem)
        self.g.node.append(node)
        self.producer[out] = node
        return out
