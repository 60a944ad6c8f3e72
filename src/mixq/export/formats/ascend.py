"""Huawei Ascend ATC files: ``--keep_dtype``, ``--modify_mixlist``, ``--customize_dtypes``.

The ATC syntax (and its validity rules) lives in `mixq.rules.ascend`; this module only maps
between those files and a Plan.

- ``ascend-keep-dtype``: the ops whose output is fp32, one per line; a kind with two or more
  ops, all fp32, is written as its ``OpType::`` lines instead. Ops not listed follow
  ``--precision_mode``, so reading gives fp32 for the listed ops only.
- ``ascend-mixlist``: kind-level. Kinds all of whose ops run fp32 are added to the black
  list, kinds all in fp16 or bf16 to the white list (the mixed mode picks which of the two).
  A float op whose kind's ops differ (one conv fp32, the others int8), or a plan needing
  both fp16 and bf16, raises ValueError: per-op precisions belong in keep_dtype or
  customize_dtypes. Integer-only kinds are left to quantization (not listed).
- ``ascend-customize-dtypes``: one line per op, ``name::InputDtype:<float inputs, then
  weights by role>,OutputDtype:<outputs>`` in Ascend dtype words; reading takes each op's
  first OutputDtype. A precision with no Ascend word (fp8, uint4, uint16) raises ValueError.

Example:
    >>> from mixq.plan import OpPlan, Plan
    >>> plan = Plan(ops={"fc": OpPlan("fc", "linear", "fc", ("fp16",), ("fp16",),
    ...                               {"weight": "int8"})})
    >>> print(AscendCustomizeDtypes().dump(plan, None, None), end="")
    fc::InputDtype:float16,int8,OutputDtype:float16
    >>> AscendCustomizeDtypes().load("fc::InputDtype:float16,OutputDtype:float16").precisions
    {'fc': 'fp16'}
"""

from __future__ import annotations

from mixq.core.errors import ConfigError
from mixq.export.formats.common import is_float, op_precision, try_json
from mixq.export.formats.registry import VendorData, register_format
from mixq.graph.ir import Graph
from mixq.graph.kinds import is_data_movement
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan
from mixq.rules.atc_files import (
    ASCEND_OP_TYPES,
    format_keep_dtype,
    format_modify_mixlist,
    kind_of_op_type,
    op_type_of_kind,
    parse_keep_dtype,
    parse_modify_mixlist,
)

__all__ = ["ASCEND_DTYPES", "AscendCustomizeDtypes", "AscendKeepDtype", "AscendMixlist"]

ASCEND_DTYPES = {
    "fp16": "float16",
    "fp32": "float32",
    "bf16": "bfloat16",
    "int8": "int8",
    "int16": "int16",
    "int4": "int4",
    "uint8": "uint8",
}
_PRECISION_OF = {word: p for p, word in ASCEND_DTYPES.items()}


def _op_types(kind: str) -> list[str]:
    """Every Ascend OpType of a kind (the table's, else the CamelCase guess)."""
    return [t for t, k in ASCEND_OP_TYPES.items() if k == kind] or [op_type_of_kind(kind)]


def _kind_precisions(plan: Plan) -> dict[str, dict[str, str]]:
    """kind -> precision -> its first op, over compute ops (data movement follows input)."""
    kinds: dict[str, dict[str, str]] = {}
    for op in plan:
        precision = op_precision(op)
        if precision is not None and not is_data_movement(op.kind):
            kinds.setdefault(op.kind, {}).setdefault(precision, op.name)
    return kinds


def _check_kind_level(kind: str, ops: dict[str, str]) -> None:
    """ValueError naming a float op whose kind's ops do not all share one list."""
    floats = [p for p in ops if is_float(p)]
    if not floats or set(ops) == {"fp32"} or set(ops) <= {"fp16", "bf16"}:
        return
    p = floats[0]
    others = sorted(set(ops) - {p})
    raise ValueError(
        f"op {ops[p]!r} runs in {p} but other {kind} ops run in {', '.join(others)}; "
        "modify_mixlist sets precisions per OpType: write ascend-keep-dtype or "
        "ascend-customize-dtypes for per-op precisions"
    )


@register_format("ascend-keep-dtype")
class AscendKeepDtype:
    """ATC --keep_dtype: ops (or OpTypes) whose output stays fp32, one per line."""

    suffix = ".cfg"
    needs = ("plan",)

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert plan is not None
        counts: dict[str, int] = {}
        for op in plan:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        fp32 = [op for op in plan if op_precision(op) == "fp32"]
        known = set(ASCEND_OP_TYPES.values())
        kinds = [
            k
            for k in dict.fromkeys(op.kind for op in fp32)
            if k in known and counts[k] >= 2 and counts[k] == sum(op.kind == k for op in fp32)
        ]
        names = [op.name for op in fp32 if op.kind not in kinds]
        return format_keep_dtype(names, kinds)

    def load(self, text: str) -> VendorData:
        names, kinds = parse_keep_dtype(text)
        out = VendorData({name: "fp32" for name in names})
        out.precisions.update({f"kind:{kind}": "fp32" for kind in kinds})
        out.notes.append("ops not listed follow ATC's --precision_mode")
        return out


@register_format("ascend-mixlist")
class AscendMixlist:
    """ATC --modify_mixlist JSON: all-fp32 kinds to the black list, all-fp16/bf16 to white."""

    suffix = ".json"
    needs = ("plan",)

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert plan is not None
        kinds = _kind_precisions(plan)
        for kind, ops in kinds.items():
            _check_kind_level(kind, ops)
        black = [k for k, ops in kinds.items() if set(ops) == {"fp32"}]
        white = [k for k, ops in kinds.items() if set(ops) <= {"fp16", "bf16"}]
        lows = {p: name for k in white for p, name in kinds[k].items()}
        if len(lows) > 1:
            raise ValueError(
                f"op {lows['fp16']!r} runs in fp16 and op {lows['bf16']!r} in bf16; a mixed "
                "precision mode lowers every white-list op to the same one"
            )
        edits: dict[str, dict[str, list[str]]] = {}
        for key, group in (("black-list", black), ("white-list", white)):
            if group:
                edits[key] = {"to-add": [t for k in group for t in _op_types(k)]}
        return format_modify_mixlist(edits) + "\n"

    def load(self, text: str) -> VendorData:
        edits = parse_modify_mixlist(text)
        out = VendorData()
        for key, precision in (("black-list", "fp32"), ("white-list", "fp16")):
            for op_type in edits.get(key, {}).get("to-add", []):
                out.precisions[f"kind:{kind_of_op_type(op_type)}"] = precision
        if edits.get("white-list", {}).get("to-add"):
            out.notes.append("white-list kinds read as fp16; under mixed_bfloat16 they run bf16")
        gray = [
            f"{key} {action}"
            for key, actions in edits.items()
            for action, names in actions.items()
            if names and (action != "to-add" or key == "gray-list")
        ]
        if gray:
            out.notes.append(
                f"{', '.join(gray)}: no precision of their own (gray follows upstream)"
            )
        return out

    def sniff(self, text: str) -> bool:
        data = try_json(text)
        keys = {"black-list", "white-list", "gray-list"}
        return isinstance(data, dict) and bool(data) and set(data) <= keys


def _dtype_words(op: str, precisions: tuple[str, ...] | list[str]) -> str:
    for p in precisions:
        if p not in ASCEND_DTYPES:
            raise ValueError(
                f"op {op!r} runs in {p}, which has no Ascend dtype word "
                f"(customize_dtypes knows {', '.join(ASCEND_DTYPES)})"
            )
    return ",".join(ASCEND_DTYPES[p] for p in precisions)


def _output_precision(line: str, number: int) -> str | None:
    if line.startswith("OpType::"):
        spec = line[len("OpType::") :].partition(":")[2]
    else:
        spec = line.partition("::")[2]
    if "OutputDtype:" not in spec:
        return None
    words = spec.split("OutputDtype:", 1)[1].split(",")
    if words[0] not in _PRECISION_OF:
        raise ConfigError(
            f"customize_dtypes line {number}: unknown dtype {words[0]!r}; "
            f"known: {', '.join(_PRECISION_OF)}"
        )
    return _PRECISION_OF[words[0]]


@register_format("ascend-customize-dtypes")
class AscendCustomizeDtypes:
    """ATC --customize_dtypes: InputDtype / OutputDtype per op, in Ascend dtype words."""

    suffix = ".cfg"
    needs = ("plan",)

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert plan is not None
        lines = []
        for op in plan:
            if not op.name or "::" in op.name or op.name != op.name.strip() or "\n" in op.name:
                raise ValueError(f"op name {op.name!r} cannot be written to customize_dtypes")
            parts = []
            inputs = [*op.input, *op.weight.values()]
            if inputs:
                parts.append("InputDtype:" + _dtype_words(op.name, inputs))
            if op.output:
                parts.append("OutputDtype:" + _dtype_words(op.name, op.output))
            if parts:
                lines.append(f"{op.name}::{','.join(parts)}\n")
        return "".join(lines)

    def load(self, text: str) -> VendorData:
        out = VendorData()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            if "::" not in line:
                raise ConfigError(
                    f"customize_dtypes line {number}: {line!r} has no '::'; write "
                    "name::InputDtype:...,OutputDtype:... or OpType::Type:OutputDtype:..."
                )
            precision = _output_precision(line, number)
            if precision is None:
                out.notes.append(f"line {number} sets no OutputDtype; skipped")
                continue
            if line.startswith("OpType::"):
                op_type = line[len("OpType::") :].partition(":")[0]
                out.precisions[f"kind:{kind_of_op_type(op_type)}"] = precision
            else:
                out.precisions[line.partition("::")[0]] = precision
        return out

    def sniff(self, text: str) -> bool:
        return any(
            "::" in line and ("InputDtype:" in line or "OutputDtype:" in line)
            for line in text.splitlines()
        )
