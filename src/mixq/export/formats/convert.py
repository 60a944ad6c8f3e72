"""Vendor file formats: each an adapter between one vendor file and a Plan or Encodings.

Adapters never touch models. Every write carries each quantization point the file can
express and raises ValueError naming the first one it cannot; files are written atomically.

    name                      file                                          carries
    aimet-0.6.1, aimet-1.0.0  QNN --quantization_overrides JSON             Encodings
    qaic-npi                  qaic -node-precision-info YAML                fp16 / fp32 ops
    qaic-profile              Glow PGQ profile YAML                         ranges
    ascend-keep-dtype         ATC --keep_dtype list                         fp32 ops
    ascend-mixlist            ATC --modify_mixlist JSON                     float kinds
    ascend-customize-dtypes   ATC --customize_dtypes lines                  every op's dtypes
    ort-overrides             ORT quantize_static arguments JSON            Encodings, nodes

Example:
    >>> from mixq.plan import OpPlan, Plan
    >>> from mixq.graph.ir import Graph, Op
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("fc", "linear", "fc", inputs=["x"], outputs=["fc"]))
    >>> plan = Plan(ops={"fc": OpPlan("fc", "linear", "fc", ("fp16",), ("fp16",))})
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "npi.yaml"
    >>> _ = write_format(path, "qaic-npi", plan, None, g)
    >>> read_format(path).precisions
    {'tensor:fc': 'fp16'}
"""

from __future__ import annotations

from pathlib import Path

from mixq.export.formats.registry import FORMATS, VendorData, get_format
from mixq.graph.ir import Graph
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan
from mixq.rules.config import Config
from mixq.rules.resolve import resolve

__all__ = ["convert", "guess_format", "read_format", "write_format"]


def write_format(
    path: str | Path,
    fmt: str,
    plan: Plan | None = None,
    encodings: Encodings | None = None,
    graph: Graph | None = None,
) -> Path:
    """Write ``path`` in format ``fmt`` (a name from `FORMATS`), atomically.

    Raises:
        ValueError: unknown format (the message lists them), a missing input, or a
            quantization point the format cannot express (named).
    """
    return get_format(fmt).write(path, plan, encodings, graph)


def guess_format(path: str | Path) -> str:
    """The format of ``path`` from its content; ValueError if that is not clear."""
    text = Path(path).read_text()
    found = [f.name for f in FORMATS.values() if f.sniff is not None and f.sniff(text)]
    if len(found) == 1:
        return found[0]
    why = f"it looks like each of {found}" if found else "its content matches no format"
    raise ValueError(
        f"cannot tell the format of {path}: {why} (a keep_dtype list never can); pass "
        f"the format, one of {', '.join(sorted(FORMATS))}"
    )


def read_format(path: str | Path, fmt: str | None = None) -> VendorData:
    """Read a vendor file; ``fmt`` None guesses it from the content (see `guess_format`)."""
    return get_format(fmt or guess_format(path)).read(path)


def convert(
    src: str | Path,
    dst: str | Path,
    to_format: str,
    from_format: str | None = None,
    plan: Plan | None = None,
    graph: Graph | None = None,
) -> Path:
    """Read ``src`` and write ``dst`` in ``to_format``.

    Per-op precisions in ``src`` (and the activation precisions of its encodings) are
    resolved into a Plan for ``graph``, on top of ``plan``'s default, scheme and target (an
    all-int8 default without ``plan``), when ``to_format`` writes from a plan (the lists,
    ORT) or adds fp32 islands from one (AIMET). Without such precisions ``plan`` is used as
    is. Weight precisions come from that default; scales only from ``src``'s encodings.

    Raises:
        ValueError: ``to_format`` needs scales that ``src`` does not hold, or a plan / graph
            that were not given (the message says which), or a point it cannot express.

    Example:
        >>> import pathlib, tempfile
        >>> from mixq.graph.ir import Graph, Op
        >>> g = Graph(); g.add_input("x", "float32")
        >>> g.add_op(Op("fc", "linear", "fc", inputs=["x"], outputs=["fc"]))
        >>> g.add_op(Op("sm", "softmax", "sm", inputs=["fc"], outputs=["sm"]))
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "npi.yaml").write_text("FP32NodeInstanceNames: [sm]\\n")
        >>> keep = convert(folder / "npi.yaml", folder / "keep.cfg", "ascend-keep-dtype", graph=g)
        >>> keep.read_text()
        'sm\\n'
    """
    target = get_format(to_format)
    source = from_format or guess_format(src)
    data = get_format(source).read(src)
    encodings = data.encodings
    if "encodings" in target.needs and encodings is None:
        raise ValueError(
            f"{source} files hold no scales or zero points, which {to_format} needs: export "
            f"{to_format} from a calibrated sim instead (sim.export)"
        )
    derive = plan is None and "plan" in target.needs and encodings is not None
    if (data.precisions and "plan" in target.uses) or (derive and graph is not None):
        if graph is None:
            raise ValueError(
                f"{src} sets per-op precisions ({source}); writing {to_format} resolves them "
                "into a plan for the model: pass graph= (sim.graph), and plan= for its default"
            )
        plan = _plan_from(data, graph, plan)
    missing = [n for n, v in (("plan", plan), ("graph", graph)) if n in target.needs and v is None]
    if missing:
        raise ValueError(
            f"writing {to_format} from {source} needs {' and '.join(missing)}, which "
            f"{source} files do not hold: pass plan= and graph= (sim.plan, sim.graph)"
        )
    return target.write(dst, plan, encodings, graph)


def _plan_from(data: VendorData, graph: Graph, base: Plan | None) -> Plan:
    precisions = _encoding_precisions(data.encodings, graph) if data.encodings else {}
    precisions.update(data.precisions)
    config = Config()
    if base is not None:
        config = Config(default=base.default, scheme=base.scheme, target=base.target)
    return resolve(graph, VendorData(precisions).to_config(config))


def _encoding_precisions(encodings: Encodings, graph: Graph) -> dict[str, str]:
    """``tensor:<t>`` -> precision for each activation point an op's first output carries."""
    out: dict[str, str] = {}
    for e in encodings:
        tensor = graph.tensors.get(e.tensor)
        if e.kind != "activation" or e.readers or tensor is None or tensor.producer is None:
            continue
        if graph.ops[tensor.producer].outputs[:1] == [e.tensor]:
            out[f"tensor:{e.tensor}"] = e.precision
    return out
