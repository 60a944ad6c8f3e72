"""Module call counts of a PyTorch model: which modules run more than once (shared) and with
what output ranges, and which never run (unused) — the first sections of `mixq.check`.

Example:
    >>> import torch
    >>> relu = torch.nn.ReLU()
    >>> calls, shared, unused = call_rows(record_calls(torch.nn.Sequential(relu, relu),
    ...                                                torch.tensor([-1.0, 2.0])))
    >>> [(r["module"], r["calls"]) for r in shared]
    [('0', 2)]
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mixq.analysis.metrics import float_leaves
from mixq.sim.torch.capture import split_inputs

__all__ = ["ModuleCalls", "call_rows", "record_calls"]


# Never called by design: they only hold their children.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


# A shared module whose calls' ranges differ by more than this wants a quantizer per call.
_SEPARATE_RATIO = 2.0


# -- call counts -----------------------------------------------------------------------------
@dataclass
class ModuleCalls:
    """One module's calls: the output range ``(min, max)`` of each (None: no float output)."""

    name: str
    type: str
    container: bool = False
    ranges: list[tuple[float, float] | None] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.ranges)


def record_calls(model: nn.Module, example_inputs: Any) -> dict[str, ModuleCalls]:
    """Run a copy of ``model`` in eval mode once and record every module's calls.

    Example:
        >>> relu = torch.nn.ReLU()
        >>> calls = record_calls(torch.nn.Sequential(relu, relu), torch.tensor([-1.0, 2.0]))
        >>> calls["0"].ranges
        [(0.0, 2.0), (0.0, 2.0)]
    """
    copied = copy.deepcopy(model).eval()
    records = {
        name: ModuleCalls(name, type(m).__name__, isinstance(m, _CONTAINERS))
        for name, m in copied.named_modules()
    }
    handles = [
        m.register_forward_hook(_recorder(records[name])) for name, m in copied.named_modules()
    ]
    args, kwargs = split_inputs(example_inputs)
    try:
        with torch.no_grad():
            copied(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _recorder(record: ModuleCalls) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        record.ranges.append(_output_range(output))

    return hook


def _output_range(output: Any) -> tuple[float, float] | None:
    leaves = [t for t in float_leaves(output) if t.numel()]
    if not leaves:
        return None
    return min(float(t.min()) for t in leaves), max(float(t.max()) for t in leaves)


def _shared_row(r: ModuleCalls) -> dict[str, Any]:
    ratio = _range_ratio([x for x in r.ranges if x is not None])
    return {
        "module": r.name,
        "type": r.type,
        "calls": r.calls,
        "ranges": ["-" if x is None else f"[{x[0]:.4g}, {x[1]:.4g}]" for x in r.ranges],
        "range_ratio": ratio,
        "separate_quantizers": "yes (mixq gives every call its own)",
        "needs_separate": ratio is not None and ratio > _SEPARATE_RATIO,
    }


def _range_ratio(ranges: list[tuple[float, float]]) -> float | None:
    """Width of the range covering every call / the narrowest call's width: how much coarser
    one shared scale is for the tightest call (it catches shifted ranges as well as wider)."""
    if not ranges:
        return None
    union = max(hi for _, hi in ranges) - min(lo for lo, _ in ranges)
    narrowest = min(hi - lo for lo, hi in ranges)
    if narrowest > 0:
        return union / narrowest
    return 1.0 if union == 0 else math.inf


def _unused(records: dict[str, ModuleCalls]) -> list[ModuleCalls]:
    """Modules never called, other than the root, containers, and parents of called ones."""
    parents_of_called = {
        name.rsplit(".", i)[0]
        for name, r in records.items()
        if r.calls
        for i in range(1, name.count(".") + 1)
    }
    return [
        r
        for name, r in records.items()
        if name and not r.calls and not r.container and name not in parents_of_called
    ]


def call_rows(records: dict[str, ModuleCalls]) -> tuple[list[dict[str, Any]], ...]:
    """Rows of the three call sections: every module's calls, the shared ones, the unused."""
    calls = [
        {"module": r.name, "type": r.type, "calls": r.calls, "shared": r.calls > 1}
        for r in records.values()
    ]
    shared = [_shared_row(r) for r in records.values() if r.calls > 1]
    return calls, shared, [{"module": r.name, "type": r.type} for r in _unused(records)]
