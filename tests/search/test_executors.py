"""The search on a process pool and on Ray: the same points, scores and plan as serially;
a worker killed mid-search is replaced; what cannot travel is a clear error."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

import mixq
from mixq import zoo
from mixq.analysis.metrics import sqnr
from mixq.search import SearchResult
from tests.transforms.models import bert_batches

STRATEGIES = ["fallback", "ratio", "pareto", "budget"]


@pytest.fixture(scope="module")
def bert():
    model, inputs = zoo.bert()
    return model, inputs, bert_batches(count=2, batch=4, seed=7)


def _run(strategy: str, case: tuple, executor, **kw) -> SearchResult:
    model, inputs, calib, extra = case
    extra = dict(extra)
    bops = extra.pop("bops", 0.7)  # a fraction of the all-int8 BOPs the case can reach
    budget = {"bops": bops} if strategy == "budget" else None
    return mixq.search(
        model, inputs, calib=calib, strategy=strategy, executor=executor, progress=False,
        budget=budget, points=4, **extra, **kw,
    )  # fmt: skip


def _same(serial: SearchResult, parallel: SearchResult) -> None:
    """Same points in the same order with the same scores, and the same plan."""
    assert [(p.key, p.label) for p in parallel.points] == [(p.key, p.label) for p in serial.points]
    for a, b in zip(serial.points, parallel.points, strict=True):
        assert b.score == pytest.approx(a.score, rel=1e-6, abs=1e-9), a.label
    assert parallel.plan.to_dict() == serial.plan.to_dict()


def _cnn(digits) -> tuple:
    model, x, calib, evaluation, labels = digits
    extra = {"evaluate": "accuracy", "data": evaluation, "labels": labels, "target": 0.97,
             "candidates": ["int8", ("int8", "int4"), "int16"]}  # fmt: skip
    return model, x, calib[:2], extra


def _bert(bert) -> tuple:
    model, inputs, calib = bert
    extra = {"evaluate": "sqnr", "target": 60.0, "candidates": ["int8", "int16"], "bops": 1.5}
    return model, inputs, calib, extra


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_processes_give_the_serial_search_on_the_digits_cnn(strategy, digits, pool):
    case = _cnn(digits)
    before = {k: v.clone() for k, v in case[0].state_dict().items()}
    _same(_run(strategy, case, "serial"), _run(strategy, case, pool))
    assert all(torch.equal(v, case[0].state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_processes_give_the_serial_search_on_bert(strategy, bert, pool):
    case = _bert(bert)
    serial = _run(strategy, case, "serial", max_trials=6)
    assert len(serial.points) > len(case[3]["candidates"])  # the strategy itself ran
    _same(serial, _run(strategy, case, pool, max_trials=6))


@pytest.mark.slow
def test_processes_score_with_the_weights_a_weights_transform_wrote(digits, pool):
    case = _cnn(digits)
    serial = _run("pareto", case, "serial", transforms=["gptq"])
    assert [t["name"] for t in serial.plan.transforms] == ["gptq"]
    plain = _run("pareto", case, "serial")
    assert [p.score for p in serial.points] != [p.score for p in plain.points]
    _same(serial, _run("pareto", case, pool, transforms=["gptq"]))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ray_gives_the_serial_search(strategy, digits, bert, ray_pool):
    for case, kw in ((_cnn(digits), {}), (_bert(bert), {"max_trials": 6})):
        _same(_run(strategy, case, "serial", **kw), _run(strategy, case, ray_pool, **kw))


def _sqnr_dying_once(marker: str, driver: int, sim) -> float:
    """SQNR of the Sim against the float model on a fixed batch; the first call in a
    worker process kills that process."""
    if os.getpid() != driver and not os.path.exists(marker):
        Path(marker).write_text("killed")
        os._exit(9)
    torch.manual_seed(1)
    x = torch.randn(16, 8)
    with torch.no_grad():
        with sim.disabled():
            ref = sim(x)
        return float(sqnr(ref, sim(x)))


def _mlp() -> tuple:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )  # fmt: skip
    data = [(torch.randn(32, 8),) for _ in range(2)]
    return model, data[0], data


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["processes", "ray"])
def test_a_worker_killed_during_the_search_is_replaced(engine, tmp_path, request):
    executor = request.getfixturevalue("pool" if engine == "processes" else "ray_pool")
    model, x, calib = _mlp()
    evaluate = functools.partial(_sqnr_dying_once, str(tmp_path / "killed"), os.getpid())
    kw = {"evaluate": evaluate, "target": 38.0, "candidates": ["int8", "int16"]}
    case = (model, x, calib, kw)
    serial = _run("pareto", case, "serial")
    killed = _run("pareto", case, executor)
    assert (tmp_path / "killed").exists()  # a worker did die
    _same(serial, killed)


def test_an_evaluate_that_cannot_travel_is_a_clear_error():
    model, x, calib = _mlp()
    with pytest.raises(mixq.ConfigError, match=r"cannot be sent to the workers.*module level"):
        mixq.search(model, x, calib=calib, evaluate=lambda sim: 1.0, executor="processes",
                    progress=False)  # fmt: skip


def test_an_unknown_executor_is_an_error():
    model, x, calib = _mlp()
    with pytest.raises(mixq.ConfigError, match="executor must be one of serial, processes"):
        mixq.search(model, x, calib=calib, executor="threads", progress=False)
