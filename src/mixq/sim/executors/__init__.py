"""Where analyses and searches spread their work: serially, over local processes, or on Ray.

The seam has two halves. `mixq.sim.executors.state` says what travels: a calibrated Sim as
model state + Plan + Encodings (`pack_sim` / `rebuild_sim`), shipped once per worker.
`mixq.sim.executors.base` says how work runs: a `Job` (a setup run once per worker on the
payload, a function run per task) mapped over tasks by an executor, results merged in task
order so every executor gives the serial answer.

- ``"serial"`` (`SerialExecutor`): this process, nothing shipped; today's behaviour.
- ``"processes"`` (`ProcessExecutor`): a local ``spawn`` process pool, no extra dependency.
- ``"ray"`` (`RayExecutor`): Ray actors; ``ray_address=None`` starts or joins a local
  cluster, an address joins that one (``pip install 'mixq[ray]'``).

Example:
    >>> make_executor("serial").name
    'serial'
    >>> make_executor("processes", workers=2).workers
    2
"""

from __future__ import annotations

from mixq.core.errors import ConfigError
from mixq.sim.executors.base import EXECUTORS, Executor, ExecutorError, Job, SerialExecutor
from mixq.sim.executors.processes import ProcessExecutor
from mixq.sim.executors.ray_backend import RayExecutor
from mixq.sim.executors.state import SimState, pack_sim, rebuild_sim

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "Job",
    "ProcessExecutor",
    "RayExecutor",
    "SerialExecutor",
    "SimState",
    "make_executor",
    "pack_sim",
    "rebuild_sim",
]


def make_executor(
    executor: str | Executor = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
) -> Executor:
    """The executor named ``executor`` (an `Executor` object is returned as it is).

    Args:
        executor: ``"serial"``, ``"processes"`` or ``"ray"``.
        workers: worker processes / actors (default: this machine's cores; Ray: the
            cluster's CPUs).
        ray_address: for ``"ray"``: None starts or joins a local cluster; ``"auto"`` or
            ``"host:port"`` joins a running one.
    """
    if not isinstance(executor, str):
        return executor
    if executor == "serial":
        return SerialExecutor()
    if executor == "processes":
        return ProcessExecutor(workers)
    if executor == "ray":
        return RayExecutor(workers, ray_address)
    raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
