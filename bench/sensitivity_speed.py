"""Fast vs exact sensitivity on a BERT from config: time ratio, top-10 agreement, peak memory.

Run: `python bench/sensitivity_speed.py`. Goal: fast / exact time <= 0.25 with the same top
ops. Both modes run in this process, alternately (exact, fast, exact, fast), median.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

import mixq
from mixq import zoo
from mixq.analysis.quant_analysis import QuantAnalysis


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(rounds: int = 2) -> None:
    torch.manual_seed(0)
    model, inputs = zoo.bert(layers=4, hidden=128, heads=4, seq=64, batch=32)
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randint(0, 500, (32, 64), generator=gen), inputs[1]) for _ in range(2)]
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib, progress=False)
    qa = QuantAnalysis(sim)
    data = calib[0]
    print(f"BERT 4 x 128, 32 samples x 64 tokens, {len(sim.quantizers)} quantizers")
    times: dict[str, list[float]] = {"exact": [], "fast": []}
    tables = {}
    for _ in range(rounds):
        for mode in ("exact", "fast"):
            start = time.perf_counter()
            tables[mode] = qa.sensitivity("l1", "both", mode=mode, data=data, progress=False)
            times[mode].append(time.perf_counter() - start)
    exact, fast = statistics.median(times["exact"]), statistics.median(times["fast"])
    top = {m: [r["quantizer"] for r in t.rows[:10]] for m, t in tables.items()}
    agree = len(set(top["exact"]) & set(top["fast"]))
    print(f"exact {exact:.2f} s   fast {fast:.2f} s   ratio {fast / exact:.2f}x")
    print(f"top-10 agreement: {agree}/10 ({tables['fast'].title})")
    print(f"peak memory (process): {_peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
