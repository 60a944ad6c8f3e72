"""A copy of an ONNX Sim's model open for editing: lookups, fresh names, renames, pruning.

The ONNX exporter (`mixq.export.onnx_freeze`) and its float islands
(`mixq.export.onnx_islands`) rewrite one `ModelEdit`. Its graph inputs and outputs all have
a shape (`complete_io_types`): converters often write outputs with only an element type,
which ONNX Runtime accepts and the ONNX checker does not.

Example:
    >>> from onnx import helper
    >>> node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)
    >>> cast_target(node) == TensorProto.FLOAT16
    True
    >>> initializer("s", 0.5, TensorProto.FLOAT).data_type == TensorProto.FLOAT
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mixq.sim.onnx.capture import subgraph_inputs
from mixq.sim.onnx.rewrite import fresh_name

if TYPE_CHECKING:
    from mixq.sim.onnx.sim import OnnxSim

__all__ = [
    "FLOAT_TYPES",
    "ModelEdit",
    "cast_target",
    "complete_io_types",
    "exclude_pool_overhang",
    "inferred_values",
    "initializer",
    "share_equal_constants",
    "subgraph_inputs",
]

FLOAT_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_NUMPY: dict[int, type[np.generic]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16,
}


def initializer(name: str, values: Any, elem: int) -> onnx.TensorProto:
    """An initializer of ONNX type ``elem`` (4-bit and bf16 values through make_tensor)."""
    array = np.asarray(values)
    if elem in _NUMPY:
        return numpy_helper.from_array(array.astype(_NUMPY[elem]), name)
    flat = array.reshape(-1).tolist()
    return helper.make_tensor(name, elem, list(array.shape), flat)


def cast_target(node: onnx.NodeProto) -> int | None:
    """The element type a Cast node casts to (None for any other node)."""
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _has_shape(value: onnx.ValueInfoProto) -> bool:
    """Whether the checker takes ``value`` as a main-graph input / output (sequence and
    map values are left as they are)."""
    if not value.HasField("type"):
        return False
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return True
    return tensor.elem_type != 0 and tensor.HasField("shape")


def inferred_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Graph inputs, outputs and values with what ONNX's shape inference knows of them
    (empty where inference fails; ``model`` is not changed)."""
    try:
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # inference is a refinement: a run of the Sim gives the rank anyway
        return {}
    return {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}


def complete_io_types(
    values: Sequence[onnx.ValueInfoProto],
    model: onnx.ModelProto,
    run: Callable[[], Mapping[str, np.ndarray]],
) -> None:
    """Give each tensor value without a shape (or element type) one, in place: the shape ONNX
    infers on ``model`` where it knows one, else the rank of the value in ``run()`` (a run of
    the Sim, called only then) with dimensions left unknown, which holds for any input size.

    Example:
        >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        >>> complete_io_types([y], onnx.ModelProto(), lambda: {"y": np.zeros((2, 3))})
        >>> len(y.type.tensor_type.shape.dim)
        2
    """
    missing = [v for v in values if not _has_shape(v)]
    inferred = inferred_values(model) if missing else {}
    arrays: Mapping[str, np.ndarray] | None = None
    for value in missing:
        known = inferred.get(value.name)
        elem = value.type.tensor_type.elem_type
        if known is not None and _has_shape(known) and known.type.HasField("tensor_type"):
            shape = known.type.tensor_type.shape
            value.type.tensor_type.shape.CopyFrom(shape)
            value.type.tensor_type.elem_type = elem or known.type.tensor_type.elem_type
            continue
        arrays = run() if arrays is None else arrays
        if value.name in arrays:
            array = np.asarray(arrays[value.name])
            elem = elem or helper.np_dtype_to_tensor_dtype(array.dtype)
            value.type.CopyFrom(helper.make_tensor_type_proto(elem, [None] * array.ndim))


class ModelEdit:
    """A copy of ``sim.model`` without the outputs the Sim exposes for analyses, with the
    producer of each value, the initializers by name and the names taken."""

    def __init__(self, sim: OnnxSim) -> None:
        self.sim = sim
        self.model = onnx.ModelProto()
        self.model.CopyFrom(sim.model)
        self.g = self.model.graph
        del self.g.output[len(sim.output_names) :]
        inputs = [v for v in self.g.input if v.name in sim.input_names]
        complete_io_types([*inputs, *self.g.output], self.model, self._float_run)
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.inits = {i.name: i for i in self.g.initializer}
        self.used = set(self.producer) | set(self.inits) | {v.name for v in self.g.input}

    def _float_run(self) -> dict[str, np.ndarray]:
        """The Sim's inputs and outputs on its example inputs, every quantizer off."""
        args, kwargs = self.sim.example_inputs
        feeds = self.sim.input_feeds(kwargs or args)
        outputs = self.sim.run_feeds(feeds, self.sim.output_names, enabled=())
        return {**feeds, **dict(zip(self.sim.output_names, outputs, strict=True))}

    def fresh(self, name: str) -> str:
        """``name``, or ``name`` with a suffix if the model already has that name."""
        return fresh_name(name, self.used)

    def replace(self, old: str, new: str) -> None:
        """Every reader of ``old`` (a node or a model output) reads ``new``."""
        for node in self.g.node:
            for i, t in enumerate(node.input):
                if t == old:
                    node.input[i] = new
        for out in self.g.output:
            if out.name == old:
                out.name = new

    def rename(self, old: str, new: str) -> None:
        """The value ``old`` is called ``new`` (by its producer, readers and value_info)."""
        for node in self.g.node:
            for values in (node.input, node.output):
                for i, t in enumerate(values):
                    if t == old:
                        values[i] = new
        for v in self.g.value_info:
            if v.name == old:
                v.name = new

    def prune(self) -> None:
        """Drop nodes, initializers and inputs nothing reads (the Wheres, control inputs)."""
        live = self._live_nodes()
        inits = [i for i in self.g.initializer if i.name in live]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)
        inputs = [v for v in self.g.input if v.name in self.sim.input_names]
        del self.g.input[:]
        self.g.input.extend(inputs)
        value_info = [v for v in self.g.value_info if v.name in live]
        del self.g.value_info[:]
        self.g.value_info.extend(value_info)

    def _live_nodes(self) -> set[str]:
        """Keep the nodes the outputs need; the names they read."""
        live = {o.name for o in self.g.output}
        kept = []
        for node in reversed(self.g.node):  # the Sim's nodes are in topological order
            if any(o in live for o in node.output):
                kept.append(node)
                live.update(node.input)
                live.update(subgraph_inputs(node))
        del self.g.node[:]
        self.g.node.extend(reversed(kept))
        return live


def exclude_pool_overhang(graph: onnx.GraphProto) -> list[str]:
    """Set ``count_include_pad=0`` on every unpadded ``ceil_mode`` AveragePool; return their
    names.

    Without padding, the attribute only decides whether a window hanging over the input's
    end (``ceil_mode``) divides by its full size. PyTorch never counts the overhang (its
    ``count_include_pad`` counts padding only) and neither does ORT's float AveragePool, but
    ORT's QLinearAveragePool, which replaces DQ -> AveragePool -> Q, does: EfficientNet's
    pooler (``AvgPool2d(hidden_dim, ceil_mode=True)``, a 1280 window over a 7 x 7 map)
    came out all zeros. With ``count_include_pad=0`` all of them compute the same mean.

    Example:
        >>> pool = helper.make_node("AveragePool", ["x"], ["y"], "pool", kernel_shape=[8, 8],
        ...                         ceil_mode=1, count_include_pad=1)
        >>> g = helper.make_graph([pool], "g", [], [])
        >>> exclude_pool_overhang(g), [a.i for a in pool.attribute if a.name == "ceil_mode"]
        (['pool'], [1])
        >>> [a.i for a in g.node[0].attribute if a.name == "count_include_pad"]
        [0]
    """
    changed = []
    for node in graph.node:
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: a for a in node.attribute}
        ceil = attrs.get("ceil_mode")
        include = attrs.get("count_include_pad")
        pads = list(attrs["pads"].ints) if "pads" in attrs else []
        auto_pad = attrs["auto_pad"].s if "auto_pad" in attrs else b"NOTSET"
        if ceil is None or not ceil.i or include is None or not include.i:
            continue
        if any(pads) or auto_pad not in (b"NOTSET", b"VALID"):
            continue
        include.i = 0
        changed.append(node.name)
    return changed


def share_equal_constants(graph: onnx.GraphProto) -> int:
    """Make initializers of equal type, shape and values one (the first one's name); return
    how many were dropped.

    ONNX Runtime's common-subexpression elimination merges nodes only where they read the
    same values by name. Smoothing gives each linear of a fork (attention's query, key and
    value) the same multiply and its quantizer the same scale; once their constants are
    one, ORT computes the multiply and the QuantizeLinear once for all three. Graph inputs
    and outputs, values read inside subgraphs and external data keep their own names.

    Example:
        >>> values = {"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.0, 3.0]}
        >>> inits = [initializer(n, v, TensorProto.FLOAT) for n, v in values.items()]
        >>> muls = [helper.make_node("Mul", ["x", c], [f"y{c}"]) for c in values]
        >>> g = helper.make_graph(muls, "g", [], [], inits)
        >>> share_equal_constants(g), [n.input[1] for n in g.node], [i.name for i in g.initializer]
        (1, ['a', 'a', 'c'], ['a', 'c'])
    """
    fixed = {v.name for v in [*graph.input, *graph.output]}
    for node in graph.node:
        fixed |= subgraph_inputs(node)
    alike: dict[tuple[int, tuple[int, ...]], list[onnx.TensorProto]] = {}
    for tensor in graph.initializer:
        if tensor.name not in fixed and tensor.data_location != TensorProto.EXTERNAL:
            alike.setdefault((tensor.data_type, tuple(tensor.dims)), []).append(tensor)
    shared: dict[str, str] = {}
    for group in (g for g in alike.values() if len(g) > 1):
        first: dict[bytes, onnx.TensorProto] = {}  # by digest: no copy of the values kept
        for tensor in group:
            values = numpy_helper.to_array(tensor)
            digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).digest()
            seen = first.setdefault(digest, tensor)
            if seen is not tensor and np.array_equal(numpy_helper.to_array(seen), values):
                shared[tensor.name] = seen.name
    if not shared:
        return 0
    kept = [t for t in graph.initializer if t.name not in shared]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in graph.node:
        inputs = [shared.get(name, name) for name in node.input]
        del node.input[:]
        node.input.extend(inputs)
    infos = [v for v in graph.value_info if v.name not in shared]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(shared)
