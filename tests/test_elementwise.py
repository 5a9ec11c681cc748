"""activation, activation_backward and bias_grad against long-double NumPy references.

Tolerances: fastmlp's float32 exp is documented at about 2 ulp and its tanh (a rational fit) at
about 5, and sigmoid adds two roundings to exp (1 + e, then 1 / .), so a forward activation is
checked at ACT_ULPS * eps * |y| + tiny (eps is 1 to 2 ulp of y: 4 to 8 ulp in all), where tiny
is the smallest normal number: below it results are subnormal and ulps stop scaling (float32 sigmoid
flushes to 0 below about -88.4, where its exp overflows). The backward
formulas are two or three roundings of terms bounded by |grad_out| * M, where M is the formula
with every term replaced by its absolute value (sigmoid: |y| (1 + |y|), tanh: 1 + y**2), so they are
checked at BACKWARD_ROUNDINGS * eps * |grad_out| * M (+ tiny, for subnormal results). relu and
identity are exact.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels

DTYPES = (np.float32, np.float64)
ACTIVATIONS = ("identity", "relu", "sigmoid", "logistic", "tanh")
ACT_ULPS = 4
BACKWARD_ROUNDINGS = 2  # in units of eps = 2u: covers up to four roundings

LD = np.longdouble


def dtype_id(d):
    return np.dtype(d).name


def act_reference(x, kind):
    x = np.asarray(x, dtype=LD)
    if kind == "identity":
        return x
    if kind == "relu":
        return np.where(x < 0, LD(0), x)
    if kind in ("sigmoid", "logistic"):
        with np.errstate(over="ignore"):  # exp(-x) = inf gives the right limit, 0
            return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    raise AssertionError(kind)


def act_tolerance(expected, dtype):
    return ACT_ULPS * np.finfo(dtype).eps * np.abs(expected) + np.finfo(dtype).tiny


def backward_tolerance(scale, dtype):
    return BACKWARD_ROUNDINGS * np.finfo(dtype).eps * scale + np.where(scale > 0, np.finfo(dtype).tiny, 0)


def backward_reference(g, y, kind):
    """(grad_in, error scale M) in long double."""
    g, y = g.astype(LD), y.astype(LD)
    if kind == "identity":
        return g, np.zeros_like(g)
    if kind == "relu":
        return np.where(y > 0, g, LD(0)), np.zeros_like(g)
    if kind in ("sigmoid", "logistic"):
        return g * (y * (1 - y)), np.abs(g) * np.abs(y) * (1 + np.abs(y))
    if kind == "tanh":
        return g * (1 - y * y), np.abs(g) * (1 + y * y)
    raise AssertionError(kind)


def activation_inputs(rng, dtype):
    """A grid over the interesting range, random normals at several scales, and special values."""
    grid = np.linspace(-30, 30, 6001)
    special = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.625, -0.625, 0.6249999, 20.0, -20.0, 0.5, -0.5]
    x = np.concatenate([grid, rng.standard_normal(3000), 5 * rng.standard_normal(3000), special])
    return x.astype(dtype)


def assert_close(got, expected, bound, what):
    err = np.abs(got.astype(LD) - expected)
    bad = ~(err <= bound)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        pytest.fail(f"{what}: {int(bad.sum())} elements outside the bound; first at {i}: got {got.flat[i]!r}, "
                    f"expected {float(expected.flat[i])!r}, |err| {float(err.flat[i]):.3g} > "
                    f"{float(bound.flat[i]):.3g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_matches_reference_within_a_few_ulp(backend, rng, kind, dtype):
    x = activation_inputs(rng, dtype)
    got = backend.get(kernels.activation(backend.put(x), kind))
    assert got.dtype == x.dtype and got.shape == x.shape
    expected = act_reference(x, kind)
    eps = np.finfo(dtype).eps
    assert_close(got, expected, act_tolerance(expected, dtype), f"{kind} on {np.dtype(dtype).name}")


def test_float32_tanh_is_within_6_ulp_on_a_dense_sweep(isa):
    # Every 101st float in [1e-8, 10] and its negative: the rational fit's documented error (about
    # 5 ulp; the portable path's double rounding adds a little), exact odd symmetry, and +-1 where tanh rounds to it.
    lo, hi = np.float32(1e-8).view(np.int32), np.float32(10.0).view(np.int32)
    x = np.arange(lo, hi, 101, dtype=np.int64).astype(np.int32).view(np.float32)
    y = kernels.activation(x, "tanh")
    expected = np.tanh(x.astype(np.float64))
    ulps = np.abs(y.astype(np.float64) - expected) / np.spacing(expected.astype(np.float32)).astype(np.float64)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= 6.0, f"tanh({x[worst]!r}) = {y[worst]!r}, expected {expected[worst]!r}: {ulps[worst]:.2f} ulp"
    np.testing.assert_array_equal(kernels.activation(-x, "tanh"), -y)
    assert np.all(y[x >= 9.02] == 1.0)  # tanh rounds to 1 from 9.01


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_activation_keeps_any_shape(rng, dtype):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    got = kernels.activation(x, "tanh")
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got.reshape(-1), kernels.activation(x.reshape(-1), "tanh"))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_propagates_nan(isa, kind, dtype):
    x = np.array([np.nan, 1.0, np.nan, -1.0, np.nan], dtype=dtype)
    got = kernels.activation(x, kind)
    assert np.isnan(got[[0, 2, 4]]).all(), f"{kind}(NaN) must be NaN (as in PyTorch), got {got}"
    assert np.isfinite(got[[1, 3]]).all()


def test_relu_of_nan_is_nan(isa):
    for dtype in DTYPES:
        assert np.isnan(kernels.activation(np.array([np.nan], dtype=dtype), "relu")[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_sigmoid_and_tanh_saturate_without_nan_at_huge_and_infinite_inputs(isa, dtype):
    x = np.array([1e4, -1e4, np.inf, -np.inf, 89.0, -89.0, 1e30, -1e30], dtype=dtype)
    np.testing.assert_array_equal(kernels.activation(x, "sigmoid")[:4], np.array([1, 0, 1, 0], dtype=dtype))
    np.testing.assert_array_equal(kernels.activation(x, "tanh"), np.array([1, -1] * 4, dtype=dtype))
    sig = kernels.activation(x, "sigmoid")
    assert ((sig >= 0) & (sig <= 1)).all(), sig
    np.testing.assert_array_equal(sig[[4, 6]], 1)
    assert (sig[[5, 7]] < 1e-30).all()
    np.testing.assert_array_equal(kernels.activation(x, "relu"), np.where(x < 0, 0, x))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_in_place_equals_out_of_place(rng, kind, dtype):
    x = activation_inputs(rng, dtype)
    expected = kernels.activation(x, kind)
    got = kernels.activation(x, kind, out=x)
    assert got is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_float32_vector_bundles_and_scalar_tails_agree_bitwise(isa, rng, kind):
    # The kernel runs whole SIMD bundles, then a scalar tail through the same generic math; an
    # element must come out the same wherever it falls. One-element calls are all tail.
    x = activation_inputs(rng, np.float32)[::7].copy()
    whole = kernels.activation(x, kind)
    one_by_one = np.array([kernels.activation(x[i:i + 1], kind)[0] for i in range(x.size)], dtype=np.float32)
    np.testing.assert_array_equal(whole.view(np.uint32), one_by_one.view(np.uint32))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_activation_writes_and_returns_out(rng, dtype):
    x = rng.standard_normal((7, 9)).astype(dtype)
    out = np.full_like(x, np.nan)
    got = kernels.activation(x, "relu", out=out)
    assert got is out
    np.testing.assert_array_equal(out, np.maximum(x, 0))


def backward_inputs(rng, kind, dtype, n=20000):
    x = np.concatenate([rng.standard_normal(n // 2) * 3, np.linspace(-12, 12, n - n // 2)])
    y = act_reference(x, kind).astype(dtype)
    if kind == "relu":
        y[::7] = 0
    g = rng.standard_normal(n).astype(dtype)
    return g, y


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_backward_matches_reference(backend, rng, kind, dtype):
    g, y = backward_inputs(rng, kind, dtype)
    got = backend.get(kernels.activation_backward(backend.put(g), backend.put(y), kind))
    assert got.dtype == g.dtype and got.shape == g.shape
    expected, scale = backward_reference(g, y, kind)
    assert_close(got, expected, backward_tolerance(scale, dtype), f"{kind} backward on {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_relu_backward_passes_gradient_only_where_output_is_positive(dtype):
    y = np.array([0.0, -0.0, 1e-30, 2.0, 0.0, 3.0], dtype=dtype)
    g = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 5.0], dtype=dtype)
    np.testing.assert_array_equal(kernels.activation_backward(g, y, "relu"),
                                  np.array([0, 0, 3, 4, 0, 5], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_backward_in_place_on_grad_out(rng, kind, dtype):
    g, y = backward_inputs(rng, kind, dtype, n=1000)
    expected = kernels.activation_backward(g, y, kind)
    got = kernels.activation_backward(g, y, kind, out=g)
    assert got is g
    np.testing.assert_array_equal(g, expected)
    g2, y2 = backward_inputs(rng, kind, dtype, n=1000)
    expected = kernels.activation_backward(g2, y2, kind)
    got = kernels.activation_backward(g2, y2, kind, out=y2)
    assert got is y2
    np.testing.assert_array_equal(y2, expected)


BIAS_ROWS = (0, 1, 255, 256, 257, 1000, 5000)


#: bias_grad sums runs of this many rows in the array's dtype before adding them in float64.
BIAS_SUM_ROWS = 16


def bias_grad_tolerance(grad, expected):
    """Runs of 16 rows summed in the dtype (16 * eps * sum |g|), runs and blocks added in float64
    (rows * eps64 * sum |g|), then rounded once to the dtype (eps * |sum|)."""
    rows = grad.shape[0]
    abs_sum = np.abs(grad).astype(LD).sum(axis=0)
    return (np.finfo(grad.dtype).eps * np.abs(expected)
            + min(rows, BIAS_SUM_ROWS) * np.finfo(grad.dtype).eps * abs_sum
            + rows * np.finfo(np.float64).eps * abs_sum)
BIAS_COLS = (0, 1, 7, 1025)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("cols", BIAS_COLS)
@pytest.mark.parametrize("rows", BIAS_ROWS)
def test_bias_grad_matches_long_double_column_sums(backend, rng, rows, cols, dtype):
    grad = rng.standard_normal((rows, cols)).astype(dtype)
    grad[:, ::3] += 100  # a large common offset makes a sloppy float32 sum visible
    got = backend.get(kernels.bias_grad(backend.put(grad)))
    assert got.shape == (cols,) and got.dtype == grad.dtype
    expected = grad.astype(LD).sum(axis=0)
    assert_close(got, expected, bias_grad_tolerance(grad, expected), f"bias_grad{grad.shape}")
    if rows == 0:
        np.testing.assert_array_equal(got, np.zeros(cols, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bias_grad_writes_and_returns_out(rng, dtype):
    grad = rng.standard_normal((300, 5)).astype(dtype)
    out = np.full(5, np.nan, dtype=dtype)
    got = kernels.bias_grad(grad, out=out)
    assert got is out
    np.testing.assert_array_equal(out, kernels.bias_grad(grad))
    out_empty_rows = np.full(5, np.nan, dtype=dtype)
    kernels.bias_grad(np.empty((0, 5), dtype=dtype), out=out_empty_rows)
    np.testing.assert_array_equal(out_empty_rows, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bias_grad_is_bitwise_identical_on_1_and_2_threads(isa, threads, rng, dtype):
    for shape in [(5000, 1025), (1000, 7), (257, 3000), (100_000, 3)]:
        grad = rng.standard_normal(shape).astype(dtype)
        fastmlp.set_num_threads(1)
        one = kernels.bias_grad(grad)
        fastmlp.set_num_threads(2)
        two = kernels.bias_grad(grad)
        np.testing.assert_array_equal(one, two, err_msg=f"shape {shape}")


def _bias_grad_in_documented_order(grad):
    """csrc/cpu/colsum.h's order, emulated: per block of 256 rows, runs of 16 rows summed in the
    dtype one row after another, each run added to the block's float64 partial in run order; the
    blocks' partials added in float64 in block order; one rounding to the dtype."""
    rows, cols = grad.shape
    total = np.zeros(cols, np.float64)
    for b0 in range(0, rows, 256):
        partial = np.zeros(cols, np.float64)
        for r0 in range(b0, min(rows, b0 + 256), 16):
            run = np.zeros(cols, grad.dtype)
            for r in range(r0, min(rows, b0 + 256, r0 + 16)):
                run = run + grad[r]
            partial += run.astype(np.float64)
        total = partial if b0 == 0 else total + partial
    return total.astype(grad.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bias_grad_sums_in_the_documented_order_bitwise(isa, threads, rng, dtype):
    # Two runs of 16 rows are read side by side (two memory streams); their sums must still reach
    # the partial in run order. Row counts around the runs, the pairs and the 256-row blocks.
    for rows in (1, 15, 16, 17, 31, 32, 33, 48, 255, 256, 257, 600):
        for cols in (3, 1025):
            grad = (rng.standard_normal((rows, cols)) * 1e3).astype(dtype)
            grad[:, ::2] += 1e5  # large offsets make any change of order visible in the low bits
            expected = _bias_grad_in_documented_order(grad)
            for n in (1, 2):
                fastmlp.set_num_threads(n)
                np.testing.assert_array_equal(kernels.bias_grad(grad), expected, err_msg=f"{rows}x{cols}, {n} threads")


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_is_bitwise_identical_on_1_and_2_threads(threads, rng, kind):
    x = rng.standard_normal(200_003).astype(np.float32)
    g = rng.standard_normal(200_003).astype(np.float32)
    fastmlp.set_num_threads(1)
    one = kernels.activation(x, kind), kernels.activation_backward(g, x, kind)
    fastmlp.set_num_threads(2)
    two = kernels.activation(x, kind), kernels.activation_backward(g, x, kind)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


# Outputs of at least _core._get_stream_min_bytes() bytes are written with streaming stores, through
# a staging buffer in pieces aligned to the output's cache lines (csrc/cpu/stream.h); in-place
# calls keep plain stores. The values must be the same bits as with plain stores, for any length
# and any alignment of out (views that start mid-line, lengths that end mid-line or past a task's
# 32768-element chunk), on 2 threads, without a write outside out.
STREAM_SIZES = (1, 3, 15, 16, 17, 31, 129, 1000, 4099, 32768 + 37, 70001)


@pytest.fixture
def streaming(threads):
    """Streams every output (threshold 0) on 2 threads; restores the threshold afterwards."""
    previous = fastmlp._core._get_stream_min_bytes()
    fastmlp._core._set_stream_min_bytes(0)
    fastmlp.set_num_threads(2)
    yield
    fastmlp._core._set_stream_min_bytes(previous)


def _plain(fn):
    previous = fastmlp._core._get_stream_min_bytes()
    fastmlp._core._set_stream_min_bytes(2**63 - 1)
    try:
        return fn()
    finally:
        fastmlp._core._set_stream_min_bytes(previous)


class _OffsetOut:
    """An n-element output starting `shift` elements past a 64-byte boundary, inside a buffer whose
    margins hold a sentinel that must survive the call."""

    def __init__(self, n, dtype, shift):
        self.base = np.full(n + 64, -7.25, dtype)
        start = (-self.base.ctypes.data % 64) // self.base.itemsize + shift
        self.span = (start, start + n)
        self.out = self.base[start:start + n]

    def check(self, expected, what):
        np.testing.assert_array_equal(self.out, expected, err_msg=what)
        lo, hi = self.span
        assert (self.base[:lo] == -7.25).all() and (self.base[hi:] == -7.25).all(), f"{what}: wrote outside out"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ["identity", "relu", "sigmoid", "tanh"])
def test_streamed_activation_is_bitwise_the_plain_one(isa, streaming, rng, kind, dtype):
    for n in STREAM_SIZES:
        x = (rng.standard_normal(n) * 4).astype(dtype)
        expected = _plain(lambda: kernels.activation(x, kind))
        for shift in (0, 1, 2, 3, 4, 9):
            o = _OffsetOut(n, dtype, shift)
            assert kernels.activation(x, kind, out=o.out) is o.out
            o.check(expected, f"n={n} shift={shift}")
        y = x.copy()
        kernels.activation(y, kind, out=y)
        np.testing.assert_array_equal(y, expected, err_msg=f"in place, n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ["identity", "relu", "sigmoid", "tanh"])
def test_streamed_activation_backward_is_bitwise_the_plain_one(isa, streaming, rng, kind, dtype):
    for n in STREAM_SIZES:
        g = rng.standard_normal(n).astype(dtype)
        y = kernels.activation(rng.standard_normal(n).astype(dtype), kind)
        expected = _plain(lambda: kernels.activation_backward(g, y, kind))
        for shift in (0, 2, 5):
            o = _OffsetOut(n, dtype, shift)
            kernels.activation_backward(g, y, kind, out=o.out)
            o.check(expected, f"n={n} shift={shift}")
        for target in ("grad_out", "y"):
            g2, y2 = g.copy(), y.copy()
            kernels.activation_backward(g2, y2, kind, out=g2 if target == "grad_out" else y2)
            np.testing.assert_array_equal(g2 if target == "grad_out" else y2, expected,
                                          err_msg=f"out={target}, n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_streamed_relu_dropout_backward_is_bitwise_the_plain_one(isa, streaming, rng, dtype):
    for n in STREAM_SIZES:
        g = rng.standard_normal(n).astype(dtype)
        y = kernels.dropout(kernels.activation(rng.standard_normal(n).astype(dtype), "relu"), 0.3, seed=5, offset=0)
        expected = _plain(lambda: fastmlp._core._relu_dropout_backward(g, y, 0.3, np.empty_like(g)))
        for shift in (0, 7):
            o = _OffsetOut(n, dtype, shift)
            fastmlp._core._relu_dropout_backward(g, y, 0.3, o.out)
            o.check(expected, f"n={n} shift={shift}")
        g2 = g.copy()
        fastmlp._core._relu_dropout_backward(g2, y, 0.3, g2)
        np.testing.assert_array_equal(g2, expected, err_msg=f"in place, n={n}")


def test_streamed_outputs_are_complete_when_the_call_returns_on_2_threads(streaming, rng):
    # Streaming stores are fenced before each task reports done: the caller reads every element.
    x = rng.standard_normal(1 << 20).astype(np.float32)
    expected = np.maximum(x, 0)
    for _ in range(20):
        o = _OffsetOut(x.size, np.float32, 1)
        o.out[...] = np.nan
        kernels.activation(x, "relu", out=o.out)
        o.check(expected, "relu")


def test_stream_threshold_refuses_a_negative_size():
    with pytest.raises(ValueError, match="stream_min_bytes"):
        fastmlp._core._set_stream_min_bytes(-1)


@pytest.mark.parametrize("cols", [255, 256, 257, 513, 1023, 1024, 1029, 4096, 16384, 16385])
def test_streamed_softmax_cross_entropy_is_bitwise_the_plain_one(isa, streaming, rng, cols):
    # AVX2 and AVX-512 stream float gradients with rows of 256-16384 columns through a scratch row,
    # fencing once per task (300 rows: several tasks); every path must give the plain call's loss
    # and gradient bits, and write nothing outside the gradient.
    for rows in (1, 3, 17, 300):
        x = (rng.standard_normal((rows, cols)) * 5).astype(np.float32)
        labels = rng.integers(0, cols, rows)
        labels[0] = cols - 1  # the last column, and (rows > 1) the first: both piece edges
        labels[-1] = 0 if rows > 1 else labels[-1]
        loss, expected = _plain(lambda: kernels.softmax_cross_entropy(x, labels))
        for shift in (0, 1, 5):
            o = _OffsetOut(rows * cols, np.float32, shift)
            got_loss, grad = kernels.softmax_cross_entropy(x, labels, out=o.out.reshape(rows, cols))
            assert got_loss == loss, f"rows={rows} shift={shift}"
            o.check(expected.ravel(), f"rows={rows} shift={shift}")
        y = x.copy()
        got_loss, _ = kernels.softmax_cross_entropy(y, labels, out=y)
        assert got_loss == loss
        np.testing.assert_array_equal(y, expected, err_msg=f"in place, rows={rows}")


@pytest.mark.parametrize("shape", [(1, 5), (3, 17), (7, 129), (2, 16384 + 37), (5, 32768 // 5 + 3), (300, 229)])
def test_streamed_squared_error_is_bitwise_the_plain_one(isa, streaming, rng, shape):
    # The float gradient streams in whole lines of the output (the rest of a line waits for the
    # next piece); loss and gradient must be the plain call's bits for any offset of out, and
    # nothing outside out may be written. (300, 229) spans three 32768-element loss blocks.
    rows, cols = shape
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.standard_normal(shape).astype(np.float32)
    loss, expected = _plain(lambda: kernels.squared_error(x, t))
    for shift in (0, 1, 5, 12):
        o = _OffsetOut(rows * cols, np.float32, shift)
        got_loss, _ = kernels.squared_error(x, t, out=o.out.reshape(shape))
        assert got_loss == loss, f"shift={shift}"
        o.check(expected.ravel(), f"shift={shift}")
    y = x.copy()
    got_loss, _ = kernels.squared_error(y, t, out=y)
    assert got_loss == loss
    np.testing.assert_array_equal(y, expected, err_msg="in place")


def test_squared_error_is_bitwise_the_same_on_avx2_and_avx512(rng):
    # Both paths sum d² in sixteen double accumulators per block (eight-lane vectors on AVX-512,
    # four-lane ones on AVX2) combined in one tree: the same loss bits.
    if not {"avx2", "avx512"} <= set(fastmlp.available_isas()):
        pytest.skip("needs both the avx2 and the avx512 path")
    x = rng.standard_normal((300, 229)).astype(np.float32) * 3
    t = rng.standard_normal((300, 229)).astype(np.float32)
    got = {}
    previous = fastmlp.get_isa()
    try:
        for name in ("avx2", "avx512"):
            fastmlp.set_isa(name)
            got[name] = kernels.squared_error(x, t)
    finally:
        fastmlp.set_isa(previous)
    assert got["avx2"][0] == got["avx512"][0]
    np.testing.assert_array_equal(got["avx2"][1], got["avx512"][1])
