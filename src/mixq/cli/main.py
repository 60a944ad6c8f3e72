"""`mixq` commands. Each checks its cheap arguments, then calls one library function.

A mistake on the command line is one line on stderr (``error: ...``) and exit status 2
(`mixq.cli.errors.run`); results go into ``--out`` only when a command succeeds.

Example:
    $ mixq demo --out out/demo
    $ mixq plan mixq.zoo:resnet_like --config cfg.yaml --out out/plan
    $ mixq search mixq.zoo:mlp --metric sqnr --target 40 --candidates int8,int16 --out out/s
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from mixq.cli.convert import convert
from mixq.cli.errors import CliError, reported_as, run
from mixq.cli.inputs import load_labels
from mixq.cli.models import load_model
from mixq.cli.options import (
    check_input_file,
    check_output_file,
    check_output_folder,
    parse_budget,
    parse_candidates,
    parse_score_target,
    registry_choice,
)
from mixq.cli.output import staged
from mixq.cli.profile import profile_target

__all__ = ["app", "main"]

from mixq.cli.common import (
    CONFIG_HELP,
    FORMAT_NAMES,
    TARGET_HELP,
    BatchOpt,
    ConfigOpt,
    DataOpt,
    ExecutorOpt,
    Model,
    RayAddressOpt,
    StrictOpt,
    TargetOpt,
    WorkersOpt,
    console,
    load_data,
    prepare,
    print_note,
    quantize_loaded,
    vendor_file_name,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Mixed-precision quantization: plan, simulate, analyse, export.",
)


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="folder for the table and plan")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
) -> None:
    """Train a small CNN on scikit-learn's digits and compare fp32 ... int4 side by side."""
    from mixq.cli.demo import run_demo

    if out is not None:
        check_output_folder("--out", out)
    table = run_demo(out, epochs=epochs)
    console.print(table.to_text())
    if out is not None:
        console.print(f"saved demo.csv, demo.txt and mixed_plan.yaml in {out}")


@app.command()
def plan(
    model: Model,
    config: ConfigOpt = "int8",
    target: TargetOpt = None,
    strict: StrictOpt = True,
    out: Annotated[Path | None, typer.Option(help="folder for plan.yaml and the report")] = None,
) -> None:
    """Resolve a config against a model and print the plan, changing nothing."""
    cfg = prepare(model, config, target)
    if out is not None:
        check_output_folder("--out", out)
    sim = quantize_loaded(load_model(model), cfg, strict)
    console.print(sim.plan.table().to_text(), soft_wrap=True)
    for note in sim.resolution.notes:
        console.print(note, soft_wrap=True)
    if out is not None:
        with staged(out) as folder:
            sim.plan.save(folder / "plan.yaml")
            sim.resolution_report(folder / "resolution_report.txt")
            sim.resolution_report(folder / "resolution_report.json")
        console.print(f"saved plan.yaml and resolution_report.txt / .json in {out}")


@app.command()
def calibrate(
    model: Model,
    config: ConfigOpt = "int8",
    target: TargetOpt = None,
    data: DataOpt = None,
    batch_size: BatchOpt = 32,
    observer: Annotated[
        str | None,
        typer.Option(**registry_choice("observer", "--observer"), help="observer for activations"),
    ] = None,
    dump_profile: Annotated[Path | None, typer.Option(help="write a qaic / Glow profile")] = None,
    load_profile: Annotated[
        Path | None, typer.Option(help="ranges from a profile, no data")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for plan.yaml and encodings.json")] = Path(
        "out"
    ),
) -> None:
    """Calibrate (or load a profile) and write the plan, the encodings and optionally a profile."""
    cfg = prepare(model, config, target, data)
    check_input_file("--load-profile", load_profile)
    check_output_file("--dump-profile", dump_profile)
    check_output_folder("--out", out)
    if load_profile is not None and (data is not None or dump_profile is not None):
        raise CliError("--load-profile sets the ranges: drop --data / --dump-profile")
    loaded = load_model(model)
    batches = load_data(loaded, data, "--data", batch_size)
    sim = quantize_loaded(loaded, cfg)
    if load_profile is not None:
        with reported_as("--load-profile", load_profile):
            sim.load_profile(load_profile)
    else:
        sim.calibrate(batches, observer=observer, histogram_bins=512 if dump_profile else 0)
    with staged(out) as folder:
        sim.plan.save(folder / "plan.yaml")
        sim.encodings().save(folder / "encodings.json")
    if dump_profile is not None:
        console.print(f"wrote {sim.dump_profile(dump_profile)}")
    console.print(f"wrote plan.yaml and encodings.json in {out}")


@app.command()
def check(
    model: Model,
    config: ConfigOpt = "int8",
    target: TargetOpt = None,
    out: Annotated[Path, typer.Option(help="folder for model_check_result.*")] = Path("."),
) -> None:
    """Model check: module calls, shared / unused modules, unfused patterns, per-op dtypes."""
    import mixq

    cfg = prepare(model, config, target)
    check_output_folder("--out", out)
    loaded = load_model(model)
    with staged(out) as folder, reported_as("--config", config):
        result = mixq.check(loaded.model, loaded.example_inputs, cfg, out_dir=folder)
    console.print(result.to_text(), soft_wrap=True)


@app.command()
def analyze(
    model: Model,
    config: ConfigOpt = "int8",
    target: TargetOpt = None,
    data: DataOpt = None,
    batch_size: BatchOpt = 32,
    metric: Annotated[
        str, typer.Option(**registry_choice("metric", "--metric"), help="bad-case metric")
    ] = "cosine",
    strict: StrictOpt = True,
    executor: ExecutorOpt = "serial",
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    out: Annotated[Path, typer.Option(help="folder for tables and report.html")] = Path("out"),
) -> None:
    """Calibrate, find bad cases, compare layers, rank sensitivity, advise; write report.html."""
    import mixq

    cfg = prepare(model, config, target, data)
    check_output_folder("--out", out)
    loaded = load_model(model)
    with tempfile.TemporaryDirectory(prefix="mixq-") as scratch:
        free = loaded.with_free_batch(Path(scratch))
        if free is not loaded:
            print_note(f"note: {model} has a fixed batch size; analysing a copy with a free batch "
                  "dimension (bad cases are single samples)")  # fmt: skip
        batches = load_data(free, data, "--data", batch_size)
        sim = quantize_loaded(free, cfg, strict).calibrate(batches)
        qa = mixq.QuantAnalysis(sim, executor=executor, workers=workers, ray_address=ray_address)
        with staged(out) as folder:
            qa.run_all(batches, metric=metric, out_dir=folder)
    console.print(qa.tables["advice"].to_text(), soft_wrap=True)
    console.print(f"wrote the tables, badcase.txt and report.html in {out}")


@app.command()
def export(
    model: Model,
    config: ConfigOpt = "int8",
    target: TargetOpt = None,
    data: DataOpt = None,
    batch_size: BatchOpt = 32,
    formats: Annotated[
        list[str],
        typer.Option(
            "--format",
            **registry_choice("format", "--format"),
            help="vendor file besides model.onnx, written as model.<format><suffix> "
            f"(model.qaic-npi.yaml); repeatable; one of {FORMAT_NAMES}",
        ),
    ] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
) -> None:
    """Calibrate and write model.onnx (Q/DQ, checked in ONNX Runtime) and vendor files."""
    cfg = prepare(model, config, target, data)
    check_output_folder("--out", out)
    loaded = load_model(model)
    batches = load_data(loaded, data, "--data", batch_size)
    sim = quantize_loaded(loaded, cfg).calibrate(batches)
    with staged(out) as folder:
        report = sim.export_onnx(folder / "model.onnx").to_text()
        console.print(report.replace(str(folder), str(out)), soft_wrap=True)
        for fmt in formats:
            with reported_as("--format", fmt):
                sim.export(folder / vendor_file_name(fmt), fmt)
    for name in ["model.onnx", *map(vendor_file_name, formats)]:
        console.print(f"wrote {out / name}")


@app.command()
def search(
    model: Model,
    calib: Annotated[
        Path | None, typer.Option(help="calibration inputs, .npz as --data of other commands")
    ] = None,
    eval_: Annotated[
        Path | None, typer.Option("--eval", help=".npz of evaluation inputs (else --calib)")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="array of the eval .npz holding labels (metric: accuracy)")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(**registry_choice("search-metric", "--metric"), help="score to reach"),
    ] = None,
    target: Annotated[
        str, typer.Option(help="score to reach: 0.99, drop:0.01 or rdrop:0.01 (relative)")
    ] = "0.99",
    target_profile: Annotated[
        str | None, typer.Option("--target-profile", help=TARGET_HELP)
    ] = None,
    candidates: Annotated[
        str, typer.Option(help="precisions, comma-separated; activation/weight: int8/int4")
    ] = "int8,int16,fp16",
    strategy: Annotated[
        str | None,
        typer.Option(
            **registry_choice("strategy", "--strategy"),
            help="default: budget with --budget, else fallback; a --budget also limits others",
        ),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="fractions of all-int8: bops=0.5,weight_bytes=0.6")
    ] = None,
    config: Annotated[str, typer.Option(help=f"base config: {CONFIG_HELP}")] = "int8",
    keep: Annotated[
        list[str], typer.Option(help="ops kept as --config has them (repeatable)")
    ] = [],  # noqa: B006
    cost: Annotated[
        str, typer.Option(**registry_choice("cost", "--cost"), help="what cheapest means")
    ] = "bops",
    transform: Annotated[
        list[str],
        typer.Option(**registry_choice("transform", "--transform"), help="float transform first"),
    ] = [],  # noqa: B006
    ratio: Annotated[float | None, typer.Option(help="ratio strategy: fraction raised")] = None,
    points: Annotated[int, typer.Option(help="pareto strategy: plans along the curve")] = 10,
    batch_size: Annotated[int, typer.Option(help="batch size for the .npz files")] = 32,
    max_trials: Annotated[int | None, typer.Option(help="stop after N evaluations")] = None,
    time_budget: Annotated[float | None, typer.Option(help="stop after S seconds")] = None,
    history: Annotated[Path | None, typer.Option(help="JSONL of every evaluation")] = None,
    resume: Annotated[bool, typer.Option(help="reuse the --history's evaluations")] = False,
    executor: ExecutorOpt = "serial",
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="folder for plan.yaml, points.json, search.html")
    ] = None,
) -> None:
    """Search per-op precisions for the cheapest plan meeting --target; exit 3 if missed."""
    import mixq

    goal, options = parse_score_target(target), parse_candidates(candidates)
    limits = parse_budget(budget) if budget is not None else None
    cfg = prepare(model, config, target_profile, calib)
    if isinstance(cfg, str):
        with reported_as("--config", cfg):
            cfg = mixq.Plan.load(cfg)
    check_input_file("--eval", eval_)
    check_output_file("--history", history)
    if out is not None:
        check_output_folder("--out", out)
    data_path = eval_ or calib
    if labels is not None and data_path is None:
        raise CliError("--labels names an array of --eval (or --calib); give one")
    loaded = load_model(model)
    skip = [labels] if labels else []
    calib_batches = load_data(loaded, calib, "--calib", batch_size, skip)
    eval_batches = load_data(loaded, eval_, "--eval", batch_size, skip) if eval_ else None
    with reported_as("--labels", labels):
        label_batches = (
            load_labels(data_path, labels, batch_size, loaded.inputs or None)
            if labels and data_path
            else None
        )
    result = mixq.search(
        loaded.model,
        loaded.example_inputs,
        calib=calib_batches,
        evaluate=metric or ("accuracy" if labels else "cosine"),
        target=goal,
        candidates=options,
        strategy=strategy or ("budget" if limits else "fallback"),
        data=eval_batches if eval_batches is not None else (calib_batches if calib else None),
        labels=label_batches,
        config=cfg,
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
        executor=executor,
        workers=workers,
        ray_address=ray_address,
    )
    console.print(result.table().to_text(), soft_wrap=True)
    console.print(result.summary(), soft_wrap=True)
    if out is not None:
        with staged(out) as folder:
            result.save(folder)
        console.print(f"wrote plan.yaml, points.json and search.html in {out}")
    raise typer.Exit(0 if result.met_target else 3)


app.command()(convert)
app.command("profile-target")(profile_target)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: a user's mistake prints ``error: ...`` (one line) and exits with 2."""
    raise SystemExit(run(app, argv))
