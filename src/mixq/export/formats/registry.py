"""The vendor-format registry: what a vendor file holds, and how formats plug in.

A format is a small class with ``dump(plan, encodings, graph) -> str`` and
``load(text) -> VendorData``; `register_format` records it in `FORMATS` under the name users
type. Files are written atomically: the text is built first, then written to a temporary
file beside the target and renamed over it, so a failed export leaves no partial file.
"""

from __future__ import annotations

import copy
import difflib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.graph.ir import Graph
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan
from mixq.rules.config import Config

__all__ = ["FORMATS", "Format", "VendorData", "atomic_write", "get_format", "register_format"]


@dataclass
class VendorData:
    """What a vendor file holds, vendor-neutral.

    Attributes:
        precisions: mixq request target -> precision it must run in. A target is an op name,
            ``tensor:<first output>`` (qaic names nodes by output) or ``kind:<kind>``.
        encodings: scales / zero points, for the formats that carry them.
        ranges: tensor (or conversion point) -> calibrated (min, max), from a profile.
        notes: what the file could not say and how it was read.

    Example:
        >>> data = VendorData({"tensor:fc": "fp16", "kind:softmax": "fp32"})
        >>> [(r.target, r.activation, r.weight) for r in data.to_config().rules]
        [('tensor:fc', 'fp16', 'fp16'), ('kind:softmax', 'fp32', 'fp32')]
    """

    precisions: dict[str, str] = field(default_factory=dict)
    encodings: Encodings | None = None
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_config(self, base: Config | None = None) -> Config:
        """``base`` (default: all int8) plus one request per precision, in file order.

        A float precision sets the op's activations and weights (the op runs in float); an
        integer precision sets its activations only, so weights keep the base's choice.
        Ranges of tensors become fixed ranges; those of conversion points (``t@int8``) have
        no tensor of their own and are left out.
        """
        config = copy.copy(base) if base is not None else Config()
        config.rules = list(config.rules)
        config.fixed_ranges = dict(config.fixed_ranges)
        for target, precision in self.precisions.items():
            weight = precision if qtype(precision).is_floating_point else None
            config.set_precision(target, activation=precision, weight=weight)
        for tensor, (lo, hi) in self.ranges.items():
            if "@" not in tensor:
                config.set_range(tensor, lo, hi)
        return config


class _FormatClass(Protocol):
    suffix: str
    needs: tuple[str, ...]

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str: ...

    def load(self, text: str) -> VendorData: ...


@dataclass(frozen=True)
class Format:
    """One registered vendor format.

    Attributes:
        name: what users type (``aimet-1.0.0``, ``qaic-npi``...).
        suffix: the usual file suffix.
        description: one line, from the format class's docstring.
        needs: which of ``plan``, ``graph``, ``encodings`` writing always takes.
        uses: which of them writing reads when given (``needs`` and the optional ones).
        dump / load: text <-> data; `write` and `read` add the file handling.
        sniff: True if a text looks like this format (None: never guessed from content).
    """

    name: str
    suffix: str
    description: str
    needs: tuple[str, ...]
    dump: Callable[[Plan | None, Encodings | None, Graph | None], str]
    load: Callable[[str], VendorData]
    sniff: Callable[[str], bool] | None = None
    uses: tuple[str, ...] = ()

    def write(
        self,
        path: str | Path,
        plan: Plan | None = None,
        encodings: Encodings | None = None,
        graph: Graph | None = None,
    ) -> Path:
        """Write ``path`` atomically; raises ValueError if an input it needs is missing."""
        given = {"plan": plan, "graph": graph, "encodings": encodings}
        missing = [n for n in self.needs if given[n] is None]
        if missing:
            raise ValueError(
                f"writing {self.name} needs {' and '.join(missing)}; pass them (a calibrated "
                "sim has sim.plan, sim.graph and sim.encodings())"
            )
        writes_scales = encodings is not None and "encodings" in (*self.needs, *self.uses)
        dynamic = [e.name for e in encodings or [] if qtype(e.precision).dynamic]
        if writes_scales and dynamic:
            raise ConfigError(
                f"{self.name} holds a fixed scale per quantizer, and {dynamic[:3]} "
                f"({len(dynamic)} in all) are dynamic (their scale is chosen on every call): "
                "export them with sim.export_onnx, or give them a static precision (uint8)"
            )
        return atomic_write(path, self.dump(plan, encodings, graph))

    def read(self, path: str | Path) -> VendorData:
        return self.load(Path(path).read_text())


FORMATS: dict[str, Format] = {}

T = TypeVar("T")


def register_format(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a format under ``name`` (its docstring's first line
    describes it).

    The class has ``suffix``, ``needs`` (of ``plan``, ``graph``, ``encodings``),
    ``dump(plan, encodings, graph) -> str``, ``load(text) -> VendorData`` and optionally
    ``sniff(text) -> bool`` and ``uses`` (inputs read when given; default ``needs``).

    Example:
        >>> @register_format("fp32-op-list")
        ... class Fp32OpList:
        ...     '''Names of the ops whose output is fp32, one per line.'''
        ...     suffix = ".txt"
        ...     needs = ("plan",)
        ...     def dump(self, plan, encodings, graph):
        ...         return "".join(f"{op.name}\\n" for op in plan if op.output[:1] == ("fp32",))
        ...     def load(self, text):
        ...         return VendorData({name: "fp32" for name in text.split()})
        >>> FORMATS["fp32-op-list"].description
        'Names of the ops whose output is fp32, one per line.'
        >>> del FORMATS["fp32-op-list"]
    """

    def decorate(cls: type[T]) -> type[T]:
        if name in FORMATS:
            raise ValueError(f"format {name!r} is already registered")
        obj: Any = cls()
        impl: _FormatClass = obj
        doc = (cls.__doc__ or name).strip().splitlines()[0]
        sniff = getattr(obj, "sniff", None)
        uses = tuple(getattr(obj, "uses", impl.needs))
        FORMATS[name] = Format(
            name, impl.suffix, doc, impl.needs, impl.dump, impl.load, sniff, uses
        )
        return cls

    return decorate


def get_format(name: str) -> Format:
    """The format called ``name``; an unknown name raises ValueError listing the formats."""
    if name in FORMATS:
        return FORMATS[name]
    close = difflib.get_close_matches(name, list(FORMATS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown format {name!r}{hint}; formats: {', '.join(sorted(FORMATS))}")


def atomic_write(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    The file gets the mode a plain ``open`` would give it (0644 under the usual umask), not
    the temporary file's private 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _open_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _open_mode() -> int:
    """0666 less the process umask: what ``open(path, "w")`` creates a file with."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask
