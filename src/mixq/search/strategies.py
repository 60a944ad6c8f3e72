"""Search strategies: sensitivity ratio, accuracy-driven fallback, Pareto front.

Each takes a `Trials` (which evaluates, keeps the points and stops on the budgets by
raising `Exhausted`) and returns nothing: the caller picks the result from the points, so
a strategy stopped half-way still leaves everything it found. The integer program is in
`mixq.search.milp`.

Example:
    >>> from mixq.search.registry import STRATEGIES
    >>> sorted(STRATEGIES), STRATEGIES["fallback"] is fallback_search
    (['budget', 'fallback', 'pareto', 'ratio'], True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from mixq.search.engine import Point, Trials
from mixq.search.sensitivity import harm_in_context, unit_errors
from mixq.search.space import Candidate, Unit

__all__ = ["fallback_search", "pareto_search", "raise_one", "ratio_search"]

Assignment = dict[str, Candidate]


def raise_one(unit: Unit, current: Candidate) -> Candidate | None:
    """The unit's next dearer option after ``current`` (None at the top)."""
    i = unit.options.index(current) if current in unit.options else -1
    return unit.options[i + 1] if i + 1 < len(unit.options) else None


def _ranked(trials: Trials, batch: Any) -> list[Unit]:
    """Free units, the most error removed per cost added by their first step up first (the
    error each adds at its cheapest option, less at its next, over what that step costs:
    a small attention matmul before a 4x-wide FFN projection of the same error)."""
    errors = unit_errors(trials, batch, progress=trials.progress is not None)
    space, cheapest = trials.space, trials.space.uniform(0)
    units = [u for u in space.free if len(u.options) > 1]

    def value(u: Unit) -> float:
        gain = errors[u.name][str(u.options[0])] - errors[u.name][str(u.options[1])]
        extra = space.move_cost(cheapest, u.name, u.options[1], trials.cost_key)
        return gain / extra if extra > 0 else (math.inf if gain > 0 else 0.0)

    return sorted(units, key=lambda u: (-value(u), -errors[u.name][str(u.options[0])]))


# -- ratio -----------------------------------------------------------------------------------------
def ratio_search(trials: Trials, batch: Any, ratio: float | None = None, **_: Any) -> None:
    """Raise the top ``ratio`` of units (by sensitivity) to their next option; without a
    ratio, bisect the smallest top-k that meets the target (seed 003's recipe, automated).

    When raising every unit one step is not enough, the bisection runs on two steps (the
    top-k raised to the option after next), and so on. Units are ranked once (`unit_errors`
    on the hard samples), so the search costs about log2(units) evaluations; once the target
    is met it keeps lowering raised units while the budget lasts (the cheapest passing plan
    wins).
    """
    cheapest = trials.space.uniform(0)
    ranked = _ranked(trials, batch)

    def top(k: int, steps: int = 1) -> Point:
        a = dict(cheapest)
        for u in ranked[:k]:
            a[u.name] = u.options[min(u.options.index(a[u.name]) + steps, len(u.options) - 1)]
        label = f"ratio top {k}/{len(ranked)}" + (f", {steps} steps up" if steps > 1 else "")
        return trials.evaluate(a, label)  # over a budget it is kept, not chosen

    if ratio is not None:
        top(math.ceil(ratio * len(ranked)))
        return
    if top(0).met:
        return
    most = max((len(u.options) - 1 for u in ranked), default=0)
    steps = next((s for s in range(1, most + 1) if top(len(ranked), s).met), None)
    if steps is None:
        return
    lo, hi = 0, len(ranked)
    while hi - lo > 1:  # top(lo) misses, top(hi) meets
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if top(mid, steps).met else (mid, hi)
    # keep searching down while the budget lasts: the cheapest passing plan wins, not the
    # first (a raised unit that the target does not need goes back down)
    best = min((p for p in trials.points.values() if p.met), key=lambda p: p.cost[trials.cost_key])
    _prune(trials, {**cheapest, **_options_of(trials, best)}, batch)


def _options_of(trials: Trials, point: Point) -> Assignment:
    by_name = {u.name: {str(c): c for c in u.options} for u in trials.space.free}
    return {u: by_name[u][c] for u, c in point.assignment.items() if u in by_name}


# -- fallback --------------------------------------------------------------------------------------
def fallback_search(
    trials: Trials,
    batch: Any,
    start: Assignment | None = None,
    fits: Callable[[Assignment], bool] | None = None,
    prune: bool = True,
    **_: Any,
) -> None:
    """Accuracy-driven fallback from the cheapest plan (or ``start``).

    1. Op-kind groups (INC): each kind's units raised one step, alone, evaluated.
    2. Units (NNCF): rank by the harm each does in the current plan, on the hard samples;
       raise the most harmful one step and validate; a step that made the score worse is
       undone (that unit is not tried again) and the rest re-ranked against the current
       plan; stop when the target is met or nothing is left to raise.
    3. With ``prune``, keep going while the budget lasts: lower each raised unit, one step
       at a time, as far as the target still holds (a cheaper passing plan, not just the
       first one).

    ``fits`` limits the moves (e.g. to a cost budget).
    """
    fits = fits or trials.fits
    current = dict(start or trials.space.uniform(0))
    point = trials.evaluate(current, "fallback start")
    if point.met:
        if prune:
            _prune(trials, current, batch)
        return
    _kind_groups(trials, current, fits)
    current, point = _unit_steps(trials, current, point, batch, fits)
    if point.met and prune:
        _prune(trials, current, batch)


def _kind_groups(trials: Trials, current: Assignment, fits: Callable[[Assignment], bool]) -> None:
    kinds: dict[str, list[Unit]] = {}
    for u in trials.space.free:
        if raise_one(u, current[u.name]) is not None:
            kinds.setdefault(u.kind, []).append(u)
    steps = []
    for kind, units in sorted(kinds.items()):
        a = dict(current)
        for u in units:
            a[u.name] = raise_one(u, a[u.name]) or a[u.name]
        if fits(a):
            steps.append((a, f"fallback kind {kind} ({len(units)} units) raised"))
    trials.evaluate_many(steps)


def _unit_steps(
    trials: Trials,
    current: Assignment,
    point: Point,
    batch: Any,
    fits: Callable[[Assignment], bool],
) -> tuple[Assignment, Point]:
    show = trials.progress is not None
    order = _by_harm(trials, current, batch, show)
    skipped: set[str] = set()  # units whose step made things worse
    while order and not point.met:
        unit = order.pop(0)
        nxt = raise_one(unit, current[unit.name])
        trial = {**current, unit.name: nxt} if nxt is not None else None
        if trial is None or not fits(trial):
            continue
        p = trials.evaluate(trial, f"fallback raise {unit.name} to {nxt}")
        if trials.better(point.score, p.score):
            skipped.add(unit.name)  # undo, and re-rank the rest against the current plan
            order = [u for u in _by_harm(trials, current, batch, show) if u.name not in skipped]
            continue
        current, point = trial, p
        if raise_one(unit, current[unit.name]) is not None:
            order.append(unit)  # it may need a further step later
    return current, point


def _by_harm(trials: Trials, current: Assignment, batch: Any, show: bool) -> list[Unit]:
    units = [u for u in trials.space.free if raise_one(u, current[u.name]) is not None]
    harm = harm_in_context(trials, current, units, batch, progress=show)
    return sorted(units, key=lambda u: -harm[u.name])


def _prune(trials: Trials, current: Assignment, batch: Any) -> None:
    cheapest = trials.space.uniform(0)
    raised = [u for u in trials.space.free if current[u.name] != cheapest[u.name]]
    if not raised:
        return
    errors = unit_errors(trials, batch, progress=trials.progress is not None)
    raised.sort(key=lambda u: errors[u.name][str(u.options[0])])  # least sensitive first
    for u in raised:  # each as far down as the target allows (fp32 -> dynamic int8 -> int8)
        i = u.options.index(current[u.name])
        while i > 0:
            trial = {**current, u.name: u.options[i - 1]}
            if not trials.evaluate(trial, f"prune lower {u.name} to {u.options[i - 1]}").met:
                break
            current, i = trial, i - 1


# -- pareto ----------------------------------------------------------------------------------------
def pareto_search(trials: Trials, batch: Any, points: int = 10, **_: Any) -> None:
    """AIMET-style AMP, done over the whole curve.

    Phase 1: every (unit, option) scored alone (`unit_errors`). Phase 2: from the cheapest
    plan, flip the option with the best error reduction per added cost, cumulatively,
    up to the dearest plan; evaluate ``points`` plans spread evenly in cost along that
    path (both ends included), so the front has many points, not one.
    """
    errors = unit_errors(trials, batch, progress=trials.progress is not None)
    path = _greedy_path(trials, errors)
    # of the steps that cost the same, the last one removed the most error
    last = [i for i in range(len(path)) if i + 1 == len(path) or path[i + 1][1] > path[i][1]]
    costs = [path[i][1] for i in last]
    chosen = [last[k] for k in sorted({0, len(last) - 1} | _spread(costs, points))]
    steps = [(path[i][0], f"pareto step {i}/{len(path) - 1}") for i in chosen]
    trials.evaluate_many([(a, label) for a, label in steps if trials.fits(a)])


def _greedy_path(
    trials: Trials, errors: dict[str, dict[str, float]]
) -> list[tuple[Assignment, float]]:
    """Cheapest to dearest: each step takes the move with the most error removed per cost
    added (the real added cost: the unit's own ops and the ops that read its output)."""
    space = trials.space
    current = space.uniform(0)
    cost = trials.plan(current)[1][trials.cost_key]
    path = [(dict(current), cost)]
    while True:
        best: tuple[float, float, str, Candidate] | None = None
        for u in space.free:
            nxt = raise_one(u, current[u.name])
            if nxt is None:
                continue
            gain = errors[u.name][str(current[u.name])] - errors[u.name][str(nxt)]
            extra = space.move_cost(current, u.name, nxt, trials.cost_key)
            value = gain / extra if extra > 0 else (math.inf if gain > 0 else 0.0)
            if best is None or value > best[0]:
                best = (value, extra, u.name, nxt)
        if best is None:
            return path
        current[best[2]] = best[3]
        cost += best[1]
        path.append((dict(current), cost))


def _spread(costs: list[float], count: int) -> set[int]:
    """Indices of up to ``count`` path steps: those closest to evenly spaced costs, then,
    where costs bunch up, evenly spaced steps to make up the number."""
    lo, hi = costs[0], costs[-1]
    out = set()
    for k in range(count):
        goal = lo + (hi - lo) * k / max(count - 1, 1)
        out.add(min(range(len(costs)), key=lambda i: abs(costs[i] - goal)))
    spare = [i for i in _even(len(costs), count) if i not in out]
    return out | set(spare[: max(count - len(out), 0)])


def _even(length: int, count: int) -> list[int]:
    return sorted({round(k * (length - 1) / max(count - 1, 1)) for k in range(count)})
