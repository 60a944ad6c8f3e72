"""The budgeted integer program (HAWQ-V3 / ModelOpt style), with `scipy.optimize.milp`.

Minimise the predicted loss, the sum of the units' errors at their chosen options
(`mixq.search.sensitivity.unit_errors`), subject to budgets on BOPs, weight bytes or
latency, given as fractions of the all-int8 plan's cost (``{"bops": 0.5}``: half its BOPs).

- One binary ``x[u, c]`` per unit and option, one option per unit.
- An op's BOPs and latency depend on its unit's option and on the option of the unit that
  produces its input (it reads that tensor at that precision): each such pair of units
  gets continuous ``z[c1, c2]`` whose marginals are the two units' ``x`` -- with binary
  ``x`` that makes ``z`` their product, so the cost is exact, not linearised away.
- Pairs the target cannot run (int16 activation read by an op with int16 weights on
  ``int8-int16-npu``) get ``z = 0``; fixed units (``keep``) have one option; ``tie``
  groups share one option.

The chosen plan's real cost is checked; should it exceed a budget (ops reading three
units' outputs are modelled on two), that budget is tightened and the program solved
again. The plan is then evaluated, and if it misses the target, `fallback_search` repairs
it with the moves that still fit the budget.

Example:
    >>> BUDGET_KEYS
    ('bops', 'weight_bytes', 'latency')
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.graph.kinds import is_data_movement
from mixq.graph.match import match_ops
from mixq.plan.cost import OpStats, op_cost
from mixq.search.engine import Trials
from mixq.search.sensitivity import unit_errors
from mixq.search.space import Candidate, SearchSpace
from mixq.search.strategies import fallback_search

__all__ = ["BUDGET_KEYS", "budget_search", "solve"]

BUDGET_KEYS = ("bops", "weight_bytes", "latency")
Assignment = dict[str, Candidate]


def _deps(space: SearchSpace, name: str) -> list[str]:
    """The units an op's cost depends on: its own, then its inputs' producers (at most two);
    a producer whose output leaves it in float (``to_float``, float units) does not count,
    as the op reads that tensor at its own unit's choice."""
    owner = space.unit_of[name]
    srcs = []
    for t in space.graph.float_inputs(space.graph.ops[name]):
        src = space.source(t)
        if src is None or not (space.produces_quantized(src) or space.units[src].input):
            continue
        if src != owner and src not in srcs:
            srcs.append(src)
    return [owner, *srcs][:2] if len(srcs) < 2 else srcs[:2]


def _weight_bytes(space: SearchSpace) -> dict[tuple[str, Candidate], float]:
    seen: set[str] = set()
    out: dict[tuple[str, Candidate], float] = {}
    for u in space.units.values():
        params = []
        for name in u.ops:
            s = space.stats.get(name, OpStats())
            params += [(p, s.weights.get(p, 0)) for p in s.roles.values() if p not in seen]
            seen.update(s.roles.values())
        for c in u.options:
            bits = qtype(c.weight).bits if not u.fixed else _fixed_bits(space, u.ops)
            out[(u.name, c)] = sum(n for _, n in params) * bits / 8
    return out


def _fixed_bits(space: SearchSpace, ops: tuple[str, ...]) -> int:
    weights = [w for n in ops for w in space.base.ops[n].weight.values()]
    return qtype(weights[0]).bits if weights else 32


class _Program:
    """Variables, objective and constraints of one integer program."""

    def __init__(self, space: SearchSpace, errors: dict[str, dict[str, float]]) -> None:
        self.space = space
        self.x: dict[tuple[str, Candidate], int] = {}
        for u in space.units.values():
            for c in u.options:
                self.x[(u.name, c)] = len(self.x)
        self.n = len(self.x)
        self.cost_x = {k: np.zeros(self.n) for k in BUDGET_KEYS}
        self.pairs: list[tuple[str, str, dict[tuple[Candidate, Candidate], int]]] = []
        self.cost_z: dict[str, list[float]] = {k: [] for k in BUDGET_KEYS}
        self.forbidden_x: set[int] = set()
        self.forbidden_z: set[int] = set()
        self.objective = np.zeros(self.n)
        for (unit, c), i in self.x.items():
            self.objective[i] = errors.get(unit, {}).get(str(c), 0.0)
        for (unit, c), b in _weight_bytes(space).items():
            self.cost_x["weight_bytes"][self.x[(unit, c)]] += b
        for name in space.base.ops:
            if name in space.unit_of and not is_data_movement(space.base.ops[name].kind):
                self._add_op(name)

    def _add_op(self, name: str) -> None:
        space = self.space
        deps = _deps(space, name)
        options = [space.units[d].options for d in deps]
        stats = space.stats.get(name, OpStats())
        cheapest = {u.name: u.options[0] for u in space.units.values()}
        pair: dict[tuple[Candidate, Candidate], int] = {}
        for combo in product(*options):
            choice = {**cheapest, **dict(zip(deps, combo, strict=True))}
            op = space.op_at(name, choice)
            cost = op_cost(space.computed(op), stats, space.profile)
            bad = bool(space.profile.violations(op))
            if len(deps) == 1:
                i = self.x[(deps[0], combo[0])]
                self.cost_x["bops"][i] += cost["bops"]
                self.cost_x["latency"][i] += cost["latency"]
                if bad:
                    self.forbidden_x.add(i)
                continue
            j = self._z(pair, (combo[0], combo[1]))
            self.cost_z["bops"][j] += cost["bops"]
            self.cost_z["latency"][j] += cost["latency"]
            if bad:
                self.forbidden_z.add(j)
        if len(deps) == 2:
            self.pairs.append((deps[0], deps[1], pair))

    def _z(
        self, pair: dict[tuple[Candidate, Candidate], int], key: tuple[Candidate, Candidate]
    ) -> int:
        if key not in pair:
            pair[key] = len(self.cost_z["bops"])  # a z's index after the x's
            for k in BUDGET_KEYS:
                self.cost_z[k].append(0.0)
        return pair[key]

    def solve(
        self, limits: dict[str, float], ties: list[list[str]], exclude: Sequence[Assignment] = ()
    ) -> Assignment | None:
        """The best assignment within ``limits``, other than those in ``exclude``."""
        size = self.n + len(self.cost_z["bops"])
        rows: list[tuple[dict[int, float], float, float]] = []
        for taken in exclude:  # a no-good cut: at least one unit differs from ``taken``
            cut = {self.x[(u, c)]: 1.0 for u, c in taken.items() if (u, c) in self.x}
            rows.append((cut, -np.inf, len(cut) - 1.0))
        for u in self.space.units.values():
            rows.append(({self.x[(u.name, c)]: 1.0 for c in u.options}, 1.0, 1.0))
        for a, b, pair in self.pairs:
            for c1 in self.space.units[a].options:
                row = {self.n + j: 1.0 for (k1, _), j in pair.items() if k1 == c1}
                rows.append(({**row, self.x[(a, c1)]: -1.0}, 0.0, 0.0))
            for c2 in self.space.units[b].options:
                row = {self.n + j: 1.0 for (_, k2), j in pair.items() if k2 == c2}
                rows.append(({**row, self.x[(b, c2)]: -1.0}, 0.0, 0.0))
        for key, limit in limits.items():
            coef = np.concatenate([self.cost_x[key], np.asarray(self.cost_z[key])])
            rows.append(({i: v for i, v in enumerate(coef) if v}, -np.inf, limit))
        rows += self._tie_rows(ties)
        matrix = lil_matrix((len(rows), size))
        lo, hi = np.empty(len(rows)), np.empty(len(rows))
        for r, (row, low, high) in enumerate(rows):
            for i, v in row.items():
                matrix[r, i] = v
            lo[r], hi[r] = low, high
        upper = np.ones(size)
        upper[list(self.forbidden_x | {self.n + j for j in self.forbidden_z})] = 0.0
        c = np.concatenate([self.objective, np.zeros(size - self.n)])
        c[: self.n] += 1e-12 * self.cost_x["bops"] / max(self.cost_x["bops"].max(), 1.0)
        integrality = np.concatenate([np.ones(self.n), np.zeros(size - self.n)])
        res = milp(
            c,
            integrality=integrality,
            bounds=Bounds(np.zeros(size), upper),
            constraints=LinearConstraint(matrix.tocsr(), lo, hi),
        )
        if res.x is None:
            return None
        return {unit: cand for (unit, cand), i in self.x.items() if res.x[i] > 0.5}

    def _tie_rows(self, ties: list[list[str]]) -> list[tuple[dict[int, float], float, float]]:
        rows = []
        for group in ties:
            first = group[0]
            for other in group[1:]:
                for c in set(self.space.units[first].options) | set(
                    self.space.units[other].options
                ):
                    a, b = self.x.get((first, c)), self.x.get((other, c))
                    row = {i: s for i, s in ((a, 1.0), (b, -1.0)) if i is not None}
                    rows.append((row, 0.0, 0.0))
        return rows


def _ties(space: SearchSpace, tie: list[list[str]]) -> list[list[str]]:
    groups = []
    for targets in tie:
        units = []
        for t in targets:
            names = match_ops(space.graph, t)
            if not names:
                raise ConfigError(f"tie target {t!r} matches no op; run `mixq plan` for names")
            units += [space.unit_of[n] for n in names if n in space.unit_of]
        units = list(dict.fromkeys(units))
        if len(units) > 1:
            groups.append(units)
    return groups


def solve(
    trials: Trials,
    errors: dict[str, dict[str, float]],
    budget: dict[str, float],
    tie: list[list[str]] | None = None,
    top_k: int = 1,
) -> list[Assignment]:
    """The ``top_k`` assignments of least predicted loss within ``budget`` (absolute limits
    per key), best first: each re-solved with tighter limits until the real plan cost fits,
    the next one with the earlier ones cut off (empty: none fits)."""
    program = _Program(trials.space, errors)
    ties = _ties(trials.space, tie or [])
    limits, found = dict(budget), list[Assignment]()
    for _ in range(8 * top_k):
        chosen = program.solve(limits, ties, found)
        if chosen is None:
            break
        cost = trials.plan(chosen)[1]
        over = {k: cost[k] / budget[k] for k in budget if cost[k] > budget[k] * (1 + 1e-9)}
        if not over:
            found.append(chosen)
            if len(found) == top_k:
                break
            continue
        for k, ratio in over.items():
            limits[k] = limits[k] / ratio * 0.999
    return found


def budget_search(
    trials: Trials,
    batch: Any,
    budget: dict[str, float] | None = None,
    tie: list[list[str]] | None = None,
    top_k: int = 3,
    **_: Any,
) -> None:
    """Solve the program for ``budget`` (fractions of the all-int8 cost), evaluate its
    ``top_k`` plans for real (at once, on the search's executor), and when none meets the
    target repair the best-predicted one with `fallback_search` (moves within the budget).
    The predicted loss adds up errors measured one unit at a time, so the second or third
    plan can score better than the first; the cheapest that meets the target wins."""
    if not budget:
        raise ConfigError("strategy 'budget' needs a budget, e.g. budget={'bops': 0.5}")
    reference = trials.reference
    limits = trials.limits
    errors = unit_errors(trials, batch, progress=trials.progress is not None)
    plans = solve(trials, errors, limits, tie, top_k)
    if not plans:
        cheapest = trials.plan(trials.space.uniform(0))[1]
        raise ConfigError(
            f"no plan fits the budget {budget} (relative to all-int8); the cheapest plan "
            "costs " + ", ".join(f"{k} {cheapest[k] / reference[k]:.3g}" for k in budget)
        )
    labels = ["budget: integer program"] + [
        f"budget: integer program, plan {i + 1}" for i in range(1, len(plans))
    ]
    points = trials.evaluate_many(list(zip(plans, labels, strict=True)))
    if not any(p.met for p in points):
        fallback_search(trials, batch, start=plans[0], fits=trials.fits, prune=False)
