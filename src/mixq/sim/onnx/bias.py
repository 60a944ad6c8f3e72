"""Conv biases on the int32 grid of the int8 kernel, in the ONNX Sim (`mixq.sim.bias_grid`).

ONNX Runtime rounds a conv's bias onto ``x_scale * w_scale[c]`` when it fuses
DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv; the Sim's float Conv did not, and
a deep CNN compounded the difference (MobileNetV2 from a config through the ONNX path: 20.7 dB
Sim vs ORT, the export check failed). The Sim's model reads the bias of every such conv from
a graph input, fed at every run with the bias moved onto that grid while the conv's input and
weight quantizers are on (its own bias otherwise); the exporter writes the fed value.

Example:
    >>> # feeds = bias_feeds(rewriter)             # while the Sim's model is rewritten
    >>> # {f.input_name: f.value(None) for f in feeds}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from onnx import TensorProto, helper

from mixq.graph.ir import Op
from mixq.sim.bias_grid import bias_shift
from mixq.sim.onnx.quantizer import OnnxActivationQuantizer, OnnxWeightQuantizer

__all__ = ["BiasFeed", "bias_feeds"]


@dataclass
class BiasFeed:
    """The graph input one conv reads as its bias, and what to feed it."""

    input_name: str
    act: OnnxActivationQuantizer
    weight: OnnxWeightQuantizer
    bias: torch.Tensor  # the conv's own (zeros where it has none)
    fold: torch.Tensor | None = None  # a following batch-norm: gamma / sqrt(var + eps)
    bn_bias: torch.Tensor | None = None
    bn_mean: torch.Tensor | None = None

    def value(self, on: set[str] | None) -> np.ndarray:
        """The bias for a run with the named quantizers on (None: as switched)."""
        act, weight = self.act, self.weight
        enabled = [q.enabled if on is None else q.name in on for q in (act, weight)]
        if not all(enabled) or act.scale is None or weight.scale is None:
            return self.bias.numpy()
        grid = (act.scale.reshape(()) * weight.scale.flatten()).float()
        shift = bias_shift(grid, self.bias, self.fold, self.bn_bias, self.bn_mean)
        return (self.bias + shift).numpy().astype(np.float32)


def rounds_bias(act: OnnxActivationQuantizer, weight: OnnxWeightQuantizer) -> bool:
    """An int8 kernel runs the conv: 8-bit integer input with a calibrated scale, int8
    weights, not blocked."""
    return (
        act.qtype.calibrated
        and act.qtype.bits == 8
        and weight.qtype.name == "int8"
        and weight.point.block_size is None
    )


def _input_quantizer(rw: Any, op: Op, producers: dict[str, Op]) -> OnnxActivationQuantizer | None:
    """The activation quantizer the conv's input comes from, through padding and views
    (they keep the grid: ORT pads with the zero point)."""
    reader, tensor = op, op.inputs[0] if op.inputs else ""
    for _ in range(8):
        found = [
            q
            for q in rw.quantizers.values()
            if isinstance(q, OnnxActivationQuantizer)
            and q.point.target == tensor
            and (not q.point.readers or reader.name in q.point.readers)
        ]
        if found:
            return min(found, key=lambda q: not q.point.readers)  # one for this reader first
        before = producers.get(tensor)
        if before is None or before.kind not in _PASS_THROUGH or not before.inputs:
            return None
        reader, tensor = before, before.inputs[0]
    return None


_PASS_THROUGH = frozenset({"pad", "reshape", "transpose", "identity"})


def bias_feeds(rw: Any) -> list[BiasFeed]:
    """Give every conv an int8 kernel would run a bias graph input; return their feeds.
    ``rw`` is the `mixq.sim.onnx.rewrite.Rewriter` building the Sim's model."""
    weights = {q.point.op: q for q in rw.quantizers.values() if isinstance(q, OnnxWeightQuantizer)}
    nodes = {n.name: n for n in rw.g.node}
    producers = {t: o for o in rw.graph.ops.values() for t in o.outputs}
    feeds = []
    for op in rw.graph.ops.values():
        weight, node = weights.get(op.name), nodes.get(op.name)
        act = _input_quantizer(rw, op, producers)
        if node is None or node.op_type != "Conv" or weight is None or act is None:
            continue
        w_init = rw.constants.get(op.weights.get("weight", ""))
        if not rounds_bias(act, weight) or w_init is None or w_init.data_type != TensorProto.FLOAT:
            continue
        channels = rw.array(op.weights.get("weight"))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = rw.array(node.input[2]) if has_bias else None
        if channels is None or (has_bias and bias is None):
            continue  # a weight or a bias computed in the graph: left as it is
        bias = torch.zeros(channels.shape[0]) if bias is None else bias.flatten()
        feed = BiasFeed(_bias_input(rw, op, len(bias)), act, weight, bias)
        bn = rw.batch_norm_after(op)
        fold = rw.bn_fold(op, channels)
        if bn is not None and fold is not None:
            feed.fold = fold.flatten()
            feed.bn_bias = rw.array(bn.attrs.get("bn_bias"))
            feed.bn_mean = rw.array(bn.attrs.get("bn_running_mean"))
        if has_bias:
            node.input[2] = feed.input_name
        else:
            node.input.append(feed.input_name)
        feeds.append(feed)
    return feeds


def _bias_input(rw: Any, op: Op, channels: int) -> str:
    name = rw.fresh(f"mixq/{op.name}/bias")
    rw.g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [channels]))
    return name
