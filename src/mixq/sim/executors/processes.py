"""A local process pool (``executor="processes"``): no dependency beyond the standard library.

The payload is pickled once into a temporary file; a worker reads it on its first task of
a `map`, runs ``job.setup`` and keeps the state for the rest (and until the next `map`).
The pool outlives one `map`, so the interpreters start (and import torch) once per
executor; `close` ends them. Workers are started with ``spawn`` (a fresh interpreter: safe
with torch's threads), so a script that uses this executor must guard its entry point
with ``if __name__ == "__main__":``.

A worker that dies (killed, out of memory) breaks the pool: the tasks it and its peers had
in hand are re-submitted to a fresh pool, up to ``max_retries`` times each; a task that
raises is not retried (it would raise again) and is reported by its label.

Example:
    >>> from mixq.sim.executors.base import Job
    >>> # ProcessExecutor(workers=2).map(Job(setup, work, payload), tasks)
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mixq.sim.executors.base import (
    ExecutorError,
    Job,
    Stats,
    collect,
    load_payload,
    task_failed,
    task_labels,
)

__all__ = ["ProcessExecutor"]

# the worker process's state: the payload file it was built from, the work, the state
_WORKER: dict[str, Any] = {}


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(path: str, task: Any) -> Any:
    if _WORKER.get("path") != path:
        _WORKER.clear()  # one job's state at a time: the previous Sim goes first
        with open(path, "rb") as f:
            setup, work, data = load_payload(f.read())
        _WORKER.update(path=path, work=work, state=setup(data))
    return _WORKER["work"](_WORKER["state"], task)


class ProcessExecutor:
    """``workers`` local processes (default: one per core), ``max_retries`` per lost task."""

    name = "processes"
    remote = True

    def __init__(self, workers: int | None = None, max_retries: int = 2) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.max_retries = max_retries
        self.stats = Stats()
        self._executor: ProcessPoolExecutor | None = None

    def close(self) -> None:
        """End the worker processes (a later `map` starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(
        self,
        job: Job,
        tasks: Sequence[Any],
        labels: Sequence[str] | None = None,
        description: str = "tasks",
        progress: bool = True,
    ) -> list[Any]:
        """Run ``job`` over ``tasks`` on the pool; results in task order."""
        labels = task_labels(labels, len(tasks))
        payload = pickle.dumps((job.setup, job.work, job.payload), protocol=5)
        sizes = [len(pickle.dumps(t, protocol=5)) for t in tasks]
        self.stats = Stats(len(payload), sum(sizes) / max(1, len(sizes)))
        results: dict[int, Any] = {}
        with tempfile.TemporaryDirectory(prefix="mixq-job-") as folder:
            path = os.path.join(folder, "payload.pkl")
            with open(path, "wb") as f:
                f.write(payload)
            run = self._completed(path, tasks, labels, results)
            return collect(results, run, len(tasks), description, progress)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init,
                initargs=(threads,),
            )
        return self._executor

    def _completed(
        self, path: str, tasks: Sequence[Any], labels: list[str], results: dict[int, Any]
    ) -> Iterator[None]:
        """Fill ``results`` task by task (yielding after each), re-submitting lost tasks."""
        todo, attempts = deque(range(len(tasks))), [0] * len(tasks)
        while todo:
            lost: list[int] = []
            pool = self._pool()
            running: dict[Future[Any], int] = {}
            while (todo or running) and not lost:
                # two tasks per worker in hand: a worker never waits for its next one
                while todo and len(running) < 2 * self.workers:
                    i = todo.popleft()
                    running[pool.submit(_call, path, tasks[i])] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        lost.append(i)
                    elif error is not None:
                        wait(running)  # let the pool settle before it is used again
                        raise task_failed(labels[i], error, results) from error
                    else:
                        results[i] = future.result()
                        yield None
            lost += running.values()
            if lost:
                self.close()  # a broken pool: the next round starts a fresh one
            for i in sorted(lost):
                attempts[i] += 1
                if attempts[i] > self.max_retries:
                    raise ExecutorError(
                        f"{labels[i]} failed on all {attempts[i]} attempts: its worker "
                        f"process died each time ({len(results)} other tasks finished; "
                        "their results are in this error's .finished)",
                        labels[i],
                        dict(results),
                    )
            todo.extendleft(sorted(lost, reverse=True))
