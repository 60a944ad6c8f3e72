"""Huawei Ascend ATC ``--precision_mode`` semantics over a mixq Graph.

The model's original dtype is taken to be fp32. Cube (matrix-unit) ops are conv,
conv_transpose, linear, matmul and attention; every other kind is a vector op.

    mode (canonical)           cube ops: input/output/weight   vector ops
    force_fp16                 fp16 / fp16 / fp16              fp16
    force_fp32                 fp16 / fp32 / fp16              fp32
    must_keep_origin_dtype     fp32                            fp32
    allow_fp32_to_fp16 (bf16)  fp16 (bf16)                     fp32
    mix_fp16 (mix_bf16)        by list: white fp16 (bf16), black fp32, gray = its upstream op

keep_dtype (by op name or OpType) forces fp32 in every mode except must_keep_origin_dtype,
where ATC ignores it. The ATC file formats (``--modify_mixlist`` JSON, ``--keep_dtype``
text) are read and written by the ``parse_*`` / ``format_*`` functions; see
`resolve_precision_mode` for an example.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from mixq.core.errors import ConfigError
from mixq.graph.ir import Graph, Op
from mixq.rules.atc_files import (
    KEEP_DTYPE_PREFIX,
    Edits,
    Policy,
    actions_by_name,
    check_combo,
    checked_edits,
    kind_of_op_type,
    op_type_of_kind,
)

__all__ = [
    "ASCEND_MODES",
    "CUBE_KINDS",
    "MixLists",
    "ModeDecision",
    "canonical_mode",
    "default_mixlists",
    "resolve_precision_mode",
    "unknown_keep_dtype_ops",
]


# v1 (--precision_mode) and v2 (--precision_mode_v2) names -> one internal mode.
# fmt: off
ASCEND_MODES: dict[str, str] = {
    "force_fp16": "force_fp16", "fp16": "force_fp16",
    "force_fp32": "force_fp32", "cube_fp16in_fp32out": "force_fp32",
    "must_keep_origin_dtype": "must_keep_origin_dtype", "origin": "must_keep_origin_dtype",
    "allow_mix_precision": "mix_fp16", "allow_mix_precision_fp16": "mix_fp16",
    "mixed_float16": "mix_fp16",
    "allow_mix_precision_bf16": "mix_bf16", "mixed_bfloat16": "mix_bf16",
    "allow_fp32_to_fp16": "allow_fp32_to_fp16", "allow_fp32_to_bf16": "allow_fp32_to_bf16",
}
# fmt: on
_HIF8_MODES = frozenset({"cube_hif8", "mixed_hif8"})
_LOW = {"allow_fp32_to_fp16": "fp16", "allow_fp32_to_bf16": "bf16"}
_MIX = {"mix_fp16": "fp16", "mix_bf16": "bf16"}
CUBE_KINDS = frozenset({"conv", "conv_transpose", "linear", "matmul", "attention"})


def canonical_mode(name: str) -> str:
    """The internal mode of an ATC precision-mode name (v1 or v2; internal names pass).

    Example:
        >>> canonical_mode("cube_fp16in_fp32out"), canonical_mode("mixed_bfloat16")
        ('force_fp32', 'mix_bf16')
    """
    if name in ASCEND_MODES:
        return ASCEND_MODES[name]
    if name in ASCEND_MODES.values():
        return name
    if name in _HIF8_MODES:
        raise ConfigError(
            f"precision mode {name!r} targets hifloat8, which only Ascend 950 has; mixq does "
            "not support it. Use mixed_float16 or mixed_bfloat16 instead"
        )
    close = difflib.get_close_matches(name, list(ASCEND_MODES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown Ascend precision mode {name!r}{hint}. Valid: {', '.join(ASCEND_MODES)}"
    )


@dataclass(frozen=True)
class MixLists:
    """Mixed-precision lists by canonical kind; kinds on no list are gray."""

    white: frozenset[str] = field(default_factory=frozenset)
    black: frozenset[str] = field(default_factory=frozenset)
    gray: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for a, b in (("white", "black"), ("white", "gray"), ("black", "gray")):
            both = getattr(self, a) & getattr(self, b)
            if both:
                raise ConfigError(f"kinds {sorted(both)} are on both the {a} and {b} lists")

    def policy(self, kind: str) -> Policy:
        """``white``, ``black`` or ``gray`` for ``kind``.

        Example:
            >>> MixLists(white=frozenset({"matmul"})).policy("gelu")
            'gray'
        """
        return "black" if kind in self.black else "white" if kind in self.white else "gray"


def default_mixlists() -> MixLists:
    """Lists modelled on PyTorch autocast (CUDA), since Ascend's own live in the OPP install.

    White is the cube kinds (autocast's ``lower_precision_fp``: conv, conv_transpose,
    linear, matmul, attention). Black is autocast's fp32 and fp32_set_opt_dtype lists
    (exp/log/pow family, rsqrt, softplus, layer/group norm, softmax, log_softmax,
    reductions such as sum, mean, prod, cumsum, norms and losses). Everything else is
    gray, batch_norm included: autocast leaves it unlisted.

    Example:
        >>> lists = default_mixlists()
        >>> lists.policy("linear"), lists.policy("softmax"), lists.policy("batch_norm")
        ('white', 'black', 'gray')
    """
    black = """acos asin cosh erfinv exp expm1 log log10 log1p log2 reciprocal rsqrt sinh
        tan pow softplus layer_norm group_norm norm vector_norm cosine_similarity cdist
        pdist dist renorm logsumexp prod cumprod cumsum sum mean softmax log_softmax
        mse_loss l1_loss smooth_l1_loss huber_loss nll_loss cross_entropy kl_div
        binary_cross_entropy_with_logits"""
    return MixLists(white=CUBE_KINDS, black=frozenset(black.split()))


def unknown_keep_dtype_ops(graph: Graph, names: Iterable[str]) -> list[str]:
    """keep_dtype op names not in ``graph`` (ATC only warns about them).

    Example:
        >>> unknown_keep_dtype_ops(Graph(), ["# a comment"])
        ['# a comment']
    """
    return [name for name in names if name not in graph.ops]


@dataclass(frozen=True)
class ModeDecision:
    """Precisions ("fp32" / "fp16" / "bf16") one op runs at, and why."""

    input: str
    output: str
    weight: str
    reason: str


def _uniform(precision: str, reason: str) -> ModeDecision:
    return ModeDecision(precision, precision, precision, reason)


def resolve_precision_mode(
    graph: Graph,
    mode: str,
    lists: MixLists | None = None,
    keep_dtype_ops: Iterable[str] = (),
    keep_dtype_kinds: Iterable[str] = (),
    mixlist_edits: Edits | None = None,
) -> dict[str, ModeDecision]:
    """Per-op precisions ATC picks for ``mode`` (see the module table), quantizable ops only.

    Precedence: must_keep_origin_dtype keeps fp32 everywhere; else keep_dtype (op name or
    kind) keeps fp32; else the mode decides. Mix modes use ``lists`` (default:
    `default_mixlists`) after ``mixlist_edits``; a gray op takes the output precision of
    the op producing its first float input, jumping over non-black casts, or fp32 if it
    reads only model inputs. Call `apply_modify_mixlist` yourself to see its notes.

    Example:
        >>> from mixq.graph.ir import Graph, Op
        >>> g = Graph(); g.add_input("x", "float32")
        >>> g.add_op(Op("fc", "linear", inputs=["x"], outputs=["fc"], weights={"weight": "w"}))
        >>> g.add_op(Op("act", "gelu", inputs=["fc"], outputs=["act"]))
        >>> for t in g.tensors.values(): t.quantizable = True
        >>> plan = resolve_precision_mode(g, "mixed_float16")
        >>> plan["act"].output, plan["act"].reason
        ('fp16', 'precision_mode mixed_float16: gray (gelu) follows fc')
        >>> resolve_precision_mode(g, "fp16", keep_dtype_ops=["act"])["act"].reason
        'precision_mode fp16: keep_dtype act'
    """
    internal = canonical_mode(mode)
    lists = default_mixlists() if lists is None else lists
    if mixlist_edits is not None:
        if internal not in _MIX:
            raise ConfigError(
                "modify_mixlist needs allow_mix_precision* / mixed_* modes; "
                f"mode {mode!r} was given"
            )
        lists, _ = apply_modify_mixlist(lists, mixlist_edits)
    run = _Run(graph, f"precision_mode {mode}", internal, lists)
    keep = _keep_dtype_reasons(keep_dtype_ops, keep_dtype_kinds)
    for op in graph:
        if graph.is_quantizable(op):
            why = keep.get(op.name) or keep.get(f"{KEEP_DTYPE_PREFIX}{op.kind}")
            run.decisions[op.name] = _decide(run, op, why)
    return run.decisions


def _keep_dtype_reasons(names: Iterable[str], kinds: Iterable[str]) -> dict[str, str]:
    keep = {
        f"{KEEP_DTYPE_PREFIX}{kind}": f"keep_dtype {KEEP_DTYPE_PREFIX}{op_type_of_kind(kind)}"
        for kind in kinds
    }
    keep.update({name: f"keep_dtype {name}" for name in names})
    return keep


@dataclass
class _Run:
    graph: Graph
    prefix: str  # "precision_mode <name as given>"
    mode: str  # canonical
    lists: MixLists
    decisions: dict[str, ModeDecision] = field(default_factory=dict)


def _decide(run: _Run, op: Op, keep: str | None) -> ModeDecision:
    prefix, mode, cube = run.prefix, run.mode, op.kind in CUBE_KINDS
    if mode == "must_keep_origin_dtype":
        ignored = f" ({keep} ignored in this mode)" if keep else ""
        return _uniform("fp32", f"{prefix}: keeps the original fp32{ignored}")
    if keep:
        return _uniform("fp32", f"{prefix}: {keep}")
    if mode == "force_fp16":
        return _uniform("fp16", f"{prefix}: forced to fp16 ({op.kind})")
    if mode == "force_fp32" and cube:
        return ModeDecision("fp16", "fp32", "fp16", f"{prefix}: cube ({op.kind}) fp16 in, fp32 out")
    if mode in _LOW and cube:
        return _uniform(_LOW[mode], f"{prefix}: cube ({op.kind}) lowered")
    if mode in _MIX:
        return _mixed(run, op, _MIX[mode])
    return _uniform("fp32", f"{prefix}: vector ({op.kind}) kept fp32")


def _mixed(run: _Run, op: Op, low: str) -> ModeDecision:
    policy = run.lists.policy(op.kind)
    if policy != "gray":
        return _uniform(low if policy == "white" else "fp32", f"{run.prefix}: {policy} ({op.kind})")
    up = _upstream(run.graph, op, run.lists)
    if up is None:
        return _uniform("fp32", f"{run.prefix}: gray ({op.kind}) with no upstream op keeps fp32")
    seen = run.decisions.get(up.name)
    why = f"{run.prefix}: gray ({op.kind}) follows {up.name}"
    return _uniform(seen.output if seen else "fp32", why)


def _upstream(graph: Graph, op: Op, lists: MixLists) -> Op | None:
    """Producer of the op's first float input, jumping over non-black casts."""
    while True:
        floats = graph.float_inputs(op)
        producer = graph.producer(floats[0]) if floats else None
        if producer is None or producer.kind != "cast" or lists.policy("cast") == "black":
            return producer
        op = producer


def apply_modify_mixlist(lists: MixLists, edits: Edits) -> tuple[MixLists, list[str]]:
    """Apply OpType edits to kind lists, as ATC resolves them; returns (lists, notes).

    Any add-black makes an op black, else add-white makes it white; to-remove of the
    op's current list makes it gray (naming another list only earns a note); add-gray
    alone changes nothing.

    Example:
        >>> new, notes = apply_modify_mixlist(default_mixlists(),
        ...                                   {"black-list": {"to-remove": ["SoftmaxV2"]}})
        >>> new.policy("softmax"), notes
        ('gray', [])
    """
    checked = checked_edits(edits)
    sets = {"white": set(lists.white), "black": set(lists.black), "gray": set(lists.gray)}
    notes: list[str] = []
    op_types = list(actions_by_name(checked))
    for kind, acts in actions_by_name(checked, kind_of_op_type).items():
        label = f"{kind} ({', '.join(t for t in op_types if kind_of_op_type(t) == kind)})"
        check_combo(label, acts)
        target, note = _resolve_edit(lists.policy(kind), acts, label)
        notes += [note] if note else []
        for members in sets.values():
            members.discard(kind)
        sets[target].add(kind)
    frozen = {policy: frozenset(members) for policy, members in sets.items()}
    return MixLists(frozen["white"], frozen["black"], frozen["gray"]), notes


def _resolve_edit(current: Policy, acts: set[str], label: str) -> tuple[Policy, str]:
    removed = [a.split("-")[1] for a in acts if a.startswith("remove-")]
    note = ""
    if removed and removed[0] != current:
        note = f"{label}: to-remove names the {removed[0]}-list, but it is {current}; not removed"
    elif acts == {"add-gray"}:
        note = f"{label}: gray-list to-add alone changes nothing (stays {current}), as in ATC"
    if "add-black" in acts or "add-white" in acts:
        return ("black" if "add-black" in acts else "white"), note
    return ("gray" if removed and not note else current), note
