"""Find where a quantized model goes wrong: bad cases, layer-by-layer comparison, sensitivity.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> data = [(torch.randn(16, 4),) for _ in range(2)]
    >>> sim = mixq.quantize(model, data[0], "int8").calibrate(data, progress=False)
    >>> qa = QuantAnalysis(sim)
    >>> bad = qa.find_bad_cases(data, metric="cosine", progress=False)
    >>> table = qa.compare_layers(view="isolated", progress=False)
    >>> [row["op"] for row in table.rows]
    ['1', '2']

Sensitivity and the isolated comparison spread over workers with ``executor="processes"``
or ``"ray"`` (`mixq.sim.executors`); the tables are the serial ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from mixq.analysis.advisor import advise
from mixq.analysis.badcases import (
    BadCases,
    compared_outputs,
    find_bad_cases,
    hardest_rows,
    sample_batch,
)
from mixq.analysis.fanout import isolated_rows, keep_partial, sensitivity_scores
from mixq.analysis.metrics import METRICS, Metric, get_metric
from mixq.analysis.report import write_report
from mixq.core.progress import progress_bar
from mixq.core.table import Table
from mixq.graph.kinds import is_data_movement
from mixq.sim.executors import Executor, make_executor
from mixq.sim.protocol import SimLike
from mixq.sim.torch.quantizer import ActivationQuantizer
from mixq.sim.torch.runner import Run, make_runner
from mixq.targets.fusion import target_fusion_groups

__all__ = ["COMPARE_METRICS", "QuantAnalysis"]

COMPARE_METRICS = ("cosine", "mse", "l1", "kl", "sqnr", "atol", "rtol")


def _stats(prefix: str, t: torch.Tensor) -> dict[str, float]:
    t = t.detach().double()
    return {
        f"{prefix}_min": float(t.min()),
        f"{prefix}_max": float(t.max()),
        f"{prefix}_mean": float(t.mean()),
        f"{prefix}_var": float(t.var(unbiased=False)),
    }


class QuantAnalysis:
    """The debugging workflow of Horizon's QuantAnalysis on any captured model.

    Args:
        sim: a calibrated Sim; its quantizer switches are used, never left changed.
        executor: where `sensitivity` and the isolated `compare_layers` run: ``"serial"``
            (this process), ``"processes"`` (a local pool) or ``"ray"`` (a Ray cluster);
            each call may override it. The tables do not depend on it.
        workers: worker processes / Ray actors (default: one per core / cluster CPU).
        ray_address: None starts or joins a local Ray cluster; an address joins that one.
    """

    def __init__(
        self,
        sim: SimLike,
        executor: str | Executor = "serial",
        workers: int | None = None,
        ray_address: str | None = None,
    ) -> None:
        self.sim = sim
        self.executor = make_executor(executor, workers, ray_address)
        self._workers, self._ray_address = workers, ray_address
        self._executors: dict[tuple[Any, ...], Executor] = {}
        self.runner = make_runner(sim)
        self.bad: BadCases | None = None
        self.tables: dict[str, Table] = {}
        self._rows_used = 0
        groups = target_fusion_groups(sim.graph, sim.plan.target)
        self._ops = [
            op
            for op in sim.graph
            if op.name in sim.plan.ops
            and not is_data_movement(op.kind)
            and groups[op.name].ops[-1] == op.name
            and sim.graph.float_outputs(op)
        ]
        self._groups = groups

    # -- bad cases -------------------------------------------------------------------------
    def find_bad_cases(
        self,
        data: Iterable[Any],
        metric: str = "cosine",
        num_steps: int | None = None,
        custom_metric: Metric | None = None,
        progress: bool = True,
    ) -> BadCases:
        """Compare float and quantized outputs sample by sample; keep the worst ones.

        Args:
            data: batches of model inputs (the batch dimension is dim 0).
            metric: the metric whose worst sample later analyses run on (any registered
                metric; one outside the five tracked by default is tracked as well).
            num_steps: stop after this many batches.
            custom_metric: an extra `Metric` (see `mixq.analysis.metrics.register_metric`).
        """
        chosen = get_metric(metric)
        metrics = [get_metric(m) for m in ("cosine", "mse", "l1", "kl", "sqnr")]
        # the chosen metric (atol, rtol, a registered one) is tracked too, or it has no worst
        for extra in (custom_metric, chosen):
            if extra is not None and extra.name not in {m.name for m in metrics}:
                metrics.append(extra)
        self.bad = find_bad_cases(self.runner, data, metrics, chosen, num_steps, progress)
        for name, table in self.bad.tables().items():
            self.tables[name] = table
        return self.bad

    def _data(self, data: Any) -> list[Any]:
        if data is not None:
            return list(data) if isinstance(data, list) else [data]
        if self.bad is None:
            raise ValueError("no data: run find_bad_cases(data) first or pass data=...")
        return [self.bad.bad_case]

    # -- layer-by-layer comparison ---------------------------------------------------------------
    def compare_layers(
        self,
        view: str = "accumulated",
        data: Any = None,
        progress: bool = True,
        executor: str | Executor | None = None,
        workers: int | None = None,
        ray_address: str | None = None,
    ) -> Table:
        """Per op: float vs quantized output, on the bad case (or ``data``).

        ``accumulated``: the whole model quantized (where error grows; one run, always in
        this process). ``isolated``: only this op's own quantizers on, fed float inputs (what
        the op itself costs), one task per op on ``executor`` (see `QuantAnalysis`).
        """
        if view not in ("accumulated", "isolated"):
            raise ValueError(f"view must be 'accumulated' or 'isolated', not {view!r}")
        batch = self._data(data)[0]
        if view == "isolated":
            names = [op.name for op in self._ops]
            run_on = self._executor(executor, workers, ray_address)
            rows = keep_partial(
                self.tables,
                "compare_isolated",
                lambda: isolated_rows(self, run_on, batch, names, progress),
                lambda done: [done[n] for n in names if n in done],
            )
            return self._compare_table(rows, view)
        float_run = self.runner.run(batch, enabled=())
        quant_run = self.runner.run(batch)
        rows = []
        for op in progress_bar(self._ops, f"comparing layers ({view})", disable=not progress):
            tensor = self.sim.graph.float_outputs(op)[0]
            rows.append(self._compare_row(op, tensor, float_run, quant_run))
        return self._compare_table(rows, view)

    def _compare_table(self, rows: list[dict[str, Any]], view: str) -> Table:
        table = Table(rows, title=f"compare_layers ({view})")
        self.tables[f"compare_{view}"] = table
        return table

    def _isolated(self, float_run: Run, op: str, tensor: str) -> Run:
        node = self.runner.by_name[self.sim.value_nodes[tensor]]
        own = self.own_quantizers(op)
        if not own:
            return float_run
        return self.runner.rerun(float_run, own, until=node)

    def own_quantizers(self, op: str) -> list[str]:
        """The quantizers ``op``'s fused group owns: its weights', its outputs' and the
        conversions made for it. An input tensor's quantizer belongs to its producer."""
        members = set(self._groups[op].ops)
        return [
            p.name
            for p in self.sim.points
            if (p.op in members and not p.readers) or set(p.readers) & members
        ]

    def _readers(self, tensor: str) -> list[str]:
        """The ops that read ``tensor``, looking through data-movement ops."""
        graph = self.sim.graph
        out: list[str] = []
        for c in graph.consumers(tensor) if tensor in graph.tensors else []:
            if is_data_movement(c.kind):
                for t in c.outputs:
                    out += self._readers(t)
            else:
                out.append(c.name)
        return out

    def _compare_row(self, op: Any, tensor: str, float_run: Run, run: Run) -> dict[str, Any]:
        ref, out = self.runner.value(float_run, tensor), self.runner.value(run, tensor)
        q = self._output_quantizer(tensor)
        scale = (
            float(q.scale)
            if q is not None and q.scale is not None and q.scale.numel() == 1
            else None
        )
        row: dict[str, Any] = {
            "op": op.name,
            "kind": op.kind,
            "precision": self.sim.plan[op.name].output[0],
            "scale": scale,
        }
        row.update({m: METRICS[m](ref, out) for m in COMPARE_METRICS})
        row.update(_stats("float", ref))
        row.update(_stats("quant", out))
        row["max_atol_diff"] = row["atol"]
        row["atol_in_scales"] = row["atol"] / scale if scale else None
        return row

    def _output_quantizer(self, tensor: str) -> ActivationQuantizer | None:
        q = self.sim.named_quantizers().get(tensor)
        return q if _is_activation(q) else None

    # -- sensitivity -------------------------------------------------------------------------
    def sensitivity(
        self,
        metric: str = "l1",
        kind: str = "activation",
        mode: str = "fast",
        data: Any = None,
        samples: int | None = None,
        progress: bool = True,
        executor: str | Executor | None = None,
        workers: int | None = None,
        ray_address: str | None = None,
    ) -> Table:
        """Model-output error with only one quantizer on, for every quantizer, worst first.

        ``mode="exact"`` runs the whole model per quantizer on every sample.
        ``mode="fast"`` ranks on the hardest samples of each batch (``samples`` of them;
        default a quarter, at least 4; the ones where the fully quantized model strays
        most, as NNCF ranks on its hardest samples), reuses their cached float run and
        recomputes only the nodes each quantizer changes. The table's title says which ran.
        One task per quantizer (and batch) runs on ``executor`` (see `QuantAnalysis`); a
        task that fails for good raises `ExecutorError` naming the quantizer, and what did
        finish is kept in ``self.tables["sensitivity_<kind>_partial"]``.
        """
        if kind not in ("activation", "weight", "both"):
            raise ValueError(f"kind must be activation, weight or both, not {kind!r}")
        if mode not in ("fast", "exact"):
            raise ValueError(f"mode must be 'fast' or 'exact', not {mode!r}")
        m = get_metric(metric)
        points = [p for p in self.sim.points if kind in ("both", p.kind)]
        batches = self._data(data)
        if mode == "fast":
            batches = [self._hardest(batch, m, samples) for batch in batches]
        run_on = self._executor(executor, workers, ray_address)
        name = f"sensitivity_{kind}"
        scores = keep_partial(
            self.tables,
            name,
            lambda: sensitivity_scores(self, run_on, batches, points, m, mode, progress),
            lambda done: self._ranked([p for p in points if p.name in done], done, m).rows,
        )
        table = self._ranked(points, scores, m)
        detail = "" if mode == "exact" else f", {self._rows_used} hardest samples per batch"
        table.title = f"sensitivity ({m.name}, {kind}, mode={mode}{detail})"
        self.tables[name] = table
        return table

    def _ranked(self, points: list[Any], scores: dict[str, float], m: Metric) -> Table:
        ranked = sorted(points, key=lambda p: scores[p.name], reverse=not m.higher_is_better)
        rows = [
            {
                "rank": i + 1,
                "op": p.op or next(iter(self._readers(p.target)), p.target),
                "quantizer": p.name,
                "kind": p.kind,
                "precision": p.precision,
                "metric": m.name,
                "score": scores[p.name],
            }
            for i, p in enumerate(ranked)
        ]
        return Table(rows, title="sensitivity")

    def _executor(
        self, executor: str | Executor | None, workers: int | None, address: str | None
    ) -> Executor:
        """This call's executor: the analysis's own unless the call names another."""
        if executor is None and workers is None and address is None:
            return self.executor
        chosen = executor if executor is not None else self.executor.name
        key = (chosen, workers or self._workers, address or self._ray_address)
        if key not in self._executors:  # kept: a pool's workers start once per analysis
            self._executors[key] = make_executor(*key)
        return self._executors[key]

    # -- advice, inputs, everything at once ----------------------------------------------------
    def input_ranges(self) -> dict[str, tuple[float, float]]:
        """Float range of each model input on the bad case (empty before find_bad_cases)."""
        if self.bad is None:
            return {}
        run = self.runner.run(self.bad.bad_case, enabled=())
        return {
            t: (float(run[self.runner.by_name[t]].min()), float(run[self.runner.by_name[t]].max()))
            for t in self.sim.graph.inputs
            if self.sim.graph.tensors[t].quantizable
        }

    def advise(self) -> Table:
        """What to try, one line per finding (see `mixq.analysis.advisor`); runs the
        accumulated comparison first if it has not run and a bad case is known."""
        if "compare_accumulated" not in self.tables and self.bad is not None:
            self.compare_layers("accumulated", progress=False)
        return advise(self)

    def run_all(
        self,
        data: Iterable[Any],
        metric: str = "cosine",
        sensitivity_metric: str = "l1",
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> dict[str, Table]:
        """Bad cases, both comparison views, weight and activation sensitivity, advice;
        with ``out_dir``, every table as .txt / .csv / .json, badcase.txt and report.html."""
        data = list(data)
        self.find_bad_cases(data, metric=metric, progress=progress)
        for view in ("accumulated", "isolated"):
            self.compare_layers(view, progress=progress)
        for kind in ("activation", "weight"):
            if any(p.kind == kind for p in self.sim.points):
                self.sensitivity(sensitivity_metric, kind, "fast", data=data[0], progress=progress)
        self.advise()
        if out_dir is not None:
            self.save(out_dir)
        return self.tables

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write every table (.txt, .csv, .json), badcase.txt and report.html into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            t.save(out / f"{name}{ext}")
            for name, t in self.tables.items()
            for ext in (".txt", ".csv", ".json")
        ]
        if self.bad is not None:
            paths.append(self.bad.save(out))
        paths.append(write_report(out / "report.html", self))
        return paths

    def _hardest(self, batch: Any, metric: Metric, samples: int | None) -> Any:
        rows = _batch_rows(batch)
        count = min(rows, samples if samples is not None else max(4, rows // 4))
        self._rows_used = count
        if count >= rows:
            return batch
        return sample_batch(batch, hardest_rows(self.runner, batch, metric, count))

    def _outputs(self, run: Run) -> torch.Tensor:
        values = [run[n].detach().reshape(-1) for _, n in compared_outputs(self.runner)]
        return torch.cat([v.to(torch.float32) for v in values])


def _batch_rows(batch: Any) -> int:
    leaves = [t for t in pytree.tree_leaves(batch) if isinstance(t, torch.Tensor) and t.ndim]
    return int(leaves[0].shape[0]) if leaves else 1


def _is_activation(q: Any) -> bool:
    """An activation quantizer of either backend (torch or ONNX)."""
    return getattr(getattr(q, "point", None), "kind", None) == "activation"
