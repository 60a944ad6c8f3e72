"""Small helpers the format modules share: op precisions and JSON reading."""

from __future__ import annotations

import json
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.qtypes import QTYPES, qtype
from mixq.graph.ir import Graph
from mixq.plan.plan import OpPlan, Plan

__all__ = [
    "dump_json",
    "float_island_tensors",
    "is_float",
    "load_json",
    "op_precision",
    "split_point_name",
    "try_json",
]


def is_float(precision: str) -> bool:
    return qtype(precision).is_floating_point


def op_precision(op: OpPlan) -> str | None:
    """The precision an op runs at: its first output's, else its first input's."""
    if op.output:
        return op.output[0]
    return op.input[0] if op.input else None


def split_point_name(name: str) -> tuple[str, str | None]:
    """``"t@int8"`` -> ``("t", "int8")`` (a conversion point); any other name -> (name, None).

    Example:
        >>> split_point_name("block.relu@int8"), split_point_name("fc")
        (('block.relu', 'int8'), ('fc', None))
    """
    tensor, at, suffix = name.rpartition("@")
    if at and tensor and suffix in QTYPES:
        return tensor, suffix
    return name, None


def float_island_tensors(plan: Plan, graph: Graph, precision: str = "fp32") -> list[str]:
    """Float output tensors of the ops that run at ``precision``, in graph order."""
    tensors: list[str] = []
    for op in graph:
        if op.name not in plan.ops:
            continue
        outs = zip(graph.float_outputs(op), plan.ops[op.name].output, strict=False)
        tensors += [t for t, p in outs if p == precision and t not in tensors]
    return tensors


def dump_json(value: Any, indent: int = 0) -> str:
    """Strict JSON, indented, with lists of numbers / strings kept on one line.

    Example:
        >>> print(dump_json({"a": [1, 2], "b": [{"c": 0.5}]}))
        {
         "a": [1, 2],
         "b": [
          {
           "c": 0.5
          }
         ]
        }
    """
    pad, end = " " * (indent + 1), " " * indent
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {dump_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [pad + dump_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + f"\n{end}]"
    return json.dumps(value, allow_nan=False)


def load_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} must be JSON: {e}") from e


def try_json(text: str) -> Any:
    """The parsed JSON, or None if ``text`` is not JSON (for guessing formats)."""
    try:
        return json.loads(text)
    except ValueError:
        return None
