"""Float islands for the ONNX export: ops the plan runs in fp16 / bf16 really compute in it.

On the export graph (after the quantizers became export ops), every op whose output
precision is fp16 or bf16 gets its float inputs cast down and its output cast back to fp32.
Neighbouring island ops of one precision pass values to each other without the round trip,
and the Sim's rounding cast after an island op is dropped (the value is already in that
precision). Model inputs and outputs stay fp32 (ONNX converters' ``keep_io_types``); the
exporters' ``keep_io_types=False`` retypes them afterwards (`mixq.export.io_types`).

Constants enter an island converted offline (parameters, buffers, tensor constants, scalar
arguments), their finite values beyond the type's range clamped to its largest finite value
as ONNX Runtime's float16 converter does (``max_finite_val``): a mask's
``finfo(float32).min`` becomes -65504 in fp16, not -inf, which times the mask's 0 is NaN.
Infinities stay infinite; an export note names the ops whose constants were clamped.

Example:
    >>> # notes = make_float_islands(graph_module, sim)   # ['3 ops run in fp16: ...']
    >>> finite_in(-3.4e38, "fp16"), finite_in(float("-inf"), "fp16"), finite_in(2, "fp16")
    (-65504.0, -inf, 2)
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import torch
from torch import fx

import mixq.export.onnx_ops  # noqa: F401  (registers torch.ops.mixq.*)
from mixq.graph.kinds import is_data_movement

__all__ = ["clamped_note", "finite_in", "make_float_islands"]

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_TO_COPY = torch.ops.aten._to_copy.default
_EXPORT_OPS = {torch.ops.mixq.qdq.default, torch.ops.mixq.dq.default, torch.ops.mixq.cast.default}


def finite_in(value: Any, precision: str) -> Any:
    """``value`` (a tensor or a Python float) with its finite values beyond ``precision``'s
    range clamped to the largest finite value; infinities, NaN and other types unchanged."""
    big = torch.finfo(_DTYPES[precision]).max
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return torch.where(value.isinf(), value, value.clamp(-big, big))
    if isinstance(value, float) and math.isfinite(value) and abs(value) > big:
        return math.copysign(big, value)
    return value


def _changes(value: Any, precision: str) -> bool:
    """Whether `finite_in` changes ``value``."""
    out = finite_in(value, precision)
    if isinstance(value, torch.Tensor):
        return bool(((out != value) & ~value.isnan()).any())
    return bool(out != value)


def clamped_note(precision: str, ops: list[str]) -> str:
    """The export note naming the island ops whose constants were clamped.

    Example:
        >>> clamped_note("fp16", ["mul"])
        "1 op reads constants beyond fp16's range, clamped to +-65504 (a mask's finfo.min?): mul"
    """
    big = torch.finfo(_DTYPES[precision]).max
    count = "1 op reads" if len(ops) == 1 else f"{len(ops)} ops read"
    return (
        f"{count} constants beyond {precision}'s range, clamped to +-{big:.5g} "
        f"(a mask's finfo.min?): {', '.join(ops[:6])}"
    )


def _flat(args: Any) -> list[Any]:
    if isinstance(args, (list, tuple)):
        return [a for x in args for a in _flat(x)]
    return [args]


def _is_float(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def _converts_dtype(node: fx.Node) -> bool:
    """An explicit cast in the model (RMSNorm's ``x.to(torch.float32)``, ``.float()``): its
    output has the dtype it names, not the island's, so it cannot be an island op; it
    stays a cast and its neighbours cast at the boundary as for any fp32 value."""
    return "dtype" in node.kwargs or any(isinstance(a, torch.dtype) for a in node.args)


class _Islands:
    def __init__(self, gm: fx.GraphModule, sim: Any) -> None:
        self.gm, self.sim, self.graph = gm, sim, gm.graph
        self.nodes = {n.name: n for n in self.graph.nodes}
        self.back: dict[fx.Node, tuple[fx.Node, str]] = {}  # fp32 cast -> (island op, dtype)
        self.converted: dict[tuple[str, str], fx.Node] = {}
        self.clamped: dict[str, list[str]] = {}  # precision -> island ops with a clamped constant
        self.clamped_attrs: set[tuple[str, str]] = set()

    def run(self) -> list[str]:
        done: dict[str, list[str]] = {}
        for op in self.sim.graph:
            plan = self.sim.plan.ops.get(op.name)
            if plan is None or is_data_movement(op.kind) or not plan.output:
                continue
            precision = plan.output[0]
            node = self.nodes.get(self.sim.op_nodes.get(op.name, ""))
            if precision in _DTYPES and node is not None and not _converts_dtype(node):
                self._island(node, precision)
                done.setdefault(precision, []).append(op.name)
        self.graph.lint()
        self.gm.recompile()
        notes = [f"{len(ops)} ops run in {p}: {', '.join(ops[:6])}" for p, ops in done.items()]
        return notes + [clamped_note(p, ops) for p, ops in self.clamped.items()]

    def _island(self, node: fx.Node, precision: str) -> None:
        with self.graph.inserting_before(node):
            args = tuple(self._down(a, precision) for a in node.args)
        if any(self._clamps(a, precision) for a in _flat(node.args)):
            self.clamped.setdefault(precision, []).append(node.name)
        node.args = args
        with self.graph.inserting_after(node):
            back = self.graph.call_function(_TO_COPY, (node,), {"dtype": torch.float32})
        node.replace_all_uses_with(back, delete_user_cb=lambda u: u is not back)
        self.back[back] = (node, precision)
        for user in list(back.users):  # the Sim's rounding cast is now a no-op
            if user.target == torch.ops.mixq.cast.default and user.args[1] == precision:
                user.replace_all_uses_with(back)
                self.graph.erase_node(user)

    def _down(self, arg: Any, precision: str) -> Any:
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._down(a, precision) for a in arg)
        if not isinstance(arg, fx.Node):
            return finite_in(arg, precision)  # a scalar: a constant of the island
        if arg in self.back and self.back[arg][1] == precision:
            return self.back[arg][0]  # the neighbouring island op's own output
        source = arg
        if arg.target == torch.ops.mixq.cast.default and arg.args[1] == precision:
            source = cast(fx.Node, arg.args[0])  # a weight the Sim rounds to this anyway
        if source.op == "get_attr" and isinstance(self._attr(source), torch.Tensor):
            return self._parameter(source, precision)
        if _is_float(arg) or arg.target in _EXPORT_OPS:
            return self.graph.call_function(_TO_COPY, (arg,), {"dtype": _DTYPES[precision]})
        return arg

    def _clamps(self, arg: Any, precision: str) -> bool:
        """Whether the island's copy of ``arg`` (a scalar or a node) was clamped."""
        if not isinstance(arg, fx.Node):
            return _changes(arg, precision)
        if arg.target == torch.ops.mixq.cast.default and arg.args[1] == precision:
            arg = cast(fx.Node, arg.args[0])
        return (str(arg.target), precision) in self.clamped_attrs

    def _attr(self, node: fx.Node) -> Any:
        """What a ``get_attr`` node reads: a parameter, a buffer or a tensor constant."""
        return functools.reduce(getattr, str(node.target).split("."), self.gm)

    def _parameter(self, node: fx.Node, precision: str) -> fx.Node:
        """The tensor ``node`` reads, converted offline (clamped, see the module)."""
        key = (str(node.target), precision)
        if key not in self.converted:
            value = self._attr(node).detach()
            if value.is_floating_point():
                if _changes(value, precision):
                    self.clamped_attrs.add(key)
                value = finite_in(value, precision).to(_DTYPES[precision])
            attr = f"mixq_{precision}_{len(self.converted)}"
            self.gm.register_buffer(attr, value)
            self.converted[key] = self.graph.get_attr(attr)
        return self.converted[key]


def make_float_islands(gm: fx.GraphModule, sim: Any) -> list[str]:
    """Rewrite ``gm`` (the export graph of ``sim``) so fp16 / bf16 ops compute in them."""
    return _Islands(gm, sim).run()
