"""Kernels spelled out op by op (layer / RMS norms, GELU): one region, no quantizer inside.

Exporters and model code often write a layer norm as its arithmetic: TorchScript-exported
BERTs as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; Llama's and T5's RMS
norm as pow, mean, add, rsqrt, mul, mul. Compilers and runtimes fuse these back into one
LayerNormalization / RMSNorm kernel (ONNX Runtime's LayerNormFusion, NPU compilers' norm
patterns). Quantizing the inside is wrong twice over: no deployed kernel rounds there, and the
squares and variance span a range no 8-bit grid holds (on a real MiniLM the variance of most
tokens rounds to zero, the division then explodes: -1 dB end to end).

`norm_regions` finds them by structure, not by name: a mean of a square (``pow`` or
``x * x``) of a tensor ``c``, then a chain of ``add`` (epsilon), ``sqrt`` / ``rsqrt`` /
``reciprocal`` and casts, read by a ``div`` or ``mul`` whose other operand is ``c`` again;
``c`` is either the input itself (RMS norm) or ``x - mean(x)`` (layer norm); a following
scale and shift (``mul`` / ``add`` by a parameter or constant) and casts belong to it too. A
region is kept only where nothing outside it reads a tensor inside it.

`activation_regions` finds a smooth activation written as arithmetic: GELU as
``x * 0.5 * (1 + erf(x / sqrt 2))`` (TorchScript exports) or with ``tanh`` (GPT-2's
``gelu_new`` in PyTorch itself). From the ``erf`` / ``tanh`` it walks back to the tensor
``x`` the formula forks from, then takes every elementwise op that reads only ``x`` and the
region's own results; the region must hand exactly one tensor on (runtimes fuse it into one
Gelu: ONNX Runtime's GeluFusion, NPU compilers' activation patterns).

Example:
    >>> from mixq.graph.ir import Graph, Op
    >>> g = Graph(); g.add_input("x", "float32")
    >>> def op(name, kind, *inputs):
    ...     g.add_op(Op(name, kind, inputs=list(inputs), outputs=[name]))
    >>> op("sq", "pow", "x"); op("var", "mean", "sq"); op("eps", "add", "var")
    >>> op("r", "rsqrt", "eps"); op("n", "mul", "x", "r"); op("w", "mul", "n")
    >>> norm_regions(g)
    [('sq', 'var', 'eps', 'r', 'n', 'w')]
    >>> op("d", "div", "w"); op("e", "erf", "d"); op("one", "add", "e"); op("g", "mul", "w", "one")
    >>> activation_regions(g)
    [('d', 'e', 'one', 'g')]
"""

from __future__ import annotations

from mixq.graph.ir import Graph, Op
from mixq.graph.kinds import IDENTITY_KINDS

__all__ = ["activation_regions", "composite_regions", "norm_regions"]

_CASTS = IDENTITY_KINDS | {"to", "type_as"}
_STATISTIC = frozenset({"add", "sqrt", "rsqrt", "reciprocal"}) | _CASTS
_AFFINE = frozenset({"mul", "add"}) | _CASTS
_SQUASH = frozenset({"erf", "tanh"})
_ELEMENTWISE = frozenset({"mul", "add", "sub", "div", "pow", "neg", "sqrt"}) | _SQUASH | _CASTS


def _single_input(graph: Graph, op: Op) -> str | None:
    ins = graph.float_inputs(op)
    return ins[0] if len(ins) == 1 else None


def _only_reader(graph: Graph, tensor: str) -> Op | None:
    readers = graph.consumers(tensor)
    if len(readers) != 1 or tensor in graph.outputs:
        return None
    return readers[0]


def _root(graph: Graph, tensor: str, taken: list[str] | None = None) -> str:
    """``tensor`` before any casts (the casts' names appended to ``taken``)."""
    while (op := graph.producer(tensor)) is not None and op.kind in _CASTS:
        source = _single_input(graph, op)
        if source is None:
            break
        if taken is not None:
            taken.append(op.name)
        tensor = source
    return tensor


def _squared(graph: Graph, op: Op) -> str | None:
    """The tensor ``op`` squares (``pow`` of one activation, or ``t * t``)."""
    ins = graph.float_inputs(op)
    if op.kind == "pow" and len(ins) == 1:
        return ins[0]
    if op.kind == "mul" and len(ins) == 2 and ins[0] == ins[1]:
        return ins[0]
    return None


def _follow(graph: Graph, tensor: str, kinds: frozenset[str], ops: list[str]) -> str:
    """Walk single readers of ``kinds`` with one activation input; return the last tensor."""
    while (nxt := _only_reader(graph, tensor)) is not None and nxt.kind in kinds:
        if _single_input(graph, nxt) != tensor or len(nxt.outputs) != 1:
            break
        ops.append(nxt.name)
        tensor = nxt.outputs[0]
    return tensor


def _region(graph: Graph, mean: Op) -> list[str] | None:
    source = _single_input(graph, mean)
    square = graph.producer(source) if source is not None else None
    centred = _squared(graph, square) if square is not None else None
    if centred is None or square is None:
        return None
    ops = [square.name, mean.name]
    scale = _follow(graph, mean.outputs[0], _STATISTIC, ops)
    if not any(graph.ops[n].kind in ("sqrt", "rsqrt", "reciprocal") for n in ops):
        return None
    norm = _only_reader(graph, scale)
    if norm is None or norm.kind not in ("div", "mul") or len(norm.outputs) != 1:
        return None
    ins = graph.float_inputs(norm)
    other = [t for t in ins if t != scale]
    if len(ins) != 2 or len(other) != 1 or (norm.kind == "div" and ins[1] != scale):
        return None
    casts: list[str] = []
    if _root(graph, other[0], casts) != _root(graph, centred, casts):
        return None
    ops += [norm.name, *casts]
    sub = graph.producer(_root(graph, centred))
    if sub is not None and sub.kind == "sub":
        x_and_mean = graph.float_inputs(sub)
        first = graph.producer(x_and_mean[1]) if len(x_and_mean) == 2 else None
        if (
            first is not None
            and first.kind == "mean"
            and graph.float_inputs(first) == [x_and_mean[0]]
        ):
            ops += [first.name, sub.name]
    _follow(graph, norm.outputs[0], _AFFINE, ops)
    return ops


def _shared_cast(graph: Graph, op: Op, names: set[str]) -> bool:
    """A cast on the region's input that others read too (a residual branch): outside."""
    if op.kind not in _CASTS:
        return False
    source = graph.tensors[op.inputs[0]].producer if op.inputs else None
    readers = graph.tensors[op.outputs[0]].consumers
    return source not in names and any(r not in names for r in readers)


def _closed(graph: Graph, names: set[str], last: str) -> bool:
    """Whether only ops in ``names`` read what ops in ``names`` produce (but ``last``)."""
    for name in names - {last}:
        for t in graph.ops[name].outputs:
            if t in graph.outputs or any(c not in names for c in graph.tensors[t].consumers):
                return False
    return True


def norm_regions(graph: Graph) -> list[tuple[str, ...]]:
    """Every spelled-out layer / RMS norm of ``graph``: its ops in graph order, the last
    one producing the normalized output."""
    order = {name: i for i, name in enumerate(graph.ops)}
    regions: list[tuple[str, ...]] = []
    taken: set[str] = set()
    for op in graph:
        if op.kind != "mean" or op.name in taken:
            continue
        found = _region(graph, op)
        if not found:
            continue
        names = set(found)
        names -= {n for n in found if _shared_cast(graph, graph.ops[n], names)}
        ordered = tuple(sorted(names, key=order.__getitem__))
        if names & taken or not _closed(graph, names, ordered[-1]):
            continue
        regions.append(ordered)
        taken |= names
    return regions


def _fork(graph: Graph, tensor: str) -> str | None:
    """Up from ``tensor`` through one-input elementwise ops to the first tensor read twice."""
    while len(graph.tensors[tensor].consumers) < 2:
        op = graph.producer(tensor)
        source = _single_input(graph, op) if op is not None else None
        if op is None or op.kind not in _ELEMENTWISE or source is None:
            return None
        tensor = source
    return tensor


def _activation(graph: Graph, squash: Op, order: dict[str, int]) -> tuple[str, ...] | None:
    source = _single_input(graph, squash)
    x = _fork(graph, source) if source is not None else None
    if x is None:
        return None
    inside: set[str] = set()
    produced = {x}
    grew = True
    while grew:
        grew = False
        for t in list(produced):
            for op in graph.consumers(t):
                ins = graph.float_inputs(op)
                if op.name in inside or op.kind not in _ELEMENTWISE or len(op.outputs) != 1:
                    continue
                if ins and all(i in produced for i in ins):
                    inside.add(op.name)
                    produced.add(op.outputs[0])
                    grew = True
    if squash.name not in inside:
        return None
    ordered = tuple(sorted(inside, key=order.__getitem__))
    return ordered if _closed(graph, inside, ordered[-1]) else None


def activation_regions(graph: Graph, taken: set[str] | None = None) -> list[tuple[str, ...]]:
    """Every spelled-out GELU (erf or tanh form) of ``graph``, ops in graph order."""
    order = {name: i for i, name in enumerate(graph.ops)}
    taken = set(taken or ())
    regions: list[tuple[str, ...]] = []
    for op in graph:
        if op.kind not in _SQUASH or op.name in taken:
            continue
        found = _activation(graph, op, order)
        if found and len(found) > 1 and not taken & set(found):
            regions.append(found)
            taken |= set(found)
    return regions


def composite_regions(graph: Graph) -> list[tuple[str, ...]]:
    """`norm_regions` and `activation_regions`, neither overlapping the other."""
    norms = norm_regions(graph)
    return norms + activation_regions(graph, {n for r in norms for n in r})
