"""What the user asks for: a default, a setter chain, ordered requests, fixed ranges, a scheme.

A `Config` is data: it round-trips through `to_dict` / `from_dict` (and YAML), carries a
``version`` and rejects unknown keys (suggesting the closest valid one).
`mixq.rules.resolve` turns it into a `Plan`; the order of precedence is documented there.

Example:
    >>> cfg = Config(default="int8", target="generic")
    >>> _ = cfg.set_precision("encoder.layer.0", activation="int16")
    >>> _ = cfg.set_model_output_precision(["fp32"])
    >>> _ = cfg.precision_mode("allow_mix_precision_fp16", block=["softmax"])
    >>> Config.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mixq.core.errors import ConfigError
from mixq.core.validation import check_keys, read_yaml
from mixq.plan.types import Granularity, Precision, PrecisionLike, Scheme
from mixq.rules.atc_files import (
    kind_of_op_type,
    op_type_of_kind,
    parse_keep_dtype,
    parse_modify_mixlist,
)
from mixq.rules.requests import ModelIORequest, PrecisionModeRequest, Request, Rule, rule_from_dict
from mixq.rules.setters import Setter, setter_from_dict

__all__ = [
    "CONFIG_VERSION",
    "GLOW_KINDS",
    "Config",
    "Granularity",
    "Precision",
    "PrecisionLike",
    "Request",
    "Scheme",
]

CONFIG_VERSION = 1

# Glow / qaic node kinds (``-keep-original-precision-for-nodes``) -> mixq kinds.
GLOW_KINDS = {
    "SoftMax": "softmax",
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Gelu": "gelu",
    "Convolution": "conv",
    "ConvTranspose": "conv_transpose",
    "FullyConnected": "linear",
    "MatMul": "matmul",
    "BatchMatMul": "matmul",
    "LayerNormalization": "layer_norm",
    "BatchNormalization": "batch_norm",
    "Transpose": "transpose",
    "Reshape": "reshape",
    "Concat": "cat",
    "MaxPool": "max_pool",
    "AvgPool": "avg_pool",
    "Exp": "exp",
    "Log": "log",
    "Pow": "pow",
    "Gather": "embedding",
}
_KEYS = {
    "version",
    "target",
    "default",
    "setters",
    "rules",
    "ops",
    "fixed_ranges",
    "scheme",
    "transforms",
}


def _check_transforms(transforms: Any) -> list[str | dict[str, Any]]:
    """A list of names or dicts with a 'name' (the names are checked when they run)."""
    if transforms is None:
        return []
    if isinstance(transforms, (str, dict)) or not isinstance(transforms, (list, tuple)):
        transforms = [transforms]
    for t in transforms:
        if not (isinstance(t, str) or (isinstance(t, dict) and "name" in t)):
            raise ConfigError(
                f"a transform is a name or a dict with a 'name' key and options, got {t!r}"
            )
    return [t if isinstance(t, str) else dict(t) for t in transforms]


@dataclass(init=False)
class Config:
    """A default precision plus requests; resolved into a Plan by `mixq.quantize`.

    Args:
        default: precision of every op nothing else decides: ``"int8"``, a pair
            ``("int8", "int4")`` (activation, weight) or a dict.
        rules: requests, applied in order (later wins).
        setters: a Horizon-style chain, first match wins, applied before the rules.
        fixed_ranges: tensor name -> (lo, hi) that calibration must not change.
        scheme: how quantizers are parametrised.
        target: deployment target profile (a built-in name or a YAML path).
        transforms: quantization-friendly transforms applied before calibration, in order:
            names (``"smooth"``) or dicts with a ``name`` and options (see `mixq.transforms`).
    """

    default: Precision
    rules: list[Rule]
    setters: list[Setter]
    fixed_ranges: dict[str, tuple[float, float]]
    scheme: Scheme
    target: str
    version: int
    transforms: list[str | dict[str, Any]]

    def __init__(
        self,
        default: PrecisionLike = "int8",
        rules: list[Rule] | None = None,
        setters: list[Setter] | None = None,
        fixed_ranges: dict[str, tuple[float, float]] | None = None,
        scheme: Scheme | None = None,
        target: str = "generic",
        version: int = CONFIG_VERSION,
        transforms: list[str | dict[str, Any]] | None = None,
    ) -> None:
        self.default = Precision.parse(default, "default")
        self.rules = list(rules or [])
        self.setters = list(setters or [])
        self.fixed_ranges = {k: (float(v[0]), float(v[1])) for k, v in (fixed_ranges or {}).items()}
        self.scheme = scheme or Scheme()
        self.target = str(target)
        self.version = version
        self.transforms = _check_transforms(transforms)
        self._modules: dict[str, Any] = {}
        if self.default.activation is None or self.default.weight is None:
            raise ConfigError(
                "the default precision needs both an activation and a weight "
                f"precision, got {self.default}"
            )

    # -- requests (AIMET's manual mixed precision) ---------------------------------
    def set_precision(
        self, target: Any, activation: str | None = None, weight: str | dict[str, str] | None = None
    ) -> Config:
        """Request a precision for ``target``; later requests win.

        ``target``: an op name, a module path (its whole sub-tree), a module object, a
        module class, an op kind (``"softmax"`` or ``"kind:softmax"``), a glob, ``re:...``
        or ``tensor:<first output name>``. ``weight`` may map a weight role to a precision.
        """
        params = dict(weight) if isinstance(weight, dict) else None
        flat = None if isinstance(weight, dict) else weight
        self.rules.append(Request(self._target(target), activation, flat, params))
        return self

    def _target(self, target: Any) -> str:
        if isinstance(target, str):
            return target
        if isinstance(target, type):
            return f"class:{target.__module__}.{target.__qualname__}"
        if hasattr(target, "named_modules"):  # a module object: bound to its path later
            key = f"module-object:{id(target)}"
            self._modules[key] = target
            return key
        raise ConfigError(
            f"cannot use {target!r} as a target: give an op name, module path, "
            "module, module class, op kind, glob or 're:' regex"
        )

    def set_model_input_precision(self, precisions: list[str | None]) -> Config:
        """Precision of each model input by position; None leaves that input alone."""
        self.rules.append(ModelIORequest("input", tuple(precisions)))
        return self

    def set_model_output_precision(self, precisions: list[str | None]) -> Config:
        """Precision of each model output by position; None leaves that output alone."""
        self.rules.append(ModelIORequest("output", tuple(precisions)))
        return self

    # -- vendor policies ----------------------------------------------------------------
    def precision_mode(
        self,
        mode: str,
        trust: list[str] | None = None,
        block: list[str] | None = None,
        gray: list[str] | None = None,
        keep_dtype: list[str] | None = None,
        modify_mixlist: dict[str, dict[str, list[str]]] | None = None,
    ) -> Config:
        """An Ascend ATC precision mode over the whole model (see `mixq.rules.ascend`)."""
        self.rules.append(
            PrecisionModeRequest(
                mode,
                tuple(trust or ()),
                tuple(block or ()),
                tuple(gray or ()),
                tuple(keep_dtype or ()),
                modify_mixlist,
            )
        )
        return self

    def keep_dtype(self, entries: list[str]) -> Config:
        """Ascend keep_dtype: op names and ``OpType::Kind`` lines stay fp32."""
        for entry in entries:
            target = (
                f"kind:{kind_of_op_type(entry[len('OpType::') :])}"
                if entry.startswith("OpType::")
                else entry
            )
            self.rules.append(Request(target, "fp32", "fp32"))
        return self

    def load_keep_dtype(self, path: str | Path) -> Config:
        """Read an ATC ``--keep_dtype`` file (op names and ``OpType::`` lines)."""
        names, kinds = parse_keep_dtype(Path(path).read_text())
        return self.keep_dtype(names + [f"OpType::{op_type_of_kind(k)}" for k in kinds])

    def precision_mode_from_files(
        self,
        mode: str,
        keep_dtype: str | Path | None = None,
        modify_mixlist: str | Path | None = None,
    ) -> Config:
        """`precision_mode` with ATC's ``--keep_dtype`` and ``--modify_mixlist`` files."""
        entries: list[str] = []
        if keep_dtype is not None:
            names, kinds = parse_keep_dtype(Path(keep_dtype).read_text())
            entries = names + [f"OpType::{op_type_of_kind(k)}" for k in kinds]
        edits = None
        if modify_mixlist is not None:
            edits = parse_modify_mixlist(Path(modify_mixlist).read_text())
        return self.precision_mode(mode, keep_dtype=entries, modify_mixlist=edits)

    def qaic_node_precision(
        self, fp16: list[str] | None = None, fp32: list[str] | None = None
    ) -> Config:
        """qaic's node-precision-info: ops named by their first output run in fp16 / fp32."""
        for names, p in ((fp16 or [], "fp16"), (fp32 or [], "fp32")):
            self.rules += [Request(f"tensor:{n}", p, p) for n in names]
        return self

    def load_qaic_npi(self, path: str | Path) -> Config:
        """Read a qaic ``-node-precision-info`` YAML (FP16NodeInstanceNames, FP32...)."""
        data = read_yaml(path)
        check_keys(data, {"FP16NodeInstanceNames", "FP32NodeInstanceNames"}, str(path))
        return self.qaic_node_precision(
            list(data.get("FP16NodeInstanceNames") or []),
            list(data.get("FP32NodeInstanceNames") or []),
        )

    def keep_original_precision(self, kinds: list[str], precision: str = "fp32") -> Config:
        """qaic ``-keep-original-precision-for-nodes`` (Glow kinds such as SoftMax, Add)."""
        for kind in kinds:
            self.rules.append(
                Request(f"kind:{GLOW_KINDS.get(kind, kind.lower())}", precision, precision)
            )
        return self

    def execute_in_fp16(self, kinds: list[str]) -> Config:
        """qaic ``-execute-nodes-in-fp16``: every op of these Glow kinds runs in fp16."""
        return self.keep_original_precision(kinds, "fp16")

    # -- fixed ranges -------------------------------------------------------------------
    def set_range(self, tensor: str, lo: float, hi: float) -> Config:
        """Fix a tensor's range (e.g. an input known to lie in [0, 200])."""
        if not lo <= hi:
            raise ConfigError(f"fixed range of {tensor!r} needs lo <= hi, got [{lo}, {hi}]")
        self.fixed_ranges[tensor] = (float(lo), float(hi))
        return self

    def set_threshold(self, tensor: str, threshold: float) -> Config:
        """Horizon's fixed scale: the symmetric range [-threshold, threshold]."""
        return self.set_range(tensor, -abs(threshold), abs(threshold))

    # -- binding and serialisation ---------------------------------------------------------
    def bind(self, model: Any) -> Config:
        """A copy whose module-object targets are replaced by their paths in ``model``."""
        if not self._modules:
            return self
        paths = {id(m): name for name, m in model.named_modules()}
        rules: list[Rule] = []
        for r in self.rules:
            if isinstance(r, Request) and r.target in self._modules:
                module = self._modules[r.target]
                if id(module) not in paths:
                    raise ConfigError(
                        f"a set_precision target ({type(module).__name__} object) "
                        "is not a module of the model being quantized"
                    )
                r = Request(paths[id(module)], r.activation, r.weight, r.params)
            rules.append(r)
        return Config(
            self.default,
            rules,
            self.setters,
            self.fixed_ranges,
            self.scheme,
            self.target,
            self.version,
            self.transforms,
        )

    def to_dict(self) -> dict[str, Any]:
        if self._modules:
            raise ConfigError(
                "this config names module objects; bind it to its model first "
                "(cfg.bind(model)) to save it with module paths"
            )
        d: dict[str, Any] = {
            "version": self.version,
            "target": self.target,
            "default": {"activation": self.default.activation, "weight": self.default.weight},
        }
        if self.setters:
            d["setters"] = [s.to_dict() for s in self.setters]
        d["rules"] = [r.to_dict() for r in self.rules]
        if self.fixed_ranges:
            d["fixed_ranges"] = {k: list(v) for k, v in self.fixed_ranges.items()}
        d["scheme"] = self.scheme.to_dict()
        if self.transforms:
            d["transforms"] = [t if isinstance(t, str) else dict(t) for t in self.transforms]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a dict; ``ops: {name: precision}`` is shorthand for rules on op names."""
        check_keys(data, _KEYS, "config")
        version = int(data.get("version", CONFIG_VERSION))
        if version > CONFIG_VERSION:
            raise ConfigError(
                f"config version {version} is newer than this mixq understands "
                f"({CONFIG_VERSION}); upgrade mixq"
            )
        rules = [rule_from_dict(r) for r in data.get("rules") or []]
        for name, value in (data.get("ops") or {}).items():
            p = Precision.parse(value, f"ops[{name!r}]")
            rules.append(Request(name, p.activation, p.weight))
        return cls(
            default=Precision.parse(data.get("default", "int8"), "default"),
            rules=rules,
            setters=[setter_from_dict(s) for s in data.get("setters") or []],
            fixed_ranges=data.get("fixed_ranges"),
            scheme=Scheme.from_dict(data.get("scheme")),
            target=str(data.get("target", "generic")),
            version=version,
            transforms=data.get("transforms"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(read_yaml(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @classmethod
    def coerce(cls, value: Config | dict[str, Any] | tuple[str, str] | str | Path | None) -> Config:
        """A Config from a Config, a dict, a precision name or pair, or a YAML path."""
        if value is None:
            return cls()
        if isinstance(value, Config):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, (tuple, list)):
            return cls(default=(value[0], value[1]))
        if isinstance(value, Path) or str(value).endswith((".yaml", ".yml")):
            return cls.load(value)
        return cls(default=str(value))
