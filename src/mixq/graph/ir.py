"""The framework-neutral graph: ops and the tensors between them.

Backends (torch/, onnx/) build a `Graph`; everything above them reads only this.

Example:
    >>> g = Graph()
    >>> g.add_input("x", "float32")
    >>> g.add_op(Op("fc", "linear", module="fc", inputs=["x"], outputs=["fc"],
    ...             weights={"weight": "fc.weight"}))
    >>> g.outputs.append("fc")
    >>> [op.name for op in g.consumers("x")]
    ['fc']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Graph", "Op", "Tensor"]


@dataclass
class Tensor:
    """A value flowing between ops.

    Attributes:
        name: unique in the graph.
        dtype: element type as a string (``float32``, ``int64``, ``bool``...).
        producer: name of the producing op, or None for a model input.
        consumers: names of the ops that read it, in graph order.
        quantizable: a float tensor that carries activations (not a mask or shape
            computed only from integer inputs and constants).
        shape: static shape where known (symbolic dims as None).
    """

    name: str
    dtype: str
    producer: str | None = None
    consumers: list[str] = field(default_factory=list)
    quantizable: bool = False
    shape: tuple[int | None, ...] | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))


@dataclass
class Op:
    """One operation of the model.

    Attributes:
        name: stable, unique name (the module path for a module's only op; a second call
            of the same module gets ``#1``; functional ops get ``<module>.<kind>[_n]``).
        kind: canonical op kind (see `mixq.graph.kinds`).
        module: dotted path of the innermost module that ran the op ("" at the root).
        module_type: class name of that module, for rules by module class.
        inputs: activation tensors it reads (weights and constants excluded).
        outputs: tensors it produces.
        weights: role -> parameter name, for the parameters it reads (``{"weight": "fc.weight"}``).
        attrs: small backend facts the graph layer uses (e.g. ``weight_axis``).
    """

    name: str
    kind: str
    module: str = ""
    module_type: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass
class Graph:
    """Ops in topological order and the tensors between them."""

    ops: dict[str, Op] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # module path -> qualified names of its class and base classes (for rules by class)
    modules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # ops the model computes but no output reads (a pooler left unused, a zeros_like nobody
    # reads): pruned at capture, so they get no quantizer; "module.kind" -> module path
    dead: dict[str, str] = field(default_factory=dict)

    def add_input(self, name: str, dtype: str, shape: tuple[int | None, ...] | None = None) -> None:
        self.tensors[name] = Tensor(
            name, dtype, None, quantizable=dtype.startswith("float"), shape=shape
        )
        self.inputs.append(name)

    def add_op(self, op: Op, dtypes: dict[str, str] | None = None) -> None:
        """Append an op (after its inputs' producers) and register its output tensors.

        Float outputs carry activations when the op reads weights or an activation; float
        tensors computed only from integer inputs and constants (attention masks, position
        tables) do not.
        """
        if op.name in self.ops:
            raise ValueError(f"duplicate op name {op.name!r}")
        self.ops[op.name] = op
        for t in op.inputs:
            self.tensors[t].consumers.append(op.name)
        carries = bool(op.weights) or any(self.tensors[t].quantizable for t in op.inputs)
        for t in op.outputs:
            dtype = (dtypes or {}).get(t, "float32")
            self.tensors[t] = Tensor(t, dtype, op.name)
            self.tensors[t].quantizable = carries and self.tensors[t].is_float

    def producer(self, tensor: str) -> Op | None:
        p = self.tensors[tensor].producer
        return self.ops[p] if p is not None else None

    def consumers(self, tensor: str) -> list[Op]:
        return [self.ops[c] for c in self.tensors[tensor].consumers]

    def float_inputs(self, op: Op) -> list[str]:
        """The op's inputs that carry quantizable activations."""
        return [t for t in op.inputs if self.tensors[t].quantizable]

    def float_outputs(self, op: Op) -> list[str]:
        return [t for t in op.outputs if self.tensors[t].quantizable]

    def is_input_scale(self, op: Op) -> bool:
        """Whether ``op`` only scales the input of the layer it belongs to: a ``mul`` with
        one float input whose every reader is a linear of the same module (a smoothing or
        outlier mask on the layer's input, `mixq.transforms.pairs`). It folds into the
        quantizer of its output, so it reads its input as it was produced."""
        if op.kind != "mul" or len(self.float_inputs(op)) != 1:
            return False
        readers = [c for t in op.outputs for c in self.consumers(t)]
        return bool(readers) and all(c.kind == "linear" and c.module == op.module for c in readers)

    def is_quantizable(self, op: Op) -> bool:
        """Ops that touch activations or weights; the plan lists only these."""
        return bool(op.weights or self.float_inputs(op) or self.float_outputs(op))

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops.values())

    def __len__(self) -> int:
        return len(self.ops)
