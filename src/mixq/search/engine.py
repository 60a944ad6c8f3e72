"""The machinery every strategy shares: build a calibrated Sim for a Plan, score it, keep
the history, stop on the time or trial budget.

- `SimFactory` captures the model once and builds a Sim per Plan; activation ranges are
  calibrated once per (tensor, precision, upstream weight precisions) and reused, so a plan
  that changes only activations costs a Sim build and an evaluation, not a calibration,
  and every score is what ``mixq.quantize(model, x, plan).calibrate(calib)`` gives.
- `Evaluator` turns a Sim into a score (higher or lower is better, as the metric says).
- `Trials` evaluates assignments: a point already in the history (this run's or, with
  ``resume``, a killed run's) is returned without running anything; every new point is
  appended to the JSONL history before the next one starts.

Example:
    >>> t = Target.parse({"drop": 0.01}); t.threshold(0.98, higher_is_better=True)
    0.97
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mixq.analysis.metrics import float_leaves, get_metric
from mixq.core.errors import CalibrationError, ConfigError
from mixq.core.records import Record
from mixq.plan.cost import OpStats, PlanCost, op_cost, plan_cost
from mixq.plan.plan import Plan
from mixq.search.fanout import evaluate_remote
from mixq.search.sims import SimFactory
from mixq.search.space import Candidate, SearchSpace
from mixq.sim.executors import Executor, SerialExecutor
from mixq.sim.protocol import SimLike
from mixq.sim.torch.capture import split_inputs

__all__ = ["Evaluator", "Exhausted", "Point", "Target", "Trials"]


class Exhausted(Exception):
    """The time or trial budget is spent (strategies catch it and return what they have)."""


@dataclass(frozen=True)
class Target:
    """What "good enough" means: an absolute value, or a drop from the float model's score.

    ``Target.parse(0.99)``, ``{"drop": 0.01}`` (absolute) or ``{"drop": 0.01,
    "relative": True}`` (a fraction of the float score).
    """

    value: float | None = None
    drop: float | None = None
    relative: bool = False

    @classmethod
    def parse(cls, target: Any) -> Target:
        if isinstance(target, Target):
            return target
        if isinstance(target, (int, float)):
            return cls(value=float(target))
        if isinstance(target, dict):
            unknown = set(target) - {"value", "drop", "relative"}
            if unknown or ("value" in target) == ("drop" in target):
                raise ConfigError(
                    f"target {target!r}: give a number, {{'drop': d}} or "
                    "{'drop': d, 'relative': True}"
                )
            return cls(target.get("value"), target.get("drop"), bool(target.get("relative")))
        raise ConfigError(f"target {target!r} is not a number or a dict with 'drop'")

    def threshold(self, baseline: float, higher_is_better: bool) -> float:
        """The score to reach, given the float model's ``baseline``."""
        if self.value is not None:
            return self.value
        assert self.drop is not None
        if not math.isfinite(baseline):
            raise ConfigError(
                f"the float model scores {baseline} on this metric, so a drop from it means "
                "nothing; give an absolute target (e.g. target=40 for SQNR in dB)"
            )
        drop = self.drop * abs(baseline) if self.relative else self.drop
        return baseline - drop if higher_is_better else baseline + drop


class Evaluator:
    """Scores a Sim on evaluation data.

    Args:
        evaluate: a function ``sim -> float`` (higher is better), a metric name comparing
            outputs with the float model's (``cosine``, ``sqnr``, ``l1``, ``mse``, ...) or
            ``"accuracy"`` (top-1 of the first output against ``labels``).
        data: evaluation batches (input tuples / tensors / dicts).
        labels: one label tensor per batch, for ``"accuracy"``.
    """

    def __init__(
        self,
        evaluate: str | Callable[[Any], float],
        data: list[Any],
        labels: list[torch.Tensor] | None = None,
    ) -> None:
        self.fn = evaluate if callable(evaluate) else None
        self.name = getattr(evaluate, "__name__", "custom") if callable(evaluate) else evaluate
        self.data, self.labels = data, labels
        if evaluate == "accuracy":
            if labels is None or len(labels) != len(data):
                raise ConfigError(
                    "evaluate='accuracy' needs labels: one label tensor per evaluation batch"
                )
            self.higher_is_better = True
        elif self.fn is None:
            self.metric = get_metric(str(evaluate))
            self.higher_is_better = self.metric.higher_is_better
        else:
            self.higher_is_better = True
        self._refs: torch.Tensor | None = None

    def _outputs(self, sim: SimLike) -> list[list[torch.Tensor]]:
        with torch.no_grad():
            out = []
            for batch in self.data:
                args, kwargs = split_inputs(batch)
                out.append(float_leaves(sim(*args, **kwargs)))
            return out

    def __call__(self, sim: SimLike) -> float:
        if self.fn is not None:
            return float(self.fn(sim))
        outs = self._outputs(sim)
        if self.name == "accuracy":
            assert self.labels is not None
            hits = sum(
                int((o[0].argmax(-1) == y).sum()) for o, y in zip(outs, self.labels, strict=True)
            )
            return hits / sum(len(y) for y in self.labels)
        if self._refs is None:
            raise RuntimeError("call baseline(sim) first: the float outputs are not known yet")
        flat = torch.cat([t.reshape(-1).double() for o in outs for t in o])
        return float(self.metric(self._refs, flat))

    def baseline(self, sim: SimLike) -> float:
        """The float model's score (all quantizers off); remembers its outputs."""
        with sim.disabled():
            if self.fn is None:
                outs = self._outputs(sim)
                self._refs = torch.cat([t.reshape(-1).double() for o in outs for t in o])
            return self(sim)


@dataclass
class Point(Record):
    """One evaluated plan."""

    key: str
    label: str
    assignment: dict[str, str]
    score: float
    cost: dict[str, float]
    met: bool
    seconds: float = 0.0
    reused: bool = field(default=False, metadata={"plain": False})  # from the history


@dataclass
class Trials:
    """Evaluates assignments within the budgets and keeps every point.

    Attributes:
        threshold: the score to reach; ``met`` compares with it in the metric's direction.
        cost_key: the cost figure "cheapest" refers to (``bops``, ``latency``, ...).
    """

    space: SearchSpace
    factory: SimFactory
    evaluator: Evaluator
    threshold: float
    cost_key: str = "bops"
    time_budget_s: float | None = None
    max_trials: int | None = None
    history: Path | None = None
    progress: Callable[[str], None] | None = None
    points: dict[str, Point] = field(default_factory=dict)
    known: dict[str, Point] = field(default_factory=dict)
    evaluations: int = 0
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    extra: dict[str, Any] = field(default_factory=dict)
    executor: Executor = field(default_factory=SerialExecutor)  # where plans are scored
    reference: dict[str, float] = field(default_factory=dict)  # the all-int8 plan's cost
    limits: dict[str, float] = field(default_factory=dict)  # absolute budget, if any
    _plans: dict[str, tuple[Plan, dict[str, float]]] = field(default_factory=dict)
    _sims: OrderedDict[str, Any] = field(default_factory=OrderedDict)

    def load(self, path: Path) -> None:
        """Read a previous run's history (``resume``): its points are not evaluated again."""
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("type") == "point":
                rec.pop("type")
                self.known[rec["key"]] = Point(**rec, reused=True)
            elif rec.get("type") == "data":
                self.extra[rec["name"]] = rec["value"]

    def record(self, name: str, value: Any) -> None:
        """Keep a named intermediate result (e.g. the sensitivities) in the history."""
        self.extra[name] = value
        self._append({"type": "data", "name": name, "value": value})

    def _append(self, rec: dict[str, Any]) -> None:
        if self.history is not None:
            with self.history.open("a") as f:
                f.write(json.dumps(rec) + "\n")

    # -- evaluation ----------------------------------------------------------------------------
    def met(self, score: float) -> bool:
        if score != score:
            return False
        return (
            score >= self.threshold if self.evaluator.higher_is_better else score <= self.threshold
        )

    def better(self, a: float, b: float) -> bool:
        """``a`` scores better than ``b`` (NaN is worst)."""
        if a != a:
            return False
        if b != b:
            return True
        return a > b if self.evaluator.higher_is_better else a < b

    def check_budget(self) -> None:
        """Raise `Exhausted` once a budget is spent; the first evaluation always runs, so
        a search never ends empty-handed."""
        if not self.points:
            return
        if self.max_trials is not None and self.evaluations >= self.max_trials:
            raise Exhausted(f"trial budget of {self.max_trials} evaluations spent")
        if self.time_budget_s is not None and self.elapsed() >= self.time_budget_s:
            raise Exhausted(f"time budget of {self.time_budget_s:g} s spent")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def cost(self, plan: Plan) -> PlanCost:
        """The plan's cost; a ``to_float`` op's latency is its integer kernel's
        (`SearchSpace.computed`), not its float output's."""
        cost = plan_cost(self.space.graph, plan, self.space.stats)
        table, stats = self.space.profile, self.space.stats
        credit = sum(
            op_cost(op, stats.get(op.name, OpStats()), table)["latency"]
            - op_cost(self.space.computed(op), stats.get(op.name, OpStats()), table)["latency"]
            for op in plan
        )
        return replace(cost, latency=cost.latency - credit) if credit else cost

    def plan(self, assignment: dict[str, Candidate]) -> tuple[Plan, dict[str, float]]:
        """The plan of ``assignment`` and its cost (as a dict), made once per assignment."""
        key = self.space.key(assignment)
        if key not in self._plans:
            plan = self.space.plan(assignment)
            self._plans[key] = (plan, self.cost(plan).to_dict())
        return self._plans[key]

    def sim(self, assignment: dict[str, Candidate]) -> Any:
        """A calibrated Sim of ``assignment``; the last few are kept, as a strategy often
        ranks units on the plan it has just evaluated (switches are always restored)."""
        key = self.space.key(assignment)
        if key in self._sims:
            self._sims.move_to_end(key)
        else:
            self._sims[key] = self.factory.sim(self.plan(assignment)[0])
            if len(self._sims) > 4:
                self._sims.popitem(last=False)
        return self._sims[key]

    def evaluate(self, assignment: dict[str, Candidate], label: str) -> Point:
        """Score ``assignment`` (from the history when it is there)."""
        key = self.space.key(assignment)
        if key in self.points:
            return self.points[key]
        if key in self.known:
            point = self.known[key]
            self.points[key] = point
            self._say(f"{label}: {point.score:.6g} (from the history)")
            return point
        self.check_budget()
        t0 = time.monotonic()
        score = self.evaluator(self.sim(assignment))
        return self._add(assignment, label, score, time.monotonic() - t0)

    def evaluate_many(self, items: list[tuple[dict[str, Candidate], str]]) -> list[Point]:
        """Score each (assignment, label), the new ones at once on the executor; the points,
        their order and the budget stops are those of evaluating them one by one."""
        if not self.executor.remote:
            return [self.evaluate(a, label) for a, label in items]
        keys = [self.space.key(a) for a, _ in items]
        new = [i for i, k in enumerate(keys) if k not in self.points and k not in self.known]
        new = [i for i in new if keys.index(keys[i]) == i]  # a repeat is the first's point
        self.check_budget()
        room = len(new)
        if self.max_trials is not None:
            room = min(room, max(self.max_trials - self.evaluations, int(not self.points)))
        run = new[:room]
        measured = evaluate_remote(self, [items[i][0] for i in run], [items[i][1] for i in run])
        scores = dict(zip(run, measured, strict=True))
        out = []
        for i, (assignment, label) in enumerate(items):
            if i in scores:
                out.append(self._add(assignment, label, *scores[i]))
            elif i in new[room:]:
                raise Exhausted(f"trial budget of {self.max_trials} evaluations spent")
            else:
                out.append(self.evaluate(assignment, label))
        return out

    def _add(
        self, assignment: dict[str, Candidate], label: str, score: float, secs: float
    ) -> Point:
        """Keep a new point: in the points, in the history, in the progress lines."""
        key = self.space.key(assignment)
        free = {u.name for u in self.space.free}
        point = Point(
            key,
            label,
            {u: str(c) for u, c in assignment.items() if u in free},
            score,
            self.plan(assignment)[1],
            self.met(score),
            secs,
        )
        self.evaluations += 1
        self.points[key] = point
        self._append({"type": "point", **point.to_dict()})
        self._say(f"{label}: {score:.6g}, {self.cost_key} {point.cost[self.cost_key]:.4g}")
        return point

    def _say(self, line: str) -> None:
        self.log.append(line)
        if self.progress is not None:
            self.progress(line)

    # -- choosing ------------------------------------------------------------------------------
    def best(self) -> Point:
        """The cheapest point that meets the target, else the best-scoring one."""
        pts = [p for p in self.points.values() if self.within(p)]
        if not pts:
            raise CalibrationError(
                "the search evaluated no plan within its budgets: raise the time or trial "
                "budget, or loosen the cost budget"
            )
        met = [p for p in pts if p.met]
        if met:
            return min(met, key=lambda p: (p.cost[self.cost_key], -self._goodness(p.score)))
        return max(pts, key=lambda p: (self._goodness(p.score), -p.cost[self.cost_key]))

    def fits(self, assignment: dict[str, Candidate]) -> bool:
        """The plan of ``assignment`` respects the budget (always true without one)."""
        if not self.limits:
            return True
        cost = self.plan(assignment)[1]
        return all(cost[k] <= v * (1 + 1e-9) for k, v in self.limits.items())

    def within(self, point: Point) -> bool:
        """The point respects the budget (always true without one)."""
        return all(point.cost[k] <= v * (1 + 1e-9) for k, v in self.limits.items())

    def _goodness(self, score: float) -> float:
        if score != score:
            return -math.inf
        return score if self.evaluator.higher_is_better else -score
