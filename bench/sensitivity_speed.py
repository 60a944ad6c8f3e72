"""Fast vs exact sensitivity on a BERT from config: time ratio, top-10 agreement, peak memory.

Run: `python bench/sensitivity_speed.py`. Goal: fast / exact time <= 0.25 with the same top
ops. The modes run in this process, alternately (exact, fast, exact, fast), median. A third
mode, fast over every sample, shows what re-running only the changed nodes buys alone
(the default fast mode also ranks on the hardest quarter of the samples).
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch

import mixq
from mixq import zoo
from mixq.analysis.quant_analysis import QuantAnalysis

MODES = {"exact": ("exact", None), "fast": ("fast", None), "fast, all samples": ("fast", 10**6)}


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mib(key: str) -> float | None:
    """A memory line of /proc/self/status (VmHWM: peak, VmRSS: now) in MiB."""
    try:
        status = Path("/proc/self/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith(f"{key}:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return None


def _peak_mib() -> float:
    """Peak resident memory of this process since the last reset (else since start)."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(rounds: int = 2) -> None:
    torch.manual_seed(0)
    model, inputs = zoo.bert(layers=4, hidden=128, heads=4, seq=64, batch=32)
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randint(0, 500, (32, 64), generator=gen), inputs[1]) for _ in range(2)]
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib, progress=False)
    qa = QuantAnalysis(sim)
    data = calib[0]
    print(f"BERT 4 x 128, 32 samples x 64 tokens, {len(sim.quantizers)} quantizers")
    times: dict[str, list[float]] = {m: [] for m in MODES}
    peaks: dict[str, float] = dict.fromkeys(MODES, 0.0)
    base = _status_mib("VmRSS") or 0.0
    resettable = _reset_peak()
    tables = {}
    for _ in range(rounds):
        for label, (mode, samples) in MODES.items():
            _reset_peak()
            start = time.perf_counter()
            tables[label] = qa.sensitivity(
                "l1", "both", mode=mode, data=data, samples=samples, progress=False
            )
            times[label].append(time.perf_counter() - start)
            peaks[label] = max(peaks[label], _peak_mib())
    exact = statistics.median(times["exact"])
    top = {m: [r["quantizer"] for r in t.rows[:10]] for m, t in tables.items()}
    for label in MODES:
        t = statistics.median(times[label])
        agree = len(set(top["exact"]) & set(top[label]))
        print(
            f"{label:<18} {t:6.2f} s   ratio {t / exact:4.2f}x exact   "
            f"top-10 agreement {agree}/10   peak RSS {peaks[label]:6.0f} MiB"
        )
    print(f"fast mode's table: {tables['fast'].title}")
    per_mode = "per mode" if resettable else "of the whole process (reset not allowed)"
    print(f"RSS before the analyses: {base:.0f} MiB; peaks are {per_mode}")


if __name__ == "__main__":
    main()
