"""Fix an ONNX Sim's current state into a plain ONNX Q/DQ model (the ONNX exporter's core).

The Sim's model switches every quantizer with ``Where(enabled, quantized, x)`` and reads
scales, zero points and switches from graph inputs. `SimFreezer` keeps, for an enabled
quantizer, its ``QuantizeLinear -> DequantizeLinear`` (scale and zero point now
initializers, nodes named after the quantizer), its Cast pair or its ``DequantizeLinear`` of
integer weights; a disabled one is dropped and ``x`` passes through. Every Where and every
control input goes. A batch-norm whose scale is folded into a conv's weight grid is folded
into the conv, and the result is upgraded to opset 21.

Example:
    >>> # freezer = SimFreezer(sim, u8_weights=False); model = freezer.run()
    >>> # freezer.names["fc"]
    >>> # {'QuantizeLinear': 'fc/QuantizeLinear', 'DequantizeLinear': 'fc/DequantizeLinear'}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mixq.core.errors import MixqError
from mixq.export.core import OPSET
from mixq.export.onnx_edit import ModelEdit, initializer
from mixq.export.onnx_islands import OnnxIslands
from mixq.sim.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer
from mixq.sim.onnx.rewrite import ONNX_TYPES, OpsetUpgradeError, upgrade_opset

if TYPE_CHECKING:
    from mixq.sim.onnx.sim import OnnxSim

__all__ = ["SimFreezer", "to_opset"]


def to_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at opset `OPSET` (upgraded when older) and IR version 10 at least."""
    try:
        model = upgrade_opset(model, OPSET)
    except OpsetUpgradeError as exc:
        raise MixqError(
            f"could not upgrade the exported model from opset {exc.have} to {OPSET} "
            f"({exc.detail}); re-export the float model at opset {OPSET} and quantize that"
        ) from exc
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR 10
    return model


class SimFreezer(ModelEdit):
    """Fixes the Sim's switches into a copy of its model and strips the control inputs."""

    def __init__(self, sim: OnnxSim, u8_weights: bool, float_islands: bool = True) -> None:
        super().__init__(sim)
        self.u8_weights, self.float_islands = u8_weights, float_islands
        self.names: dict[str, dict[str, str]] = {}
        self.folds: list[tuple[OnnxWeightQuantizer, onnx.NodeProto]] = []  # (q, its Div)
        self.islands: list[str] = []

    def run(self) -> onnx.ModelProto:
        """The frozen model; ``names`` (quantizer -> its nodes) and ``islands`` (notes)."""
        for q in self.sim.named_quantizers().values():
            where = self.producer[q.output_name]
            if q.enabled:
                self._keep(q, where.input[1])
            self.replace(q.output_name, where.input[1] if q.enabled else where.input[2])
        self._freeze_biases()
        for q, div in self.folds:
            _fold_batch_norm(self, q, div)
        self.prune()
        if self.float_islands:
            self._make_islands()
        self._restore_output_names()
        self.model.metadata_props.add(key="mixq.quantizers", value=json.dumps(self.names))
        return to_opset(self.model)

    def _freeze_biases(self) -> None:
        """Each conv's bias graph input (`mixq.sim.onnx.bias`) becomes the initializer of the
        value the Sim feeds it now: on the int32 grid ORT's QLinearConv uses, whether ORT
        fuses the conv or not."""
        for feed in self.sim.bias_feeds:
            tensor = numpy_helper.from_array(feed.value(None), feed.input_name)
            self.g.initializer.append(tensor)
            self.inits[tensor.name] = tensor

    def _make_islands(self) -> None:
        self.islands = OnnxIslands(self).run()
        self.prune()
        present = {n.name for n in self.g.node}  # an island drops its rounding Casts
        self.names = {q: v for q, v in self.names.items() if set(v.values()) <= present}

    # -- what an enabled quantizer keeps -----------------------------------------------------
    def _keep(self, q: OnnxQuantizer, quantized: str) -> None:
        if q.qtype.is_floating_point:
            back = self.producer[quantized]
            cast = self.producer[back.input[0]]
            cast.name, back.name = f"{q.name}/Cast", f"{q.name}/Cast_1"
            self.names[q.name] = {"Cast": cast.name, "Cast_1": back.name}
        elif isinstance(q, OnnxWeightQuantizer):
            self._weight(q, quantized)
        else:
            assert isinstance(q, OnnxActivationQuantizer)
            self._activation(q, quantized)

    def _weight(self, q: OnnxWeightQuantizer, quantized: str) -> None:
        dq = self.producer[quantized]
        if dq.op_type == "Div":  # the bn unfold: folded into the conv (see _fold_batch_norm)
            self.folds.append((q, dq))
        while dq.op_type != "DequantizeLinear":  # back through the bn-unfold Div / Cast
            dq = self.producer[dq.input[0]]
        dq.name = f"{q.name}/DequantizeLinear"
        self.names[q.name] = {"DequantizeLinear": dq.name}
        if self.u8_weights and q.qtype.name == "int8":
            for i in (0, 2):  # the same grid as uint8 with the zero point moved by 128
                init = self.inits[dq.input[i]]
                moved = numpy_helper.to_array(init).astype(np.int16) + 128
                init.CopyFrom(numpy_helper.from_array(moved.astype(np.uint8), init.name))

    def _activation(self, q: OnnxActivationQuantizer, quantized: str) -> None:
        dq = self.producer[quantized]
        if q.qtype.dynamic and dq.op_type == "Cast":  # a float16 tensor, cast to float32
            dq = self.producer[dq.input[0]]
        qn = self.producer[dq.input[0]]
        if q.qtype.dynamic:  # DynamicQuantizeLinear -> DequantizeLinear, nothing to fix
            qn.name, dq.name = f"{q.name}/DynamicQuantizeLinear", f"{q.name}/DequantizeLinear"
            self.names[q.name] = {"DynamicQuantizeLinear": qn.name, "DequantizeLinear": dq.name}
            return
        assert q.scale is not None and q.zero_point is not None
        elem, zp = ONNX_TYPES[q.qtype.name], q.zero_point.reshape(()).to(torch.int64)
        if q.qtype.name == "int8":
            elem, zp = TensorProto.UINT8, zp + 128
        x_elem = helper.np_dtype_to_tensor_dtype(
            np.dtype(self.sim.graph.tensors[q.point.target].dtype)
        )
        scale = initializer(self.fresh(f"{q.name}/scale"), q.scale.reshape(()).numpy(), x_elem)
        zero = initializer(self.fresh(f"{q.name}/zero_point"), zp.numpy(), elem)
        self.g.initializer.extend([scale, zero])
        for node in (qn, dq):
            node.input[1], node.input[2] = scale.name, zero.name
        qn.name, dq.name = f"{q.name}/QuantizeLinear", f"{q.name}/DequantizeLinear"
        self.names[q.name] = {"QuantizeLinear": qn.name, "DequantizeLinear": dq.name}

    def _restore_output_names(self) -> None:
        """A quantized model output gets the original output's name back."""
        inputs = {v.name for v in self.g.input} | {i.name for i in self.g.initializer}
        for out, orig in zip(self.g.output, self.sim.source.graph.output, strict=True):
            if out.name == orig.name or out.name in inputs or orig.name in inputs:
                continue
            self.rename(orig.name, self.fresh(f"{orig.name}/float"))
            self.rename(out.name, orig.name)
            out.name = orig.name


def _batch_norm_after(ex: ModelEdit, conv: onnx.NodeProto) -> onnx.NodeProto | None:
    """The inference-mode batch-norm that alone reads ``conv``'s output, its parameters
    initializers (None otherwise)."""
    readers = [n for n in ex.g.node if conv.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization":
        return None
    bn = readers[0]
    training = any(a.name == "training_mode" and a.i for a in bn.attribute)
    if training or len(bn.output) > 1 or not all(t in ex.inits for t in bn.input[1:5]):
        return None
    return bn


def _folded_bias(
    ex: ModelEdit, conv: onnx.NodeProto, bn: onnx.NodeProto, div: onnx.NodeProto
) -> np.ndarray | None:
    """``(b - mean) * fold + beta``, or None when ``fold`` is not the batch-norm's factor
    (where a zero gamma was replaced by 1)."""
    gamma, beta, mean, var = (numpy_helper.to_array(ex.inits[t]) for t in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    fold = numpy_helper.to_array(ex.inits[div.input[1]]).reshape(-1).astype(np.float64)
    if fold.shape != gamma.shape or not np.allclose(fold, gamma / np.sqrt(var + eps), 1e-5):
        return None
    has_bias = len(conv.input) > 2 and conv.input[2] in ex.inits
    bias = numpy_helper.to_array(ex.inits[conv.input[2]]) if has_bias else np.zeros_like(fold)
    return np.asarray((bias - mean) * fold + beta, dtype=np.float32)


def _fold_batch_norm(ex: ModelEdit, q: OnnxWeightQuantizer, div: onnx.NodeProto) -> None:
    """``DQ -> Div(fold) -> Conv -> BatchNormalization`` becomes ``DQ -> Conv`` with the
    folded bias, as the torch exporter does: the weight grid is already on the folded
    weight, and ORT fuses ``DQ -> Conv -> Q`` into ``QLinearConv`` only without the Div.
    Anything else keeps the Div and the batch-norm, which is exact too."""
    conv = next((n for n in ex.g.node if n.name == q.point.op), None)
    if conv is None or conv.op_type != "Conv" or conv.input[1] != div.output[0]:
        return
    bn = _batch_norm_after(ex, conv)
    if bn is None or div.input[1] not in ex.inits:
        return
    folded = _folded_bias(ex, conv, bn, div)
    if folded is None:
        return
    tensor = numpy_helper.from_array(folded, ex.fresh(f"{conv.name}/bias"))
    ex.g.initializer.append(tensor)
    ex.inits[tensor.name] = tensor
    conv.input[1] = div.input[0]
    if len(conv.input) > 2:
        conv.input[2] = tensor.name
    else:
        conv.input.append(tensor.name)
    conv.output[0] = bn.output[0]  # the batch-norm's readers (or model output) read the conv
    ex.g.node.remove(bn)
    ex.producer[conv.output[0]] = conv
