"""Never empty-handed: budgets, history and resume."""

from __future__ import annotations

import json

import torch

import mixq
from mixq.analysis.metrics import sqnr


def _counting_sqnr(model, data, calls):
    with torch.no_grad():
        ref = torch.cat([model(*b).flatten() for b in data])

    def evaluate(sim) -> float:
        if any(q.enabled for q in sim.named_quantizers().values()):  # not the float baseline
            calls.append(
                tuple((o.name, o.input, o.output, tuple(o.weight.items())) for o in sim.plan)
            )
        with torch.no_grad():
            return sqnr(ref, torch.cat([sim(*b).flatten() for b in data]))

    return evaluate


def test_resume_after_a_kill_evaluates_nothing_twice(digits, tmp_path):
    model, example, calib, data, _ = digits
    history = tmp_path / "search.jsonl"
    kwargs = dict(
        calib=calib, data=data, target=60, candidates=[("int8", "int4"), "int8", "int16"],
        strategy="fallback", history=history, progress=False,
    )  # fmt: skip
    first: list = []
    killed = mixq.search(model, example, evaluate=_counting_sqnr(model, data, first),
                         max_trials=6, **kwargs)  # fmt: skip
    assert "stopped early" in killed.note and killed.evaluations == 6 == len(first)
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert sum(r["type"] == "point" for r in lines) == 6  # written as it went

    second: list = []
    resumed = mixq.search(model, example, evaluate=_counting_sqnr(model, data, second),
                          resume=True, **kwargs)  # fmt: skip
    assert resumed.reused >= 6
    assert len(second) == resumed.evaluations > 0
    assert not set(first) & set(second)  # nothing from the killed run ran again
    # the resumed run ends where an uninterrupted one does
    fresh = mixq.search(model, example, evaluate=_counting_sqnr(model, data, []),
                        **{**kwargs, "history": tmp_path / "fresh.jsonl"})  # fmt: skip
    assert resumed.best.key == fresh.best.key


def test_history_of_another_model_is_refused(digits, mlp_model, tmp_path):
    model, example, calib, data, _ = digits
    history = tmp_path / "h.jsonl"
    mixq.search(model, example, calib=calib, data=data, evaluate="sqnr", target=10,
                candidates=["int8"], history=history, progress=False)  # fmt: skip
    other, inputs, other_calib = mlp_model
    try:
        mixq.search(other, inputs, calib=other_calib, evaluate="sqnr", target=10,
                    candidates=["int8"], history=history, resume=True, progress=False)  # fmt: skip
    except mixq.ConfigError as e:
        assert "another model" in str(e)
    else:
        raise AssertionError("a history of another model was accepted")


def test_time_budget_still_returns_a_plan(digits):
    model, example, calib, data, _ = digits
    result = mixq.search(model, example, calib=calib, data=data, evaluate="sqnr", target=200,
                         candidates=["int8", "int16"], time_budget_s=0, progress=False)  # fmt: skip
    assert result.evaluations == 1 and "time budget" in result.note
    assert not result.met_target and result.plan is not None and result.miss > 0


def test_a_search_scored_on_its_calibration_data_says_so(digits):
    """Scored on ``calib`` the plan is judged on the inputs its ranges were fitted to, which
    hides inputs that reach past them; the result says so unless ``data`` was given."""
    model, example, calib, data, _ = digits
    kw = dict(evaluate="sqnr", target=0, candidates=["int8"], progress=False)
    in_sample = mixq.search(model, example, calib=calib, **kw)
    held_out = mixq.search(model, example, calib=calib, data=data, **kw)
    assert in_sample.met_target and held_out.met_target
    assert "data=" in in_sample.note and "calibration" in in_sample.summary()
    assert "data=" not in held_out.note
