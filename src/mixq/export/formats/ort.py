"""ONNX Runtime ``quantize_static`` arguments as JSON (``ort-overrides``).

The keys are quantize_static's own: ``TensorQuantOverrides`` (pass it in ``extra_options``),
``nodes_to_quantize``, ``nodes_to_exclude``, ``op_types_to_quantize``, ``per_channel``,
``activation_type`` and ``weight_type`` (QuantType names). Mapping:

- every integer point: ``{"quant_type", "scale", "zero_point"}`` under its tensor; a
  per-channel weight: one such dict per channel, each with ``axis``;
- a conversion point (``t@int8``) becomes the ``convert`` entry of ``t``'s dict, with
  ``recv_nodes`` = its readers; if ``t`` itself runs in float (its producer is excluded),
  the point is ``t``'s own override (ORT then quantizes ``t`` for its quantized readers), and
  reads back under the name ``t``;
- float islands (ops at fp16 / bf16 / fp32) are ``nodes_to_exclude``, since ORT's quantizer
  has no float types: a float point is carried by excluding its producer (or the op reading
  a float weight). ORT runs excluded nodes in fp32, so they read back as fp32.

ORT rejects ``rmin`` / ``rmax`` / ``symmetric`` next to a scale, so min / max are not
written and ``symmetric`` is read back as "zero point at the grid's middle". An override
does not say whether a tensor is a weight: per-channel entries and names ending in
``weight`` / ``bias`` are read as weights. Per-block weights, fp8 points, float conversions
and a second conversion of one tensor cannot be written: ValueError naming the point.

Example:
    >>> import json
    >>> from mixq.plan.encodings import Encoding, Encodings
    >>> enc = Encodings({"x": Encoding("x", "x", "activation", "uint8", scale=[0.5],
    ...                                zero_point=[128], symmetric=True)})
    >>> text = OrtOverrides().dump(Plan(), enc, Graph())
    >>> json.loads(text)["TensorQuantOverrides"]
    {'x': [{'quant_type': 'QUInt8', 'scale': 0.5, 'zero_point': 128}]}
    >>> OrtOverrides().load(text).encodings == enc
    True
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.export.formats.common import dump_json, is_float, load_json, op_precision, try_json
from mixq.export.formats.registry import VendorData, register_format
from mixq.graph.ir import Graph
from mixq.plan.encodings import Encoding, Encodings
from mixq.plan.plan import Plan

__all__ = ["ONNX_OP_TYPES", "ORT_QUANT_TYPES", "OrtOverrides"]

ORT_QUANT_TYPES = {
    "int8": "QInt8",
    "uint8": "QUInt8",
    "int16": "QInt16",
    "uint16": "QUInt16",
    "int4": "QInt4",
    "uint4": "QUInt4",
}
_PRECISION_OF = {q: p for p, q in ORT_QUANT_TYPES.items()}

# mixq kind -> the ONNX op types it exports as (unlisted kinds: CamelCase of the kind).
# fmt: off
ONNX_OP_TYPES: dict[str, tuple[str, ...]] = {
    "conv": ("Conv",), "conv_transpose": ("ConvTranspose",), "linear": ("Gemm", "MatMul"),
    "matmul": ("MatMul",), "embedding": ("Gather",), "attention": ("Attention",),
    "add": ("Add",), "sub": ("Sub",), "mul": ("Mul",), "div": ("Div",),
    "relu": ("Relu",), "relu6": ("Clip",), "clamp": ("Clip",), "gelu": ("Gelu",),
    "sigmoid": ("Sigmoid",), "tanh": ("Tanh",), "softmax": ("Softmax",),
    "log_softmax": ("LogSoftmax",), "layer_norm": ("LayerNormalization",),
    "batch_norm": ("BatchNormalization",), "avg_pool": ("AveragePool", "GlobalAveragePool"),
    "max_pool": ("MaxPool",), "cat": ("Concat",), "reshape": ("Reshape",),
    "flatten": ("Flatten",), "transpose": ("Transpose",), "permute": ("Transpose",),
    "squeeze": ("Squeeze",), "unsqueeze": ("Unsqueeze",), "slice": ("Slice",),
    "select": ("Gather",), "gather": ("Gather",), "split": ("Split",), "pad": ("Pad",),
    "mean": ("ReduceMean",), "sum": ("ReduceSum",), "upsample_nearest": ("Resize",),
}
# fmt: on
# Kinds that leave no node in an inference ONNX graph.
_NO_NODE = frozenset({"dropout", "contiguous", "clone", "alias", "detach", "identity"})
_ARGS = (
    "TensorQuantOverrides",
    "nodes_to_quantize",
    "nodes_to_exclude",
    "op_types_to_quantize",
    "per_channel",
    "activation_type",
    "weight_type",
)
_WEIGHT_NAME = re.compile(r"(^|[._])(weight|bias)$")


def _quant_type(e: Encoding) -> str:
    if e.precision not in ORT_QUANT_TYPES:
        raise ValueError(f"quantization point {e.name!r} is {e.precision}, which ORT cannot hold")
    if e.block_size is not None:
        raise ValueError(
            f"quantization point {e.name!r} is per-block (block_size {e.block_size}); "
            "TensorQuantOverrides has no per-block form"
        )
    return ORT_QUANT_TYPES[e.precision]


def _dicts(e: Encoding) -> list[dict[str, Any]]:
    assert e.scale is not None  # Encoding checks that integer points have one
    quant_type = _quant_type(e)
    zero_point = e.zero_point if e.zero_point is not None else [0] * len(e.scale)
    dicts = [
        {"quant_type": quant_type, "scale": s, "zero_point": z}
        for s, z in zip(e.scale, zero_point, strict=True)
    ]
    if e.axis is not None:
        for d in dicts:
            d["axis"] = e.axis
    return dicts


def _check_float(e: Encoding, graph: Graph, excluded: set[str]) -> None:
    """A float point is carried only if the op that makes it float is excluded."""
    if e.readers:
        raise ValueError(
            f"quantization point {e.name!r} converts to {e.precision} for {e.readers}; ORT "
            "overrides have no float conversions"
        )
    if e.kind == "weight":
        ops = [op.name for op in graph if e.tensor in op.weights.values()]
    else:
        tensor = graph.tensors.get(e.tensor)
        ops = [tensor.producer] if tensor is not None and tensor.producer else []
    if not ops or not set(ops) <= excluded:
        raise ValueError(
            f"quantization point {e.name!r} is {e.precision}; ORT overrides express float only "
            f"by excluding the op that computes it, and {ops or 'no op'} is not excluded"
        )


def _most_common(types: list[str]) -> str:
    return Counter(types).most_common(1)[0][0] if types else "QInt8"


@register_format("ort-overrides")
class OrtOverrides:
    """ONNX Runtime quantize_static arguments: TensorQuantOverrides and node lists, JSON."""

    suffix = ".json"
    needs = ("encodings", "plan", "graph")

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert plan is not None and encodings is not None and graph is not None
        precision = {op.name: op_precision(op) for op in plan}
        excluded = [n for n, p in precision.items() if p is not None and is_float(p)]
        quantized = [n for n, p in precision.items() if p is not None and not is_float(p)]
        overrides: dict[str, list[dict[str, Any]]] = {}
        conversions = []
        for e in encodings:
            if e.is_float:
                _check_float(e, graph, set(excluded))
            elif e.readers:
                conversions.append(e)
            else:
                overrides[e.tensor] = _dicts(e)
        for e in conversions:
            self._convert(e, overrides)
        kinds = dict.fromkeys(plan.ops[n].kind for n in quantized)
        op_types = {t for k in kinds if k not in _NO_NODE for t in self._op_types(k)}
        acts = [e for e in encodings if e.kind == "activation" and not e.is_float and not e.readers]
        weights = [e for e in encodings if e.kind == "weight" and not e.is_float]
        data = {
            "TensorQuantOverrides": overrides,
            "nodes_to_quantize": quantized,
            "nodes_to_exclude": excluded,
            "op_types_to_quantize": sorted(op_types),
            "per_channel": any(e.axis is not None for e in weights),
            "activation_type": _most_common([ORT_QUANT_TYPES[e.precision] for e in acts]),
            "weight_type": _most_common([ORT_QUANT_TYPES[e.precision] for e in weights]),
        }
        return dump_json(data) + "\n"

    @staticmethod
    def _op_types(kind: str) -> tuple[str, ...]:
        default = "".join(part.capitalize() for part in kind.split("_"))
        return ONNX_OP_TYPES.get(kind, (default,))

    @staticmethod
    def _convert(e: Encoding, overrides: dict[str, list[dict[str, Any]]]) -> None:
        main = overrides.get(e.tensor)
        if main is None:  # produced in float: the override quantizes it for its readers
            overrides[e.tensor] = _dicts(e)
            return
        if "convert" in main[0] or main[0]["quant_type"] == _quant_type(e):
            raise ValueError(
                f"quantization point {e.name!r}: ORT allows one conversion per tensor, to a "
                f"type other than the tensor's ({main[0]['quant_type']})"
            )
        convert = {k: v for k, v in _dicts(e)[0].items() if k != "axis"}
        main[0]["convert"] = {**convert, "recv_nodes": list(e.readers)}

    def load(self, text: str) -> VendorData:
        data = load_json(text, "an ORT overrides file")
        if not isinstance(data, dict) or "TensorQuantOverrides" not in data:
            raise ConfigError("an ORT overrides file is a JSON object with TensorQuantOverrides")
        unknown = set(data) - set(_ARGS)
        if unknown:
            raise ConfigError(
                f"unknown keys {sorted(unknown)} in an ORT overrides file; its keys are "
                f"quantize_static's: {', '.join(_ARGS)}"
            )
        nodes = set(data.get("nodes_to_quantize") or []) | set(data.get("nodes_to_exclude") or [])
        defaults = {
            "activation": _PRECISION_OF.get(data.get("activation_type", "QInt8"), "int8"),
            "weight": _PRECISION_OF.get(data.get("weight_type", "QInt8"), "int8"),
        }
        out = VendorData(encodings=Encodings())
        for tensor, dicts in (data["TensorQuantOverrides"] or {}).items():
            if dicts and dicts[0]:
                self._read_tensor(out, tensor, dicts, tensor not in nodes, defaults)
        out.precisions.update({n: "fp32" for n in data.get("nodes_to_exclude") or []})
        out.notes.append(
            "ORT overrides hold no min / max and no float type: excluded nodes read as fp32; "
            "per-channel tensors and names ending in weight / bias read as weights"
        )
        return out

    def _read_tensor(
        self,
        out: VendorData,
        tensor: str,
        dicts: list[dict[str, Any]],
        maybe_weight: bool,
        defaults: dict[str, str],
    ) -> None:
        first = dicts[0]
        axis = first.get("axis")
        per_channel = axis is not None or len(dicts) > 1
        weight = per_channel or (maybe_weight and _WEIGHT_NAME.search(tensor) is not None)
        kind = "weight" if weight else "activation"
        precision = self._precision(tensor, first, defaults[kind])
        if "scale" not in first:
            if kind == "activation":
                out.precisions[f"tensor:{tensor}"] = precision
            out.notes.append(f"{tensor}: an override without scale / zero_point; type only")
            return
        assert out.encodings is not None
        scale = [float(d["scale"]) for d in dicts]
        zero_point = [int(d["zero_point"]) for d in dicts]
        symmetric = _symmetric(precision, zero_point)
        out.encodings.items[tensor] = Encoding(
            tensor, tensor, kind, precision, scale, zero_point, axis, symmetric=symmetric
        )
        convert = first.get("convert")
        if convert and "scale" in convert:
            p = self._precision(tensor, convert, defaults["activation"])
            zp = [int(convert["zero_point"])]
            name = f"{tensor}@{p}"
            readers = list(convert.get("recv_nodes") or [])
            scale = [float(convert["scale"])]
            out.encodings.items[name] = Encoding(
                name,
                tensor,
                "activation",
                p,
                scale,
                zp,
                symmetric=_symmetric(p, zp),
                readers=readers,
            )

    @staticmethod
    def _precision(tensor: str, d: dict[str, Any], default: str) -> str:
        quant_type = d.get("quant_type")
        if quant_type is None:
            return default
        if quant_type not in _PRECISION_OF:
            raise ConfigError(
                f"{tensor}: quant_type {quant_type!r} is not one of {', '.join(_PRECISION_OF)}"
            )
        return _PRECISION_OF[quant_type]

    def sniff(self, text: str) -> bool:
        data = try_json(text)
        return isinstance(data, dict) and "TensorQuantOverrides" in data


def _symmetric(precision: str, zero_point: list[int]) -> bool:
    q = qtype(precision)
    middle = 0 if q.is_signed else 2 ** (q.bits - 1)
    return all(z == middle for z in zero_point)
