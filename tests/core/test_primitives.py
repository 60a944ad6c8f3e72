"""mixq.core.primitives: exact equality against a slow reference, against ONNX, and properties.

The slow reference loops over elements with Python's ``round`` (half to even) and an
explicit clamp, dividing in float32 as ONNX QuantizeLinear does.
"""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mixq.core import primitives as P
from mixq.core.qtypes import qtype

INTEGER = ["int4", "uint4", "int8", "uint8", "int16", "uint16"]
SHAPE = (4, 5, 7)  # blocks of 2 and 3 along axis 1 or 2 leave a ragged last block
MODES = [
    pytest.param(None, None, id="per-tensor"),
    *(pytest.param(a, None, id=f"axis{a}") for a in (0, 1, -1)),
    *(pytest.param(a, b, id=f"block{b}-axis{a}") for b in (2, 3) for a in (0, 1, -1)),
]
# Powers of two make x / scale exact, so the .5 ties below stay ties; the others do not.
SCALES = [0.5, 0.1, 2.0, 0.25, 0.3, 1.0, 0.0625]
TIES = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 4.5, -4.5]


# --- the slow reference --------------------------------------------------------------------


def _param_at(param: torch.Tensor | None, index: tuple[int, ...], axis, block_size) -> float:
    """The scale / zero point that applies to the element at ``index``."""
    if param is None:
        return 0.0
    if param.ndim == 0:
        return param.item()
    if block_size is None:
        return param[index[axis]].item()
    block = list(index)
    block[axis] //= block_size
    return param[tuple(block)].item()


def ref_quantize(x, scale, zero_point, dtype, axis=None, block_size=None) -> torch.Tensor:
    t = qtype(dtype)
    out = torch.empty(x.shape, dtype=torch.int64)
    for index in itertools.product(*map(range, x.shape)):
        s = np.float32(_param_at(scale, index, axis, block_size))
        zp = int(_param_at(zero_point, index, axis, block_size))
        with np.errstate(over="ignore"):
            v = float(np.float32(x[index].item()) / s)  # ONNX divides in float32
        q = round(v) + zp if math.isfinite(v) else v
        out[index] = int(min(max(q, t.qmin), t.qmax))
    return out


def ref_dequantize(q, scale, zero_point, dtype, axis=None, block_size=None) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float32)
    for index in itertools.product(*map(range, q.shape)):
        s = np.float32(_param_at(scale, index, axis, block_size))
        zp = int(_param_at(zero_point, index, axis, block_size))
        out[index] = float(np.float32(int(q[index]) - zp) * s)
    return out


def ref_fake_quantize(x, scale, zero_point, dtype, axis=None, block_size=None) -> torch.Tensor:
    q = ref_quantize(x, scale, zero_point, dtype, axis, block_size)
    return ref_dequantize(q, scale, zero_point, dtype, axis, block_size)


def _param_shape(axis, block_size) -> tuple[int, ...]:
    if axis is None:
        return ()
    if block_size is None:
        return (SHAPE[axis],)
    shape = list(SHAPE)
    shape[axis] = -(-shape[axis] // block_size)
    return tuple(shape)


def make_case(dtype, axis, block_size, with_zero_point, seed=0):
    """``(x, scale, zero_point)``: x covers ties, ordinary values and both saturation ends."""
    t = qtype(dtype)
    gen = torch.Generator().manual_seed(seed)
    shape = _param_shape(axis, block_size)
    n = math.prod(shape)
    scale = torch.tensor([0.25]) if axis is None else torch.tensor(SCALES * n)[:n]
    scale = scale.reshape(shape)
    zero_point = None
    if with_zero_point:
        zero_point = torch.randint(t.qmin, t.qmax + 1, shape, generator=gen).to(torch.float32)
    span = t.qmax - t.qmin + 4
    units = (torch.rand(SHAPE, generator=gen, dtype=torch.float64) * 2 - 1) * span
    units.view(-1)[: len(TIES)] = torch.tensor(TIES, dtype=torch.float64)
    units.view(-1)[len(TIES) : 3 * len(TIES)] *= 8 / span  # near zero as well
    per_element = torch.empty(SHAPE, dtype=torch.float64)
    for index in itertools.product(*map(range, SHAPE)):
        per_element[index] = _param_at(scale, index, axis, block_size)
    return (units * per_element).to(torch.float32), scale, zero_point


# --- exact equality against the reference ---------------------------------------------------


@pytest.mark.parametrize("with_zero_point", [True, False], ids=["zp", "no-zp"])
@pytest.mark.parametrize(("axis", "block_size"), MODES)
@pytest.mark.parametrize("dtype", INTEGER)
def test_matches_reference(dtype, axis, block_size, with_zero_point):
    x, scale, zp = make_case(dtype, axis, block_size, with_zero_point)
    kw = dict(axis=axis, block_size=block_size)
    q = P.quantize(x, scale, zp, dtype, **kw)
    assert q.dtype == qtype(dtype).storage_dtype
    assert torch.equal(q.to(torch.int64), ref_quantize(x, scale, zp, dtype, **kw))
    assert torch.equal(
        P.dequantize(q, scale, zp, dtype, **kw), ref_dequantize(q, scale, zp, dtype, **kw)
    )
    assert torch.equal(
        P.fake_quantize(x, scale, zp, dtype, **kw), ref_fake_quantize(x, scale, zp, dtype, **kw)
    )


def test_ties_round_half_to_even_and_saturate():
    x = torch.tensor([0.5, 1.5, 2.5, -2.5, 3.5, -3.5, -0.5, 300.0, -300.0])
    expected = [0, 2, 2, -2, 4, -4, 0, 127, -128]
    assert P.quantize(x, 1.0, None, "int8").tolist() == expected
    assert P.quantize(x, 1.0, 10, "uint8").tolist() == [10, 12, 12, 8, 14, 6, 10, 255, 0]


def test_infinities_saturate():
    x = torch.tensor([math.inf, -math.inf])
    for dtype in INTEGER:
        t = qtype(dtype)
        assert P.quantize(x, 0.5, None, dtype).tolist() == [t.qmax, t.qmin]


def test_uint16_storage_holds_the_whole_grid():
    q = P.quantize(torch.tensor([65535.0, 70000.0, 0.0]), 1.0, None, "uint16")
    assert q.tolist() == [65535, 65535, 0]
    assert P.dequantize(q, 2.0, 1, "uint16").tolist() == [131068.0, 131068.0, -2.0]


# --- exact equality against ONNX (reference evaluator and onnxruntime) ----------------------

ONNX_TYPES = {
    "int4": "INT4",
    "uint4": "UINT4",
    "int8": "INT8",
    "uint8": "UINT8",
    "int16": "INT16",
    "uint16": "UINT16",
}


def _onnx_model(op, floats: dict, integers: dict, out_type: int, attrs: dict):
    """A one-node opset-21 model; float inputs are graph inputs, integer ones initializers
    (onnxruntime's Python API cannot feed 4-bit tensors)."""
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in floats.items()
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in integers.items()]
    names = [n for n in ("x", "scale", "zero_point") if n in floats or n in integers]
    shape = {**floats, **integers}["x"].shape
    node = helper.make_node(op, names, ["y"], **attrs)
    out = helper.make_tensor_value_info("y", out_type, shape)
    graph = helper.make_graph([node], op, inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _widen_4bit_output(model):
    """onnxruntime cannot return a 4-bit tensor to numpy: append an exact Cast to int8."""
    out = model.graph.output[0]
    if out.type.tensor_type.elem_type not in (TensorProto.INT4, TensorProto.UINT4):
        return model
    model.graph.node[0].output[0] = "y4"
    model.graph.node.append(helper.make_node("Cast", ["y4"], ["y"], to=TensorProto.INT8))
    out.type.tensor_type.elem_type = TensorProto.INT8
    return model


def run_onnx(model, feeds: dict, runtime: str) -> np.ndarray:
    if runtime == "reference":
        return ReferenceEvaluator(model).run(None, feeds)[0]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            _widen_4bit_output(model).SerializeToString(), options, ["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own NotImplemented / Fail types
        if "NOT_IMPLEMENTED" in str(e) or "Could not find an implementation" in str(e):
            pytest.skip(f"onnxruntime {ort.__version__} CPU lacks this kernel: {e}")
        raise
    return session.run(None, feeds)[0]


def _onnx_attrs(axis, block_size) -> dict:
    attrs = {} if axis is None else {"axis": axis}
    return attrs if block_size is None else {**attrs, "block_size": block_size}


def _np_int(t: torch.Tensor, dtype: str) -> np.ndarray:
    np_dtype = helper.tensor_dtype_to_np_dtype(getattr(TensorProto, ONNX_TYPES[dtype]))
    return t.to(torch.int64).numpy().astype(np_dtype)


RUNTIMES = ["reference", "onnxruntime"]


@pytest.mark.onnx
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("with_zero_point", [True, False], ids=["zp", "no-zp"])
@pytest.mark.parametrize(("axis", "block_size"), MODES)
@pytest.mark.parametrize("dtype", INTEGER)
def test_quantize_matches_onnx(dtype, axis, block_size, with_zero_point, runtime):
    x, scale, zp = make_case(dtype, axis, block_size, with_zero_point, seed=1)
    out_type = getattr(TensorProto, ONNX_TYPES[dtype])
    attrs = _onnx_attrs(axis, block_size)
    floats = {"x": x.numpy(), "scale": scale.numpy()}
    integers = {}
    if zp is None:
        attrs["output_dtype"] = out_type
    else:
        integers["zero_point"] = _np_int(zp, dtype)
    model = _onnx_model("QuantizeLinear", floats, integers, out_type, attrs)
    expected = run_onnx(model, floats, runtime).astype(np.int64)
    got = P.quantize(x, scale, zp, dtype, axis=axis, block_size=block_size)
    np.testing.assert_array_equal(got.to(torch.int64).numpy(), expected)


@pytest.mark.onnx
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("with_zero_point", [True, False], ids=["zp", "no-zp"])
@pytest.mark.parametrize(("axis", "block_size"), MODES)
@pytest.mark.parametrize("dtype", INTEGER)
def test_dequantize_matches_onnx(dtype, axis, block_size, with_zero_point, runtime):
    _, scale, zp = make_case(dtype, axis, block_size, with_zero_point, seed=2)
    t = qtype(dtype)
    q = torch.randint(t.qmin, t.qmax + 1, SHAPE, generator=torch.Generator().manual_seed(3))
    q.view(-1)[:2] = torch.tensor([t.qmin, t.qmax])
    integers = {"x": _np_int(q, dtype)}
    if zp is not None:
        integers["zero_point"] = _np_int(zp, dtype)
    floats = {"scale": scale.numpy()}
    attrs = _onnx_attrs(axis, block_size)
    model = _onnx_model("DequantizeLinear", floats, integers, TensorProto.FLOAT, attrs)
    expected = run_onnx(model, floats, runtime)
    got = P.dequantize(q.to(t.storage_dtype), scale, zp, dtype, axis=axis, block_size=block_size)
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(got.numpy().view(np.int32), expected.view(np.int32))


# --- float casts ----------------------------------------------------------------------------

FP8 = {"fp8_e4m3": "FLOAT8E4M3FN", "fp8_e5m2": "FLOAT8E5M2"}


def _fp8_inputs() -> np.ndarray:
    """Every fp8 grid point and the midpoints between them (ties) with their neighbours,
    subnormals, values beyond the largest finite one, +-inf, NaN and random floats."""
    grids = [
        np.arange(256, dtype=np.uint8).view(d).astype(np.float32)
        for d in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
    ]
    grid = np.unique(np.concatenate([g[np.isfinite(g)] for g in grids]))
    mids = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)
    beyond = [449.0, 464.0, 465.0, 500.0, 57344.0, 61440.0, 61441.0, 1e9, -1e9, 3.4e38]
    tiny = [2.0**-9, 2.0**-10, 2.0**-16, 2.0**-17, 1e-30, -0.0]
    special = [np.inf, -np.inf, np.nan, 448.0, *beyond, *tiny]
    rng = np.random.default_rng(0)
    random = rng.standard_normal(2000).astype(np.float32) * np.float32(100)
    parts = [grid, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), special, random]
    return np.concatenate([np.asarray(p, np.float32) for p in parts])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that any NaN matches any NaN."""
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((a.view(np.int32) == b.view(np.int32)) | both_nan))


@pytest.mark.onnx
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("dtype", list(FP8))
def test_fp8_cast_matches_onnx_saturating_cast(dtype, runtime):
    x = _fp8_inputs()
    fp8 = getattr(TensorProto, FP8[dtype])
    # The Cast back to float is exact; it lets onnxruntime hand the result to numpy.
    nodes = [
        helper.make_node("Cast", ["x"], ["c"], to=fp8, saturate=1),
        helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n in "xy"]
    graph = helper.make_graph(nodes, "cast", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    expected = run_onnx(model, {"x": x}, runtime)
    got = P.cast(torch.from_numpy(x), dtype)
    assert got.dtype == torch.float32
    got = got.numpy()
    assert np.isnan(expected).sum() == np.isnan(x).sum() == 1
    assert _same_bits(got, expected)


def test_fp8_saturates_infinities_and_keeps_nan():
    x = torch.tensor([math.inf, -math.inf, 1e6, math.nan, 2.0**-10, 2.0**-17])
    assert P.cast(x, "fp8_e4m3")[:3].tolist() == [448.0, -448.0, 448.0]
    assert P.cast(x, "fp8_e5m2")[:3].tolist() == [57344.0, -57344.0, 57344.0]
    assert P.cast(x, "fp8_e4m3")[3].isnan() and P.cast(x, "fp8_e5m2")[3].isnan()
    assert P.cast(x, "fp8_e4m3")[4:].tolist() == [0.0, 0.0]  # ties to even at the bottom
    assert P.cast(x, "fp8_e5m2")[4:].tolist() == [2.0**-10, 0.0]


def _half_ties(dtype: torch.dtype) -> torch.Tensor:
    """Values at, just above and just below the midpoints of the ``dtype`` grid."""
    grid = (torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 1e3).to(dtype)
    up = torch.nextafter(grid, torch.tensor(math.inf, dtype=dtype)).double()
    mids = (grid.double() + up) / 2
    finite = torch.isfinite(mids)
    return torch.cat([mids, mids * (1 + 2**-30), mids * (1 - 2**-30)])[finite.repeat(3)]


@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_casts_equal_torch(name, dtype):
    big = torch.finfo(dtype).max
    tiny = [0.0, -0.0, 1e-8, 1e-40]
    large = [65504.0, 65519.0, 65520.0, 1e5, -1e5, big, 3.4e38, -3.4e38]
    special = torch.tensor([*tiny, *large, math.inf, -math.inf, math.nan])
    for x in (special, _half_ties(dtype).float(), _half_ties(dtype)):  # float32 and float64
        got, expected = P.cast(x, name), x.to(dtype).float()
        assert got.dtype == torch.float32
        assert _same_bits(got.numpy(), expected.numpy())
    assert P.cast(torch.tensor([1e5]), "fp16").item() == math.inf  # overflow is not saturated


def test_fp32_cast_is_identity():
    x = torch.randn(10, dtype=torch.float64)
    got = P.cast(x, "fp32")
    assert got.dtype == torch.float32 and torch.equal(got, x.float())


# --- properties -----------------------------------------------------------------------------

FLOATS = st.floats(-1e6, 1e6, allow_nan=False, width=32)
SCALE = st.floats(2.0**-20, 2.0**20, width=32)


@st.composite
def quant_case(draw, allow_infinity=False):
    """``(x, scale, zero_point, dtype, axis)``: per-tensor or per-axis (axis 0 of a 2-D x)."""
    dtype = draw(st.sampled_from(INTEGER))
    t = qtype(dtype)
    elements = st.floats(allow_nan=False, allow_infinity=allow_infinity, width=32)
    x = draw(
        hnp.arrays(
            np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=5), elements=elements
        )
    )
    per_axis = draw(st.booleans())
    n = x.shape[0] if per_axis else 1
    scale = torch.tensor(draw(st.lists(SCALE, min_size=n, max_size=n)))
    zps = st.lists(st.integers(t.qmin, t.qmax), min_size=n, max_size=n)
    zp = draw(st.none() | zps.map(lambda v: torch.tensor(v, dtype=torch.float32)))
    if not per_axis:
        scale = scale.reshape(())
        zp = None if zp is None else zp.reshape(())
    return torch.from_numpy(x), scale, zp, dtype, 0 if per_axis else None


@settings(max_examples=60, deadline=None)
@given(quant_case(allow_infinity=True))
def test_quantized_values_within_range_and_match_reference(case):
    x, scale, zp, dtype, axis = case
    t = qtype(dtype)
    q = P.quantize(x, scale, zp, dtype, axis=axis)
    assert q.dtype == t.storage_dtype
    assert bool(((q >= t.qmin) & (q <= t.qmax)).all())
    assert torch.equal(q.to(torch.int64), ref_quantize(x, scale, zp, dtype, axis=axis))


@settings(max_examples=60, deadline=None)
@given(quant_case())
def test_fake_quantize_is_idempotent(case):
    x, scale, zp, dtype, axis = case
    once = P.fake_quantize(x, scale, zp, dtype, axis=axis)
    assert torch.equal(P.fake_quantize(once, scale, zp, dtype, axis=axis), once)


@settings(max_examples=60, deadline=None)
@given(quant_case())
def test_fake_quantize_forward_is_the_same_with_autograd(case):
    x, scale, zp, dtype, axis = case
    plain = P.fake_quantize(x, scale, zp, dtype, axis=axis)
    tracked = P.fake_quantize(x.clone().requires_grad_(), scale, zp, dtype, axis=axis)
    assert torch.equal(tracked.detach(), plain)


@settings(max_examples=60, deadline=None)
@given(quant_case(), st.data())
def test_representable_value_round_trips_exactly(case, data):
    _, scale, zp, dtype, axis = case
    t = qtype(dtype)
    n = 1 if axis is None else scale.shape[0]
    ks = data.draw(
        st.lists(
            st.lists(st.integers(t.qmin, t.qmax), min_size=3, max_size=3), min_size=n, max_size=n
        )
    )
    k = torch.tensor(ks)
    zp_col = torch.zeros(()) if zp is None else zp.reshape(-1, 1)
    x = (k - zp_col).to(torch.float32) * scale.reshape(-1, 1)
    q = P.quantize(x, scale, zp, dtype, axis=axis)
    assert torch.equal(q.to(torch.int64), k)
    assert torch.equal(P.dequantize(q, scale, zp, dtype, axis=axis), x)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(INTEGER), st.booleans(), FLOATS, FLOATS)
def test_choose_qparams_grid_covers_the_range(dtype, symmetric, a, b):
    t = qtype(dtype)
    lo, hi = min(a, b), max(a, b)
    scale, zp = P.choose_qparams(lo, hi, dtype, symmetric=symmetric)
    assert scale.dtype == zp.dtype == torch.float32
    assert scale.item() > 0 and float(zp.item()).is_integer() and t.qmin <= zp.item() <= t.qmax
    ends = torch.tensor([lo, hi, 0.0])
    err = (P.fake_quantize(ends, scale, zp, dtype) - ends).abs()
    assert err[2].item() == 0.0  # zero is exactly representable
    # float32 rounding of the scale can shift the far end of the grid by ~2**-23 per step
    slack = (t.qmax - t.qmin) * 2.0**-21
    assert bool((err[:2] <= (0.5 + slack) * scale).all()), (err, scale)


def test_choose_qparams_examples():
    scale, zp = P.choose_qparams(-1.0, 1.0, "int8", symmetric=True)
    assert scale.item() == pytest.approx(1 / 127) and zp.item() == 0
    scale, zp = P.choose_qparams(-1.0, 1.0, "uint8", symmetric=True)
    assert zp.item() == 128
    scale, zp = P.choose_qparams(0.0, 2.55, "uint8")
    assert scale.item() == pytest.approx(0.01) and zp.item() == 0
    scale, zp = P.choose_qparams(torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 2.0]), "uint4")
    assert scale.tolist() == pytest.approx([4 / 15, 2 / 15]) and zp.tolist() == [4.0, 0.0]
    with pytest.raises(ValueError, match="not finite"):
        P.choose_qparams(-math.inf, 1.0, "int8")


# --- gradients ------------------------------------------------------------------------------


def test_fake_quantize_gradient_per_tensor():
    # x / 0.5 rounds to -200, -129, -128, -21, 0, 0, 127, 128, 200: int8 keeps -128..127
    x = torch.tensor([-100, -64.3, -64.2, -10.3, 0, 0.2, 63.7, 63.8, 100], requires_grad=True)
    P.fake_quantize(x, 0.5, None, "int8").sum().backward()
    assert x.grad.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]
    ref = x.detach().clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(ref, 0.5, 0, -128, 127).sum().backward()
    assert torch.equal(x.grad, ref.grad)


def test_fake_quantize_gradient_per_axis():
    x = (torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 8).requires_grad_()
    scale, zp = torch.tensor([0.5, 1.0, 0.25]), torch.tensor([0.0, 3.0, -2.0])
    out = P.fake_quantize(x, scale, zp, "int4", axis=0)
    out.backward(torch.ones_like(out))
    ref = x.detach().clone().requires_grad_()
    expected = torch.fake_quantize_per_channel_affine(ref, scale, zp.int(), 0, -8, 7)
    expected.sum().backward()
    assert torch.equal(out.detach(), expected.detach())  # power-of-two scales: same rounding
    assert torch.equal(x.grad, ref.grad)
    assert 0 < x.grad.sum() < x.numel()  # both cases occur


def test_fake_quantize_saturates_infinities_under_autograd():
    # x / scale overflows float32 for 1e36: the result must saturate, not become NaN.
    x = torch.tensor([math.inf, -math.inf, 1e36, -1e36, 0.3], requires_grad=True)
    out = P.fake_quantize(x, 0.01, None, "int8")
    assert out.tolist() == pytest.approx([1.27, -1.28, 1.27, -1.28, 0.3])
    assert torch.equal(out.detach(), P.fake_quantize(x.detach(), 0.01, None, "int8"))
    out.sum().backward()
    assert x.grad.tolist() == [0, 0, 0, 0, 1]


def test_cast_gradient_is_straight_through():
    x = torch.tensor([-1e4, -448.0, -1.3, 0.3, 448.0, 500.0, 1e5, math.inf], requires_grad=True)
    P.cast(x, "fp8_e4m3").sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    for name in ("fp16", "bf16"):
        x.grad = None
        P.cast(x, name).sum().backward()
        assert x.grad.tolist() == [1.0] * 8


def test_learnable_scale_gets_the_lsq_gradient():
    x = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 3
    scale = torch.tensor(0.02, requires_grad=True)
    P.fake_quantize(x, scale, 5.0, "int8").sum().backward()
    v = (x / 0.02).double()
    q = (v.round() + 5).clamp(-128, 127)
    inside = (v.round() + 5 >= -128) & (v.round() + 5 <= 127)
    expected = torch.where(inside, v.round() - v, q - 5).sum()
    assert scale.grad is not None and torch.isfinite(scale.grad) and scale.grad != 0
    assert scale.grad.item() == pytest.approx(expected.item(), rel=1e-4)


def test_learnable_per_axis_scale_gets_a_gradient():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([0.01, 0.1, 0.03, 0.2], requires_grad=True)
    P.fake_quantize(x, scale, None, "int4", axis=0).pow(2).sum().backward()
    assert scale.grad is not None and bool(torch.isfinite(scale.grad).all())
    assert bool((scale.grad != 0).all())


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [P.quantize, P.dequantize, P.fake_quantize])
def test_per_axis_scale_of_wrong_length(fn):
    with pytest.raises(ValueError, match=r"per-axis scale has shape \(4,\); expected \(3,\)"):
        fn(torch.zeros(2, 3), torch.ones(4), None, "int8", axis=1)


@pytest.mark.parametrize("fn", [P.quantize, P.dequantize, P.fake_quantize])
def test_2d_scale_without_axis(fn):
    with pytest.raises(ValueError, match=r"shape \(2, 3\) needs an axis"):
        fn(torch.zeros(2, 3), torch.ones(2, 3), None, "int8")


@pytest.mark.parametrize("scale_shape", [(4, 2), (4, 4), (1, 3), (3, 3), (3,)])
@pytest.mark.parametrize("fn", [P.quantize, P.dequantize, P.fake_quantize])
def test_blocked_scale_of_wrong_shape(fn, scale_shape):
    # ONNX requires exactly ceil(5 / 2) = 3 blocks along axis 1 and x's other dimensions.
    with pytest.raises(ValueError, match=r"blocked scale has shape .*; expected \(4, 3\)"):
        fn(torch.zeros(4, 5), torch.ones(scale_shape), None, "int8", axis=1, block_size=2)


def test_blocked_zero_point_of_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(4, 2\); expected \(4, 3\)"):
        P.quantize(torch.zeros(4, 5), torch.ones(4, 3), torch.zeros(4, 2), "int8", 1, 2)


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        P.quantize(torch.zeros(4, 5), torch.ones(4, 1), None, "int8", axis=1, block_size=0)


@pytest.mark.parametrize("fn", [P.quantize, P.dequantize, P.fake_quantize])
def test_float_dtype_passed_to_quantize(fn):
    with pytest.raises(ValueError, match=r"fp16 is a float precision: use P\.cast"):
        fn(torch.zeros(3), 1.0, None, "fp16")


def test_integer_dtype_passed_to_cast():
    with pytest.raises(ValueError, match=r"int8 is an integer precision: use P\.fake_quantize"):
        P.cast(torch.zeros(3), "int8")


@pytest.mark.parametrize("fn", [P.quantize, P.fake_quantize, P.cast])
def test_unknown_dtype(fn):
    args = () if fn is P.cast else (1.0, None)
    with pytest.raises(ValueError, match=r"unknown precision 'int3'.*int4, uint4, int8"):
        fn(torch.zeros(3), *args, "int3")


@settings(max_examples=200, deadline=None)
@given(st.floats(2.0**-20, 4.0, width=32))
def test_reciprocal_scale_is_one_over_what_float32_floors_its_inverse_to(scale):
    """ONNX Runtime's QLinearSoftmax multiplies by floor(1.0f / scale) in float32."""
    s = np.float32(scale)
    out = P.reciprocal_scale(torch.tensor(s)).numpy()
    k = np.floor(np.float32(1) / s)
    if k < 1:
        assert out == s
        return
    assert np.floor(np.float32(1) / out) == k
    assert abs(float(out) * float(k) - 1) < 2**-21  # 1 / k to float32 rounding
    assert out >= s * (1 - 2**-21)  # never finer than asked (the range stays covered)


def test_choose_qparams_reciprocal_keeps_zero_exact_and_covers_the_range():
    scale, zp = P.choose_qparams(0.0, 0.4327, "int8", reciprocal=True)
    assert np.floor(np.float32(1) / scale.numpy()) == math.floor(255 / 0.4327)
    assert zp.item() == -128
    assert P.fake_quantize(torch.tensor([0.4327]), scale, zp, "int8").item() == pytest.approx(
        0.4327, abs=scale.item() / 2
    )
