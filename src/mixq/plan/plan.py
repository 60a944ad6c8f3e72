"""The resolved precision of every op, and how each decision was reached.

A Plan is what `mixq plan` prints and what the Sim is built from. It saves as YAML with a
version and reloads to an equal Plan.

Example:
    >>> p = Plan(ops={"fc": OpPlan("fc", "linear", "fc", ("int8",), ("int16",),
    ...                            {"weight": "int8"}, "ops['fc']")})
    >>> p["fc"].output
    ('int16',)
    >>> Plan.from_dict(p.to_dict()) == p
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mixq.core.errors import ConfigError
from mixq.core.records import Record
from mixq.core.table import Table
from mixq.core.validation import check_keys, read_yaml
from mixq.plan.cost import plan_cost
from mixq.plan.types import Precision, Scheme

__all__ = ["PLAN_VERSION", "OpPlan", "Plan"]

PLAN_VERSION = 1


@dataclass(frozen=True, eq=True)
class OpPlan(Record):
    """Precision of one op: per float input, per float output, per weight role.

    ``rule`` says how it was decided: ``default``, the request that named it, or
    ``inherits <tensor>`` for data-movement ops and ``group <anchor>`` for fused members.
    """

    name: str
    kind: str
    module: str
    input: tuple[str, ...]
    output: tuple[str, ...]
    weight: dict[str, str] = field(default_factory=dict)
    rule: str = "default"

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> OpPlan:
        where = where or f"plan op {data.get('name', '?')!r}"
        return super().from_dict({"module": "", "input": (), "output": (), **data}, where)


@dataclass
class Plan:
    ops: dict[str, OpPlan] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # model input tensor -> precision
    fixed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    default: Precision = field(default_factory=lambda: Precision("int8", "int8"))
    scheme: Scheme = field(default_factory=Scheme)
    target: str = "generic"
    version: int = PLAN_VERSION
    # transforms applied before the Sim was built, in order: {"name": ..., **resolved options}
    # (see mixq.transforms); a reload with this plan applies them again
    transforms: list[dict[str, Any]] = field(default_factory=list)

    def bind_stats(self, graph: Any, stats: Callable[[], dict[str, Any]]) -> None:
        """Let `cost` measure this plan: the Sim built from it gives its graph and a way to
        get op statistics (shapes are measured on the first call). Not saved."""
        self._cost_source = (graph, stats)

    def __getstate__(self) -> dict[str, Any]:
        """A pickled (or copied) plan is the plan alone: the Sim bound by `bind_stats`
        stays behind (it may not pickle, and sending it to a worker would send the model)."""
        return {k: v for k, v in self.__dict__.items() if k != "_cost_source"}

    def cost(self, target: str | None = None) -> Any:
        """MACs, BOPs, weight / activation bytes, conversions, latency and effective bits
        (a `mixq.plan.cost.PlanCost`), on the example inputs of the Sim built from it.

        Example: ``mixq.quantize(model, x, "int8").plan.cost().bops``.
        """
        source = getattr(self, "_cost_source", None)
        if source is None:
            raise ConfigError(
                "this plan has no model to measure: call cost() on sim.plan, or use "
                "mixq.plan.cost.plan_cost(graph, plan, sim.op_stats())"
            )
        graph, stats = source
        return plan_cost(graph, self, stats(), target)

    def __getitem__(self, name: str) -> OpPlan:
        try:
            return self.ops[name]
        except KeyError:
            raise KeyError(f"no op named {name!r} in the plan") from None

    def __iter__(self) -> Iterator[OpPlan]:
        return iter(self.ops.values())

    def __len__(self) -> int:
        return len(self.ops)

    def table(self) -> Table:
        """One row per op: name, kind, module, input, output, weight, rule."""
        rows = [
            {
                "name": o.name,
                "kind": o.kind,
                "module": o.module,
                "input": list(o.input),
                "output": list(o.output),
                "weight": dict(o.weight),
                "rule": o.rule,
            }
            for o in self.ops.values()
        ]
        return Table(
            rows,
            title="plan",
            columns=["name", "kind", "module", "input", "output", "weight", "rule"],
        )

    def precision_counts(self) -> dict[str, int]:
        """How many op outputs run at each precision (a quick summary)."""
        counts: dict[str, int] = {}
        for op in self.ops.values():
            for p in op.output:
                counts[p] = counts.get(p, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "mixq_plan": self.version,
            "target": self.target,
            "default": asdict(self.default),
            "scheme": self.scheme.to_dict(),
            "inputs": dict(self.inputs),
            "fixed_ranges": {k: list(v) for k, v in self.fixed_ranges.items()},
            "ops": [o.to_dict() for o in self.ops.values()],
            **({"transforms": [dict(t) for t in self.transforms]} if self.transforms else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if "mixq_plan" not in data:
            raise ConfigError(
                "not a mixq plan (no 'mixq_plan' version key); a config file "
                "is loaded with mixq.Config.load"
            )
        version = int(data["mixq_plan"])
        if version > PLAN_VERSION:
            raise ConfigError(
                f"plan version {version} is newer than this mixq understands "
                f"({PLAN_VERSION}); upgrade mixq"
            )
        keys = {"mixq_plan", "target", "default", "scheme", "inputs", "fixed_ranges", "ops"}
        keys.add("transforms")  # written only when the plan has transforms
        check_keys(data, keys, "plan")
        ops = [OpPlan.from_dict(o) for o in data.get("ops") or []]
        return cls(
            ops={o.name: o for o in ops},
            default=Precision.parse(data.get("default", "int8"), "default"),
            scheme=Scheme.from_dict(data.get("scheme")),
            inputs=dict(data.get("inputs") or {}),
            fixed_ranges={
                k: (float(v[0]), float(v[1])) for k, v in (data.get("fixed_ranges") or {}).items()
            },
            target=str(data.get("target", "generic")),
            version=version,
            transforms=[dict(t) for t in data.get("transforms") or []],
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, width=100))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_yaml(path))

    @staticmethod
    def is_plan_file(path: str | Path) -> bool:
        """True if the YAML file at ``path`` is a saved Plan rather than a Config."""
        return "mixq_plan" in read_yaml(path)
