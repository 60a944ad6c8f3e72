"""How much output error each unit adds at each candidate, and how much harm it does now.

`unit_errors` builds one Sim per candidate (every unit at it), runs the float model once
on a batch of hard samples, and for every unit switches on only its own quantizers (its
output activation and its weights) -- recomputing just what they change. The error is the
normalised MSE of the outputs, ``||y - y_q||^2 / ||y||^2`` (NNCF's ranking measure): it
adds up over units to first order, which the integer program assumes. The float run has the
float model's weights, also where a weights transform (gptq) rounded them in the Sim (a
weight quantizer switched off gives its float weight): a unit's error includes its rounded
weights. Errors are made
monotone along each unit's options (a dearer option never counts as worse), as ModelOpt does.

`harm_in_context` ranks units in a given plan: the error reduction when only that unit's
quantizers are switched off (NNCF's re-ranking after a step that made things worse).

Example:
    >>> # errors = unit_errors(trials, batch)  # {unit: {"int8": 3e-4, "int16": 1e-6}}
"""

from __future__ import annotations

from typing import Any

from mixq.core.progress import progress_bar
from mixq.search.engine import Trials
from mixq.search.fanout import errors_remote, harm_remote
from mixq.search.measure import nmse, outputs, own_quantizers
from mixq.search.space import Candidate, SearchSpace, Unit
from mixq.sim.torch.runner import make_runner

__all__ = ["harm_in_context", "nmse", "own_quantizers", "unit_errors"]


def unit_errors(trials: Trials, batch: Any, progress: bool = True) -> dict[str, dict[str, float]]:
    """Error of every free unit at every option: {unit: {candidate: nmse}} (kept in the
    history, so a resumed search does not measure it again)."""
    if "unit_errors" in trials.extra:
        return trials.extra["unit_errors"]
    space = trials.space
    errors: dict[str, dict[str, float]] = {u.name: {} for u in space.free}
    jobs = [
        (_at(space, cand), str(cand), u.name)
        for cand in _all_options(space)
        for u in space.free
        if cand in u.options
    ]
    if trials.executor.remote:
        measured = errors_remote(trials, batch, jobs)
    else:
        measured = _errors_here(trials, batch, jobs, progress)
    for (_, cand, unit), err in zip(jobs, measured, strict=True):
        errors[unit][cand] = err
    _make_monotone(space, errors)
    trials.record("unit_errors", errors)
    return errors


def _errors_here(
    trials: Trials, batch: Any, jobs: list[tuple[dict[str, Candidate], str, str]], progress: bool
) -> list[float]:
    """The errors of ``jobs`` in this process: one Sim and float run per candidate."""
    out: list[float] = []
    for cand in dict.fromkeys(c for _, c, _ in jobs):
        mine = [(a, u) for a, c, u in jobs if c == cand]
        sim = trials.sim(mine[0][0])
        runner = make_runner(sim)
        float_run = runner.run(batch, enabled=())
        ref = outputs(runner, float_run)
        for _, unit in progress_bar(mine, f"sensitivity at {cand}", disable=not progress):
            own = own_quantizers(sim, trials.space.units[unit])
            out.append(nmse(ref, outputs(runner, runner.rerun(float_run, own))) if own else 0.0)
    return out


def _at(space: SearchSpace, cand: Candidate) -> dict[str, Candidate]:
    """Every free unit at ``cand`` where it allows it, else at its cheapest option."""
    return {u.name: cand if cand in u.options else u.options[0] for u in space.free}


def _all_options(space: SearchSpace) -> list[Candidate]:
    seen: list[Candidate] = []
    for u in space.free:
        seen += [c for c in u.options if c not in seen]
    return seen


def _make_monotone(space: SearchSpace, errors: dict[str, dict[str, float]]) -> None:
    for u in space.free:
        best = float("inf")
        for c in u.options:
            best = min(best, errors[u.name].get(str(c), best))
            errors[u.name][str(c)] = best


def harm_in_context(
    trials: Trials,
    assignment: dict[str, Candidate],
    units: list[Unit],
    batch: Any,
    progress: bool = True,
) -> dict[str, float]:
    """For each of ``units``: how much the output error of ``assignment`` falls when that
    unit's quantizers alone are off (larger = more harmful now)."""
    if trials.executor.remote:
        names = [u.name for u in units]
        return dict(zip(names, harm_remote(trials, batch, assignment, names), strict=True))
    sim = trials.sim(assignment)
    runner = make_runner(sim)
    ref = outputs(runner, runner.run(batch, enabled=()))
    everything = list(sim.quantizers)
    base = nmse(ref, outputs(runner, runner.run(batch, enabled=everything)))
    harm = {}
    for u in progress_bar(units, "ranking units", disable=not progress):
        own = set(own_quantizers(sim, u))
        rest = [q for q in everything if q not in own]
        harm[u.name] = base - nmse(ref, outputs(runner, runner.run(batch, enabled=rest)))
    return harm
