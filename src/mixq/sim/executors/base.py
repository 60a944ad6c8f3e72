"""The executor seam: a `Job` (what every worker needs, shipped once; what one task does)
run over a list of tasks, serially, in a local process pool or on a Ray cluster.

Every executor returns the results in task order, whatever order the workers finish in, so
a caller that merges them in that order gets the serial answer. One progress bar counts
finished tasks over all workers.

Example:
    >>> job = Job(setup=int, work=pow, payload="2")
    >>> SerialExecutor().map(job, [1, 2, 3], progress=False)
    [2, 4, 8]
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mixq.core.errors import MixqError
from mixq.core.progress import progress_bar

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "Job",
    "SerialExecutor",
    "collect",
    "load_payload",
    "task_labels",
]

EXECUTORS = ("serial", "processes", "ray")


@dataclass(frozen=True)
class Job:
    """Work for a set of workers.

    Attributes:
        setup: ``payload -> state``, run once per worker (a module-level function, so it
            travels by name); e.g. rebuild a Sim from a `SimState`.
        work: ``(state, task) -> result``, run once per task (module-level as well).
        payload: shipped once per worker (pickled; Ray: put in the object store once).
    """

    setup: Callable[[Any], Any]
    work: Callable[[Any, Any], Any]
    payload: Any


class ExecutorError(MixqError, RuntimeError):
    """A task failed (raised, or lost its worker on every retry); names it.

    Attributes:
        failed: the label of the task that failed.
        finished: task index -> result of every task that did finish (a caller that merges
            results may re-key it, e.g. quantizer -> score).
    """

    def __init__(self, message: str, failed: str, finished: dict[Any, Any]) -> None:
        super().__init__(message)
        self.failed = failed
        self.finished = finished


class Executor(Protocol):
    """Runs a `Job` over tasks; ``remote`` says whether the payload leaves this process."""

    name: str
    remote: bool

    @property
    def workers(self) -> int: ...

    def map(
        self,
        job: Job,
        tasks: Sequence[Any],
        labels: Sequence[str] | None = None,
        description: str = "tasks",
        progress: bool = True,
    ) -> list[Any]: ...

    def close(self) -> None: ...


@dataclass
class Stats:
    """What the last `map` shipped: payload bytes (once per worker) and bytes per task."""

    payload_bytes: int = 0
    task_bytes: float = 0.0
    startup_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def load_payload(data: bytes) -> Any:
    """Unpickle a job's payload on a worker (quiet about torch's pytree-spec deprecation,
    which unpickling an input spec triggers and which says nothing about the job)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        return pickle.loads(data)


def task_labels(labels: Sequence[str] | None, count: int) -> list[str]:
    """The labels errors name tasks by: the caller's, else ``task <i>``."""
    return list(labels) if labels is not None else [f"task {i}" for i in range(count)]


def collect(
    results: dict[int, Any],
    completions: Iterator[Any],
    count: int,
    description: str,
    progress: bool,
) -> list[Any]:
    """Drain ``completions`` (each fills ``results``) under one bar; results in task order."""
    for _ in progress_bar(completions, description, total=count, disable=not progress):
        pass
    return [results[i] for i in range(count)]


def task_failed(label: str, error: BaseException, results: dict[int, Any]) -> ExecutorError:
    """The error for a task that raised: its label, the cause, what finished."""
    return ExecutorError(
        f"{label} failed: {type(error).__name__}: {error} ({len(results)} other tasks "
        "finished; their results are in this error's .finished)",
        label,
        dict(results),
    )


class SerialExecutor:
    """Today's behaviour: the tasks one after another in this process, nothing shipped."""

    name = "serial"
    remote = False
    workers = 1

    def __init__(self) -> None:
        self.stats = Stats()

    def close(self) -> None:
        """Nothing to end."""

    def map(
        self,
        job: Job,
        tasks: Sequence[Any],
        labels: Sequence[str] | None = None,
        description: str = "tasks",
        progress: bool = True,
    ) -> list[Any]:
        """``job.work(job.setup(job.payload), task)`` for every task, in order; an error
        propagates as it is (as it always has)."""
        results: dict[int, Any] = {}

        def run() -> Iterator[None]:
            state = job.setup(job.payload)
            for i, task in enumerate(tasks):
                results[i] = job.work(state, task)
                yield None

        return collect(results, run(), len(tasks), description, progress)
