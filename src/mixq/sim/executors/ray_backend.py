"""Ray as the engine (``executor="ray"``, the optional extra ``mixq[ray]``).

``ray_address=None`` joins the Ray cluster already running here (``ray.init()`` finds one
started by ``ray start --head`` or an earlier ``ray.init`` in this process) or starts a
local one; an address (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``) joins that
cluster. Ray is imported only when a job runs.

The payload is ``ray.put`` once per `map`; each worker is an actor, kept between maps,
that fetches the payload (its reference travels boxed, so Ray does not resolve it per
call) on its first task of a map, rebuilds its state and keeps it. Tasks are actor calls
carrying the boxed reference and their small task value; `close` ends the actors. An actor
whose process dies is restarted by Ray and its calls retried (``max_restarts`` /
``max_task_retries``); a task that raises, or loses its actor on every retry, is an
`ExecutorError` naming it.

Example:
    >>> # RayExecutor(workers=2).map(Job(setup, work, payload), tasks)
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator, Sequence
from typing import Any

from mixq.core.errors import ConfigError
from mixq.sim.executors.base import (
    ExecutorError,
    Job,
    Stats,
    collect,
    load_payload,
    task_failed,
    task_labels,
)

__all__ = ["RayExecutor", "import_ray"]


def import_ray() -> Any:
    """``ray``, or an error that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "executor='ray' needs Ray: pip install 'mixq[ray]' (or pip install 'ray>=2.9'); "
            "executor='processes' needs nothing extra"
        ) from e
    return ray


class _Worker:
    """One Ray actor: a job's state, built on its first task of a map, reused for the rest."""

    def __init__(self) -> None:
        import ray
        import torch

        # as many torch threads as CPUs Ray gave this actor (one unless asked otherwise)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.key: str | None = None
        self.state: Any = None

    def run(self, box: list[Any], task: Any) -> Any:
        import ray

        if self.key != box[0].hex():
            self.key, self.state = None, None  # the previous job's Sim goes first
            setup, self.work, data = load_payload(ray.get(box[0]))
            self.key, self.state = box[0].hex(), setup(data)
        return self.work(self.state, task)


class RayExecutor:
    """``workers`` Ray actors (default: the cluster's CPUs), ``max_retries`` per lost task."""

    name = "ray"
    remote = True

    def __init__(
        self, workers: int | None = None, address: str | None = None, max_retries: int = 2
    ) -> None:
        self.address = address
        self.max_retries = max_retries
        self._workers = workers
        self.stats = Stats()
        self._actors: list[Any] = []

    def close(self) -> None:
        """End the actors (a later `map` starts new ones); Ray itself stays up."""
        if self._actors:
            ray = import_ray()
            for a in self._actors:
                ray.kill(a)
            self._actors = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workers(self) -> int:
        if self._workers:
            return self._workers
        ray = import_ray()
        if not ray.is_initialized():
            return os.cpu_count() or 1
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def connect(self) -> float:
        """Join (or start) the cluster unless this process already has; seconds it took."""
        ray = import_ray()
        if ray.is_initialized():
            return 0.0
        start = time.perf_counter()
        ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        return time.perf_counter() - start

    def map(
        self,
        job: Job,
        tasks: Sequence[Any],
        labels: Sequence[str] | None = None,
        description: str = "tasks",
        progress: bool = True,
    ) -> list[Any]:
        """Run ``job`` over ``tasks`` on Ray actors; results in task order."""
        if not tasks:
            return []
        ray = import_ray()
        startup = self.connect()
        labels = task_labels(labels, len(tasks))
        payload = pickle.dumps((job.setup, job.work, job.payload), protocol=5)
        box = [ray.put(payload)]
        sizes = [len(pickle.dumps((box, t), protocol=5)) for t in tasks]
        self.stats = Stats(len(payload), sum(sizes) / max(1, len(sizes)), startup)
        if not self._actors:
            actor = ray.remote(
                num_cpus=1, max_restarts=self.max_retries, max_task_retries=self.max_retries
            )(_Worker)
            self._actors = [actor.remote() for _ in range(self.workers)]
        results: dict[int, Any] = {}
        run = self._completed(ray, box, tasks, labels, results)
        return collect(results, run, len(tasks), description, progress)

    def _completed(
        self,
        ray: Any,
        box: list[Any],
        tasks: Sequence[Any],
        labels: list[str],
        results: dict[int, Any],
    ) -> Iterator[None]:
        todo = list(range(len(tasks)))[::-1]
        running: dict[Any, tuple[int, Any]] = {}

        def submit(a: Any) -> None:
            if todo:
                i = todo.pop()
                running[a.run.remote(box, tasks[i])] = (i, a)

        for a in self._actors:  # two calls per actor in hand: it never waits for its next task
            submit(a)
            submit(a)
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            i, a = running.pop(ready)
            try:
                results[i] = ray.get(ready)
            except ray.exceptions.RayActorError as e:
                raise ExecutorError(
                    f"{labels[i]} failed: its Ray worker died on every one of "
                    f"{self.max_retries + 1} attempts ({len(results)} other tasks finished; "
                    "their results are in this error's .finished)",
                    labels[i],
                    dict(results),
                ) from e
            except ray.exceptions.RayTaskError as e:
                raise task_failed(labels[i], e.cause or e, results) from e
            yield None
            submit(a)
