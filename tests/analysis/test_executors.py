"""Sensitivity and isolated comparison on a process pool and on Ray give the serial tables;
a worker killed mid-run is replaced and the table is still complete."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import pytest
import torch

import mixq
from mixq import zoo
from mixq.analysis.metrics import Metric, l1
from mixq.core.table import Table
from mixq.sim.executors import ExecutorError


def _same(a: Table, b: Table) -> None:
    """Same rows in the same order; floats equal to float tolerance."""
    assert [r.get("quantizer", r["op"]) for r in a.rows] == [
        r.get("quantizer", r["op"]) for r in b.rows
    ]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra.keys() == rb.keys()
        for k, v in ra.items():
            if isinstance(v, float) and not (math.isnan(v) and math.isnan(rb[k])):
                assert rb[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
            elif not isinstance(v, float):
                assert rb[k] == v, k


def _tables(qa: mixq.QuantAnalysis, data: list, executor=None) -> list[Table]:
    kw = {"executor": executor, "progress": False}
    return [
        qa.sensitivity("l1", "both", "exact", data=data, **kw),
        qa.sensitivity("l1", "both", "fast", data=data, **kw),
        qa.compare_layers("isolated", data=data[0], **kw),
    ]


@pytest.fixture(scope="module")
def cnn_sim():
    model, x = zoo.digits_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sim = mixq.quantize(model, x, "int8").calibrate([x], progress=False)
    return sim, [x], model, before


@pytest.fixture(scope="module")
def bert_sim(bert_model):
    model, inputs, calib = bert_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib, progress=False)
    return sim, calib[:2]


@pytest.mark.slow
def test_processes_give_the_serial_tables_on_the_digits_cnn(cnn_sim, pool):
    sim, data, model, before = cnn_sim
    qa = mixq.QuantAnalysis(sim)
    for serial, parallel in zip(_tables(qa, data), _tables(qa, data, pool), strict=True):
        _same(serial, parallel)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
def test_processes_give_the_serial_tables_on_bert(bert_sim, pool):
    sim, data = bert_sim
    qa = mixq.QuantAnalysis(sim, executor=pool)
    parallel = _tables(qa, data)
    for serial, par in zip(_tables(qa, data, "serial"), parallel, strict=True):
        _same(serial, par)
    assert len(parallel[0].rows) == len(sim.quantizers)


@pytest.mark.slow
def test_ray_gives_the_serial_tables(cnn_sim, bert_sim, ray_pool):
    for sim, data, *_ in (cnn_sim, bert_sim):
        qa = mixq.QuantAnalysis(sim)
        for serial, parallel in zip(_tables(qa, data), _tables(qa, data, ray_pool), strict=True):
            _same(serial, parallel)


def _l1_dying_once(marker: str, driver: int, ref: torch.Tensor, out: torch.Tensor) -> float:
    """L1, except that the first call in a worker process kills that process."""
    if os.getpid() != driver and not os.path.exists(marker):
        Path(marker).write_text("killed")
        os._exit(9)
    return l1(ref, out)


def _killer(tmp_path: Path) -> Metric:
    fn = functools.partial(_l1_dying_once, str(tmp_path / "killed"), os.getpid())
    return Metric("l1", fn, higher_is_better=False)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["processes", "ray"])
def test_a_worker_killed_during_exact_sensitivity_is_replaced(engine, cnn_sim, tmp_path, request):
    sim, data, *_ = cnn_sim
    executor = request.getfixturevalue("pool" if engine == "processes" else "ray_pool")
    qa = mixq.QuantAnalysis(sim)
    serial = qa.sensitivity("l1", "both", "exact", data=data, progress=False)
    killed = qa.sensitivity(
        _killer(tmp_path), "both", "exact", data=data, executor=executor, progress=False
    )
    assert (tmp_path / "killed").exists()  # a worker did die
    _same(serial, killed)


def _raises(ref: torch.Tensor, out: torch.Tensor) -> float:
    raise RuntimeError("metric broke")


@pytest.mark.slow
def test_a_failing_task_names_its_quantizer_and_keeps_nothing_wrong(cnn_sim, pool):
    sim, data, *_ = cnn_sim
    qa = mixq.QuantAnalysis(sim, executor=pool)
    with pytest.raises(ExecutorError, match=r"quantizer '.+' failed: RuntimeError: metric broke"):
        qa.sensitivity(Metric("bad", _raises, False), "both", "exact", data=data, progress=False)
    assert "sensitivity_both_partial" in qa.tables


def test_an_unknown_executor_is_an_error(cnn_sim):
    sim, *_ = cnn_sim
    with pytest.raises(ValueError, match="executor must be one of serial, processes, ray"):
        mixq.QuantAnalysis(sim, executor="threads")
