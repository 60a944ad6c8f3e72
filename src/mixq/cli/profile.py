"""``mixq profile-target``: time op kinds and precisions here, in ONNX Runtime, and write a
target profile whose latency table makes ``plan.cost().latency`` a prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixq.cli.common import TARGET_HELP, console
from mixq.cli.errors import reported_as
from mixq.cli.options import check_output_file

__all__ = ["profile_target"]


def profile_target(
    out: Annotated[Path, typer.Option(help="the profile YAML to write")],
    target: Annotated[str, typer.Option(help=f"base {TARGET_HELP}")] = "ort-cpu",
    name: Annotated[str | None, typer.Option(help="the new profile's name")] = None,
    repeats: Annotated[int, typer.Option(min=3, help="timed runs per one-op model")] = 60,
) -> None:
    """Time one-op models of each kind and precision in ONNX Runtime on this machine; write
    --target's profile with the measured latency table (use the file as --target)."""
    from mixq.targets import load_target
    from mixq.targets.timing import profile_target as measure

    check_output_file("--out", out)
    with reported_as("--target", target):
        base = load_target(target)
    profile = measure(base, name, repeats)  # measured first: an error writes nothing
    profile.save(out)
    assert profile.latency is not None
    console.print(
        f"wrote {out}: target {profile.name!r}, {len(profile.latency.ops)} op kinds timed in "
        f"{profile.latency.runtime} ({profile.latency.machine})"
    )
