"""`mixq` commands. Each parses its arguments and calls one library function.

Example:
    $ mixq demo --out out/demo
    $ mixq plan mixq.zoo:resnet_like --config cfg.yaml --out out/plan
    $ mixq search mixq.zoo:mlp --metric sqnr --target 40 --candidates int8,int16 --out out/s
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Mixed-precision quantization: plan, simulate, analyse, export.",
)
console = Console()


def load_model(spec: str) -> tuple[Any, Any]:
    """``package.module:factory`` -> the factory's ``(model, example_inputs)``; an ``.onnx``
    path gives the path and random inputs of its declared shapes."""
    if spec.endswith(".onnx"):
        from mixq.sim.onnx import capture, random_inputs

        return spec, random_inputs(capture(spec)[0])
    if ":" not in spec:
        raise typer.BadParameter(f"{spec!r} is neither 'package.module:factory' nor an .onnx file")
    module_name, factory = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), factory)
    except (ImportError, AttributeError) as e:
        raise typer.BadParameter(f"cannot load {spec!r}: {e}") from None
    return fn()


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="folder for the table and plan")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
) -> None:
    """Train a small CNN on scikit-learn's digits and compare fp32 ... int4 side by side."""
    from mixq.cli.demo import run_demo

    table = run_demo(out, epochs=epochs)
    console.print(table.to_text())
    if out is not None:
        console.print(f"saved demo.csv, demo.txt and mixed_plan.yaml in {out}")


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="package.module:factory")],
    config: Annotated[str, typer.Option(help="precision name or config YAML")] = "int8",
    target: Annotated[str | None, typer.Option(help="target profile name or YAML")] = None,
    strict: Annotated[
        bool, typer.Option("--strict/--best-effort", help="conflicts raise, or are adjusted")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="folder for plan.yaml and the report")] = None,
) -> None:
    """Resolve a config against a model and print the plan, changing nothing."""
    from mixq.api import plan_model

    sim = plan_model(load_model(model), config, target=target, strict=strict)
    console.print(sim.plan.table().to_text(), soft_wrap=True)
    for note in sim.resolution.notes:
        console.print(note, soft_wrap=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        sim.plan.save(out / "plan.yaml")
        sim.resolution_report(out / "resolution_report.txt")
        sim.resolution_report(out / "resolution_report.json")
        console.print(f"saved plan.yaml and resolution_report.txt / .json in {out}")


def _model_and_data(
    model: str, config: str, data: Path | None, batch_size: int, strict: bool
) -> tuple[Any, list[Any]]:
    import mixq
    from mixq.cli.inputs import load_batches

    net, inputs = load_model(model)
    batches = load_batches(data, batch_size) if data is not None else [inputs]
    sim = mixq.quantize(net, inputs, config, strict=strict)
    return sim.calibrate(batches), batches


@app.command()
def calibrate(
    model: Annotated[str, typer.Argument(help="package.module:factory or model.onnx")],
    config: Annotated[str, typer.Option(help="precision name, config or plan YAML")] = "int8",
    data: Annotated[Path | None, typer.Option(help=".npz of calibration inputs")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size for --data")] = 32,
    observer: Annotated[str | None, typer.Option(help="observer for every activation")] = None,
    dump_profile: Annotated[Path | None, typer.Option(help="write a qaic / Glow profile")] = None,
    load_profile: Annotated[
        Path | None, typer.Option(help="ranges from a profile, no data")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for plan.yaml and encodings.json")] = Path(
        "out"
    ),
) -> None:
    """Calibrate (or load a profile) and write the plan, the encodings and optionally a profile."""
    import mixq
    from mixq.cli.inputs import load_batches

    net, inputs = load_model(model)
    sim = mixq.quantize(net, inputs, config)
    if load_profile is not None:
        sim.load_profile(load_profile)
    else:
        batches = load_batches(data, batch_size) if data is not None else [inputs]
        sim.calibrate(batches, observer=observer, histogram_bins=512 if dump_profile else 0)
    out.mkdir(parents=True, exist_ok=True)
    sim.plan.save(out / "plan.yaml")
    sim.encodings().save(out / "encodings.json")
    if dump_profile is not None:
        console.print(f"wrote {sim.dump_profile(dump_profile)}")
    console.print(f"wrote plan.yaml and encodings.json in {out}")


@app.command()
def check(
    model: Annotated[str, typer.Argument(help="package.module:factory")],
    config: Annotated[str, typer.Option(help="precision name or config YAML")] = "int8",
    out: Annotated[Path, typer.Option(help="folder for model_check_result.*")] = Path("."),
) -> None:
    """Model check: module calls, shared / unused modules, unfused patterns, per-op dtypes."""
    import mixq

    net, inputs = load_model(model)
    result = mixq.check(net, inputs, config, out_dir=out)
    console.print(result.to_text(), soft_wrap=True)


@app.command()
def analyze(
    model: Annotated[str, typer.Argument(help="package.module:factory")],
    config: Annotated[str, typer.Option(help="precision name or config YAML")] = "int8",
    data: Annotated[Path | None, typer.Option(help=".npz of inputs (arg0.. or names)")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size for --data")] = 32,
    metric: Annotated[str, typer.Option(help="bad-case metric")] = "cosine",
    strict: Annotated[bool, typer.Option("--strict/--best-effort")] = True,
    out: Annotated[Path, typer.Option(help="folder for tables and report.html")] = Path("out"),
) -> None:
    """Calibrate, find bad cases, compare layers, rank sensitivity, advise; write report.html."""
    import mixq

    sim, batches = _model_and_data(model, config, data, batch_size, strict)
    qa = mixq.QuantAnalysis(sim)
    qa.run_all(batches, metric=metric, out_dir=out)
    console.print(qa.tables["advice"].to_text(), soft_wrap=True)
    console.print(f"wrote the tables, badcase.txt and report.html in {out}")


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="package.module:factory")],
    config: Annotated[str, typer.Option(help="precision name, config or plan YAML")] = "int8",
    data: Annotated[Path | None, typer.Option(help=".npz of calibration inputs")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size for --data")] = 32,
    formats: Annotated[
        list[str],
        typer.Option("--format", help="vendor formats to write besides model.onnx (repeatable)"),
    ] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
) -> None:
    """Calibrate and write model.onnx (Q/DQ, checked in ONNX Runtime) and vendor files."""
    from mixq.export.formats import FORMATS

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise typer.BadParameter(f"unknown format(s) {unknown}; choose from {list(FORMATS)}")
    sim, _ = _model_and_data(model, config, data, batch_size, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    console.print(sim.export_onnx(out / "model.onnx").to_text(), soft_wrap=True)
    for fmt in formats:
        console.print(f"wrote {sim.export(out / f'model{FORMATS[fmt].suffix}', fmt)}")


@app.command()
def search(
    model: Annotated[str, typer.Argument(help="package.module:factory or model.onnx")],
    calib: Annotated[
        Path | None, typer.Option(help=".npz of calibration inputs (else the example inputs)")
    ] = None,
    eval_: Annotated[
        Path | None, typer.Option("--eval", help=".npz of evaluation inputs (else --calib)")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="array of the eval .npz holding labels (metric: accuracy)")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="cosine, sqnr, l1, mse, kl or accuracy")
    ] = None,
    target: Annotated[
        str, typer.Option(help="score to reach: 0.99, drop:0.01 or rdrop:0.01 (relative)")
    ] = "0.99",
    candidates: Annotated[
        str, typer.Option(help="precisions, comma-separated; activation/weight: int8/int4")
    ] = "int8,int16,fp16",
    strategy: Annotated[
        str | None,
        typer.Option(
            help="ratio, fallback, pareto or budget (default: budget with --budget, else "
            "fallback); a --budget also limits the others"
        ),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="fractions of all-int8: bops=0.5,weight_bytes=0.6")
    ] = None,
    config: Annotated[str | None, typer.Option(help="base config: precision or YAML")] = None,
    keep: Annotated[
        list[str], typer.Option(help="ops kept as --config has them (repeatable)")
    ] = [],  # noqa: B006
    cost: Annotated[str, typer.Option(help="what cheapest means: bops, latency, weight_bytes")] = (
        "bops"
    ),
    transform: Annotated[
        list[str], typer.Option(help="float transform applied first: smooth, equalize (repeatable)")
    ] = [],  # noqa: B006
    ratio: Annotated[float | None, typer.Option(help="ratio strategy: fraction raised")] = None,
    points: Annotated[int, typer.Option(help="pareto strategy: plans along the curve")] = 10,
    batch_size: Annotated[int, typer.Option(help="batch size for the .npz files")] = 32,
    max_trials: Annotated[int | None, typer.Option(help="stop after N evaluations")] = None,
    time_budget: Annotated[float | None, typer.Option(help="stop after S seconds")] = None,
    history: Annotated[Path | None, typer.Option(help="JSONL of every evaluation")] = None,
    resume: Annotated[bool, typer.Option(help="reuse the --history's evaluations")] = False,
    out: Annotated[
        Path | None, typer.Option(help="folder for plan.yaml, points.json, search.html")
    ] = None,
) -> None:
    """Search per-op precisions for the cheapest plan meeting --target; exit 3 if missed."""
    import mixq
    from mixq.cli.inputs import load_batches, load_labels

    goal, options = _parse_target(target), _parse_candidates(candidates)
    limits = _parse_budget(budget) if budget is not None else None
    from mixq.search.registry import STRATEGIES

    if strategy is not None and strategy not in STRATEGIES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}: use {', '.join(STRATEGIES)}")
    data_path = eval_ or calib
    if labels is not None and data_path is None:
        raise typer.BadParameter("--labels names an array of --eval (or --calib); give one")
    net, inputs = load_model(model)
    skip = [labels] if labels else []
    calib_batches = load_batches(calib, batch_size, skip) if calib is not None else [inputs]
    result = mixq.search(
        net,
        inputs,
        calib=calib_batches,
        evaluate=metric or ("accuracy" if labels else "cosine"),
        target=goal,
        candidates=options,
        strategy=strategy or ("budget" if limits else "fallback"),
        data=load_batches(data_path, batch_size, skip) if data_path is not None else None,
        labels=load_labels(data_path, labels, batch_size) if labels and data_path else None,
        config=config,
        budget=limits,
        keep=keep,
        ratio=ratio,
        points=points,
        cost=cost,
        transforms=transform or None,
        time_budget_s=time_budget,
        max_trials=max_trials,
        history=history,
        resume=resume,
    )
    console.print(result.table().to_text(), soft_wrap=True)
    console.print(result.summary(), soft_wrap=True)
    if out is not None:
        result.save(out)
        console.print(f"wrote plan.yaml, points.json and search.html in {out}")
    raise typer.Exit(0 if result.met_target else 3)


def _parse_target(text: str) -> Any:
    """``0.99`` -> 0.99, ``drop:0.01`` -> an absolute drop, ``rdrop:0.01`` -> a relative one."""
    kind, _, value = text.rpartition(":")
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or kind not in ("", "drop", "rdrop"):
        raise typer.BadParameter(
            f"--target {text!r}: write a score (0.99), drop:0.01 (absolute drop from the float "
            "model) or rdrop:0.01 (relative drop)"
        )
    return number if not kind else {"drop": number, "relative": kind == "rdrop"}


def _parse_candidates(text: str) -> list[Any]:
    from mixq.search.space import parse_candidates

    try:
        return parse_candidates([c.strip() for c in text.split(",") if c.strip()])
    except ValueError as e:
        raise typer.BadParameter(f"--candidates {text!r}: {e}") from None


def _parse_budget(text: str) -> dict[str, float]:
    """``bops=0.5,weight_bytes=0.6`` -> {"bops": 0.5, "weight_bytes": 0.6}."""
    from mixq.search.milp import BUDGET_KEYS

    usage = (
        f"--budget {text!r}: write KEY=FRACTION of the all-int8 cost, comma-separated, with KEY "
        f"one of {', '.join(BUDGET_KEYS)} and FRACTION > 0, e.g. bops=0.5"
    )
    out: dict[str, float] = {}
    for item in text.split(","):
        key, _, value = (s.strip() for s in item.partition("="))
        try:
            out[key] = float(value)
        except ValueError:
            raise typer.BadParameter(usage) from None
        if key not in BUDGET_KEYS or not out[key] > 0:
            raise typer.BadParameter(usage)
    return out


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="vendor file to read")],
    dst: Annotated[Path, typer.Argument(help="file to write")],
    to: Annotated[str, typer.Option("--to", help="format to write")],
    from_: Annotated[
        str | None, typer.Option("--from", help="format of SRC (else guessed)")
    ] = None,
    plan: Annotated[Path | None, typer.Option(help="plan.yaml, for formats that need one")] = None,
    model: Annotated[str | None, typer.Option(help="package.module:factory, for a graph")] = None,
) -> None:
    """Convert between qaic lists, Ascend lists, AIMET encodings and ORT overrides."""
    import mixq
    from mixq.export.formats import convert as convert_file

    graph = None
    if model is not None:
        net, inputs = load_model(model)
        graph = mixq.quantize(net, inputs, str(plan) if plan else None).graph
    loaded = mixq.Plan.load(plan) if plan is not None else None
    path = convert_file(src, dst, to, from_format=from_, plan=loaded, graph=graph)
    console.print(f"wrote {path}")


def main() -> None:
    """Entry point: user errors print their message (no traceback) and exit with status 2."""
    from mixq.core.errors import MixqError

    try:
        app()
    except MixqError as e:
        Console(stderr=True).print(f"error: {e}", soft_wrap=True)
        raise SystemExit(2) from None
