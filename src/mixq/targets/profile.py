"""Target profiles: what a deployment target can run, and what each precision costs there.

A profile lists, per canonical op kind (`mixq.graph.kinds`), the precisions the op's
activations and weights may take and the (activation, weight) pairs the target cannot run
together; kinds it does not list take its ``default``. ``fp32`` means "not quantized".
`violations` checks one op (an `OpPlan`) (strict mode raises on them, see `TargetProfile.check`);
`repair` moves it to the closest precisions the target runs and says what it changed.

Four profiles ship with mixq (`BUILTIN_TARGETS`): ``generic`` (no constraint),
``int8-int16-npu`` (Horizon J6-like), ``fp16-npu`` and ``ort-cpu`` (ONNX Runtime CPU).
Any other target is a YAML file of the same shape (write one with `TargetProfile.save`).

``fuse_residual_add`` (version 2; default true) says whether the target's kernels fuse a
residual add into the conv / linear before it (NPU compilers do); ``ort-cpu`` sets it false,
as ONNX Runtime's CPU provider runs QLinearConv then QLinearAdd, so fusion groups end before
the add there (`mixq.graph.fusion`, `fuses_residual_add`).

Example:
    >>> from mixq.plan import OpPlan
    >>> npu = TargetProfile.load("int8-int16-npu")
    >>> op = OpPlan("layer1.conv", "conv", "layer1", ("int16",), ("int16",), {"weight": "int16"})
    >>> print(npu.violations(op)[0])  # doctest: +NORMALIZE_WHITESPACE
    layer1.conv wants int16 weight with int16 activation; target 'int8-int16-npu' allows
    int16 on only one of them
    >>> fixed, notes = npu.repair(op)
    >>> fixed.input, fixed.weight
    (('int16',), {'weight': 'int8'})
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mixq.core.errors import ConfigError, ConflictError
from mixq.core.validation import (
    check_keys,
    looks_like_path,
    read_yaml,
    version_number,
)
from mixq.targets.kernels import QLINEAR, checked_kernels
from mixq.targets.latency import LatencyTable
from mixq.targets.support import (
    KindSupport,
    OpPrecisions,
    OpT,
    checked_cost,
    forbidden_pairs,
    lower_activation,
    lower_weight,
    nearest,
    note_list,
    replaced,
    unique,
)

__all__ = ["BUILTIN_TARGETS", "TARGET_VERSION", "KindSupport", "TargetProfile"]

# 2: fuse_residual_add (a version-1 profile fuses the add, as before); 3: integer_kernels;
# 4: latency (a measured table, `mixq profile-target`)
TARGET_VERSION = 4

BUILTIN_TARGETS: tuple[str, ...] = ("generic", "int8-int16-npu", "fp16-npu", "ort-cpu")

_KEYS = (
    "version",
    "name",
    "description",
    "notes",
    "default",
    "kinds",
    "cost",
    "fuse_residual_add",
    "integer_kernels",
    "latency",
)


@dataclass(frozen=True)
class TargetProfile:
    """What a deployment target supports, per op kind, and the relative cost of precisions.

    Attributes:
        name: the target's name, as a Config's ``target`` names it.
        description: one line saying what the target is.
        default: support of every kind not in ``kinds``.
        kinds: support per canonical op kind.
        cost: relative cost per precision (int8 = 1.0), for a search's latency estimate;
            it must cover every precision the profile allows.
        notes: caveats a person choosing precisions should know.
        fuse_residual_add: whether a residual add runs fused into the conv / linear before
            it, with no quantizer between them (NPUs); False gives the add quantized inputs
            and a kernel of its own (ONNX Runtime CPU: QLinearConv, then QLinearAdd).
        integer_kernels: op kind → how the runtime runs it in integer (`mixq.targets.kernels`);
            None (NPUs): every kind in integer; else unlisted kinds compute in float.
        latency: measured op times on one machine (`mixq.targets.latency`); with it a plan's
            ``cost().latency`` is a prediction in microseconds, else relative units.

    Example:
        >>> p = TargetProfile("tiny", "int8 only", KindSupport(["int8"], ["int8"]), {},
        ...                   {"int8": 1.0})
        >>> TargetProfile.from_dict(p.to_dict()) == p
        True
        >>> p.support("softmax").activations
        ('int8',)
    """

    name: str
    description: str
    default: KindSupport
    kinds: dict[str, KindSupport]
    cost: dict[str, float]
    notes: tuple[str, ...] = ()
    fuse_residual_add: bool = True
    version: int = TARGET_VERSION
    integer_kernels: dict[str, str] | None = None
    latency: LatencyTable | None = None

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a target profile needs a non-empty name, got {self.name!r}")
        if self.version > TARGET_VERSION:
            raise ConfigError(
                f"target profile {self.name!r} has version {self.version}, newer than this "
                f"mixq understands ({TARGET_VERSION}); upgrade mixq"
            )
        supports = [self.default, *dict(self.kinds).values()]
        if not all(isinstance(s, KindSupport) for s in supports):
            raise ConfigError(
                f"target profile {self.name!r}: default and kinds need KindSupport values; "
                "build a profile from plain data with TargetProfile.from_dict"
            )
        if not isinstance(self.fuse_residual_add, bool):
            raise ConfigError(
                f"target profile {self.name!r} fuse_residual_add must be true or false, got "
                f"{self.fuse_residual_add!r}"
            )
        object.__setattr__(self, "kinds", dict(self.kinds))
        kernels = checked_kernels(self.integer_kernels, self.name)
        object.__setattr__(self, "integer_kernels", kernels)
        object.__setattr__(self, "notes", note_list(self.notes, self.name))
        object.__setattr__(self, "cost", checked_cost(self.cost, self._allowed(), self.name))

    def _allowed(self) -> set[str]:
        found: set[str] = set()
        for s in (self.default, *self.kinds.values()):
            found.update(s.activations, s.weights)
        return found

    def support(self, kind: str) -> KindSupport:
        """The support for op ``kind``: its own entry, else the profile's default."""
        return self.kinds.get(kind, self.default)

    def kernel(self, kind: str) -> str | None:
        """How the target runs ``kind`` in integer (a `mixq.targets.kernels` style), or None
        when it computes ``kind`` in float; every kind is ``qlinear`` without ``integer_kernels``.

        Example:
            >>> [TargetProfile.load("ort-cpu").kernel(k) for k in ("matmul", "gelu")]
            ['to_float', None]
        """
        if self.integer_kernels is None:
            return QLINEAR
        return self.integer_kernels.get(kind)

    def violations(self, op: OpPrecisions) -> list[str]:
        """What in ``op`` this target cannot run, one message per problem ([] if none).

        Example:
            >>> from mixq.plan import OpPlan
            >>> op = OpPlan("encoder.softmax", "softmax", "", ("fp32",), ("fp32",))
            >>> print(TargetProfile.load("int8-int16-npu").violations(op)[0])
            ... # doctest: +NORMALIZE_WHITESPACE
            encoder.softmax (softmax) wants fp32 activation; target 'int8-int16-npu'
            supports int8, int16, fp16 for softmax
        """
        s = self.support(op.kind)
        found = [
            f"{op.name} ({op.kind}) wants {p} activation; target {self.name!r} supports "
            f"{', '.join(s.activations)} for {op.kind}"
            for p in unique(op.input + op.output)
            if p not in s.activations
        ]
        found += [
            f"{op.name} ({op.kind}) wants {p} {role}; target {self.name!r} supports "
            f"{', '.join(s.weights)} for {op.kind} weights"
            for role, p in op.weight.items()
            if p not in s.weights
        ]
        return found + [
            f"{op.name} wants {w} weight with {a} activation; {self._pair_reason(op, a, w)}"
            for a, w in forbidden_pairs(op, s)
        ]

    def _pair_reason(self, op: OpPrecisions, act: str, weight: str) -> str:
        if act == weight:
            return f"target {self.name!r} allows {act} on only one of them"
        return f"target {self.name!r} does not run that pair on {op.kind}"

    def check(self, op: OpPrecisions) -> None:
        """Strict mode: raise if the target cannot run ``op``.

        Example:
            >>> from mixq.plan import OpPlan
            >>> TargetProfile.load("ort-cpu").check(OpPlan("fc", "linear", "fc", ("uint8",),
            ...                                     ("uint8",), {"weight": "int4"}))

        Raises:
            ConflictError: every violation, one per line.
        """
        found = self.violations(op)
        if found:
            raise ConflictError("\n".join(found))

    def repair(self, op: OpT) -> tuple[OpT, list[str]]:
        """Best effort: ``op`` at the closest precisions the target runs, and what changed.

        An unsupported precision moves to the nearest supported one by `QType.rank`: the
        same width first (int8 for uint8), else the next higher, else the next lower. A
        forbidden (activation, weight) pair lowers the weight first, else the activation.
        An op the target already runs comes back unchanged (the same object) with no notes;
        a changed op's ``rule`` gains ``; repaired for target '<name>'``.

        Example:
            >>> from mixq.plan import OpPlan
            >>> op = OpPlan("stem", "conv", "stem", ("fp16",), ("fp16",), {"weight": "int8"})
            >>> fixed, notes = TargetProfile.load("int8-int16-npu").repair(op)
            >>> fixed.output
            ('int16',)
            >>> print(notes[0])  # doctest: +NORMALIZE_WHITESPACE
            stem: activation fp16 -> int16 (next lower): target 'int8-int16-npu' supports
            int8, int16 for conv activations
        """
        s = self.support(op.kind)
        notes: list[str] = []
        acts = {
            p: self._move(op, "activation", p, s.activations, notes)
            for p in unique(op.input + op.output)
        }
        weight = {r: self._move(op, r, p, s.weights, notes) for r, p in op.weight.items()}
        fixed = replaced(
            op,
            input=tuple(acts[p] for p in op.input),
            output=tuple(acts[p] for p in op.output),
            weight=weight,
        )
        fixed = self._repair_pairs(fixed, s, notes)
        if not notes:
            return op, []
        return replaced(fixed, rule=f"{op.rule}; repaired for target {self.name!r}"), notes

    def _move(
        self, op: OpT, role: str, wanted: str, allowed: tuple[str, ...], notes: list[str]
    ) -> str:
        if wanted in allowed:
            return wanted
        choice, how = nearest(wanted, allowed)
        notes.append(
            f"{op.name}: {role} {wanted} -> {choice} ({how}): target {self.name!r} supports "
            f"{', '.join(allowed)} for {op.kind} {role}s"
        )
        return choice

    def _repair_pairs(self, op: OpT, s: KindSupport, notes: list[str]) -> OpT:
        # Each step lowers one precision, so the loop ends.
        while pairs := forbidden_pairs(op, s):
            act, weight = pairs[0]
            step = lower_weight(op, s, weight) or lower_activation(op, s, act)
            if step is None:
                notes.append(
                    f"{op.name}: {weight} weight with {act} activation left as is: "
                    f"{self._pair_reason(op, act, weight)}, and it runs no lower precision "
                    f"of either on {op.kind}"
                )
                return op
            op, change = step
            notes.append(f"{op.name}: {change}: {self._pair_reason(op, act, weight)}")
        return op

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "version": self.version,
                "name": self.name,
                "description": self.description,
                "notes": list(self.notes),
                "default": self.default.to_dict(),
                "kinds": {k: s.to_dict() for k, s in self.kinds.items()},
                "cost": dict(self.cost),
                "fuse_residual_add": self.fuse_residual_add,
            }
            | ({} if (k := self.integer_kernels) is None else {"integer_kernels": dict(k)})
            | ({} if self.latency is None else {"latency": self.latency.to_dict()})
        )

    @classmethod
    def from_dict(cls, data: Any) -> TargetProfile:
        """Build from a mapping shaped like `to_dict`'s output.

        A kind entry may omit ``activations`` or ``weights`` to take the default's.

        Raises:
            ConfigError: an unknown key (the message suggests the closest valid one), a
                missing key, an invalid precision name or cost.
        """
        name = data.get("name", "?") if isinstance(data, Mapping) else "?"
        where = f"target profile {name!r}"
        data = check_keys(data, _KEYS, where)
        missing = [k for k in ("name", "default", "cost") if k not in data]
        if missing:
            raise ConfigError(f"{where} needs {', '.join(repr(k) for k in missing)}")
        default = KindSupport.from_dict(data["default"], f"{where} default")
        kinds = data.get("kinds") or {}
        if not isinstance(kinds, Mapping):
            raise ConfigError(f"{where} kinds must map op kinds to support, got {kinds!r}")
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            default=default,
            kinds={
                str(k): KindSupport.from_dict(v, f"{where} kinds[{k!r}]", default)
                for k, v in kinds.items()
            },
            cost=data["cost"],
            notes=data.get("notes") or (),
            fuse_residual_add=data.get("fuse_residual_add", True),
            integer_kernels=data.get("integer_kernels"),
            latency=_latency(data.get("latency"), where),
            version=version_number(data.get("version", TARGET_VERSION), where),
        )

    @classmethod
    def load(cls, name_or_path: str | Path) -> TargetProfile:
        """A built-in profile by name, or a profile from a YAML file.

        Example:
            >>> TargetProfile.load("ort-cpu").support("linear").weights[:2]
            ('int4', 'uint4')

        Raises:
            ConfigError: an unknown name (the message lists the built-ins), a missing or
                invalid file.
        """
        if isinstance(name_or_path, str) and name_or_path in BUILTIN_TARGETS:
            text = (
                resources.files("mixq.targets").joinpath(f"{name_or_path}.yaml").read_text("utf-8")
            )
            return cls.from_dict(yaml.safe_load(text))
        if looks_like_path(name_or_path):
            return cls.from_dict(read_yaml(name_or_path, "target profile file", mapping=False))
        raise ConfigError(_unknown_target(str(name_or_path)))

    def save(self, path: str | Path) -> Path:
        """Write the profile as YAML that `load` reads back to an equal profile.

        Example:
            >>> import pathlib, tempfile
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     path = TargetProfile.load("fp16-npu").save(pathlib.Path(folder) / "mine.yaml")
            ...     TargetProfile.load(path) == TargetProfile.load("fp16-npu")
            True
        """
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        path.write_text(text, encoding="utf-8")
        return path


def _unknown_target(name: str) -> str:
    close = difflib.get_close_matches(name, BUILTIN_TARGETS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown target {name!r}{hint} Built-in targets are {', '.join(BUILTIN_TARGETS)}; "
        f"or give the path of a YAML profile (TargetProfile.save writes one)"
    )


def _latency(data: Any, where: str) -> LatencyTable | None:
    return None if data is None else LatencyTable.from_dict(data, f"{where} latency")
