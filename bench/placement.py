"""Where the quantizers sit, and what ONNX Runtime runs in integer: mixq ort-cpu vs NNCF.

Run: ``python bench/placement.py [--layers N]`` (default 1 of the embedder's 6 layers: the
layers are identical, so one shows the pattern in ~1 min). For each exported file
(mixq ``Config(default="int8", target="ort-cpu")``, NNCF ``model_type=TRANSFORMER``, ORT
``quantize_static`` MatMul-only, ORT ``quantize_dynamic``):

* source graph, per op type: how many nodes, how many read a dequantized input (a
  DequantizeLinear, through data movement) and how many have their output quantized (a
  QuantizeLinear reads it, through data movement);
* ORT's optimised graph (``SessionOptions.optimized_model_filepath``, default level): the
  integer kernels (QLinearMatMul, MatMulInteger, DynamicQuantizeLinear, QLinearAdd, ...),
  the Q / DQ left, and the float ops still sandwiched DQ -> op -> Q (quantization error
  with no integer kernel to show for it), by op type.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

import mixq

_MOVE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand",
         "Slice", "Gather", "Concat", "Split"}  # fmt: skip
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_INT = {"QLinearMatMul", "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
        "QLinearSoftmax", "QLinearConv", "ConvInteger", "QGemm", "QAttention",
        "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConcat", "QLinearSigmoid",
        "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool",
        "QLinearReduceMean", "QLinearWhere"}  # fmt: skip


def _graph_maps(g: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list]]:
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    return producers, consumers


def _reads_dq(node: onnx.NodeProto, producers: dict, inits: set[str]) -> bool:
    for t in node.input:
        seen = 0
        while t in producers and seen < 8:
            p = producers[t]
            if p.op_type == "DequantizeLinear":
                return p.input[0] not in inits  # an activation DQ, not a weight's
            if p.op_type not in _MOVE:
                break
            t, seen = p.input[0], seen + 1
    return False


def _output_quantized(node: onnx.NodeProto, consumers: dict) -> bool:
    stack, seen = list(node.output), 0
    while stack and seen < 64:
        t = stack.pop()
        seen += 1
        for c in consumers.get(t, []):
            if c.op_type == "QuantizeLinear":
                return True
            if c.op_type in _MOVE:
                stack += list(c.output)
    return False


def source_table(path: Path) -> dict[str, tuple[int, int, int]]:
    """op type -> (nodes, nodes reading a dequantized activation, nodes whose output is Q'd)."""
    g = onnx.load(str(path)).graph
    producers, consumers = _graph_maps(g)
    inits = {i.name for i in g.initializer}
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for n in g.node:
        if n.op_type in _QDQ or n.op_type in _MOVE or n.op_type in ("Shape", "Constant"):
            continue
        row = out[n.op_type]
        row[0] += 1
        row[1] += _reads_dq(n, producers, inits)
        row[2] += _output_quantized(n, consumers)
    return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items())}


def optimised_table(path: Path, tmp: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(integer kernels and Q / DQ left, by op type; float ops DQ -> op -> Q, by op type)."""
    opt = tmp / (path.stem + ".opt.onnx")
    peers.session(path, 1, opt_path=opt)
    g = onnx.load(str(opt)).graph
    producers, consumers = _graph_maps(g)
    inits = {i.name for i in g.initializer}
    kernels = collections.Counter(
        n.op_type for n in g.node if n.op_type in _INT or n.op_type in _QDQ
    )
    sandwiched = collections.Counter(
        n.op_type
        for n in g.node
        if n.op_type not in _INT and n.op_type not in _QDQ and n.op_type not in _MOVE
        and _reads_dq(n, producers, inits) and _output_quantized(n, consumers)
    )  # fmt: skip
    dq_only = collections.Counter(
        n.op_type
        for n in g.node
        if n.op_type not in _INT and n.op_type not in _QDQ and n.op_type not in _MOVE
        and _reads_dq(n, producers, inits) and not _output_quantized(n, consumers)
    )  # fmt: skip
    kernels.update({f"float {k} (DQ in, no Q out)": v for k, v in dq_only.items()})
    return dict(sorted(kernels.items())), dict(sorted(sandwiched.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="copy the files (and ORT's) here")
    args = ap.parse_args()
    case = peers.embedder_case(False, 100, 16)
    case.model.bert.encoder.layer = case.model.bert.encoder.layer[: args.layers]
    with tempfile.TemporaryDirectory(prefix="mixq-placement-") as d:
        tmp = Path(d)
        fp32 = peers.export_fp32(case, tmp / "fp32.onnx")
        files = {
            "mixq ort-cpu": peers.mixq_export(
                case, mixq.Config(default="int8", target="ort-cpu"), tmp / "mixq.onnx"
            ),
            "NNCF transformer": peers.nncf_quantize(fp32, tmp / "nncf.onnx", case),
            "ORT static MatMul": peers.ort_static(fp32, tmp / "static.onnx", case),
            "ORT dynamic": peers.ort_dynamic(fp32, tmp / "dyn.onnx"),
        }
        for name, path in files.items():
            print(f"\n### {name}\nsource graph: op type: nodes / reading DQ'd activation / "
                  "output quantized")  # fmt: skip
            for k, (n, i, o) in source_table(path).items():
                print(f"  {k:<22} {n:3d} / {i:3d} / {o:3d}")
            kernels, sandwiched = optimised_table(path, tmp)
            print("ORT optimised graph: integer kernels, Q/DQ left, float ops reading DQ:")
            for k, v in kernels.items():
                print(f"  {k:<40} {v}")
            print("ORT optimised graph: float ops still DQ -> op -> Q:")
            for k, v in sandwiched.items():
                print(f"  {k:<40} {v}")
        if args.keep:
            import shutil

            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
