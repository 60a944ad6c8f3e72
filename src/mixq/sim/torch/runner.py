"""Run a Sim node by node, keep every value, and recompute only what a change affects.

The analyses compare the float run (all quantizers off) with quantized runs. A quantizer
changes only the nodes downstream of it, so `GraphRunner.rerun` recomputes just those
(optionally only up to one node) from a cached run.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> x = torch.randn(8, 4)
    >>> sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    >>> runner = GraphRunner(sim)
    >>> float_run = runner.run((x,), enabled=())
    >>> torch.equal(runner.outputs(float_run)[0], model(x))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import fx
from torch.fx._pytree import tree_flatten_spec
from torch.utils import _pytree as pytree

from mixq.sim.torch.capture import split_inputs

__all__ = ["GraphRunner", "Run", "make_runner"]

Run = dict[fx.Node, Any]


class GraphRunner:
    """Node-level execution of a Sim's graph with per-run quantizer switches."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.gm: fx.GraphModule = sim.module
        self.nodes = list(self.gm.graph.nodes)
        self.by_name = {n.name: n for n in self.nodes}
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.output_node = next(n for n in self.nodes if n.op == "output")
        self._downstream: dict[fx.Node, set[fx.Node]] = {}
        self._interp = fx.Interpreter(self.gm, garbage_collect_values=False)

    def _flat_inputs(self, batch: Any) -> list[Any]:
        args, kwargs = split_inputs(batch)
        spec = self.gm._graph._codegen.pytree_info.in_spec  # type: ignore[attr-defined]
        return list(tree_flatten_spec((args, kwargs), spec))

    def run(self, batch: Any, enabled: Iterable[str] | None = None) -> Run:
        """Run ``batch`` with the named quantizers on (None: as they are) and keep all values."""
        with self._switch(enabled):
            return self.run_forced(batch, {})[0]

    def run_forced(self, batch: Any, forced: Mapping[fx.Node, Any]) -> tuple[Run, Run]:
        """Run ``batch``, replacing each node of ``forced`` by its given value once computed
        (what another runtime computed there, say); return the run and the Sim's own value
        at each forced node, computed from the forced values upstream of it."""
        own: Run = {}
        with torch.no_grad():
            env: Run = {}
            flat = iter(self._flat_inputs(batch))
            self._interp.env = env
            for node in self.nodes:
                if node.op == "placeholder":
                    env[node] = next(flat)
                elif node.op != "output":
                    env[node] = self._interp.run_node(node)
                    if node in forced:
                        own[node] = env[node]
                        env[node] = forced[node].to(own[node].dtype)
            env[self.output_node] = self._interp.run_node(self.output_node)
            return env, own

    def _switch(self, enabled: Iterable[str] | None) -> Any:
        return nullcontext() if enabled is None else self.sim.only(list(enabled))

    def downstream(self, node: fx.Node) -> set[fx.Node]:
        """The node and every node that reads it, directly or not."""
        if node not in self._downstream:
            self._downstream[node] = _reach(node, lambda n: n.users)
        return self._downstream[node]

    def upstream(self, node: fx.Node) -> set[fx.Node]:
        """The node and every node it reads, directly or not."""
        return _reach(node, lambda n: n.all_input_nodes)

    def rerun(self, base: Run, enabled: Iterable[str], until: fx.Node | None = None) -> Run:
        """``base`` with the named quantizers switched on: only affected nodes recomputed.

        With ``until``, only the nodes that feed it are recomputed (an op's own error).
        """
        names = list(enabled)
        changed: set[fx.Node] = set()
        for name in names:
            changed |= self.downstream(self.by_name[self.sim.quantizer_nodes[name]])
        if until is not None:
            changed &= self.upstream(until)
        env = dict(base)
        with torch.no_grad(), self.sim.only(names):
            self._interp.env = env
            for node in sorted(changed, key=self.order.__getitem__):
                env[node] = self._interp.run_node(node)
        return env

    def outputs(self, run: Run) -> list[torch.Tensor]:
        """The float tensors the model returns, flattened in order."""
        return [
            t
            for t in pytree.tree_leaves(run[self.output_node])
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        ]

    def value(self, run: Run, tensor: str) -> torch.Tensor:
        """A graph tensor's value as the rest of the model sees it (after its quantizer)."""
        return run[self.by_name[self.sim.value_nodes[tensor]]]

    def output_nodes(self) -> list[fx.Node]:
        return [n for n in pytree.tree_leaves(self.output_node.args) if isinstance(n, fx.Node)]


def _reach(node: fx.Node, step: Callable[[fx.Node], Iterable[fx.Node]]) -> set[fx.Node]:
    """``node`` and every node ``step`` leads to from it, transitively."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def make_runner(sim: Any) -> Any:
    """The node-level runner of ``sim``: its own ``runner_class`` (ONNX sims bring
    `mixq.sim.onnx.runner.OnnxRunner`), else a `GraphRunner`."""
    return getattr(sim, "runner_class", GraphRunner)(sim)
