"""Exact sensitivity and a 10-point pareto search of a 4-layer BERT from config: serial vs
processes vs Ray, 2 workers.

    python bench/distributed.py                  # A B A B rounds, medians
    python bench/distributed.py --rounds 3 --batch 8
    python bench/distributed.py --skip-search    # sensitivity only

Each round runs every engine once (serial, processes, ray), alternating, and the table
gives the median seconds, the speed-up over serial, the payload shipped once per worker
and the bytes sent per task. Ray's fixed start-up (``ray.init`` of a local cluster) is
measured once, apart. ``serial`` is today's default (torch's threads over every core);
``serial-1t`` is serial with one torch thread, as each worker has. The process pool and the
Ray actors are started before the first round and kept (as a `QuantAnalysis` keeps them),
so a round measures the work, the payload shipping and the rebuild of the Sim on every
worker; the first map of each engine (interpreters starting, importing torch) is reported
on its own line. The search (``strategy="pareto"``, 10 points, int8 / int16, SQNR target out
of reach so every point is evaluated) ships the captured float model once per batch of
evaluations; its table gives the same columns for the last batch, and every engine must
evaluate the same points with the same scores and choose the same plan.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mixq
from mixq import zoo
from mixq.sim.executors import ProcessExecutor, RayExecutor, SerialExecutor


def _sim(batch: int) -> tuple[object, list[object]]:
    model, inputs, calib = _models(batch)
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib, progress=False)
    return sim, calib[:1]


def _timed(qa: mixq.QuantAnalysis, data: list[object], executor: object) -> tuple[float, object]:
    threads = torch.get_num_threads()
    if executor == "serial-1t":  # serial with one torch thread, as each worker has
        torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        run_on = "serial" if executor == "serial-1t" else executor
        table = qa.sensitivity("l1", "both", "exact", data=data, executor=run_on, progress=False)
    finally:
        torch.set_num_threads(threads)
    return time.perf_counter() - start, table


def _models(batch: int) -> tuple[object, object, list[object]]:
    model, inputs = zoo.bert(layers=4, hidden=64, heads=4, seq=32, batch=batch)
    g = torch.Generator().manual_seed(7)
    calib = [
        (torch.randint(0, 500, (batch, 32), generator=g), torch.ones(batch, 32, dtype=torch.long))
        for _ in range(2)
    ]
    return model, inputs, calib


def _timed_search(
    case: tuple[object, object, list[object]], executor: object
) -> tuple[float, object]:
    model, inputs, calib = case
    threads = torch.get_num_threads()
    if executor == "serial-1t":
        torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        result = mixq.search(
            model, inputs, calib=calib, evaluate="sqnr", target=200.0,
            candidates=["int8", "int16"], strategy="pareto", points=10,
            executor="serial" if executor == "serial-1t" else executor, progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return time.perf_counter() - start, result


def _table(title: str, engines: dict[str, object], times: dict[str, list[float]]) -> None:
    base = statistics.median(times["serial"])
    print(
        f"{title}\n{'engine':<10} {'median s':>9} {'speed-up':>9} {'payload B':>10} {'B/task':>7}"
    )
    for name, ex in engines.items():
        med = statistics.median(times[name])
        stats = getattr(ex, "stats", SerialExecutor().stats)
        print(
            f"{name:<10} {med:>9.2f} {base / med:>8.2f}x {stats.payload_bytes:>10} "
            f"{stats.task_bytes:>7.0f}"
        )


def _search_rounds(engines: dict[str, object], rounds: int, batch: int) -> None:
    case = _models(batch)
    times: dict[str, list[float]] = {name: [] for name in engines}
    reference = None
    for _ in range(rounds):
        for name, ex in engines.items():
            seconds, result = _timed_search(case, ex)
            times[name].append(seconds)
            points = [(p.label, round(p.score, 6)) for p in result.points]  # type: ignore[attr-defined]
            got = (points, result.plan.to_dict())  # type: ignore[attr-defined]
            reference = reference or got
            assert got == reference, f"{name} searched differently"
    _table(f"pareto search, {len(reference[0])} plans evaluated", engines, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_startup = time.perf_counter() - start

    sim, data = _sim(args.batch)
    qa = mixq.QuantAnalysis(sim)
    print(f"4-layer BERT from config: {len(sim.quantizers)} quantizers, batch {args.batch}")
    engines = {
        "serial": SerialExecutor(),
        "serial-1t": "serial-1t",
        "processes": ProcessExecutor(args.workers),
        "ray": RayExecutor(args.workers),
    }
    first = {n: _timed(qa, data, ex)[0] for n, ex in engines.items() if n in ("processes", "ray")}
    times: dict[str, list[float]] = {name: [] for name in engines}
    reference = None
    for _ in range(args.rounds):
        for name, ex in engines.items():
            seconds, table = _timed(qa, data, ex)
            times[name].append(seconds)
            rows = [(r["quantizer"], round(r["score"], 9)) for r in table.rows]
            reference = reference or rows
            assert rows == reference, f"{name} gave another table"
    _table("exact sensitivity", engines, times)
    if not args.skip_search:
        _search_rounds(engines, args.rounds, args.batch)
    print(
        f"first map (workers starting): processes {first['processes']:.1f} s, "
        f"ray {first['ray']:.1f} s"
    )
    print(f"ray.init of a local cluster: {ray_startup:.1f} s (fixed, once per process)")
    for ex in engines.values():
        getattr(ex, "close", lambda: None)()
    ray.shutdown()


if __name__ == "__main__":
    main()
