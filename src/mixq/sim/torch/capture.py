"""Capture a PyTorch model with `torch.export` and describe it as a `Graph`.

Example:
    >>> import torch
    >>> cap = capture(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()),
    ...               (torch.randn(3, 4),))
    >>> [(op.name, op.kind) for op in cap.graph]
    [('0', 'linear'), ('1', 'relu')]
"""

from __future__ import annotations

import copy
import inspect
import logging
import operator
import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import fx
from torch.export import Dim
from torch.utils import _pytree as pytree

from mixq.core.errors import CaptureError
from mixq.graph.ir import Graph, Op
from mixq.sim.inputs import split_inputs  # re-exported: its home is mixq.sim.inputs
from mixq.sim.torch.fold import fold_computed_weights
from mixq.sim.torch.kinds import canonical_kind, weight_arg
from mixq.sim.torch.outputs import flatten_cache_outputs

__all__ = ["Captured", "capture", "dynamic_shapes", "split_inputs"]

_SKIP = {
    "sym_size",
    "_assert_tensor_metadata",
    "_assert_scalar",
    "sym_constrain_range_for_size",
    "_assert_async",
    "sym_numel",
    "sym_storage_offset",
    "sym_stride",
}


@dataclass
class Captured:
    """The exported module, its Graph, and which fx node holds each tensor / op."""

    module: fx.GraphModule
    graph: Graph
    tensor_nodes: dict[str, fx.Node] = field(default_factory=dict)
    op_nodes: dict[str, fx.Node] = field(default_factory=dict)
    example_inputs: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
    notes: list[str] = field(default_factory=list)
    static: bool = False  # captured for the example's shapes only (dynamic shapes failed)


def dynamic_shapes(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Every dimension of every tensor input may vary (export specialises what must not)."""

    def spec(x: Any) -> Any:
        return {i: Dim.AUTO for i in range(x.ndim)} if isinstance(x, torch.Tensor) else None

    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    return {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def _user_frame(exc: BaseException) -> str:
    """The last line of user code in the traceback or message, as 'file:line'."""
    text = str(exc)
    found = re.findall(r'File "([^"]+)", line (\d+)', text)
    found += re.findall(r"File: (\S+):(\d+) in ", text)
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]
    candidates = [(f, int(n)) for f, n in found] + frames
    library = (str(Path(torch.__file__).parent), str(Path(__file__).parent.parent))
    user = [(f, n) for f, n in candidates if not f.startswith((*library, "<"))]
    return f"{user[-1][0]}:{user[-1][1]}" if user else "unknown location"


def _export(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.export.ExportedProgram, str | None]:
    """The exported program, and why it holds only the example's shapes (None: dynamic)."""
    # Export logs a warning for every dimension it had to keep static (channels, ...).
    logging.getLogger("torch._export.non_strict_utils").setLevel(logging.ERROR)
    try:
        dynamic = dynamic_shapes(model, args, kwargs)
        return torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=dynamic), None
    except Exception as first:
        try:
            ep = torch.export.export(model, args, kwargs, strict=False)
            return ep, f"at {_user_frame(first)}: {str(first).strip().splitlines()[0][:200]}"
        except Exception:
            summary = str(first).strip().splitlines()[0][:300]
            raise CaptureError(
                f"torch.export could not capture {type(model).__name__} "
                f"(at {_user_frame(first)}): {summary}\n"
                "What to try: remove data-dependent Python control flow (an `if` on a "
                "tensor's value) or rewrite it with torch.where / torch.cond; move "
                "non-tensor side effects (print, .item(), numpy) out of forward; or export "
                "the model to ONNX yourself and pass the .onnx file to mixq."
            ) from first


def capture(model: torch.nn.Module, example_inputs: Any) -> Captured:
    """Export a copy of ``model`` (the original is never touched) and build its Graph.

    Args:
        model: the float model; it is deep-copied and put in eval mode.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    """
    args, kwargs = split_inputs(example_inputs)
    model = copy.deepcopy(model).eval()
    notes = flatten_cache_outputs(model)
    ep, static_why = _export(model, args, kwargs)
    leaves = {name for name, m in model.named_modules() if not any(m.children())}
    gm = ep.module()
    drift = traced_drift(model, gm, args, kwargs)
    if drift is not None:
        notes.append(
            f"torch.export's program differs from the eager model by up to {drift:.2g} on "
            "the example inputs (the model's code takes another path when traced, e.g. a mask "
            "it builds only under tracing); with every quantizer off the Sim equals the "
            "exported program, not the eager model"
        )
    folded = fold_computed_weights(gm, lambda node: _call_key(node)[1])
    dead = prune_dead_code(gm)
    captured = _GraphBuilder(gm, leaves).build()
    captured.graph.dead = dead
    captured.graph.modules = {name: _class_names(m) for name, m in model.named_modules()}
    captured.example_inputs = (args, kwargs)
    captured.notes = notes
    if folded:
        captured.notes.append(
            f"weights computed from parameters (weight norm, parametrizations) folded into "
            f"constants at capture: {', '.join(folded)}"
        )
    if static_why is not None:
        captured.static = True
        captured.notes.append(
            f"captured for the example's input shapes only: torch.export could not keep them "
            f"dynamic ({static_why}); pass example inputs of the shapes you will run"
        )
    return captured


def traced_drift(
    model: torch.nn.Module, gm: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> float | None:
    """The largest difference between the eager model's and the exported program's outputs
    on the example inputs; None where they agree bit for bit (or cannot be compared)."""
    with torch.no_grad():
        eager, traced = (
            [x for x in pytree.tree_leaves(run(*args, **kwargs)) if isinstance(x, torch.Tensor)]
            for run in (model, gm)
        )
    if len(eager) != len(traced):
        return None
    pairs = [(a, b) for a, b in zip(eager, traced, strict=True)
             if a.shape == b.shape and a.dtype == b.dtype and a.is_floating_point()]  # fmt: skip
    diff = [float((a - b).abs().nan_to_num().max()) for a, b in pairs
            if a.numel() and not torch.equal(a.nan_to_num(), b.nan_to_num())]  # fmt: skip
    return max(diff) if diff else None


def prune_dead_code(gm: fx.GraphModule) -> dict[str, str]:
    """Remove the ops no model output depends on (side-effect free ones only) and return
    them as ``{"<module path>.<kind>": module path}``.

    A model often computes what it does not return: a ``BertModel`` wrapped for mean-pooled
    embeddings still runs its pooler. Left in, those ops would get quantizers that never
    affect an output, calibrate on values nobody reads, and vanish from the ONNX export.
    """
    graph = gm.graph
    live: set[fx.Node] = set()
    # roots: the output, effectful calls, and submodule calls (export's input guards)
    stack = [
        n
        for n in graph.nodes
        if n.op in ("output", "call_module") or (n.op != "placeholder" and n.is_impure())
    ]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(node.all_input_nodes)
    dead: dict[str, str] = {}
    for node in reversed(list(graph.nodes)):
        if node in live or node.op in ("placeholder", "output"):
            continue
        if node.op == "call_function" and node.target is not operator.getitem:
            name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
            val = node.meta.get("val")
            if name not in _SKIP and (isinstance(val, torch.Tensor) or _is_tensor_seq(val)):
                _, path, _ = _call_key(node)
                kind = canonical_kind(node.target)
                dead[f"{path}.{kind}" if path else kind] = path
        graph.erase_node(node)
    if dead:
        graph.lint()
        gm.recompile()
    return dict(reversed(list(dead.items())))


def _class_names(module: torch.nn.Module) -> tuple[str, ...]:
    """Qualified names of the module's class and its bases, up to nn.Module."""
    mro = type(module).__mro__
    return tuple(f"{c.__module__}.{c.__qualname__}" for c in mro[: mro.index(torch.nn.Module)])


def _dtype(node: fx.Node) -> str:
    val = node.meta.get("val")
    return str(val.dtype).removeprefix("torch.") if isinstance(val, torch.Tensor) else "other"


def _shape(node: fx.Node) -> tuple[int | None, ...] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else None for d in val.shape)


def _call_key(node: fx.Node) -> tuple[str, str, str]:
    """(call id, module path, module class) of the innermost module that ran ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "", ""
    key, (path, cls) = list(stack.items())[-1]
    if "nn_module_stack" in key:  # export's placeholder entry for ops outside any module
        return "", "", ""
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path).removeprefix("L.self.")
    path = path.removeprefix("L['self'].").removeprefix("self.")
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "")
    return key, path, cls_name


class _GraphBuilder:
    def __init__(self, gm: fx.GraphModule, leaves: set[str]) -> None:
        self.gm = gm
        self.leaves = leaves
        self.graph = Graph()
        self.cap = Captured(gm, self.graph)
        self.params = {name for name, _ in gm.named_parameters()}
        self.tensor_of: dict[fx.Node, str] = {}

    def build(self) -> Captured:
        nodes = [n for n in self.gm.graph.nodes if self._keep(n)]
        names = self._op_names(nodes)
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
                self.graph.add_input(node.name, _dtype(node), _shape(node))
                self._bind(node.name, node)
            elif node in names:
                self._add_op(node, names[node])
            elif node.op == "call_function" and node.target is operator.getitem:
                self._bind_getitem(node)
            elif node.op == "output":
                outs = pytree.tree_leaves(node.args)
                self.graph.outputs = [
                    self.tensor_of[n]
                    for n in outs
                    if isinstance(n, fx.Node) and n in self.tensor_of
                ]
        return self.cap

    def _keep(self, node: fx.Node) -> bool:
        if node.op != "call_function" or node.target is operator.getitem:
            return False
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        val = node.meta.get("val")
        return name not in _SKIP and (isinstance(val, torch.Tensor) or _is_tensor_seq(val))

    def _op_names(self, nodes: list[fx.Node]) -> dict[fx.Node, str]:
        per_call = Counter(_call_key(n)[0] for n in nodes)
        used: Counter[str] = Counter()
        names: dict[fx.Node, str] = {}
        for n in nodes:
            key, path, _ = _call_key(n)
            call = key.rsplit("@", 1)[1] if "@" in key else ""
            base = f"{path}#{call}" if call else path
            if base and per_call[key] == 1 and path in self.leaves:
                names[n] = base
                continue
            kind = canonical_kind(n.target)
            stem = f"{base}.{kind}" if base else kind
            names[n] = stem if used[stem] == 0 else f"{stem}_{used[stem]}"
            used[stem] += 1
        return names

    def _bind(self, tensor: str, node: fx.Node) -> None:
        self.tensor_of[node] = tensor
        self.cap.tensor_nodes[tensor] = node

    def _bind_getitem(self, node: fx.Node) -> None:
        src, index = node.args[0], node.args[1]
        if isinstance(src, fx.Node) and src in self.cap.op_nodes.values():
            op_name = next(k for k, v in self.cap.op_nodes.items() if v is src)
            self._bind(f"{op_name}:{index}", node)

    def _add_op(self, node: fx.Node, name: str) -> None:
        _, path, cls = _call_key(node)
        kind = canonical_kind(node.target)
        inputs, weights, attrs = self._operands(node, kind)
        val: Any = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            outputs, dtypes = [name], {name: _dtype(node)}
        else:
            outputs = [f"{name}:{i}" for i in range(len(val))]
            dtypes = {
                o: str(v.dtype).removeprefix("torch.") for o, v in zip(outputs, val, strict=True)
            }
        op = Op(name, kind, path, cls, inputs, outputs, weights, attrs)
        self.graph.add_op(op, dtypes)
        self.cap.op_nodes[name] = node
        if isinstance(val, torch.Tensor):
            self._bind(name, node)

    def _operands(
        self, node: fx.Node, kind: str
    ) -> tuple[list[str], dict[str, str], dict[str, object]]:
        inputs: list[str] = []
        weights: dict[str, str] = {}
        attrs: dict[str, object] = {}
        w_index = weight_arg(kind, node.target)
        for i, arg in enumerate(node.args):
            for a in pytree.tree_leaves(arg):
                if not isinstance(a, fx.Node):
                    continue
                if a.op == "get_attr":
                    if i == w_index and a.target in self.params:
                        weights["weight"] = str(a.target)
                        attrs.update(_weight_axes("matmul" if i == 2 else kind, a))
                elif a in self.tensor_of and self.tensor_of[a] not in inputs:
                    inputs.append(self.tensor_of[a])
        if kind == "batch_norm":
            attrs.update(_bn_attrs(node))
        return inputs, weights, attrs


def _is_tensor_seq(val: Any) -> bool:
    return (
        isinstance(val, (tuple, list))
        and bool(val)
        and all(isinstance(v, torch.Tensor) for v in val)
    )


def _weight_axes(kind: str, weight: fx.Node) -> dict[str, object]:
    ndim = weight.meta["val"].ndim if isinstance(weight.meta.get("val"), torch.Tensor) else 2
    if kind == "conv_transpose":
        return {"weight_axis": 1, "weight_in_axis": 0}
    if kind == "matmul":
        return {"weight_axis": ndim - 1, "weight_in_axis": ndim - 2}
    return {"weight_axis": 0, "weight_in_axis": 1}


def _bn_attrs(node: fx.Node) -> dict[str, object]:
    """Names of the batch-norm parameters the Sim needs to fold it into a conv's weight."""
    args = node.args
    name = getattr(node.target, "__name__", "")
    eps_index = 6 if "no_training" in name else 7

    def target(a: Any) -> str | None:
        return str(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None

    return {
        "bn_weight": target(args[1]),
        "bn_bias": target(args[2]),
        "bn_running_mean": target(args[3]),
        "bn_running_var": target(args[4]),
        "bn_eps": float(cast(float, args[eps_index])) if len(args) > eps_index else 1e-5,
    }
