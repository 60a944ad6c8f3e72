"""``mixq convert``: vendor lists and encodings from one format to another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixq.cli.common import FORMAT_NAMES, MODEL_HELP, console, quantize_loaded
from mixq.cli.errors import CliError, reported_as
from mixq.cli.models import check_model_spec, load_model
from mixq.cli.options import check_input_file, check_output_file, registry_choice

__all__ = ["convert"]


def convert(
    src: Annotated[Path, typer.Argument(help="vendor file to read")],
    dst: Annotated[Path, typer.Argument(help="file to write (its folder must exist)")],
    to: Annotated[
        str,
        typer.Option(
            "--to", **registry_choice("format", "--to"), help=f"format to write: {FORMAT_NAMES}"
        ),
    ],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", **registry_choice("format", "--from"), help="format of SRC (else guessed)"
        ),
    ] = None,
    plan: Annotated[Path | None, typer.Option(help="plan.yaml, for formats that need one")] = None,
    model: Annotated[str | None, typer.Option(help=f"{MODEL_HELP}, for its graph")] = None,
) -> None:
    """Convert between qaic lists, Ascend lists, AIMET encodings and ORT overrides."""
    import mixq
    from mixq.export.formats import FORMATS
    from mixq.export.formats import convert as convert_file

    check_input_file("SRC", src)
    check_input_file("--plan", plan)
    check_output_file("DST", dst)
    if model is not None:
        check_model_spec(model)
    needs = FORMATS[to].needs
    if "graph" in needs and model is None:
        raise CliError(f"--to {to} names ops of the model: add --model MODEL")
    if "plan" in needs and plan is None and model is None:
        raise CliError(
            f"--to {to} writes per-op precisions: add --plan plan.yaml (from `mixq plan` or "
            "`mixq calibrate`) or --model MODEL"
        )
    with reported_as("--plan", plan):
        loaded_plan = mixq.Plan.load(plan) if plan is not None else None
    graph = None
    if model is not None:
        loaded = load_model(model)
        graph = quantize_loaded(loaded, str(plan) if plan else None).graph
    try:
        path = convert_file(src, dst, to, from_format=from_, plan=loaded_plan, graph=graph)
    except (ValueError, KeyError) as e:
        text = str(e).replace("pass graph= (sim.graph), and plan= for its default", "add --model")
        text = text.replace("pass plan= and graph= (sim.plan, sim.graph)", "add --plan and --model")
        raise CliError(f"convert {src} --to {to}: {text}") from None
    console.print(f"wrote {path}")
