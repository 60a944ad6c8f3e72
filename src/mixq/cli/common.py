"""What the CLI commands share: the console, option types and help texts, loading a model
and its data, the vendor file names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mixq.cli.errors import CliError, reported_as
from mixq.cli.inputs import load_batches
from mixq.cli.models import LoadedModel, check_model_spec
from mixq.cli.options import (
    check_input_file,
    parse_config,
    registry_choice,
)
from mixq.core.errors import CalibrationError

__all__ = [
    "FORMAT_NAMES",
    "BatchOpt",
    "ConfigOpt",
    "DataOpt",
    "Model",
    "StrictOpt",
    "TargetOpt",
    "console",
    "load_data",
    "prepare",
    "print_note",
    "quantize_loaded",
    "vendor_file_name",
]


console = Console()


MODEL_HELP = "package.module:factory (returns (model, example_inputs)) or model.onnx"


CONFIG_HELP = "precision (int8), activation/weight pair (int8/int4), config YAML or plan YAML"


DATA_HELP = (
    ".npz of inputs: arrays arg0, arg1, ... in input order (np.savez(f, arg0=x)), arr_0, ... "
    "(np.savez(f, x)) or named by input; dim 0 counts samples"
)


FORMAT_NAMES = ", ".join(registry_choice("format", "--format")["metavar"][1:-1].split("|"))


TARGET_HELP = "target profile: generic, int8-int16-npu, fp16-npu, ort-cpu or a YAML file"


Model = Annotated[str, typer.Argument(help=MODEL_HELP)]


ConfigOpt = Annotated[str, typer.Option(help=CONFIG_HELP)]


TargetOpt = Annotated[str | None, typer.Option("--target", "--target-profile", help=TARGET_HELP)]


DataOpt = Annotated[Path | None, typer.Option(help=DATA_HELP)]


BatchOpt = Annotated[int, typer.Option(help="batch size for --data (a fixed-batch model: its)")]


ExecutorOpt = Annotated[
    str,
    typer.Option(
        **registry_choice("executor", "--executor"),
        help="where the independent runs go: this process, a local process pool, or Ray",
    ),
]


WorkersOpt = Annotated[
    int | None, typer.Option(min=1, help="worker processes / Ray actors (default: one per CPU)")
]


RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="--executor ray: join this cluster (auto, host:port); else a local one"),
]


StrictOpt = Annotated[
    bool, typer.Option("--strict/--best-effort", help="conflicts raise, or are adjusted")
]


def vendor_file_name(fmt: str) -> str:
    """The file `mixq export --format FMT` writes in ``--out``: ``model.<format><suffix>``.

    Example:
        >>> vendor_file_name("qaic-npi"), vendor_file_name("aimet-1.0.0")
        ('model.qaic-npi.yaml', 'model.aimet-1.0.0.encodings')
    """
    from mixq.export.formats import FORMATS

    return f"model.{fmt}{FORMATS[fmt].suffix}"


def prepare(model: str, config: str, target: str | None, data: Path | None = None) -> Any:
    """Check the cheap arguments (before any model is built); return the parsed config."""
    check_model_spec(model)
    check_input_file("--data", data)
    return parse_config(config, target)


def load_data(
    loaded: LoadedModel, path: Path | None, flag: str, batch_size: int, skip: Sequence[str] = ()
) -> list[Any]:
    """The batches of ``path`` checked against the model's inputs (else its example inputs)."""
    if path is None:
        return [loaded.example_inputs]
    notes: list[str] = []
    try:
        batches = load_batches(path, batch_size, skip, loaded.inputs or None, notes)
        loaded.probe(batches, path)
    except CalibrationError as e:
        raise CliError(f"{flag} {e}") from None
    for note in dict.fromkeys(notes):
        print_note(note)
    return batches


def print_note(text: str) -> None:
    Console(stderr=True).print(text, soft_wrap=True, highlight=False, markup=False)


def quantize_loaded(loaded: LoadedModel, config: Any, strict: bool = True) -> Any:
    import mixq

    with reported_as("--config", config if isinstance(config, str) else "…"):
        return mixq.quantize(loaded.model, loaded.example_inputs, config, strict=strict)
