"""How much output error each unit adds at each candidate, and how much harm it does now.

`unit_errors` builds one Sim per candidate (every unit at it), runs the float model once
on a batch of hard samples, and for every unit switches on only its own quantizers (its
output activation and its weights) -- recomputing just what they change. The error is the
normalised MSE of the outputs, ``||y - y_q||^2 / ||y||^2`` (NNCF's ranking measure): it
adds up over units to first order, which the integer program assumes. Errors are made
monotone along each unit's options (a dearer option never counts as worse), as ModelOpt does.

`harm_in_context` ranks units in a given plan: the error reduction when only that unit's
quantizers are switched off (NNCF's re-ranking after a step that made things worse).

Example:
    >>> # errors = unit_errors(trials, batch)  # {unit: {"int8": 3e-4, "int16": 1e-6}}
"""

from __future__ import annotations

from typing import Any

import torch

from mixq.core.progress import progress_bar
from mixq.search.engine import Trials
from mixq.search.space import Candidate, SearchSpace, Unit
from mixq.sim.protocol import SimLike
from mixq.sim.torch.runner import make_runner

__all__ = ["harm_in_context", "nmse", "own_quantizers", "unit_errors"]


def nmse(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Normalised mean squared error (0 = equal)."""
    ref, out = ref.double(), out.double()
    return float(((ref - out) ** 2).sum() / (ref**2).sum().clamp_min(1e-30))


def own_quantizers(sim: SimLike, unit: Unit) -> list[str]:
    """The quantizers a unit's choice decides: its ops' outputs and weights, and the
    conversions on its input edge (a ``to_float`` unit reading a float-produced tensor);
    a model input's own quantizer for an input unit."""
    if unit.input is not None:
        return [p.name for p in sim.points if p.op is None and p.target == unit.input]
    ops = set(unit.ops)
    return [p.name for p in sim.points if (p.op in ops and not p.readers) or ops & set(p.readers)]


def _outputs(runner: Any, run: Any) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in runner.outputs(run)])


def unit_errors(trials: Trials, batch: Any, progress: bool = True) -> dict[str, dict[str, float]]:
    """Error of every free unit at every option: {unit: {candidate: nmse}} (kept in the
    history, so a resumed search does not measure it again)."""
    if "unit_errors" in trials.extra:
        return trials.extra["unit_errors"]
    space = trials.space
    errors: dict[str, dict[str, float]] = {u.name: {} for u in space.free}
    for cand in _all_options(space):
        assignment = {u.name: cand if cand in u.options else u.options[0] for u in space.free}
        sim = trials.sim(assignment)
        runner = make_runner(sim)
        float_run = runner.run(batch, enabled=())
        ref = _outputs(runner, float_run)
        units = [u for u in space.free if cand in u.options]
        for u in progress_bar(units, f"sensitivity at {cand}", disable=not progress):
            own = own_quantizers(sim, u)
            err = nmse(ref, _outputs(runner, runner.rerun(float_run, own))) if own else 0.0
            errors[u.name][str(cand)] = err
    _make_monotone(space, errors)
    trials.record("unit_errors", errors)
    return errors


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
    sim = trials.sim(assignment)
    runner = make_runner(sim)
    ref = _outputs(runner, runner.run(batch, enabled=()))
    everything = list(sim.quantizers)
    base = nmse(ref, _outputs(runner, runner.run(batch, enabled=everything)))
    harm = {}
    for u in progress_bar(units, "ranking units", disable=not progress):
        own = set(own_quantizers(sim, u))
        rest = [q for q in everything if q not in own]
        harm[u.name] = base - nmse(ref, _outputs(runner, runner.run(batch, enabled=rest)))
    return harm
