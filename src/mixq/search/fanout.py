"""The search's work as tasks for an executor (`mixq.sim.executors`): plan evaluations and
the per-unit error measurements, spread over workers with the serial figures.

What every worker needs travels once per batch in the `Job`'s payload: the captured float
model (`SimFactory.pack`: a torch model as its float graph, an ONNX model as bytes), the
calibration ranges known so far, the search space, the evaluator with its data and the
float model's outputs, and the hard samples. A task carries only names: an assignment of
candidates to units (which plan), and for an error measurement the unit. A worker builds
and calibrates a Sim exactly as the driver would (`SimFactory.sim`: a range it has not
seen is calibrated, deterministically), keeps the Sim (and its float run) of the plan it
last used, and sends back the ranges it calibrated, so the driver's cache grows as it
would have serially. Results come back in task order.

Example:
    >>> # scores = evaluate_remote(trials, [assignment, ...], ["all int8", ...])
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import torch

from mixq.core.errors import ConfigError
from mixq.search.candidates import Candidate
from mixq.search.measure import nmse, outputs, own_quantizers
from mixq.search.sims import SimFactory
from mixq.sim.executors import Executor, Job
from mixq.sim.torch.runner import make_runner

__all__ = ["SearchWorker", "errors_remote", "evaluate_remote", "harm_remote", "run_task"]

Assignment = dict[str, Candidate]


class SearchWorker:
    """One worker's state: a factory rebuilt from the payload, the last plan's Sim and run."""

    def __init__(self, payload: tuple[Any, ...]) -> None:
        packed, self.space, self.evaluator, self.batch = payload
        self.factory = SimFactory.unpack(packed)
        self._last: tuple[str, Any, Any, Any, torch.Tensor] | None = None
        self._all_on: tuple[str, float] | None = None  # plan key, error with every quantizer on

    def _sim(self, assignment: Assignment) -> Any:
        return self.factory.sim(self.space.plan(assignment))

    def _context(self, assignment: Assignment) -> tuple[Any, Any, Any, torch.Tensor]:
        """The Sim of ``assignment``, its runner, the float run of the hard batch and the
        float outputs (kept for the next task)."""
        key = self.space.key(assignment)
        if self._last is None or self._last[0] != key:
            self._last = None  # the previous plan's Sim and run go first
            sim = self._sim(assignment)
            runner = make_runner(sim)
            float_run = runner.run(self.batch, enabled=())
            self._last = (key, sim, runner, float_run, outputs(runner, float_run))
        return self._last[1:]

    def evaluate(self, assignment: Assignment) -> tuple[float, float]:
        """The plan's score and the seconds it took (Sim build and calibration included)."""
        start = time.monotonic()
        score = self.evaluator(self._sim(assignment))
        return score, time.monotonic() - start

    def error(self, assignment: Assignment, unit: str) -> float:
        """Output error with only ``unit``'s quantizers on (the rest recomputed from float)."""
        sim, runner, float_run, ref = self._context(assignment)
        own = own_quantizers(sim, self.space.units[unit])
        return nmse(ref, outputs(runner, runner.rerun(float_run, own))) if own else 0.0

    def harm(self, assignment: Assignment, unit: str) -> float:
        """How much the error with every quantizer on falls with ``unit``'s off."""
        sim, runner, _, ref = self._context(assignment)
        key = self.space.key(assignment)
        if self._all_on is None or self._all_on[0] != key:  # only the harm ranking needs it
            everything = runner.run(self.batch, enabled=list(sim.quantizers))
            self._all_on = (key, nmse(ref, outputs(runner, everything)))
        own = set(own_quantizers(sim, self.space.units[unit]))
        rest = [q for q in sim.quantizers if q not in own]
        return self._all_on[1] - nmse(ref, outputs(runner, runner.run(self.batch, enabled=rest)))


def open_worker(payload: tuple[Any, ...]) -> SearchWorker:
    """The setup of a `Job`: rebuild the factory once per worker."""
    return SearchWorker(payload)


def run_task(worker: SearchWorker, task: tuple[Any, ...]) -> Any:
    """``("evaluate", assignment)``, ``("error", assignment, unit)`` or ``("harm",
    assignment, unit)``; with the ranges this task calibrated."""
    known = set(worker.factory.ranges)
    kind, assignment, *rest = task
    value = getattr(worker, kind)(assignment, *rest)
    fresh = {k: v for k, v in worker.factory.ranges.items() if k not in known}
    return value, fresh


def _map(
    trials: Any, batch: Any, tasks: list[tuple[Any, ...]], labels: list[str], what: str
) -> list[Any]:
    executor: Executor = trials.executor
    payload = (trials.factory.pack(), trials.space, trials.evaluator, batch)
    job = Job(open_worker, run_task, payload)
    results = executor.map(job, tasks, labels, what, progress=trials.progress is not None)
    for _, fresh in results:
        trials.factory.ranges.update(fresh)
    return [value for value, _ in results]


def evaluate_remote(
    trials: Any, assignments: list[Assignment], labels: list[str]
) -> list[tuple[float, float]]:
    """(score, seconds) of each assignment, on the trials' executor."""
    tasks = [("evaluate", a) for a in assignments]
    return _map(trials, None, tasks, [f"plan {label!r}" for label in labels], "evaluating plans")


def errors_remote(trials: Any, batch: Any, jobs: list[tuple[Assignment, str, str]]) -> list[float]:
    """The output error of each (plan, its candidate's name, unit) on the hard batch."""
    tasks = [("error", a, unit) for a, _, unit in jobs]
    labels = [f"unit {unit!r} at {cand}" for _, cand, unit in jobs]
    return _map(trials, batch, tasks, labels, "sensitivity of units")


def harm_remote(trials: Any, batch: Any, assignment: Assignment, units: list[str]) -> list[float]:
    """The harm each of ``units`` does in ``assignment``'s plan."""
    tasks = [("harm", assignment, u) for u in units]
    return _map(trials, batch, tasks, [f"unit {u!r}" for u in units], "ranking units")


def check_picklable(evaluate: Any, executor: Executor) -> None:
    """A custom ``evaluate`` must travel to the workers of a remote executor."""
    if not executor.remote or not callable(evaluate):
        return
    try:
        pickle.dumps(evaluate)
    except Exception as e:
        raise ConfigError(
            f"evaluate={getattr(evaluate, '__name__', evaluate)!r} cannot be sent to the "
            f"workers of executor={executor.name!r} ({type(e).__name__}: {e}); define it at "
            "module level of an importable file (not a lambda or a closure), or use "
            "executor='serial'"
        ) from e
