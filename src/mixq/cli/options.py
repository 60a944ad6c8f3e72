"""Checks of cheap command-line values, run before any model is built.

Choices come from the registries (`FORMATS`, `OBSERVERS`, `METRICS`, `STRATEGIES`), so
``--help`` lists them and a typo gets the closest name. ``--config`` takes a precision, an
``activation/weight`` pair (``int8/int4``, the syntax of ``--candidates``), a config YAML or
a saved plan YAML.

Example:
    >>> parse_config("int8/int4").default
    Precision(activation='int8', weight='int4')
    >>> parse_candidates("int8/int4, int16")
    [Candidate('int8', 'int4'), Candidate('int16', 'int16')]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixq.analysis.metrics import METRICS
from mixq.cli.errors import CliError, did_you_mean, reported_as
from mixq.core.qtypes import QTYPES
from mixq.export.formats import FORMATS
from mixq.observers import OBSERVERS
from mixq.plan.plan import Plan
from mixq.rules.config import Config
from mixq.search.registry import STRATEGIES
from mixq.search.space import Candidate
from mixq.search.space import parse_candidates as parse_candidate_list
from mixq.sim.executors import EXECUTORS
from mixq.targets import load_target
from mixq.transforms import TRANSFORMS

__all__ = [
    "COSTS",
    "check_input_file",
    "check_output_file",
    "check_output_folder",
    "parse_budget",
    "parse_candidates",
    "parse_config",
    "parse_score_target",
    "registry_choice",
]

COSTS = ("bops", "latency", "weight_bytes")


def registry_choice(what: str, flag: str) -> dict[str, Any]:
    """``typer.Option`` arguments (``parser``, ``metavar``) for the names of one registry:
    ``format``, ``observer``, ``metric``, ``search-metric``, ``strategy``, ``transform``,
    ``cost``; ``--help`` lists the names and a typo gets the closest one.

    Example:
        >>> registry_choice("strategy", "--strategy")["metavar"]
        '[ratio|fallback|pareto|budget]'
    """
    names = [str(n) for n in _REGISTRIES[what]()]
    noun = what.replace("search-", "")

    def parse(value: str) -> str:
        if value in names:
            return value
        hint = did_you_mean(value, names) or "."
        raise CliError(f"{flag} {value!r}: unknown {noun}{hint} Choose from {', '.join(names)}")

    return {"parser": parse, "metavar": "[" + "|".join(names) + "]"}


_REGISTRIES: dict[str, Any] = {
    "format": lambda: FORMATS,
    "observer": lambda: OBSERVERS,
    "metric": lambda: METRICS,
    "search-metric": lambda: [*METRICS, "accuracy"],
    "strategy": lambda: STRATEGIES,
    "transform": lambda: [t for t in TRANSFORMS if t in ("smooth", "equalize")],
    "cost": lambda: COSTS,
    "executor": lambda: EXECUTORS,
}


def check_input_file(flag: str, path: Path | None) -> Path | None:
    """``path`` if it is an existing file; else a `CliError` saying so."""
    if path is not None and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CliError(f"{flag} {str(path)!r}: {what}; give the path of an existing file")
    return path


def check_output_file(flag: str, path: Path | None) -> Path | None:
    """``path`` if its folder exists (the file is written there); else a `CliError`."""
    if path is None:
        return None
    parent = path.parent
    if path.is_dir():
        raise CliError(f"{flag} {str(path)!r} is a folder; give a file name inside it")
    if not parent.is_dir():
        raise CliError(
            f"{flag} {str(path)!r}: folder {str(parent)!r} does not exist; create it first "
            f"(mkdir -p {parent}) or write somewhere else"
        )
    return path


def check_output_folder(flag: str, path: Path) -> Path:
    """``path`` if it is a folder or can be made one (missing parents are created)."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise CliError(
                    f"{flag} {str(path)!r}: {str(folder)!r} is a file, not a folder; choose "
                    "another output folder"
                )
            return path
    return path


def parse_config(text: str, target: str | None = None) -> Config | str:
    """``--config``: a `Config` (precision, pair, config YAML) or a plan YAML's path, with
    ``--target`` set; checked now, so a typo is reported before a model is built."""
    if target is not None:
        with reported_as("--target", target):
            load_target(target)
    if text.endswith((".yaml", ".yml")):
        check_input_file("--config", Path(text))
        with reported_as("--config", text):
            if Plan.is_plan_file(text):
                if target is not None:
                    raise CliError(
                        f"--target {target!r} cannot change the saved plan {text!r}; drop "
                        "--target, or give the config the plan was made from"
                    )
                return text
            config = Config.load(text)
    else:
        (candidate,) = parse_candidates(text, "--config")
        config = Config(default=(candidate.activation, candidate.weight))
    if target is not None:
        config.target = target
    return config


def parse_candidates(text: str, flag: str = "--candidates") -> list[Candidate]:
    """``int8,int8/int4,fp16`` -> candidates; an unknown precision gets the closest name."""
    items = [c.strip() for c in text.split(",") if c.strip()]
    if not items or (flag == "--config" and len(items) != 1):
        raise CliError(
            f"{flag} {text!r}: write one precision (int8) or an activation/weight pair "
            "(int8/int4)" + ("" if flag == "--config" else ", comma-separated")
        )
    for name in (n for item in items for n in item.split("/")):
        if name not in QTYPES:
            raise CliError(
                f"{flag} {text!r}: unknown precision {name!r}{did_you_mean(name, QTYPES) or '.'} "
                f"Precisions are {', '.join(QTYPES)}; a YAML file must end in .yaml"
            )
    with reported_as(flag, text):
        return parse_candidate_list(items)


def parse_score_target(text: str) -> Any:
    """``0.99`` -> 0.99, ``drop:0.01`` -> an absolute drop, ``rdrop:0.01`` -> a relative one."""
    kind, _, value = text.rpartition(":")
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or kind not in ("", "drop", "rdrop"):
        raise CliError(
            f"--target {text!r}: write a score (0.99), drop:0.01 (absolute drop from the float "
            "model) or rdrop:0.01 (relative drop)"
        )
    return number if not kind else {"drop": number, "relative": kind == "rdrop"}


def parse_budget(text: str) -> dict[str, float]:
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
            raise CliError(usage) from None
        if key not in BUDGET_KEYS or not out[key] > 0:
            raise CliError(usage + did_you_mean(key, BUDGET_KEYS).replace(";", "."))
    return out
