"""Automatic mixed-precision search: the cheapest plan that keeps the accuracy you ask for.

Strategies (``strategy=``): ``ratio`` (seed 003's top-ratio recipe, with a bisection for
the smallest ratio), ``fallback`` (INC's op-kind then per-op fallback with NNCF's
re-ranking, then pruning for a cheaper passing plan), ``pareto`` (AIMET's AMP over the
whole curve) and ``budget`` (an integer program under a BOPs / weight-bytes / latency
budget, verified and repaired). All share one cost model (`mixq.plan.cost`) and one
evaluation; every evaluated point is kept, written to the history as it is made, and the
result always holds a plan -- the best one found, with how far it misses when the target
is out of reach.

Example:
    >>> import torch, mixq
    >>> torch.manual_seed(0) is not None
    True
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> data = [(torch.randn(32, 8),) for _ in range(2)]
    >>> result = mixq.search(model, data[0], calib=data, evaluate="sqnr", target=30,
    ...                      candidates=["int8", "int16"], strategy="fallback", progress=False)
    >>> result.met_target, result.plan["2"].output[0] in ("int8", "int16")
    (True, True)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mixq.analysis.badcases import hardest_rows, sample_batch
from mixq.analysis.metrics import get_metric
from mixq.core.errors import ConfigError
from mixq.plan.plan import Plan
from mixq.rules.config import Config
from mixq.rules.resolve import resolve_with_report
from mixq.search.engine import Evaluator, Exhausted, Point, Target, Trials
from mixq.search.fanout import check_picklable
from mixq.search.registry import STRATEGIES
from mixq.search.result import SearchResult
from mixq.search.sims import SimFactory
from mixq.search.space import Candidate, SearchSpace, parse_candidates
from mixq.search.weights import weight_table
from mixq.sim.executors import Executor, make_executor
from mixq.sim.torch.runner import make_runner

__all__ = ["search"]

IN_SAMPLE = (
    "scored on the calibration batches, the inputs the ranges were fitted to: pass data= "
    "(a split of your own) to choose a plan that holds on inputs calibration did not see"
)


def search(
    model: Any,
    example_inputs: Any,
    calib: Iterable[Any],
    evaluate: str | Callable[[Any], float] = "cosine",
    target: Any = 0.99,
    candidates: Iterable[Any] = ("int8", "int16", "fp16"),
    strategy: str = "fallback",
    data: Iterable[Any] | None = None,
    labels: list[torch.Tensor] | None = None,
    config: Any = None,
    budget: dict[str, float] | None = None,
    keep: Iterable[str] = (),
    tie: list[list[str]] | None = None,
    ratio: float | None = None,
    points: int = 10,
    top_k: int = 3,
    cost: str = "bops",
    time_budget_s: float | None = None,
    max_trials: int | None = None,
    history: str | Path | None = None,
    resume: bool = False,
    hard_samples: int = 32,
    transforms: list[Any] | None = None,
    executor: str | Executor = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search per-unit precisions for the cheapest plan that meets ``target``.

    Args:
        model: a ``torch.nn.Module`` (never modified) or an ``.onnx`` path.
        example_inputs: inputs for capture (and the cost model's shapes).
        calib: calibration batches (ranges are calibrated once per tensor and precision).
        evaluate: ``sim -> float`` (higher is better), a metric name comparing outputs with
            the float model (``cosine``, ``sqnr``, ``l1``, ``mse``, ``kl``) or ``"accuracy"``.
        target: a score to reach (``0.99``), or ``{"drop": d}`` / ``{"drop": d,
            "relative": True}`` from the float model's score.
        candidates: precisions to choose from: ``"int8"``, ``("int8", "int4")`` =
            (activation, weight), ``"fp16"`` ...; each unit gets those its target runs.
        strategy: ``ratio``, ``fallback``, ``pareto`` or ``budget``.
        data: evaluation batches (default: ``calib``); ``labels`` one tensor per batch.
            Scored on ``calib`` a plan is judged on the inputs its ranges were fitted to;
            inputs that reach past those ranges (short sentences in an embedder) are not
            seen, so pass a split of your own to choose plans that hold on new inputs.
        config: the base config (target profile, fixed ranges, scheme, what ``keep`` keeps).
        budget: ``{"bops" | "weight_bytes" | "latency": fraction of the all-int8 cost}``:
            the ``budget`` strategy optimises within it; ``fallback`` only makes moves that
            fit it; ``ratio`` and ``pareto`` choose only among the plans that fit it.
        keep: op / module / kind targets kept as ``config`` resolves them (e.g. float ops).
        tie: groups of targets that must share one option (``budget`` strategy).
        ratio: ``ratio`` strategy: raise this fraction (None: bisect the smallest).
        points: ``pareto`` strategy: plans evaluated along the curve.
        top_k: ``budget`` strategy: the integer program's best plans evaluated for real.
        cost: the figure "cheapest" means: ``bops``, ``latency`` or ``weight_bytes``.
        time_budget_s / max_trials: stop after this long / this many evaluations, and
            return the best plan found so far.
        history: a JSONL file every evaluation is appended to; ``resume=True`` reads it
            first and evaluates none of its plans again.
        hard_samples: rows of the first evaluation batch used to rank units (the ones the
            cheapest plan gets most wrong).
        transforms: float transforms (``"smooth"``, ``"equalize"``; see `mixq.transforms`)
            applied before the search: every candidate then means "that precision on the
            transformed model", so int8 + smoothing competes with int16 on cost. Weights
            transforms (``"gptq"``, ``"adaround"``, ``"bias_correct"``) run once per layer
            and integer weight precision before the search (`mixq.search.weights`), so an
            int4 candidate is scored with its rounded weights. The plan records them;
            ``mixq.quantize(model, x, result.plan, calib=calib)`` applies them again.
        executor: where the independent evaluations run: ``"serial"`` (this process),
            ``"processes"`` (a local pool) or ``"ray"`` (``ray_address=None`` starts or
            joins a local cluster; an address joins that one); ``workers`` of them. Spread:
            the per-unit errors, the harm ranking, the uniform plans, fallback's op-kind
            steps and the pareto points; the plan chosen is the serial one. A custom
            ``evaluate`` then has to be a module-level function (it travels by name).

    Returns:
        A `SearchResult` (``.plan``, ``.points``, ``.met_target``, ``.miss``,
        ``.report("search.html")``, ``.save(out_dir)``).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if cost not in ("bops", "latency", "weight_bytes"):
        raise ConfigError(f"cost must be bops, latency or weight_bytes, not {cost!r}")
    run_on = make_executor(executor, workers, ray_address)  # nothing starts before a task
    check_picklable(evaluate, run_on)
    in_sample = data is None and not callable(evaluate)  # a custom evaluate has its own data
    calib = list(calib)
    data = list(data) if data is not None else calib
    if not calib or not data:
        raise ConfigError("search needs calibration data: at least one batch of model inputs")
    options = parse_candidates(candidates)
    given = [str(c) for c in options if c.input]
    if given:
        raise ConfigError(
            f"candidates {given} name the precision a multiply reads at ('@'): the search "
            "makes that option itself, on units that fuse a residual add after a tensor kept "
            "in float; give (activation, weight) pairs, e.g. ('int16', 'int4')"
        )
    cfg = Config.coerce(config).bind(model) if not isinstance(config, Plan) else config
    model, specs, weight_specs = _transformed(model, example_inputs, calib, transforms)
    factory = SimFactory(model, example_inputs, calib)
    base = cfg if isinstance(cfg, Plan) else resolve_with_report(factory.graph, cfg, False).plan
    base = replace(base, transforms=specs + weight_specs)
    base_sim = factory.build(base)
    space = SearchSpace(factory.graph, base, options, base_sim.op_stats(), keep)
    if weight_specs:
        factory.weights = weight_table(factory, space, model, weight_specs, calib)
    evaluator = Evaluator(evaluate, data, labels)
    baseline = evaluator.baseline(base_sim)
    threshold = Target.parse(target).threshold(baseline, evaluator.higher_is_better)
    trials = Trials(space, factory, evaluator, threshold, cost, time_budget_s, max_trials)
    trials.executor = run_on
    trials.progress = (
        _printer(trials) if progress and os.environ.get("MIXQ_PROGRESS") != "0" else None
    )
    trials.history = _history(history, resume, trials, space)
    trials.reference = trials.plan(_all_int8(space))[1]
    trials.limits = _limits(budget, trials.reference)
    try:
        anchors, note = _run(
            trials, strategy, data[0], hard_samples, budget, tie, ratio, points, top_k
        )
    finally:
        if trials.executor is not executor:  # made here, so ended here
            trials.executor.close()
    if in_sample:
        note = "\n".join(filter(None, [note, IN_SAMPLE]))
    return SearchResult.build(trials, strategy, baseline, anchors, note)


def _transformed(
    model: Any, example_inputs: Any, calib: list[Any], transforms: list[Any] | None
) -> tuple[Any, list[dict[str, Any]], list[Any]]:
    """The model the search runs on (float transforms applied), the float transforms'
    resolved specs for the plan, and the weights transforms' specs."""
    if not transforms:
        return model, [], []
    if isinstance(model, (str, Path)) or type(model).__name__ == "ModelProto":
        raise ConfigError("transforms rewrite PyTorch models; search the nn.Module instead")
    from mixq.transforms import apply_transforms, parse_specs
    from mixq.transforms.pipeline import split_stages

    floats, later = split_stages(transforms)
    weights = [{"name": t.name, **options} for t, options in parse_specs(later)]
    if not floats:
        return model, [], weights
    done = apply_transforms(model, example_inputs, floats, calib=calib)
    return done.model, [r.spec() for r in done.records], weights


def _limits(budget: dict[str, float] | None, reference: dict[str, float]) -> dict[str, float]:
    from mixq.search.milp import BUDGET_KEYS

    unknown = set(budget or {}) - set(BUDGET_KEYS)
    if unknown:
        raise ConfigError(f"unknown budget keys {sorted(unknown)}; use {', '.join(BUDGET_KEYS)}")
    return {k: float(v) * reference[k] for k, v in (budget or {}).items()}


def _all_int8(space: SearchSpace) -> dict[str, Candidate]:
    int8 = Candidate("int8", "int8")
    return {u.name: int8 for u in space.free}


def _history(path: Any, resume: bool, trials: Trials, space: SearchSpace) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    options = {u.name: [str(c) for c in u.options] for u in space.units.values()}
    signature = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    if resume and path.exists():
        trials.load(path)
        if trials.extra.get("space") not in (None, signature):
            raise ConfigError(
                f"history {path} was written for another model or candidate set; "
                "start a new history (resume=False) or pass its own file"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    trials.history = path
    if "space" not in trials.extra:
        trials.record("space", signature)
    return path


def _hard_batch(trials: Trials, batch: Any, count: int) -> Any:
    """The ``count`` rows of ``batch`` the cheapest plan gets most wrong."""
    sim = trials.sim(trials.space.uniform(0))
    rows = hardest_rows(make_runner(sim), batch, get_metric("mse"), count)
    return sample_batch(batch, rows)


def _run(
    trials: Trials,
    strategy: str,
    batch: Any,
    hard_samples: int,
    budget: dict[str, float] | None,
    tie: list[list[str]] | None,
    ratio: float | None,
    points: int,
    top_k: int = 3,
) -> tuple[dict[str, str], str]:
    note = ""
    if isinstance(trials.progress, _Printer):
        planned = _planned(trials, strategy, ratio, points, top_k)
        trials.progress.total, trials.progress.bound = planned
    uniform = [(trials.space.uniform(cand=c), f"all {c}") for c in trials.space.candidates]
    try:
        trials.evaluate_many(uniform)
        hard = _hard_batch(trials, batch, hard_samples)
        STRATEGIES[strategy](
            trials, hard, budget=budget, tie=tie, ratio=ratio, points=points, top_k=top_k
        )
    except Exhausted as stop:
        note = f"stopped early: {stop}"
        if trials.progress is not None:
            trials.progress(note)
    keys = {label: trials.space.key(a) for a, label in uniform}
    return {label: key for label, key in keys.items() if key in trials.points}, note


def _planned(
    trials: Trials, strategy: str, ratio: float | None, points: int, top_k: int = 3
) -> tuple[int, str]:
    """How many plans the run evaluates: exact (``""``), about (``"~"``) or at most
    (``"≤"``); each strategy stops as soon as it can, so a bound is often not reached."""
    units = [u for u in trials.space.free if len(u.options) > 1]
    steps = max((len(u.options) - 1 for u in units), default=0)
    kinds = len({u.kind for u in units})
    anchors = len(trials.space.candidates)
    if strategy == "ratio":
        total, bound = (1, "") if ratio is not None else (1 + steps + len(units).bit_length(), "~")
    elif strategy == "pareto":
        total, bound = points, "≤"
    else:  # fallback (and the integer program, which repairs with it): raises, then prunes
        total, bound = 1 + kinds + len(units) * steps + len(units), "≤"
        total += top_k if strategy == "budget" else 0
    total += anchors
    if trials.max_trials is not None and trials.max_trials < total:
        total, bound = trials.max_trials, "≤"
    return total, bound


class _Printer:
    """One line per evaluated plan: ``n / total``, elapsed, ETA, the plan's score and cost,
    whether it meets the target, and for a fallback raise or a prune step whether the search
    kept it (a raise is kept unless it made the score worse, a prune while the target holds).
    """

    def __init__(self, trials: Trials) -> None:
        from rich.console import Console

        self.trials, self.console = trials, Console(stderr=True)
        self.total, self.bound = 0, "~"

    def __call__(self, line: str) -> None:
        trials = self.trials
        point = next(reversed(trials.points.values()), None)
        if point is None or not line.startswith(point.label):  # a note, not an evaluation
            self.console.print(f"[dim]search[/dim] {line}", highlight=False, soft_wrap=True)
            return
        n = len(trials.points)
        self.total = max(self.total, n)
        verdict = self._verdict(point)
        status = "[green]meets target[/green]" if point.met else "misses target"
        count = f"{n}/{self.bound if n < self.total else ''}{self.total}"
        clock = f"{_clock(trials.elapsed())} elapsed, ETA {self._eta(n)}"
        self.console.print(
            f"[dim]search[/dim] {count} [dim]{clock}[/dim] | {line} | {status}{verdict}",
            highlight=False,
            soft_wrap=True,
        )

    def _verdict(self, point: Point) -> str:
        label = point.label
        if label.startswith("fallback raise "):
            parent = self._parent(point, label[len("fallback raise ") : label.rindex(" to ")])
            if parent is None:
                return ""
            if self.trials.better(parent.score, point.score):
                return ", [red]rejected[/red] (score got worse)"
            return ", [bold]kept[/bold]"
        if label.startswith("prune"):
            if point.met:
                return ", [bold]kept[/bold] (cheaper, target still met)"
            return ", [red]rejected[/red] (misses the target)"
        return ""

    def _parent(self, point: Point, unit: str) -> Point | None:
        """The plan a raise stepped from: the latest one that differs only at ``unit``."""
        mine = point.assignment
        for p in reversed(self.trials.points.values()):
            other = p.assignment
            same_rest = all(other.get(u) == c for u, c in mine.items() if u != unit)
            if p is not point and other.get(unit) != mine.get(unit) and same_rest:
                return p
        return None

    def _eta(self, n: int) -> str:
        trials = self.trials
        if n >= self.total:
            return "-"
        left = trials.elapsed() / n * (self.total - n)
        if trials.time_budget_s is not None:
            left = min(left, max(0.0, trials.time_budget_s - trials.elapsed()))
        return ("≤" if self.bound == "≤" else "~") + _clock(left)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _printer(trials: Trials) -> Callable[[str], None]:
    return _Printer(trials)
