"""Qualcomm Cloud AI 100 (qaic) files: node-precision-info YAML and the Glow PGQ profile.

``qaic-npi`` (``-node-precision-info``): ``FP16NodeInstanceNames`` lists the nodes, by their
first output tensor, that run in fp16; ``FP32NodeInstanceNames`` (accepted by QAIRT's tools,
not documented for qaic-exec) those in fp32. Integer ops are left to qaic's quantization
flags, so only float ops are listed; bf16 has no qaic spelling and raises ValueError.

``qaic-profile`` (``-load-profile``): Glow's three YAML documents, ``GlowToolsVersion``,
``GraphPreLowerHash`` and the list of ``{NodeOutputName, Min, Max, Histogram}``. It holds
ranges only (qaic derives scales from its schema flags): one entry per integer activation
point, a conversion point under its point name (``t@int8``). Weights and float points are
not profiled. The hash is mixq's (SHA-256 of the graph's tensor names), not Glow's, so
qaic must load it with its hash check off; `read_profile` checks it against a graph.

Example:
    >>> from mixq.plan.encodings import Encoding, Encodings
    >>> enc = Encodings({"fc": Encoding("fc", "fc", "activation", "int8", scale=[0.1],
    ...                                 zero_point=[0], min=-1.5, max=2.25)})
    >>> text = format_profile(enc, {"fc": [0.0, 3.0, 1.0]})
    >>> parse_profile(text)
    {'fc': (-1.5, 2.25, [0.0, 3.0, 1.0])}
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mixq.core.errors import ConfigError
from mixq.export.formats.common import is_float, op_precision
from mixq.export.formats.registry import VendorData, atomic_write, register_format
from mixq.graph.ir import Graph
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan

__all__ = [
    "QaicNpi",
    "QaicProfile",
    "format_profile",
    "graph_hash",
    "parse_profile",
    "read_profile",
    "write_profile",
]

_NPI_KEYS = {"fp16": "FP16NodeInstanceNames", "fp32": "FP32NodeInstanceNames"}
Profile = dict[str, tuple[float, float, list[float]]]


def _safe_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


@register_format("qaic-npi")
class QaicNpi:
    """qaic -node-precision-info YAML: fp16 / fp32 nodes by first output tensor name."""

    suffix = ".yaml"
    needs = ("plan", "graph")

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert plan is not None and graph is not None
        names: dict[str, list[str]] = {"fp16": [], "fp32": []}
        for op in graph:
            precision = op_precision(plan.ops[op.name]) if op.name in plan.ops else None
            if precision is None or not op.outputs or not is_float(precision):
                continue
            if precision not in names:
                raise ValueError(
                    f"op {op.name!r} runs in {precision}; qaic node-precision-info lists only "
                    "fp16 and fp32 nodes"
                )
            names[precision].append(op.outputs[0])
        data = {_NPI_KEYS["fp16"]: names["fp16"]}
        if names["fp32"]:
            data[_NPI_KEYS["fp32"]] = names["fp32"]
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    def load(self, text: str) -> VendorData:
        data = yaml.safe_load(text) or {}
        keys = sorted(data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or set(data) - set(_NPI_KEYS.values()):
            raise ConfigError(
                "a qaic node-precision-info file is a mapping with FP16NodeInstanceNames "
                f"and / or FP32NodeInstanceNames; got {keys!r}"
            )
        out = VendorData()
        for precision, key in _NPI_KEYS.items():
            for name in data.get(key) or []:
                out.precisions[f"tensor:{name}"] = precision
        if data.get(_NPI_KEYS["fp32"]):
            out.notes.append("qaic-exec documents only FP16NodeInstanceNames; FP32 is QAIRT's")
        return out

    def sniff(self, text: str) -> bool:
        data = _safe_yaml(text)
        return isinstance(data, dict) and bool(set(data) & set(_NPI_KEYS.values()))


def graph_hash(names: Iterable[str]) -> int:
    """A stable 64-bit hash of tensor names, in order.

    Example:
        >>> hex(graph_hash(["x", "fc"])) == hex(graph_hash(["x", "fc"]))
        True
    """
    digest = hashlib.sha256("\n".join(names).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _names_for_hash(graph: Graph | None, entries: Iterable[str]) -> list[str]:
    return list(graph.tensors) if graph is not None else sorted(entries)


def format_profile(
    encodings: Encodings,
    histograms: dict[str, list[float]] | None = None,
    graph: Graph | None = None,
) -> str:
    """The profile text: one entry per integer activation point (see the module doc).

    Raises:
        ValueError: a point has no calibrated min / max, or a histogram names no point.
    """
    histograms = dict(histograms or {})
    entries: list[dict[str, object]] = []
    names: list[str] = []
    for e in encodings:
        if e.kind != "activation" or e.is_float:
            continue
        if e.min is None or e.max is None:
            raise ValueError(
                f"quantization point {e.name!r} has no calibrated min / max for the profile; "
                "calibrate the sim first"
            )
        hist = [float(v) for v in histograms.pop(e.name, [])]
        entries.append({"NodeOutputName": e.name, "Min": e.min, "Max": e.max, "Histogram": hist})
        names.append(e.name)
    if histograms:
        raise ValueError(f"histograms given for {sorted(histograms)}, which have no entry")
    digest = graph_hash(_names_for_hash(graph, names))
    body = yaml.safe_dump(entries, sort_keys=False, default_flow_style=None, width=100)
    return f"---\nGlowToolsVersion: ''\n---\nGraphPreLowerHash: 0x{digest:016x}\n---\n{body}"


def write_profile(
    path: str | Path,
    encodings: Encodings,
    histograms: dict[str, list[float]] | None = None,
    graph: Graph | None = None,
) -> Path:
    """Write the Glow PGQ profile of ``encodings`` (atomically); see `format_profile`."""
    return atomic_write(path, format_profile(encodings, histograms, graph))


def parse_profile(text: str, graph: Graph | None = None) -> Profile:
    """tensor (or point) -> (min, max, histogram); with ``graph``, checks the hash."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"not a Glow profile (YAML error: {e})") from e
    if len(docs) != 3 or not isinstance(docs[2] or [], list):
        raise ConfigError(
            "a Glow profile is three YAML documents: GlowToolsVersion, GraphPreLowerHash "
            f"and the list of node ranges; got {len(docs)} document(s)"
        )
    profile: Profile = {}
    for d in docs[2] or []:
        profile[str(d["NodeOutputName"])] = (
            float(d["Min"]),
            float(d["Max"]),
            [float(v) for v in d.get("Histogram") or []],
        )
    if graph is not None:
        expected = graph_hash(_names_for_hash(graph, profile))
        found = (docs[1] or {}).get("GraphPreLowerHash")
        if found != expected:
            raise ConfigError(
                f"the profile's GraphPreLowerHash {found!r} is not this graph's "
                f"(0x{expected:016x}): it was made for another model"
            )
    return profile


def read_profile(path: str | Path, graph: Graph | None = None) -> Profile:
    """Read a profile written by `write_profile` (or Glow); see `parse_profile`."""
    return parse_profile(Path(path).read_text(), graph)


@register_format("qaic-profile")
class QaicProfile:
    """Glow / qaic PGQ profile YAML: min, max and histogram per activation tensor."""

    suffix = ".yaml"
    needs = ("encodings",)
    uses = ("encodings", "graph")  # the graph gives the hash

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert encodings is not None
        return format_profile(encodings, None, graph)

    def load(self, text: str) -> VendorData:
        ranges = {name: (lo, hi) for name, (lo, hi, _) in parse_profile(text).items()}
        note = "a profile holds ranges only; qaic derives scales from its quantization flags"
        return VendorData(ranges=ranges, notes=[note])

    def sniff(self, text: str) -> bool:
        return "GlowToolsVersion" in text[:200] and "GraphPreLowerHash" in text[:400]
