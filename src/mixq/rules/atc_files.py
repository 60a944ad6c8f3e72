"""ATC's file grammar: Ascend OpType names of mixq's op kinds, ``--keep_dtype`` lists and
``--modify_mixlist`` JSON, read (with ATC's own checks) and written.

Example:
    >>> kind_of_op_type("SoftmaxV2"), op_type_of_kind("matmul")
    ('softmax', 'MatMul')
    >>> parse_keep_dtype("OpType::SoftmaxV2\\nencoder.fc\\n")
    (['encoder.fc'], ['softmax'])
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from mixq.core.errors import ConfigError

__all__ = [
    "ASCEND_OP_TYPES",
    "KEEP_DTYPE_PREFIX",
    "Edits",
    "Policy",
    "actions_by_name",
    "check_combo",
    "checked_edits",
    "format_keep_dtype",
    "format_modify_mixlist",
    "kind_of_op_type",
    "op_type_of_kind",
    "parse_keep_dtype",
    "parse_modify_mixlist",
]


_LISTS = {"black-list": "black", "white-list": "white", "gray-list": "gray"}


_ACTIONS = {"to-add": "add", "to-remove": "remove"}


# Per op, the edit combinations ATC's modify_mixlist parser accepts.
_COMBOS = """remove-black remove-white add-gray add-gray+remove-black add-gray+remove-white
    add-white add-white+remove-gray add-white+remove-black add-black add-black+remove-gray
    add-black+remove-white"""


_VALID_COMBOS = [set(combo.split("+")) for combo in _COMBOS.split()]


def parse_modify_mixlist(text: str) -> dict[str, dict[str, list[str]]]:
    """Read an ATC ``--modify_mixlist`` file (strict JSON keyed by Ascend OpType).

    Example:
        >>> parse_modify_mixlist('{"black-list": {"to-add": ["MatMul"]}}')
        {'black-list': {'to-add': ['MatMul']}}
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        msg = "modify_mixlist must be strict JSON, no // comments (delete the doc sample's)"
        raise ConfigError(f"{msg}: {e}") from e
    return checked_edits(data)


def checked_edits(data: object) -> dict[str, dict[str, list[str]]]:
    if not isinstance(data, Mapping):
        raise ConfigError("modify_mixlist must be a JSON object with black/white/gray-list keys")
    edits = {key: _checked_list_edits(key, value) for key, value in data.items()}
    for label, acts in actions_by_name(edits).items():
        check_combo(label, acts)
    return edits


def _checked_list_edits(key: str, value: object) -> dict[str, list[str]]:
    if key not in _LISTS:
        raise ConfigError(f"modify_mixlist key {key!r} is unknown; use {sorted(_LISTS)}")
    if not isinstance(value, Mapping) or set(value) - set(_ACTIONS):
        raise ConfigError(f"modify_mixlist {key!r} must be an object with to-add / to-remove")
    for action, names in value.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"modify_mixlist {key}.{action} must be a list of OpType strings")
        bad = [n for n in names if not _OP_TYPE_RE.match(n)]
        if bad:
            raise ConfigError(
                f"modify_mixlist {key}.{action}: {bad} are not Ascend OpTypes; the lists "
                "take OpTypes such as MatMul, not node names"
            )
    return {action: list(names) for action, names in value.items()}


def actions_by_name(edits: Edits, key: Callable[[str], str] | None = None) -> dict[str, set[str]]:
    """name -> {'add-black', ...}; ``key`` maps an OpType to the name to group by."""
    acts: dict[str, set[str]] = {}
    for lst, by_action in edits.items():
        for action, names in by_action.items():
            for name in names:
                group = key(name) if key else name
                acts.setdefault(group, set()).add(f"{_ACTIONS[action]}-{_LISTS[lst]}")
    return acts


def check_combo(label: str, acts: set[str]) -> None:
    if acts not in _VALID_COMBOS:
        edits = " + ".join(f"{a.split('-')[1]}-list to-{a.split('-')[0]}" for a in sorted(acts))
        raise ConfigError(
            f"modify_mixlist operation on {label} is invalid: {edits}. An op may be added "
            "to one list at most, and removed only from a list it is not added to"
        )


def format_modify_mixlist(edits: Edits) -> str:
    """Write edits as strict JSON that `parse_modify_mixlist` reads back.

    Example:
        >>> print(format_modify_mixlist({"white-list": {"to-add": ["Gelu"]}}))
        {"white-list": {"to-add": ["Gelu"]}}
    """
    return json.dumps(checked_edits(edits))


def parse_keep_dtype(text: str) -> tuple[list[str], list[str]]:
    """Read an ATC ``--keep_dtype`` file into (op names, canonical kinds).

    Lines are trimmed; blank lines are skipped. A line starting with ``OpType::`` names an
    OpType; any other line (``#`` lines included, as in ATC) is an op name.

    Example:
        >>> parse_keep_dtype("fp32_vars/Relu\\nOpType::SoftmaxV2\\n")
        (['fp32_vars/Relu'], ['softmax'])
    """
    names: list[str] = []
    kinds: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith(KEEP_DTYPE_PREFIX):
            names += [line] if line and line not in names else []
            continue
        op_type = line[len(KEEP_DTYPE_PREFIX) :]
        if not _OP_TYPE_RE.match(op_type):
            raise ConfigError(
                f"keep_dtype line {number}: {op_type!r} is not an OpType; it must match "
                f"{_OP_TYPE_RE.pattern} (e.g. OpType::Relu)"
            )
        kind = kind_of_op_type(op_type)
        kinds += [] if kind in kinds else [kind]
    return names, kinds


def format_keep_dtype(op_names: Iterable[str], kinds: Iterable[str]) -> str:
    """Write a ``--keep_dtype`` file: op names, then every OpType of each kind.

    Example:
        >>> print(format_keep_dtype(["encoder/fc"], ["layer_norm"]), end="")
        encoder/fc
        OpType::LayerNorm
    """
    lines = []
    for name in op_names:
        if name != name.strip() or not name or "\n" in name or name.startswith(KEEP_DTYPE_PREFIX):
            raise ConfigError(f"op name {name!r} cannot be written to a keep_dtype file")
        lines.append(name)
    lines += [KEEP_DTYPE_PREFIX + t for kind in kinds for t in _op_types(kind)]
    return "".join(line + "\n" for line in lines)


Policy = Literal["white", "black", "gray"]


Edits = Mapping[str, Mapping[str, Iterable[str]]]


# Canonical kind -> Ascend IR OpTypes; the first one is what op_type_of_kind writes.
# fmt: off
_OP_TYPES_OF: dict[str, tuple[str, ...]] = {
    "conv": ("Conv2D", "Conv3D", "DepthwiseConv2D"),
    "conv_transpose": ("Conv2DTranspose", "Conv3DTranspose", "Deconvolution"),
    "linear": ("FullyConnection",),
    "matmul": ("MatMul", "MatMulV2", "BatchMatMul", "BatchMatMulV2"),
    "attention": ("FlashAttentionScore", "PromptFlashAttention", "IncreFlashAttention"),
    "add": ("Add",), "sub": ("Sub",), "mul": ("Mul",), "div": ("RealDiv", "Div"),
    "relu6": ("Relu6",), "gelu": ("Gelu", "FastGelu"), "clamp": ("ClipByValue",),
    "softmax": ("SoftmaxV2",), "log_softmax": ("LogSoftmaxV2",),
    "layer_norm": ("LayerNorm",), "group_norm": ("GroupNorm",),
    "batch_norm": ("BatchNorm", "BNInference"),
    "sum": ("ReduceSum", "ReduceSumD"), "mean": ("ReduceMean", "ReduceMeanD"),
    "transpose": ("Transpose", "TransposeD"), "cat": ("ConcatV2", "ConcatD"),
    "split": ("Split", "SplitV"), "pad": ("Pad", "PadV3"), "slice": ("StridedSlice", "Slice"),
    "max_pool": ("MaxPool", "MaxPoolV3"), "avg_pool": ("AvgPool", "AvgPoolV2"),
    "gather": ("GatherV2",),
}


# fmt: on
_SAME_NAME = "Relu Exp Log Pow Sqrt Rsqrt Tanh Sigmoid Cast Reshape Flatten Squeeze Unsqueeze"


_OP_TYPES_OF.update({t.lower(): (t,) for t in _SAME_NAME.split()})
ASCEND_OP_TYPES: dict[str, str] = {t: k for k, types in _OP_TYPES_OF.items() for t in types}


_OP_TYPE_RE = re.compile(r"^[A-Z][a-zA-Z0-9]*$")


KEEP_DTYPE_PREFIX = "OpType::"


def kind_of_op_type(op_type: str) -> str:
    """The mixq kind of an Ascend OpType; an OpType not in the table is lower-cased.

    Example:
        >>> kind_of_op_type("BatchMatMulV2"), kind_of_op_type("Erf")
        ('matmul', 'erf')
    """
    return ASCEND_OP_TYPES.get(op_type, op_type.lower())


def op_type_of_kind(kind: str) -> str:
    """The main Ascend OpType of a kind; other kinds become CamelCase (``my_op`` -> MyOp).

    Example:
        >>> op_type_of_kind("softmax"), op_type_of_kind("erf")
        ('SoftmaxV2', 'Erf')
    """
    return _op_types(kind)[0]


def _op_types(kind: str) -> tuple[str, ...]:
    default = "".join(part.capitalize() for part in kind.split("_"))
    return _OP_TYPES_OF.get(kind, (default,))
