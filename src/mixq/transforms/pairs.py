"""Where a per-channel scale can move between two layers without changing the float model.

A `ScalePair` is a producer whose output channels can be divided by ``s`` (a linear or conv
layer, the batch-norm after a conv, or a LayerNorm) and the linear / conv consumers whose
input channels are then multiplied by ``s``. Between them only ops that commute with a
positive per-channel scale may sit: ReLU, pooling, dropout, reshapes and transposes, and the
right operand of a matmul (the attention's ``probs @ V``). Every path from the producer must
end at such a consumer: a residual add, a LayerNorm, a GELU or a model output stops the pair
(in post-LN BERT that rules out the LayerNorms, whose outputs also feed the residual adds).

Where no producer can take the scale (a LayerNorm whose output also feeds a residual add, a
GELU), `find_branches` pairs the tensor with the linear layers that read it: the scale goes
on their side of the fork, as one per-channel multiply of each linear's input (a forward
pre-hook with the buffer ``smooth_inv_scale``, captured as a ``mul`` op of that linear's
module), and the weights take ``s``. That adds a ``Mul`` per linear to the exported model.

`apply_scale` then rewrites the weights in place; `verify_exact` runs the model and undoes a
pair whose outputs moved by more than the float tolerance (a channel mapping it could not see).

Example:
    >>> import torch
    >>> from mixq.sim.torch.capture import capture
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> graph = capture(model, (torch.randn(3, 4),)).graph
    >>> [(p.producer, p.scaled, p.consumers) for p in find_pairs(graph, model)]
    [('0', '0', ['2'])]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixq.analysis.metrics import float_leaves
from mixq.graph.ir import Graph, Op
from mixq.transforms.side_path import OUTLIER_PATH, side_path
from mixq.transforms.stats import run_batches

__all__ = [
    "INPUT_SCALE",
    "ScalePair",
    "apply_scale",
    "attach_input_scale",
    "consumer_ranges",
    "detach_input_scale",
    "find_branches",
    "find_pairs",
    "max_relative_error",
    "module_weight",
    "producer_ranges",
    "single_use",
    "verify_exact",
]

# Ops through which y = f(x) gives f(x / s) = f(x) / s per channel, for s > 0.
_COMMUTING = frozenset(
    {
        "relu",
        "dropout",
        "reshape",
        "flatten",
        "transpose",
        "permute",
        "contiguous",
        "clone",
        "alias",
        "identity",
        "detach",
        "squeeze",
        "unsqueeze",
        "max_pool",
        "avg_pool",
    }
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
INPUT_SCALE = "smooth_inv_scale"  # the buffer a branch pair's linear multiplies its input by
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class ScalePair:
    """A producer op, the module whose output is divided by ``s``, and the consumers.

    Attributes:
        producer: the producer op's name (a linear, conv or layer_norm op); for a branch, the
            tensor the linears read.
        module: the producer's module path ("" for a branch).
        kind: the kind of the scaled module: ``linear``, ``conv``, ``batch_norm``,
            ``layer_norm``, or ``branch`` (each consumer divides its own input).
        scaled: module path of the scaled module (the conv's batch-norm when one follows;
            "" for a branch).
        consumers: module paths of the linear / conv layers whose input channels get ``s``.
        channels: the number of channels.
    """

    producer: str
    module: str
    kind: str
    scaled: str
    consumers: list[str]
    channels: int


def _reach(graph: Graph, tensor: str, depth: int = 0) -> list[Op] | None:
    """Weighted consumers reached from ``tensor`` through commuting ops; None if some path
    ends anywhere else."""
    if tensor in graph.outputs or depth > 32:
        return None
    found: list[Op] = []
    for op in graph.consumers(tensor):
        if op.kind in ("linear", "conv") and op.weights and op.inputs == [tensor]:
            found.append(op)
            continue
        right_operand = op.kind == "matmul" and not op.weights and op.inputs[1:] == [tensor]
        if not (right_operand or (op.kind in _COMMUTING and op.inputs == [tensor])):
            return None
        for out in op.outputs:
            more = _reach(graph, out, depth + 1)
            if more is None:
                return None
            found += more
    return found


def single_use(graph: Graph) -> set[str]:
    """Module paths run by exactly one op (a shared module cannot take two scales)."""
    counts = Counter(op.module for op in graph)
    return {m for m, n in counts.items() if n == 1}


def _scaled_module(graph: Graph, model: nn.Module, op: Op) -> tuple[str, str, str] | None:
    """(kind, module path, output tensor) of what divides the producer's output by s."""
    module = model.get_submodule(op.module)
    if op.kind == "layer_norm":
        ok = isinstance(module, nn.LayerNorm) and module.weight is not None
        return ("layer_norm", op.module, op.outputs[0]) if ok else None
    if op.kind == "conv" and isinstance(module, _CONV):
        after = graph.consumers(op.outputs[0])
        if len(after) == 1 and after[0].kind == "batch_norm":
            bn = model.get_submodule(after[0].module)
            if not (isinstance(bn, _BN) and bn.affine):
                return None
            return "batch_norm", after[0].module, after[0].outputs[0]
        return "conv", op.module, op.outputs[0]
    if op.kind == "linear" and isinstance(module, nn.Linear):
        return "linear", op.module, op.outputs[0]
    return None


def _in_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, _CONV) and module.groups == 1:
        return module.in_channels
    return None


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, _BN):
        return module.num_features
    return int(module.out_channels)  # type: ignore[arg-type]


def find_pairs(
    graph: Graph, model: nn.Module, producers: tuple[str, ...] = ("linear", "conv", "layer_norm")
) -> list[ScalePair]:
    """Every producer (of the given kinds) whose output channels can take a scale exactly."""
    single = single_use(graph)
    pairs = []
    for op in graph:
        if op.kind not in producers or op.module not in single:
            continue
        scaled = _scaled_module(graph, model, op)
        if scaled is None or scaled[1] not in single:
            continue
        kind, path, out = scaled
        consumers = _reach(graph, out)
        if not consumers or any(c.module not in single for c in consumers):
            continue
        channels = _out_channels(model.get_submodule(path))
        paths = [c.module for c in consumers]
        if all(_in_channels(model.get_submodule(p)) == channels for p in paths):
            pairs.append(ScalePair(op.name, op.module, kind, path, paths, channels))
    return pairs


def find_branches(graph: Graph, model: nn.Module, taken: list[ScalePair]) -> list[ScalePair]:
    """Tensors read by single-use ``nn.Linear`` layers that no pair in ``taken`` scales: one
    branch pair per tensor, its consumers those linears (other readers keep the tensor)."""
    single = single_use(graph)
    covered = {c for p in taken for c in p.consumers}
    readers: dict[str, list[str]] = {}
    for op in graph:
        if op.kind != "linear" or not op.weights or len(op.inputs) != 1:
            continue
        module = model.get_submodule(op.module)
        if isinstance(module, nn.Linear) and op.module in single and op.module not in covered:
            readers.setdefault(op.inputs[0], []).append(op.module)
    pairs = []
    for tensor, paths in readers.items():
        widths = {_in_channels(model.get_submodule(p)) for p in paths}
        if len(widths) == 1:
            pairs.append(ScalePair(tensor, "", "branch", "", paths, int(widths.pop() or 0)))
    return pairs


def _scale_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook of a branch pair's linear: its input times ``smooth_inv_scale``."""
    inv = getattr(module, INPUT_SCALE, None)
    if inv is None or not args:
        return None
    return (args[0] * inv, *args[1:])


def attach_input_scale(module: nn.Module, inv: torch.Tensor) -> None:
    old = getattr(module, INPUT_SCALE, None)
    if isinstance(old, torch.Tensor):
        getattr(module, INPUT_SCALE).mul_(inv)
        return
    module.register_buffer(INPUT_SCALE, inv.detach().clone())
    module.register_forward_pre_hook(_scale_input)


def detach_input_scale(module: nn.Module) -> None:
    module._buffers.pop(INPUT_SCALE, None)
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _scale_input:
            del module._forward_pre_hooks[key]


def module_weight(model: nn.Module, path: str) -> torch.Tensor:
    """The ``weight`` parameter of the module at ``path``."""
    weight = getattr(model.get_submodule(path), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"module {path!r} has no weight tensor")
    return weight


def _along(s: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
    """``s`` shaped to scale ``weight`` along ``axis``."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    return s.reshape(shape)


@torch.no_grad()
def apply_scale(model: nn.Module, pair: ScalePair, s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s`` (a branch: each consumer's input) and
    multiply the consumers' input channels."""
    if pair.kind == "branch":
        for path in pair.consumers:
            attach_input_scale(model.get_submodule(path), 1.0 / s)
    else:
        _divide_producer(model, pair, s)
    for path in pair.consumers:
        weight = module_weight(model, path)
        weight.mul_(_along(s, weight, 1))
        side = side_path(model.get_submodule(path))
        if side is not None and pair.kind != "branch":  # it reads x / s too
            side.linear.weight.mul_(s[side.index])


def _divide_producer(model: nn.Module, pair: ScalePair, s: torch.Tensor) -> None:
    weight = module_weight(model, pair.scaled)
    weight.div_(_along(s, weight, 0))
    bias = getattr(model.get_submodule(pair.scaled), "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s)
    side = side_path(model.get_submodule(pair.scaled))
    if side is not None:  # its output is part of the producer's
        side.linear.weight.div_(s[:, None])


def _rows(w: torch.Tensor, axis: int) -> torch.Tensor:
    """max |w| per index of ``axis``."""
    return w.detach().abs().movedim(axis, 0).reshape(w.shape[axis], -1).amax(dim=1)


def producer_ranges(model: nn.Module, pair: ScalePair) -> torch.Tensor:
    """max |w| per output channel of the producer, batch-norm folded in (what is quantized)."""
    ranges = _rows(module_weight(model, pair.module), 0)
    if pair.kind == "batch_norm":
        bn = model.get_submodule(pair.scaled)
        assert isinstance(bn, _BN) and bn.running_var is not None
        ranges = ranges * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs().detach()
    return ranges


def consumer_ranges(model: nn.Module, pair: ScalePair) -> torch.Tensor:
    """max |w| per input channel over all the consumers."""
    ranges = [_rows(module_weight(model, p), 1) for p in pair.consumers]
    return torch.stack(ranges).amax(dim=0)


def _snapshot(model: nn.Module, pair: ScalePair) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    paths = (pair.scaled, *pair.consumers)
    sides = tuple(f"{p}.{OUTLIER_PATH}." for p in paths)
    return {
        k: v.clone()
        for k, v in state.items()
        if k.rsplit(".", 1)[0] in paths or k.startswith(sides)
    }


def max_relative_error(before: list[Any], after: list[Any]) -> float:
    """max |a - b| / max |b| over every float output leaf."""
    worst = 0.0
    for ref_out, out in zip(before, after, strict=True):
        for r, o in zip(float_leaves(ref_out), float_leaves(out), strict=True):
            r, o = r.detach().double(), o.detach().double()
            scale = float(r.abs().max()) or 1.0
            worst = max(worst, float((r - o).abs().max()) / scale)
    return worst


def verify_exact(
    model: nn.Module,
    pair: ScalePair,
    s: torch.Tensor,
    batches: list[Any],
    reference: list[Any],
    tolerance: float,
) -> float | None:
    """Apply ``s`` to ``pair``; keep it if the outputs on ``batches`` stay within
    ``tolerance`` of ``reference`` (the outputs on them before).

    Returns:
        The relative output change, or None when the pair was undone.
    """
    saved = _snapshot(model, pair)
    fresh = [p for p in pair.consumers if not hasattr(model.get_submodule(p), INPUT_SCALE)]
    apply_scale(model, pair, s)
    error = max_relative_error(reference, run_batches(model, batches))
    if error <= tolerance:
        return error
    for path in fresh if pair.kind == "branch" else []:
        detach_input_scale(model.get_submodule(path))
    model.load_state_dict(saved, strict=False)
    return None
