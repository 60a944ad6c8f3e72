"""Bad-case search: the samples on which the quantized model strays furthest from float.

Three tables as in Horizon's badcase.txt: the worst sample index per output and metric,
the metric values there, and the worst index over all outputs per metric.

Example:
    >>> # bad = QuantAnalysis(sim).find_bad_cases(batches, metric="cosine")
    >>> # bad.tables()["badcase_index"].rows[0]   # {"output": ..., "cosine": 17, ...}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import fx
from torch.utils import _pytree as pytree

from mixq.analysis.metrics import Metric, per_sample
from mixq.core.progress import progress_bar
from mixq.core.table import Table
from mixq.sim.torch.capture import split_inputs
from mixq.sim.torch.runner import GraphRunner

__all__ = ["BadCases", "compared_outputs", "find_bad_cases", "hardest_rows", "sample_batch"]

# Outputs whose values only make sense through an order (indices, sorted values) are
# compared on the tensor they were computed from instead.
_ORDER_OPS = {"argmax", "argmin", "topk", "sort", "argsort", "max", "min", "kthvalue"}


def _source(node: fx.Node) -> tuple[fx.Node, str | None]:
    """An output made by an order op (through getitem or a quantizer): (its input, op)."""
    seen = node
    while seen.op == "call_module" and str(seen.target).startswith("mixq_q"):
        seen = seen.args[0]  # type: ignore[assignment]
    if seen.op == "call_function" and getattr(seen.target, "__name__", "") == "getitem":
        seen = seen.args[0]  # type: ignore[assignment]
    name = getattr(getattr(seen.target, "overloadpacket", None), "__name__", "")
    if seen.op == "call_function" and name in _ORDER_OPS and seen.all_input_nodes:
        return seen.all_input_nodes[0], name
    return node, None


def compared_outputs(runner: GraphRunner) -> list[tuple[str, fx.Node]]:
    """(label, node) of every model output to compare, order ops replaced by their input."""
    names = {v: k for k, v in runner.sim.value_nodes.items()}
    out = []
    for node in runner.output_nodes():
        src, order_op = _source(node)
        val = src.meta.get("val")
        if isinstance(val, torch.Tensor) and not val.is_floating_point():
            continue
        label = names.get(src.name, src.name)
        out.append((f"{label} (input of {order_op})" if order_op else label, src))
    return out


def sample_batch(batch: Any, index: int | list[int]) -> Any:
    """Rows of every batched tensor of ``batch`` (one index keeps the batch dimension)."""
    args, kwargs = split_inputs(batch)
    rows = torch.tensor([index] if isinstance(index, int) else index)

    def pick(x: Any) -> Any:
        return x.index_select(0, rows) if isinstance(x, torch.Tensor) and x.ndim else x

    picked_args, picked_kwargs = pytree.tree_map(pick, (args, kwargs))
    return picked_kwargs if isinstance(batch, dict) else tuple(picked_args)


@dataclass
class _Worst:
    index: int = -1
    value: float = float("nan")


@dataclass
class BadCases:
    """The worst samples found, per output and per metric."""

    outputs: list[str]
    metrics: list[Metric]
    metric: Metric
    worst: dict[tuple[str, str], _Worst] = field(default_factory=dict)
    inputs: dict[int, Any] = field(default_factory=dict)

    @property
    def bad_case(self) -> Any:
        """Inputs of the worst sample under the chosen metric, over all outputs."""
        return self.inputs[self.worst_index(self.metric)]

    def worst_index(self, metric: Metric) -> int:
        cands = [self.worst[(o, metric.name)] for o in self.outputs]
        best = cands[0]
        for c in cands[1:]:
            if metric.worse(c.value, best.value):
                best = c
        return best.index

    def tables(self) -> dict[str, Any]:
        from mixq.core.table import Table

        names = [m.name for m in self.metrics]
        index = [
            {"output": o, **{n: self.worst[(o, n)].index for n in names}} for o in self.outputs
        ]
        values = [
            {"output": o, **{n: self.worst[(o, n)].value for n in names}} for o in self.outputs
        ]
        overall = [{"metric": m.name, "index": self.worst_index(m)} for m in self.metrics]
        return {
            "badcase_index": Table(index, title="worst sample index per output and metric"),
            "badcase_value": Table(values, title="metric value at that sample"),
            "badcase_overall": Table(overall, title="worst sample over all outputs"),
        }

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per output: the worst sample's index and value under every metric (the
        ``badcase_index`` and ``badcase_value`` tables side by side), as every table has."""
        return self.table().rows

    @property
    def columns(self) -> list[str]:
        return self.table().columns

    def table(self) -> Table:
        """The worst samples as one `Table`: per output, ``<metric>_index`` / ``<metric>``."""
        rows = [
            {
                "output": o,
                **{
                    key: value
                    for m in self.metrics
                    for key, value in (
                        (f"{m.name}_index", self.worst[(o, m.name)].index),
                        (m.name, self.worst[(o, m.name)].value),
                    )
                },
            }
            for o in self.outputs
        ]
        return Table(rows, title=f"worst sample per output and metric (chosen: {self.metric.name})")

    def to_text(self) -> str:
        return "\n\n".join(t.to_text() for t in self.tables().values())

    def save(self, out_dir: str | Path) -> Path:
        """Write badcase.txt (the three tables) and badcase.pt (the worst inputs) into
        ``out_dir``; a path ending in ``.csv`` / ``.json`` / ``.txt`` writes `rows` there as
        every `Table` does."""
        if Path(out_dir).suffix in (".csv", ".json", ".txt"):
            return cast(Path, self.table().save(out_dir))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(t.to_text() for t in self.tables().values())
        (out / "badcase.txt").write_text(text + "\n")
        torch.save({"metric": self.metric.name, "inputs": self.bad_case}, out / "badcase.pt")
        return out / "badcase.txt"


def hardest_rows(runner: GraphRunner, batch: Any, metric: Metric, count: int) -> list[int]:
    """The ``count`` rows of ``batch`` on which the quantized model is worst (by ``metric``)."""
    float_run, quant_run = runner.run(batch, enabled=()), runner.run(batch)
    outputs = compared_outputs(runner)
    ref = torch.cat([float_run[n].flatten(1) for _, n in outputs], dim=1)
    out = torch.cat([quant_run[n].flatten(1) for _, n in outputs], dim=1)
    scores = per_sample(metric, ref, out)
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=not metric.higher_is_better)
    return sorted(order[:count])


def find_bad_cases(
    runner: GraphRunner,
    data: Iterable[Any],
    metrics: list[Metric],
    metric: Metric,
    num_steps: int | None,
    progress: bool,
) -> BadCases:
    """Traverse ``data``; keep, per output and metric, the worst sample and its inputs."""
    outputs = compared_outputs(runner)
    result = BadCases([o for o, _ in outputs], metrics, metric)
    result.worst = {(o, m.name): _Worst() for o in result.outputs for m in metrics}
    seen = 0
    for step, batch in enumerate(progress_bar(data, "finding bad cases", disable=not progress)):
        if num_steps is not None and step >= num_steps:
            break
        float_run, quant_run = runner.run(batch, enabled=()), runner.run(batch)
        rows = 0
        for label, node in outputs:
            ref, out = float_run[node], quant_run[node]
            rows = max(rows, ref.shape[0] if ref.ndim else 1)
            for m in metrics:
                _update(result, batch, seen, label, m, per_sample(m, ref, out))
        seen += rows
    if seen == 0:
        raise ValueError("find_bad_cases got no data: pass an iterable of input batches")
    return result


def _update(
    result: BadCases, batch: Any, offset: int, label: str, metric: Metric, values: list[float]
) -> None:
    worst = result.worst[(label, metric.name)]
    for row, value in enumerate(values):
        if worst.index < 0 or metric.worse(value, worst.value):
            worst.index, worst.value = offset + row, value
            result.inputs[worst.index] = sample_batch(batch, row)
