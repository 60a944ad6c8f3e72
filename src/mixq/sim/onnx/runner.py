"""Run an ONNX Sim keeping every value: the `GraphRunner` interface the analyses use.

A run fetches every float tensor of the model twice where it has a quantizer (its raw
value under its own name, and the value the rest of the model sees) and keeps the inputs.
Values are keyed by `ValueNode`, which stands where the torch runner has an fx node, so
`mixq.analysis.quant_analysis.QuantAnalysis` and `mixq.analysis.badcases` read both the same way.

ONNX Runtime runs whole graphs: `OnnxRunner.rerun` runs the full model again with the named
quantizers on (there is no partial recompute on ONNX), which gives what the torch runner
gives from a float base run.

Example:
    >>> # runner = OnnxRunner(sim)
    >>> # float_run = runner.run((x,), enabled=())
    >>> # runner.value(float_run, "relu")     # a torch tensor
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OnnxRunner", "Run", "ValueNode"]


@dataclass(eq=False)
class ValueNode:
    """One ONNX value, with the few fx-node attributes the analyses read."""

    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    op: str = "onnx_value"
    target: str = ""
    args: tuple[Any, ...] = ()
    all_input_nodes: list[ValueNode] = field(default_factory=list)


Run = dict[ValueNode, torch.Tensor]


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


class OnnxRunner:
    """Value-level execution of an `OnnxSim` with per-run quantizer switches."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        names = [*sim.input_names, *sim.fetch_names]
        tensors = sim.graph.tensors
        dtypes = {**{n: tensors[n].dtype for n in names if n in tensors}, **sim.value_dtypes}
        self.by_name = {
            n: ValueNode(n, {"val": torch.empty(0, dtype=_torch_dtype(dtypes.get(n, "")))})
            for n in names
        }

    def run(self, batch: Any, enabled: Iterable[str] | None = None) -> Run:
        """Run ``batch`` with the named quantizers on (None: as switched); keep all values."""
        feeds = self.sim.input_feeds(batch)
        values = self.sim.run_feeds(feeds, self.sim.fetch_names, enabled)
        run = {self.by_name[n]: torch.from_numpy(v) for n, v in feeds.items()}
        run.update(
            {
                self.by_name[n]: torch.from_numpy(v)
                for n, v in zip(self.sim.fetch_names, values, strict=True)
            }
        )
        return run

    def rerun(self, base: Run, enabled: Iterable[str], until: ValueNode | None = None) -> Run:
        """``base``'s inputs again with only the named quantizers on (a full run; ``until``
        is accepted for the torch runner's interface and changes nothing)."""
        feeds = {n: base[self.by_name[n]].numpy() for n in self.sim.input_names}
        return self.run(feeds, enabled=list(enabled))

    def outputs(self, run: Run) -> list[torch.Tensor]:
        """The float tensors the model returns, in order."""
        return [run[n] for n in self.output_nodes() if run[n].is_floating_point()]

    def value(self, run: Run, tensor: str) -> torch.Tensor:
        """A graph tensor's value as the rest of the model sees it (after its quantizer)."""
        return run[self.by_name[self.sim.value_nodes[tensor]]]

    def output_nodes(self) -> list[ValueNode]:
        return [self.by_name[n] for n in self.sim.output_names]
