"""What a search chooses: one candidate precision per unit, and the Plan that makes.

A **unit** is a fusion group (conv + batch-norm + ReLU, a LayerNorm, a softmax ...): the
kernel an NPU runs at one precision; each float model input is a unit too (``input:x``,
activation only). Choosing candidate ``(a, w)`` for a unit sets:

- its weights to ``w``;
- its output tensor to ``a``, and every op that reads that tensor (through data-movement
  ops) reads it at ``a`` -- so a unit's choice decides exactly its own quantizers (its
  output activation and its weights) and no conversion appears between units; where it
  reads a tensor produced in float (a unit kept at fp32), it reads it at ``a`` through the
  quantizer on its input edge, which is its own too;
- its compute at ``a`` on its own side (internal tensors of the fused kernel).

A unit that fuses a residual add and whose multiply reads a tensor produced in float also
offers options whose multiply reads it narrower than the unit's output
(`Candidate.input`: an int8 multiply into an int16 residual stream).

Under a target that lists ``integer_kernels`` (``ort-cpu``, `mixq.targets.kernels`),
units the runtime computes in float are fixed at fp32 (not searched); fp32 is an option of
every other unit; a ``to_float`` unit (a linear ORT runs as MatMulIntegerToFloat) produces a
float output, and its choice sets the precision its integer kernel reads its float-produced
inputs at (the quantizer on its input edge) and its weights; a dynamic precision
(``uint8_dynamic``, ORT's quantize_dynamic form) is an option of such units only. The cost
of a ``to_float`` op is its integer kernel's, not its float output's.

The error a unit adds is then local to it, which the sensitivity and the integer program
rely on; and the BOPs of an op depend on the choice of its unit and of its input's
producer (the pairs `mixq.search.milp` models).

Example:
    >>> parse_candidates(["int8", ("int8", "int4"), "fp16"])
    [Candidate('int8', 'int8'), Candidate('int8', 'int4'), Candidate('fp16', 'fp16')]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import replace

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.graph.fusion import find_fusion_groups
from mixq.graph.ir import Graph
from mixq.graph.kinds import is_data_movement
from mixq.graph.match import match_ops
from mixq.plan.cost import OpStats, op_cost
from mixq.plan.plan import OpPlan, Plan
from mixq.plan.tensors import aliases, tensor_precisions
from mixq.search.candidates import Candidate, parse_candidates
from mixq.search.units import Unit, nearest, rank
from mixq.targets import TargetProfile, load_target
from mixq.targets.kernels import QLINEAR, QLINEAR_IF_QUANTIZED, TO_FLOAT, writes_as_gemm
from mixq.transforms.side_path import OUTLIER_PATH

__all__ = ["Candidate", "SearchSpace", "Unit", "parse_candidates"]


class SearchSpace:
    """Units, their options, and the Plan of any assignment of options to units.

    Args:
        graph: the model's Graph.
        base: the Plan the user's config resolves to; fixed units and everything outside
            the units (model inputs, data movement) start from it.
        candidates: the precisions to choose from.
        stats: op statistics (for ordering options by cost).
        keep: targets (op names, module paths, kinds, globs, ``re:``) kept as in ``base``.
    """

    def __init__(
        self,
        graph: Graph,
        base: Plan,
        candidates: list[Candidate],
        stats: dict[str, OpStats],
        keep: Iterable[str] = (),
    ) -> None:
        self.graph, self.base, self.candidates, self.stats = graph, base, candidates, stats
        self.profile: TargetProfile = load_target(base.target)
        self._groups = find_fusion_groups(graph, self.profile.fuse_residual_add)
        self._root = aliases(graph)
        self.units: dict[str, Unit] = {}
        self.unit_of: dict[str, str] = {}
        self._touching: dict[str, list[str]] = {}
        self._make_units()
        self._place_units()
        kept = {n for t in keep for n in self._match_keep(t)}
        for unit in self.units.values():
            unit.options = self._options(unit)
            unit.base = self._base_choice(unit)
            unit.fixed = not unit.options or bool(kept & set(unit.ops))
            if unit.fixed:
                unit.options = [unit.base]
        for unit in self.free:
            unit.options = self._narrow_reads(unit)

    # -- units -------------------------------------------------------------------------------
    def source(self, tensor: str) -> str | None:
        """The unit whose choice sets the precision ``tensor`` is read at (None: none)."""
        root = self._root.get(tensor, tensor)
        producer = self.graph.tensors[root].producer
        if producer is None:
            return f"input:{root}" if f"input:{root}" in self.units else None
        return self.unit_of.get(producer)

    def _make_units(self) -> None:
        for t in self.graph.inputs:
            if t in self.base.inputs:
                self.units[f"input:{t}"] = Unit(f"input:{t}", (), "input", input=t)
        for op in self.graph:
            if op.name not in self.base.ops or is_data_movement(op.kind):
                continue
            group = self._groups[op.name]
            name = group.anchor
            if name not in self.units:
                members = tuple(n for n in group.ops if n in self.base.ops)
                self.units[name] = Unit(name, members, self.graph.ops[name].kind)
            self.unit_of[op.name] = name
        for op in self.graph:
            if op.name not in self.unit_of:
                continue
            for i, t in enumerate(self.graph.float_inputs(op)):
                src = self.source(t)
                if src is not None and src != self.unit_of[op.name]:
                    self.units[src].reads.append((op.name, i))

    def _place_units(self) -> None:
        """Each unit's kernel style, producers first (a residual add is integer only when its
        inputs arrive quantized); a model input read by float units only is float too."""
        if self.profile.integer_kernels is None:
            return
        if Candidate("fp32", "fp32") not in self.candidates:
            self.candidates = [*self.candidates, Candidate("fp32", "fp32")]
        for u in self.units.values():
            if u.input is not None:
                continue
            anchor = self.graph.ops[u.name]
            style = self.profile.kernel(anchor.kind)
            if style == QLINEAR_IF_QUANTIZED:
                srcs = [self.source(t) for t in self.graph.float_inputs(anchor)]
                quantized = all(x is not None and self.produces_quantized(x) for x in srcs)
                style = QLINEAR if quantized else None
            if style == TO_FLOAT and writes_as_gemm(self.graph, anchor):
                style = QLINEAR
            u.style = style
        for u in self.units.values():
            readers = {self.unit_of[op] for op, _ in u.reads}
            if u.input is not None and all(self.units[r].style is None for r in readers):
                u.style = None

    def produces_quantized(self, unit: str) -> bool:
        """Whether ``unit``'s output leaves it quantized (``qlinear``, or a model input)."""
        u = self.units[unit]
        return u.style == QLINEAR

    def _match_keep(self, target: str) -> list[str]:
        names = match_ops(self.graph, target)
        if not names:
            raise ConfigError(
                f"keep target {target!r} matches no op; run `mixq plan` to list op names"
            )
        return names

    def _options(self, unit: Unit) -> list[Candidate]:
        if unit.style is None:
            return []  # the target computes it in float: fixed at the base plan's fp32
        kinds = {self.graph.ops[n].kind for n in unit.ops}
        if unit.style != TO_FLOAT:  # its output is float: its readers do not read at ``a``
            kinds |= {self.graph.ops[op].kind for op, _ in unit.reads}
        weighted = [self.graph.ops[n].kind for n in unit.ops if self.graph.ops[n].weights]
        ok = []
        for c in self.candidates:
            if qtype(c.activation).dynamic and not (weighted and unit.style == TO_FLOAT):
                continue  # only an integer linear's kernel reads a dynamic input fast
            if all(c.activation in self.profile.support(k).activations for k in kinds) and all(
                c.weight in self.profile.support(k).weights for k in weighted
            ):
                ok.append(c)
        if any(OUTLIER_PATH in self.graph.ops[n].module.split(".") for n in unit.ops):
            # an outlier side path carries a few channels' whole range for a few MACs: its
            # weights keep 8 bits at least (below, its error is the split's gain, lost)
            ok = [c for c in ok if qtype(c.weight).bits >= 8] or ok
        # weightless units: candidates differing only in weight are one choice
        if not weighted:
            ok = list({c.activation: Candidate(c.activation, c.activation) for c in ok}.values())
        return sorted(ok, key=lambda c: (*self.unit_cost(unit, c), rank(c)))

    def unit_cost(self, unit: Unit, cand: Candidate) -> tuple[float, float]:
        """(latency, BOPs) of the unit's ops at ``cand``, inputs read at ``cand`` too: the
        order of its options."""
        lat = bops = 0.0
        for name in unit.ops:
            reads = cand.reads_at if name == unit.name else cand.activation
            op = self.computed(self._at(self.base.ops[name], cand, reads))
            c = op_cost(op, self.stats.get(name, OpStats()), self.profile)
            lat, bops = lat + c["latency"], bops + c["bops"]
        return lat, bops

    def _narrow_reads(self, unit: Unit) -> list[Candidate]:
        """``unit``'s options, plus options whose multiply reads narrower than the unit's
        output where that is the unit's own choice: a unit that fuses a residual add (a
        member besides the anchor reads from outside the unit) and whose anchor reads a
        tensor produced in float has the quantizer on that edge to itself, so an int8
        multiply can feed an int16 residual stream (the FFN output projection of a
        transformer layer after a GELU kept in float, `Candidate.input`)."""
        if unit.input is not None:
            return unit.options
        anchor = self.graph.ops[unit.name]
        outside = [
            t
            for n in unit.ops[1:]
            for t in self.graph.float_inputs(self.graph.ops[n])
            if self.graph.tensors[self._root[t]].producer not in unit.ops
        ]
        if not outside or not any(self._made_in_float(t) for t in self.graph.float_inputs(anchor)):
            return unit.options
        allowed = self.profile.support(anchor.kind).activations
        ints = [c for c in unit.options if not qtype(c.activation).is_floating_point]
        extra = [
            Candidate(c.activation, c.weight, d)
            for c in ints
            for d in dict.fromkeys(n.activation for n in ints)
            if d in allowed and qtype(d).rank() < qtype(c.activation).rank()
        ]
        return sorted([*unit.options, *extra], key=lambda c: (*self.unit_cost(unit, c), rank(c)))

    def _made_in_float(self, tensor: str) -> bool:
        """Whether ``tensor`` is produced in float whatever the search chooses: by a unit kept
        at a float precision, or one the target computes in float."""
        src = self.source(tensor)
        if src is None or self.units[src].input is not None:
            return False
        u = self.units[src]
        return not self.produces_quantized(src) or (
            u.fixed and qtype(u.base.activation).is_floating_point
        )

    def _base_choice(self, unit: Unit) -> Candidate:
        if unit.input is not None:
            p = self.base.inputs[unit.input]
            return Candidate(p, p)
        last = self.base.ops[unit.ops[-1]]
        weights = [w for n in unit.ops for w in self.base.ops[n].weight.values()]
        act = last.output[0] if last.output else (last.input[0] if last.input else "fp32")
        if unit.style == TO_FLOAT:
            first = self.base.ops[unit.ops[0]]
            act = first.input[0] if first.input else act
        return Candidate(act, weights[0] if weights else act)

    @property
    def free(self) -> list[Unit]:
        """The units the search decides (not fixed)."""
        return [u for u in self.units.values() if not u.fixed]

    # -- assignments -> plans ----------------------------------------------------------------
    def uniform(
        self, index: int | None = None, cand: Candidate | None = None
    ) -> dict[str, Candidate]:
        """Every free unit at its ``index``-th option (0: cheapest, -1: dearest), or at
        ``cand`` where it allows it (else its nearest option by cost order)."""
        out = {}
        for u in self.units.values():
            if cand is not None:
                out[u.name] = cand if cand in u.options else nearest(u, cand)
            else:
                out[u.name] = u.options[index if index is not None else 0]
        return out

    def key(self, assignment: dict[str, Candidate]) -> str:
        """A stable short id of an assignment (what the history is keyed on)."""
        text = json.dumps([str(assignment.get(u, self.units[u].base)) for u in sorted(self.units)])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def plan(self, assignment: dict[str, Candidate], label: str = "search") -> Plan:
        """The Plan for ``assignment`` (unit name -> Candidate); missing units keep their base."""
        ops = dict(self.base.ops)
        choice = {u.name: assignment.get(u.name, u.base) for u in self.units.values()}
        for u in self.units.values():
            cand = choice[u.name]
            if u.fixed:
                continue
            for name in u.ops:
                rule = f"{label} {cand}"
                ops[name] = replace(self._at(self.base.ops[name], cand, None), rule=rule)
        for u in self.units.values():
            for name, i in u.reads:
                op = ops[name]
                ins = list(op.input)
                ins[i] = self._read_at(u.name, name, choice)
                ops[name] = replace(op, input=tuple(ins))
        inputs = {
            u.input: choice[u.name].activation for u in self.units.values() if u.input is not None
        }
        ops = self._data_movement(ops, {**self.base.inputs, **inputs})
        notes: list[str] = []
        for name, op in ops.items():
            if not (is_data_movement(op.kind) and op.rule.startswith("inherits")):
                ops[name], changed = self.profile.repair(op)
                notes += changed
        return replace(self.base, ops=ops, inputs={**self.base.inputs, **inputs})

    def op_at(self, name: str, choice: dict[str, Candidate]) -> OpPlan:
        """Op ``name`` as `plan` would make it under ``choice`` (unit -> option): its own
        unit's option, and each input at the option of the unit producing it."""
        owner = self.units[self.unit_of[name]]
        op = self.base.ops[name]
        if not owner.fixed:
            op = self._at(op, choice[owner.name], None)
        ins = list(op.input)
        for i, t in enumerate(self.graph.float_inputs(self.graph.ops[name])):
            src = self.source(t)
            if src is not None and src != owner.name:
                pick = {u: choice.get(u, self.units[u].base) for u in (src, owner.name)}
                ins[i] = self._read_at(src, name, pick)
        return replace(op, input=tuple(ins))

    def move_cost(
        self, assignment: dict[str, Candidate], unit: str, cand: Candidate, key: str
    ) -> float:
        """How much ``key`` (``bops`` or ``latency``; ``weight_bytes`` counts as BOPs) grows
        when ``unit`` moves to ``cand``: its own ops and every op reading its output."""
        if unit not in self._touching:
            ops = [*self.units[unit].ops, *(op for op, _ in self.units[unit].reads)]
            self._touching[unit] = [n for n in dict.fromkeys(ops) if n in self.unit_of]
        moved = {**assignment, unit: cand}
        field_ = "latency" if key == "latency" else "bops"
        delta = 0.0
        for name in self._touching[unit]:
            stats = self.stats.get(name, OpStats())
            after = op_cost(self.computed(self.op_at(name, moved)), stats, self.profile)
            before = op_cost(self.computed(self.op_at(name, assignment)), stats, self.profile)
            delta += after[field_] - before[field_]
        return delta

    def _at(self, op: OpPlan, cand: Candidate, inputs: str | None) -> OpPlan:
        """``op`` computing at ``cand``; its inputs at ``inputs`` (None: as they are, except
        those read inside its own group, which follow ``cand``)."""
        group = self._groups[op.name].ops
        own = [
            self.graph.tensors[self._root[t]].producer in group
            for t in self.graph.float_inputs(self.graph.ops[op.name])
        ]
        ins = tuple(
            inputs or (cand.activation if inside else p)
            for p, inside in zip(op.input, own, strict=True)
        )
        owner = self.units.get(self.unit_of.get(op.name, ""))
        style = owner.style if owner is not None else QLINEAR
        out = cand.activation if style == QLINEAR else "fp32"
        return replace(
            op,
            input=ins,
            output=(out,) * len(op.output),
            weight={r: cand.weight for r in op.weight},
        )

    def _read_at(self, src: str, op: str, choice: dict[str, Candidate]) -> str:
        """The precision op ``op`` reads ``src``'s output at: as produced (``src``'s
        choice where its output leaves it quantized, else fp32), except that an integer
        kernel reading a float-produced tensor reads it at its own unit's choice (its
        anchor at `Candidate.reads_at`), through the quantizer on its input edge (where the
        resolver puts it too); a layer's input scale (`Graph.is_input_scale`) reads it as
        produced, its output quantizer being the layer's."""
        reader = self.unit_of[op]
        quantized = self.produces_quantized(src) or self.units[src].input is not None
        produced = choice[src].activation if quantized else "fp32"
        cand = choice[reader]
        mine = cand.reads_at if op == reader else cand.activation
        if (
            self.units[reader].style is not None
            and not self.graph.is_input_scale(self.graph.ops[reader])
            and qtype(produced).is_floating_point
            and qtype(mine).rank() < qtype(produced).rank()
        ):
            return mine
        return produced

    def computed(self, op: OpPlan) -> OpPlan:
        """``op`` as its cost counts it: a ``to_float`` op computes at its inputs' precision
        (MatMulIntegerToFloat), not its float output's."""
        owner = self.units.get(self.unit_of.get(op.name, ""))
        if owner is None or owner.style != TO_FLOAT or not op.input:
            return op
        return replace(op, output=(op.input[0],) * len(op.output))

    def _data_movement(self, ops: dict[str, OpPlan], inputs: dict[str, str]) -> dict[str, OpPlan]:
        produced = tensor_precisions(self.graph, ops, inputs)
        for name, op in ops.items():
            graph_op = self.graph.ops[name]
            ins = self.graph.float_inputs(graph_op)
            if is_data_movement(op.kind) and ins:
                read = tuple(produced.get(self._root[t], "fp32") for t in ins)
                ops[name] = replace(op, input=read, output=(read[0],) * len(op.output))
        return ops
