"""The stages of the conformance corpus, one function per stage: each runs mixq's public API
on a corpus model and returns a cell (``ok``, an SQNR in dB, ``LOW <dB>`` under 35 dB for an
export, ``FAIL ...``); an exception is the stage's failure. `verdict` says whether a cell
passes. Used by ``bench/conformance.py`` (the table) and ``tests/conformance/test_corpus.py``
(CI).

Stages (issue 11, part 2):

    int8 / a16w8 / w4a8 / fp16   quantize + calibrate (2 batches), SQNR(Sim vs float), all outputs
                                 (a text model's outputs on its real tokens: `min_sqnr`)
    off==float                   int8 Sim, every quantizer off, equals the float model bit for bit
                                 (torch.export's program where capture notes that it parts from
                                 eager: a path the model's code takes only when traced)
    shape                        the int8 Sim on batch 1 and a shorter sequence, SQNR vs float
    export / export_a16w8 /      sim.export_onnx of the int8 / a16w8 / w4a8 / fp16 Sim,
    export_w4a8 / export_fp16    SQNR(Sim vs ORT) measured here on every float
                                 output of the file (NaN / constant outputs are failures); under
                                 35 dB it passes only as ``N (locally >=M)``: the export check
                                 found every quantizer agreeing (>= M dB) with the Sim computed
                                 from ORT's own inputs, so rounding compounds over depth
    onnx_path                    torch.onnx.export of the float model -> mixq.quantize(.onnx) int8,
                                 calibrate, SQNR vs float ORT
    sens                         QuantAnalysis(sim).sensitivity(mode="fast") has rows
    bad_cases                    QuantAnalysis(sim).find_bad_cases(...) has .rows and .save
    search                       mixq.search with two trials
    vendor                       every vendor format written by sim.export and read back
    check                        mixq.check
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mixq
from mixq.export.ort_accuracy import session_options
from tests.conformance import corpus

__all__ = ["NEEDS", "ONNX_STAGES", "RUNNERS", "STAGES", "Model", "first_line", "run_stages",
           "time_limit", "verdict"]  # fmt: skip

STAGES = [
    "int8", "a16w8", "w4a8", "fp16", "off==float", "shape", "export", "export_a16w8",
    "export_w4a8", "export_fp16", "onnx_path", "sens", "bad_cases", "search", "vendor", "check",
]  # fmt: skip
ONNX_STAGES = [s for s in STAGES if s not in ("shape", "onnx_path")]
FORMATS = [
    "aimet-0.6.1", "aimet-1.0.0", "qaic-npi", "qaic-profile", "ascend-keep-dtype",
    "ascend-mixlist", "ascend-customize-dtypes", "ort-overrides",
]  # fmt: skip
CONFIGS: dict[str, Any] = {
    "int8": "int8",
    "a16w8": {"default": {"activation": "int16", "weight": "int8"}},
    "w4a8": {
        "default": {"activation": "int8", "weight": "int4"},
        "scheme": {"weight_granularity": "per_block", "weight_block_size": 16},
    },
    "fp16": {"default": "fp16"},
}


class StageTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise StageTimeout(f"stage took longer than {seconds:.0f}s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- outputs ----------------------------------------------------------------------------------
def leaves(out: Any) -> list[torch.Tensor]:
    """Float tensors of a model output, in order (ModelOutputs, dicts, tuples, caches)."""
    found: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if x.is_floating_point():
                found.append(x.detach().float())
        elif isinstance(x, np.ndarray):
            if np.issubdtype(x.dtype, np.floating):
                found.append(torch.from_numpy(x.astype(np.float32)))
        elif isinstance(x, dict) or hasattr(x, "to_tuple"):
            for v in x.values() if isinstance(x, dict) else x.to_tuple():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "self_attention_cache"):  # transformers' EncoderDecoderCache
            walk(x.self_attention_cache)
            walk(x.cross_attention_cache)
        elif hasattr(x, "layers"):  # transformers caches
            for layer in x.layers:
                for name in ("keys", "values"):
                    walk(getattr(layer, name, None))

    walk(out)
    return found


def sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    if ref.shape != got.shape:
        raise AssertionError(f"shape {tuple(got.shape)} where float has {tuple(ref.shape)}")
    if not torch.isfinite(got).all():
        return float("nan")
    finite = torch.isfinite(ref)
    ref, got = ref[finite], got[finite]
    noise = (ref - got).pow(2).sum()
    signal_ = ref.pow(2).sum()
    if noise == 0:
        return float("inf")
    if signal_ == 0:
        return float("-inf")
    return float(10 * torch.log10(signal_ / noise))


def min_sqnr(
    refs: list[torch.Tensor], gots: list[torch.Tensor], tokens: torch.Tensor | None = None
) -> float:
    """The lowest SQNR over the outputs; with ``tokens`` (an attention mask), an output with
    a row per token is compared on the real tokens only: what a padded position holds is
    never read (DeBERTa zeroes padded rows, LayerNorm then normalizes a near-constant vector,
    and int8 noise fills it: 0 dB there, 35.6 on the real tokens)."""
    if len(refs) != len(gots):
        raise AssertionError(f"{len(gots)} float outputs where the reference has {len(refs)}")
    if not refs:
        raise AssertionError("no float outputs to compare")
    if tokens is not None:
        real = torch.as_tensor(tokens).bool()
        refs, gots = zip(*(
            (r[real], g[real]) if r.shape[:2] == real.shape and g.shape == r.shape else (r, g)
            for r, g in zip(refs, gots, strict=True)
        ), strict=True)  # fmt: skip
    values = [sqnr(r, g) for r, g in zip(refs, gots, strict=True)]
    if any(math.isnan(v) for v in values):
        return float("nan")
    return min(values)


def real_tokens(inputs: Any) -> torch.Tensor | None:
    """The attention mask of a text model's inputs (1 = a real token), else None."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None


def call(model: Any, inputs: Any) -> Any:
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def fmt_db(v: float) -> str:
    return "NaN" if math.isnan(v) else ("inf" if math.isinf(v) and v > 0 else f"{v:.1f}")


# -- ORT ----------------------------------------------------------------------------------------
def ort_run(
    path: str | Path, inputs: Any, names: list[str] | None = None, optimize: bool = True
) -> list[np.ndarray]:
    """Run an ONNX file in ORT; ``optimize=False`` as the ONNX Sim runs its graph (no graph
    optimisation: ORT's fusions, e.g. Conv + BatchNormalization, round differently)."""
    import onnxruntime as ort

    opts = session_options()  # fused MatMulNBits as the file says (accuracy level 1)
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds_in = [i.name for i in sess.get_inputs()]
    if isinstance(inputs, dict):
        values = [inputs[n] if n in inputs else list(inputs.values())[k]
                  for k, n in enumerate(feeds_in)]  # fmt: skip
    else:
        values = list(inputs)
    feeds = {n: (v.numpy() if isinstance(v, torch.Tensor) else v)
             for n, v in zip(feeds_in, values, strict=False)}  # fmt: skip
    return sess.run(names, feeds)


def check_ort_outputs(path: Path, sim: Any, inputs: Any) -> float:
    """SQNR(Sim vs ORT) on every float output of the exported file; NaN or a constant output
    where the Sim's varies is a failure."""
    got = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in ort_run(path, inputs)
           if np.issubdtype(np.asarray(o).dtype, np.floating)]  # fmt: skip
    want = leaves(call(sim, inputs))
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        if g.numel() > 1 and w.std() > 0 and g.std() == 0:
            raise AssertionError(f"ORT output {i} is constant ({float(g.flatten()[0]):g})")
    return min_sqnr(want, got)


# -- stages -------------------------------------------------------------------------------------
class Model:
    def __init__(self, name: str, factory: Callable[[], tuple[Any, Any]], tmp: Path) -> None:
        self.name, self.tmp = name, tmp
        self.model, self.inputs = factory()
        self.is_onnx = not isinstance(self.model, torch.nn.Module)
        self.batches = [self.inputs, corpus.second_batch(self.inputs)]
        if self.is_onnx:
            import onnx

            self.path = tmp / f"{name}.onnx"
            onnx.save(self.model, str(self.path))
            self.source: Any = str(self.path)
            self.ref = [torch.from_numpy(np.asarray(o)) for o in ort_run(self.path, self.inputs)]
            exact = ort_run(self.path, self.inputs, optimize=False)
            self.exact_ref = [torch.from_numpy(np.asarray(o)) for o in exact]
        else:
            self.source = self.model
            self.ref = leaves(call(self.model, self.inputs))
            self.exact_ref = self.ref
        self.sims: dict[str, Any] = {}

    def sim(self, precision: str) -> Any:
        if precision not in self.sims:
            sim = mixq.quantize(self.source, self.inputs, CONFIGS[precision])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sim.calibrate(self.batches, progress=False)
            self.sims[precision] = sim
        return self.sims[precision]


def stage_quantize(m: Model, precision: str) -> str:
    sim = m.sim(precision)
    return fmt_db(min_sqnr(m.ref, leaves(call(sim, m.inputs)), real_tokens(m.inputs)))


def stage_off(m: Model) -> str:
    """Bit for bit against the float model (an ONNX file: run unoptimised, as the Sim is)."""
    sim = m.sim("int8")
    with sim.disabled():
        got = leaves(call(sim, m.inputs))
    ref = m.exact_ref
    if len(got) != len(ref):
        return f"FAIL: {len(got)} outputs, float has {len(ref)}"
    bad = [i for i, (r, g) in enumerate(zip(ref, got, strict=True))
           if not torch.equal(r.nan_to_num(), g.nan_to_num())]  # fmt: skip
    if bad:
        worst = max(float((ref[i] - got[i]).abs().max()) for i in bad)
        if any("differs from the eager model" in n for n in getattr(sim, "capture_notes", [])):
            return _off_against_program(m, got, worst)
        return f"FAIL: outputs {bad[:4]} differ (max |d| {worst:.3g})"
    return "ok"


def _off_against_program(m: Model, got: list[torch.Tensor], worst: float) -> str:
    """Where capture noted that torch.export's program parts from the eager model (the
    model's code takes another path when traced), the Sim must equal that program bit for
    bit; the cell says by how much eager differs."""
    args, kwargs = ((), m.inputs) if isinstance(m.inputs, dict) else (tuple(m.inputs), {})
    program = torch.export.export(copy.deepcopy(m.model).eval(), args, kwargs, strict=False)
    ref = leaves(call(program.module(), m.inputs))
    same = len(ref) == len(got) and all(
        torch.equal(r.nan_to_num(), g.nan_to_num()) for r, g in zip(ref, got, strict=True)
    )
    if not same:
        return f"FAIL: differs from eager by {worst:.3g} and from torch.export's program"
    return f"ok = export ±{worst:.0e}"


def stage_shape(m: Model) -> str:
    other = corpus.other_shape(m.inputs)
    want = leaves(call(m.model, other))
    return fmt_db(min_sqnr(want, leaves(call(m.sim("int8"), other)), real_tokens(other)))


def stage_export(m: Model, precision: str) -> str:
    sim = m.sim(precision)
    path = m.tmp / f"{m.name}_{precision}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sim.export_onnx(path)
    ours = check_ort_outputs(path, sim, m.inputs)
    theirs = report.min_sqnr_db
    text = fmt_db(ours)
    if math.isnan(theirs) != math.isnan(ours) or (
        not math.isnan(ours) and abs(min(theirs, 200) - min(ours, 200)) > 1.0
    ):
        text += f" (report {fmt_db(theirs)})"
    if math.isnan(ours) or ours < 35:
        local = report.local_sqnr_db
        text = f"{text} (locally >={local:.1f})" if local is not None else "LOW " + text
    return text


class ByKeyword(torch.nn.Module):
    """Positional inputs -> the model's keywords (the TorchScript exporter takes positions);
    outputs flattened to their float tensors (cache objects included), as ONNX outputs are."""

    def __init__(self, model: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *values: torch.Tensor) -> Any:
        if self.keys:
            out = self.model(**dict(zip(self.keys, values, strict=True)))
        else:
            out = self.model(*values)
        return tuple(leaves(out))


def export_float_onnx(m: Model) -> tuple[Path, dict[str, torch.Tensor]]:
    path = m.tmp / f"{m.name}_float.onnx"
    if isinstance(m.inputs, dict):
        args: tuple[Any, ...] = ()
        kwargs = dict(m.inputs)
    else:
        args, kwargs = tuple(m.inputs), {}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: what most ONNX files of HF models come from
            torch.onnx.export(  # a copy: tracing may leave tensors in module attributes
                ByKeyword(copy.deepcopy(m.model), list(kwargs)),
                tuple(kwargs.values()) if kwargs else args, str(path), dynamo=False,
                opset_version=14, input_names=list(kwargs) or None,
            )  # fmt: skip
            m.exporter = "torchscript"
        except Exception:
            torch.onnx.export(
                copy.deepcopy(m.model), args, str(path), kwargs=kwargs, dynamo=True, verbose=False
            )
            m.exporter = "dynamo"
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    flat = list(kwargs.values()) if kwargs else list(args)
    return path, dict(zip(names, flat, strict=False))


def stage_onnx_path(m: Model) -> str:
    path, feeds = export_float_onnx(m)
    ref = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in ort_run(path, feeds)
           if np.issubdtype(np.asarray(o).dtype, np.floating)]  # fmt: skip
    sim = mixq.quantize(str(path), feeds, "int8")
    feeds2 = dict(zip(feeds, corpus.second_batch(tuple(feeds.values())), strict=True))
    if "attention_mask" in feeds:
        feeds2["attention_mask"] = feeds["attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.calibrate([feeds, feeds2], progress=False)
    text = fmt_db(min_sqnr(ref, leaves(call(sim, feeds)), real_tokens(feeds)))
    return text if m.exporter == "torchscript" else f"{text} (dynamo)"


def stage_sens(m: Model) -> str:
    qa = mixq.QuantAnalysis(m.sim("int8"))
    table = qa.sensitivity(mode="fast", data=m.batches, progress=False)
    if not table.rows:
        return "FAIL: no rows"
    return f"ok ({len(table.rows)})"


def stage_bad_cases(m: Model) -> str:
    result = mixq.QuantAnalysis(m.sim("int8")).find_bad_cases(m.batches, progress=False)
    missing = [a for a in ("rows", "save") if not hasattr(result, a)]
    if missing:
        return f"FAIL: {type(result).__name__} has no {'/'.join(missing)}"
    return "ok"


def stage_search(m: Model) -> str:
    result = mixq.search(
        m.source, m.inputs, calib=m.batches, evaluate="sqnr", target=30.0,
        candidates=["int8", "int16"], strategy="fallback", max_trials=2, progress=False,
    )  # fmt: skip
    return f"ok ({len(result.points)} pts)"


def _read_format(path: Path, fmt: str) -> Any:
    from mixq.export.formats import read_format

    return read_format(path, fmt)


def stage_vendor(m: Model) -> str:
    sim = m.sim("int8")
    failed = []
    for fmt in FORMATS:
        path = m.tmp / f"{m.name}.{fmt}"
        try:
            sim.export(path, format=fmt)
            _read_format(path, fmt)
        except Exception as e:
            failed.append(f"{fmt}: {type(e).__name__}: {first_line(e)}")
    return "ok" if not failed else "FAIL " + "; ".join(failed)


def stage_check(m: Model) -> str:
    report = mixq.check(m.source, m.inputs, "int8", out_dir=str(m.tmp / "check"))
    return "ok" if report is not None else "FAIL: no report"


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else ""


RUNNERS: dict[str, Callable[[Model], str]] = {
    "int8": lambda m: stage_quantize(m, "int8"),
    "a16w8": lambda m: stage_quantize(m, "a16w8"),
    "w4a8": lambda m: stage_quantize(m, "w4a8"),
    "fp16": lambda m: stage_quantize(m, "fp16"),
    "off==float": stage_off,
    "shape": stage_shape,
    "export": lambda m: stage_export(m, "int8"),
    "export_a16w8": lambda m: stage_export(m, "a16w8"),
    "export_w4a8": lambda m: stage_export(m, "w4a8"),
    "export_fp16": lambda m: stage_export(m, "fp16"),
    "onnx_path": stage_onnx_path,
    "sens": stage_sens,
    "bad_cases": stage_bad_cases,
    "search": stage_search,
    "vendor": stage_vendor,
    "check": stage_check,
}

# a stage needing an earlier one's Sim reports that one's failure instead of retrying it
NEEDS = {"off==float": "int8", "shape": "int8", "export": "int8", "export_a16w8": "a16w8",
         "export_w4a8": "w4a8", "export_fp16": "fp16", "sens": "int8", "bad_cases": "int8",
         "vendor": "int8"}  # fmt: skip


def verdict(stage: str, cell: str) -> bool:
    """Whether ``cell`` passes: ``ok ...``, ``n/a``, or a finite SQNR (>= 35 dB for an
    export, where ``LOW`` marks a miss)."""
    if cell.startswith("ok") or cell == "n/a":
        return True
    local = re.search(r"\(locally >=([\d.]+)\)", cell)
    if local and stage.startswith("export"):
        return float(local.group(1)) >= 35
    number = cell.split(" ")[0]
    try:
        value = float(number)
    except ValueError:
        return False
    return not math.isnan(value) and (value >= 35 or not stage.startswith("export"))


def run_stages(
    m: Model,
    stages: list[str],
    limit: float,
    on_cell: Callable[[str, str, float], None] | None = None,
    verbose: bool = False,
) -> dict[str, str]:
    """The cell of each of ``stages`` on ``m`` (``n/a`` where its kind has no such stage;
    ``(needs X)`` where the stage X it builds on did not pass); ``on_cell(stage, cell,
    seconds)`` hears of each as it ends."""
    wanted = ONNX_STAGES if m.is_onnx else STAGES
    cells: dict[str, str] = {}
    for stage in stages:
        if stage not in wanted:
            cells[stage] = "n/a"
            continue
        need = NEEDS.get(stage)
        if need is not None and need in cells and not verdict(need, cells[need]):
            cells[stage] = f"(needs {need})"
            continue
        start = time.time()
        try:
            with time_limit(limit):
                cells[stage] = RUNNERS[stage](m)
        except Exception as e:
            cells[stage] = f"{type(e).__name__}: {first_line(e)}"
            if verbose:
                traceback.print_exc()
        if on_cell is not None:
            on_cell(stage, cells[stage], time.time() - start)
    return cells
