"""The executor seam: a Sim rebuilt from what travels (model state + Plan + Encodings) is
the same Sim; executors return results in task order; lost workers are retried, and a task
that cannot finish is named."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import mixq
from mixq import zoo
from mixq.core.errors import ConfigError
from mixq.sim.executors import (
    ExecutorError,
    Job,
    ProcessExecutor,
    SerialExecutor,
    make_executor,
    pack_sim,
    rebuild_sim,
)
from mixq.sim.executors.base import load_payload
from mixq.sim.torch.runner import GraphRunner
from tests.sim.onnx.conftest import batches
from tests.sim.onnx.models import cnn


def _travelled(sim):
    """``sim`` packed, pickled (what a worker receives) and rebuilt."""
    return rebuild_sim(load_payload(pickle.dumps(pack_sim(sim))))


@pytest.mark.parametrize("name", ["digits_cnn", "bert"])
def test_a_rebuilt_torch_sim_is_the_same_sim(name):
    model, x = getattr(zoo, name)()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sim = mixq.quantize(model, x, "int8").calibrate([x], progress=False)
    sim.set_enabled([sim.quantizers[0]], False)  # switches travel too
    twin = _travelled(sim)
    assert twin.quantizers == sim.quantizers
    assert twin.value_nodes == sim.value_nodes and twin.quantizer_nodes == sim.quantizer_nodes
    assert twin.encodings().to_dict() == sim.encodings().to_dict()
    ours, theirs = GraphRunner(sim), GraphRunner(twin)
    for enabled in (None, [], sim.quantizers[1:2]):
        a = ours.outputs(ours.run(x, enabled=enabled))
        b = theirs.outputs(theirs.run(x, enabled=enabled))
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.onnx
def test_a_rebuilt_onnx_sim_is_the_same_sim():
    data = batches((2, 3, 8, 8))
    sim = mixq.quantize(cnn(), data[0], "int8").calibrate(data, progress=False)
    twin = _travelled(sim)
    assert type(twin) is type(sim) and twin.quantizers == sim.quantizers
    assert twin.encodings().to_dict() == sim.encodings().to_dict()
    assert torch.equal(twin(*data[1]), sim(*data[1]))


def _setup(offset: int) -> int:
    return offset


def _add(offset: int, task: int) -> int:
    return offset + task


def _die_once(marker: str, task: int) -> int:
    if task == 3 and not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(9)
    return task * 10


def _always_die(marker: str, task: int) -> int:
    if task == 1:
        os._exit(9)
    return task


def test_serial_runs_in_order_and_propagates_errors_as_they_are():
    assert SerialExecutor().map(Job(_setup, _add, 100), [3, 1, 2], progress=False) == [
        103,
        101,
        102,
    ]
    with pytest.raises(TypeError):
        SerialExecutor().map(Job(_setup, _add, None), [1], progress=False)


def test_make_executor_names():
    assert make_executor("processes", workers=3).workers == 3
    with pytest.raises(ConfigError, match="executor must be one of"):
        make_executor("threads")


@pytest.mark.slow
def test_processes_retry_a_lost_worker_and_name_a_task_that_never_finishes(tmp_path):
    with ProcessExecutor(workers=2) as pool:
        tasks = list(range(8))
        marker = str(tmp_path / "died")
        assert pool.map(Job(_setup, _die_once, marker), tasks, progress=False) == [
            t * 10 for t in tasks
        ]
        assert Path(marker).exists()
        labels = [f"task number {t}" for t in tasks]
        with pytest.raises(ExecutorError, match="task number 1 failed on all 3 attempts") as e:
            pool.map(Job(_setup, _always_die, marker), tasks, labels, progress=False)
        assert e.value.failed == "task number 1" and e.value.finished.get(0) == 0
