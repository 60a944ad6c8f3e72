"""Every stage of mixq on every model of the conformance corpus: an architecture x stage table.

    python bench/conformance.py                    # all models
    python bench/conformance.py --only bert,gpt2   # some
    python bench/conformance.py --json out.json    # also write the results
    python bench/conformance.py --table a.json b.json   # print the table of earlier runs

Stages and what each cell means: `tests.conformance.stages` (its docstring lists them).

Only mixq's public API is used. Torch threads are set to 1 (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MIXQ_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.conformance import corpus  # noqa: E402
from tests.conformance.stages import (  # noqa: E402
    NEEDS,
    ONNX_STAGES,
    RUNNERS,
    STAGES,
    Model,
    first_line,
    time_limit,
)


def run_model(name: str, stages: list[str], limit: float, verbose: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "stages": {}, "seconds": {}}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with time_limit(limit):
                m = Model(name, corpus.ALL[name], Path(tmp))
        except Exception as e:
            row["stages"] = {s: f"{type(e).__name__}: {first_line(e)}" for s in stages}
            row["total_s"] = time.time() - start
            return row
        wanted = ONNX_STAGES if m.is_onnx else STAGES
        failed: dict[str, str] = {}
        for stage in stages:
            if stage not in wanted:
                row["stages"][stage] = "n/a"
                continue
            need = NEEDS.get(stage)
            if need in failed:
                row["stages"][stage] = f"(needs {need})"
                continue
            t0 = time.time()
            try:
                with time_limit(limit):
                    cell = RUNNERS[stage](m)
            except Exception as e:
                cell = f"{type(e).__name__}: {first_line(e)}"
                failed[stage] = cell
                if verbose:
                    traceback.print_exc()
            row["stages"][stage] = cell
            row["seconds"][stage] = round(time.time() - t0, 1)
            print(f"  {name:22s} {stage:12s} {row['seconds'][stage]:6.1f}s  {cell}", flush=True)
    row["total_s"] = round(time.time() - start, 1)
    return row


def table(rows: list[dict[str, Any]], stages: list[str]) -> str:
    def short(cell: str) -> str:
        return cell if len(cell) <= 28 else cell[:27] + "…"

    head = ["model", *stages, "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [short(r["stages"].get(s, "")) for s in stages]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r.get('total_s', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--skip", help="comma-separated model names to leave out")
    ap.add_argument("--stages", help="comma-separated stages (default: all)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--table", nargs="*", help="print the table of these JSON files and exit")
    ap.add_argument("--limit", type=float, default=300, help="seconds per stage")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="print tracebacks")
    ap.add_argument("--details", action="store_true", help="print full cells after the table")
    args = ap.parse_args(argv)
    stages = args.stages.split(",") if args.stages else STAGES
    if args.table:
        rows = [r for f in args.table for r in json.loads(Path(f).read_text())]
        print(table(rows, stages))
        return 0
    torch.set_num_threads(args.threads)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    names = args.only.split(",") if args.only else list(corpus.ALL)
    names = [n for n in names if n not in set((args.skip or "").split(","))]
    unknown = [n for n in names if n not in corpus.ALL]
    if unknown:
        ap.error(f"unknown models {unknown}; the corpus has {', '.join(corpus.ALL)}")
    rows = []
    for name in names:
        rows.append(run_model(name, stages, args.limit, args.verbose))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows, stages))
    if args.details:
        for r in rows:
            for s, c in r["stages"].items():
                print(f"{r['model']:22s} {s:12s} {c}")
    total = sum(r["total_s"] for r in rows)
    print(f"\n{len(rows)} models, {total:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
