"""Sensitivity and isolated layer comparison as tasks for an executor (`mixq.sim.executors`).

A task is a name: ``(batch index, quantizer)`` for sensitivity, an op for the isolated
comparison. What every worker needs travels once in the `Job`'s payload: the Sim (as
`mixq.sim.executors.SimState` when it leaves this process; the analysis itself when it
does not), the batches, the metric and the mode. A worker keeps the float run of one batch
at a time, so it holds one Sim plus one batch. Results come back in task order and are
summed in that order, so every executor gives the serial figures.

Example:
    >>> import torch, mixq
    >>> from mixq.sim.executors import make_executor
    >>> x = torch.randn(8, 4)
    >>> sim = mixq.quantize(torch.nn.Linear(4, 2), (x,), "int8").calibrate([x], progress=False)
    >>> qa = mixq.QuantAnalysis(sim)
    >>> scores = sensitivity_scores(qa, make_executor("serial"), [(x,)], sim.points,
    ...                             mixq.analysis.metrics.get_metric("l1"), "exact", False)
    >>> sorted(scores) == sorted(sim.quantizers)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mixq.analysis.metrics import Metric
from mixq.core.table import Table
from mixq.sim.executors import Executor, ExecutorError, Job, SimState, pack_sim, rebuild_sim

__all__ = [
    "AnalysisWorker",
    "isolated_rows",
    "keep_partial",
    "open_worker",
    "run_task",
    "sensitivity_scores",
]


class AnalysisWorker:
    """One worker's state: an analysis of its Sim, the batches, the float run of one batch."""

    def __init__(
        self, qa: Any, batches: list[Any], metric: Metric | None = None, mode: str = "exact"
    ) -> None:
        self.qa, self.batches, self.metric, self.mode = qa, batches, metric, mode
        self._float: tuple[int, Any, torch.Tensor | None] | None = None

    def float_run(self, b: int, refs: bool = True) -> tuple[Any, torch.Tensor | None]:
        """Batch ``b``'s float run (and its compared outputs), kept until another batch."""
        if self._float is None or self._float[0] != b:
            self._float = None  # let the previous batch's values go first
            run = self.qa.runner.run(self.batches[b], enabled=())
            self._float = (b, run, self.qa._outputs(run) if refs else None)
        return self._float[1], self._float[2]

    def score(self, task: tuple[int, str]) -> float:
        """The metric on the model outputs with only quantizer ``name`` on, batch ``b``."""
        b, name = task
        float_run, refs = self.float_run(b)
        assert self.metric is not None and refs is not None
        runner = self.qa.runner
        if self.mode == "fast":
            run = runner.rerun(float_run, [name])
        else:
            run = runner.run(self.batches[b], enabled=[name])
        return self.metric(refs, self.qa._outputs(run))

    def compare(self, op_name: str) -> dict[str, Any]:
        """The isolated-view row of ``op_name``: only its own quantizers on."""
        float_run, _ = self.float_run(0, refs=False)
        op = self.qa.sim.graph.ops[op_name]
        tensor = self.qa.sim.graph.float_outputs(op)[0]
        run = self.qa._isolated(float_run, op.name, tensor)
        return dict(self.qa._compare_row(op, tensor, float_run, run))


def open_worker(payload: tuple[Any, ...]) -> AnalysisWorker:
    """The setup of a `Job`: rebuild the Sim once (when it travelled) and wrap it."""
    source, analysis, batches, metric, mode = payload
    qa = analysis(rebuild_sim(source)) if isinstance(source, SimState) else source
    return AnalysisWorker(qa, batches, metric, mode)


def run_task(worker: AnalysisWorker, task: Any) -> Any:
    """The work of a `Job`: a ``(batch, quantizer)`` pair is scored, an op name compared."""
    return worker.score(task) if isinstance(task, tuple) else worker.compare(task)


def _job(qa: Any, executor: Executor, batches: list[Any], metric: Metric | None, mode: str) -> Job:
    source = pack_sim(qa.sim) if executor.remote else qa
    return Job(open_worker, run_task, (source, type(qa), batches, metric, mode))


def sensitivity_scores(
    qa: Any,
    executor: Executor,
    batches: list[Any],
    points: list[Any],
    metric: Metric,
    mode: str,
    progress: bool,
) -> dict[str, float]:
    """Quantizer -> metric averaged over ``batches``, summed in batch order.

    Raises:
        ExecutorError: a task failed for good; ``.finished`` then holds the scores of the
            quantizers whose every batch finished (quantizer -> score).
    """
    tasks = [(b, p.name) for b in range(len(batches)) for p in points]
    many = len(batches) > 1
    labels = [f"quantizer {n!r}" + (f" on batch {b}" if many else "") for b, n in tasks]
    job = _job(qa, executor, batches, metric, mode)
    try:
        values = executor.map(job, tasks, labels, f"sensitivity ({mode})", progress)
    except ExecutorError as e:
        done = {i: v for i, v in e.finished.items()}
        names = [p.name for p in points]
        complete = [n for k, n in enumerate(names) if all(
            b * len(names) + k in done for b in range(len(batches)))]  # fmt: skip
        scores = _sum(tasks, [done.get(i, 0.0) for i in range(len(tasks))], complete, batches)
        raise ExecutorError(str(e), e.failed, dict(scores)) from e
    return _sum(tasks, values, [p.name for p in points], batches)


def _sum(
    tasks: list[tuple[int, str]], values: list[Any], names: list[str], batches: list[Any]
) -> dict[str, float]:
    scores = dict.fromkeys(names, 0.0)
    for (_, name), value in zip(tasks, values, strict=True):
        if name in scores:
            scores[name] += value / len(batches)
    return scores


def isolated_rows(
    qa: Any, executor: Executor, batch: Any, ops: list[str], progress: bool
) -> list[dict[str, Any]]:
    """The isolated comparison's rows, one per op, in ``ops`` order.

    Raises:
        ExecutorError: a task failed for good; ``.finished`` then holds the finished rows
            (op -> row).
    """
    job = _job(qa, executor, [batch], None, "exact")
    labels = [f"op {op!r}" for op in ops]
    try:
        return executor.map(job, ops, labels, "comparing layers (isolated)", progress)
    except ExecutorError as e:
        rows = {ops[i]: row for i, row in sorted(e.finished.items())}
        raise ExecutorError(str(e), e.failed, dict(rows)) from e


def keep_partial(
    tables: dict[str, Table],
    name: str,
    run: Callable[[], Any],
    rows: Callable[[dict[Any, Any]], list[dict[str, Any]]],
) -> Any:
    """``run()``; when a task fails for good, the rows of what finished go into
    ``tables[name + "_partial"]`` and the error says so."""
    try:
        return run()
    except ExecutorError as e:
        partial = Table(rows(e.finished), title=f"{name} (partial: {e.failed} failed)")
        tables[f"{name}_partial"] = partial
        raise ExecutorError(
            f"{e}; the {len(partial.rows)} finished rows are in "
            f"QuantAnalysis.tables[{name + '_partial'!r}]",
            e.failed,
            e.finished,
        ) from e
