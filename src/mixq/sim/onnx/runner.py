"""Run an ONNX Sim keeping every value: the `GraphRunner` interface the analyses use.

A run fetches every float tensor of the model twice where it has a quantizer (its raw
value under its own name, and the value the rest of the model sees) and keeps the inputs.
Values are keyed by `ValueNode`, which stands where the torch runner has an fx node, so
`mixq.analysis.quant_analysis.QuantAnalysis` and `mixq.analysis.badcases` read both the same way.

ONNX Runtime runs whole graphs: `OnnxRunner.rerun` runs the full model again with the named
quantizers on (there is no partial recompute on ONNX), which gives what the torch runner
gives from a float base run. `OnnxRunner.run_forced` runs a copy of the model in which the
given values are graph inputs (`forced_model`): each node that computed one now writes the
Sim's own value under another name, and its readers read the value given (what another
runtime computed there, for the export check's local comparison).

Example:
    >>> # runner = OnnxRunner(sim)
    >>> # float_run = runner.run((x,), enabled=())
    >>> # runner.value(float_run, "relu")     # a torch tensor
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from mixq.sim.onnx.session import as_array, make_session

__all__ = ["OnnxRunner", "Run", "ValueNode", "forced_model"]

_OWN = "/mixq_own"


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

    def run_forced(self, batch: Any, forced: Mapping[ValueNode, Any]) -> tuple[Run, Run]:
        """Run ``batch`` with each value of ``forced`` replaced by the one given once computed;
        return the run and the Sim's own value at each forced node, computed from the forced
        values upstream of it (the torch runner's `run_forced`, in one ORT run). A forced
        model input is fed as given and has no own value."""
        feeds = self.sim.input_feeds(batch)
        given = {n.name: as_array(v, self.sim.value_dtypes.get(n.name, "float32"))
                 for n, v in forced.items()}  # fmt: skip
        model, own = forced_model(self.sim.model, [n for n in given if n not in feeds])
        fetch = [own.get(n, n) for n in self.sim.fetch_names]
        feeds.update({n: v for n, v in given.items() if n in feeds or n in own})
        values = self.sim.run_feeds(feeds, fetch, None, make_session(model))
        run = {self.by_name[n]: torch.from_numpy(v) for n, v in feeds.items()}
        mine: Run = {}
        for name, value in zip(self.sim.fetch_names, values, strict=True):
            node = self.by_name[name]
            if name in own:
                mine[node] = torch.from_numpy(value)
                value = given[name]
            run[node] = torch.from_numpy(np.asarray(value))
        return run, mine

    def outputs(self, run: Run) -> list[torch.Tensor]:
        """The float tensors the model returns, in order."""
        return [run[n] for n in self.output_nodes() if run[n].is_floating_point()]

    def value(self, run: Run, tensor: str) -> torch.Tensor:
        """A graph tensor's value as the rest of the model sees it (after its quantizer)."""
        return run[self.by_name[self.sim.value_nodes[tensor]]]

    def output_nodes(self) -> list[ValueNode]:
        return [self.by_name[n] for n in self.sim.output_names]


def forced_model(
    model: onnx.ModelProto, names: Iterable[str]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` in which each named graph output computed by a node is a graph
    input: the node writes ``<name>/mixq_own`` (a graph output in its place) and the name's
    readers read the input. Returns the copy and name -> own name for those it changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producer = {o: node for node in g.node for o in node.output}
    typed = {o.name: o for o in g.output}
    own: dict[str, str] = {}
    for name in names:
        node, value = producer.get(name), typed.get(name)
        if node is None or value is None or name in own:
            continue  # an input or initializer: nothing computes it
        own[name] = name + _OWN
        node.output[list(node.output).index(name)] = own[name]
        g.input.append(onnx.helper.make_value_info(name, value.type))
        value.name = own[name]
    kept = [v for v in g.value_info if v.name not in own]
    del g.value_info[:]
    g.value_info.extend(kept)
    return out, own
