"""Fused losses (squared_error, softmax_cross_entropy, sigmoid_cross_entropy) against float64
NumPy references, central finite differences, huge logits, thread-count determinism and every
bad-input rule.

Tolerances, with eps = the machine epsilon of the dtype under test and n = rows:
- loss: every kernel term is a few roundings (fastmlp's exp/log are within 2-3 ulp, libm within 1),
  so 8 eps (1 + |ref|), plus (rows + cols) float64 roundings of the sum of non-negative terms; for
  the sigmoid loss the float64 path rounds t*x, so the first part scales with the mean over rows
  of sum(|x| + 1) over the row (loss_tol, sigmoid_loss_tol).
- grad: (softmax - onehot) / n and (sigmoid - t) / n are probabilities with a few ulp of error,
  scaled by 1/n: |grad - ref| <= 8 eps / n. (pred - target) / n: two roundings, rtol 4 eps.
- finite differences (float64, h = 1e-6): truncation O(h^2 f''') plus rounding eps |f| / h, both
  well below 1e-7 for the O(1) losses used.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K

DTYPES = (np.float32, np.float64)
# zero, one, primes, lane/block non-multiples, and more than one reduction block of 256 rows
# Wide rows too: several runs of 256 columns, each many SIMD bundles, with a ragged tail. Rows of
# 4k <= 1024 columns take the GPU's register-resident softmax (1, 2, 4 and 8 float4 per lane).
SHAPES = [(0, 3), (1, 1), (1, 7), (3, 0), (5, 3), (7, 11), (13, 17), (31, 9), (257, 10), (600, 3), (3, 1000),
          (2, 4099), (64, 4), (6, 200), (5, 384), (9, 516), (4, 1024)]


def eps_of(dtype) -> float:
    return float(np.finfo(dtype).eps)


# ---------------------------------------------------------------------------------------------
# float64 references


def ref_squared_error(pred, target):
    p, t = pred.astype(np.float64), target.astype(np.float64)
    rows = p.shape[0]
    if rows == 0:
        return 0.0, np.zeros_like(p)
    d = p - t
    return 0.5 * float(np.sum(d * d)) / rows, d / rows


def ref_softmax_cross_entropy(logits, labels):
    x = logits.astype(np.float64)
    rows = x.shape[0]
    if rows == 0:
        return 0.0, np.zeros_like(x)
    # Shifted by the row max and never through a rounded logsumexp, so the reference keeps full
    # accuracy for logits of any magnitude.
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    idx = np.arange(rows)
    loss = float(np.mean((m[:, 0] - x[idx, labels]) + np.log(s[:, 0])))
    grad = e / s
    grad[idx, labels] -= 1.0
    return loss, grad / rows


def ref_sigmoid_cross_entropy(logits, targets):
    x, t = logits.astype(np.float64), targets.astype(np.float64)
    rows = x.shape[0]
    if rows == 0:
        return 0.0, np.zeros_like(x)
    e = np.exp(-np.abs(x))
    loss = float(np.sum(np.maximum(x, 0.0) - t * x + np.log1p(e))) / rows
    sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return loss, (sig - t) / rows


EPS64 = float(np.finfo(np.float64).eps)


def loss_tol(ref_loss, dtype, shape, term_scale=None):
    """|loss - ref| bound: 8 eps(dtype) per term on the mean term size (term_scale, default
    |ref|), plus the float64 summation of rows + cols non-negative terms."""
    rows, cols = shape
    scale = abs(ref_loss) if term_scale is None else term_scale
    return 8 * eps_of(dtype) * (1 + scale) + 2 * (rows + cols) * EPS64 * abs(ref_loss)


def sigmoid_loss_tol(ref_loss, logits, dtype):
    """The float64 path rounds t*x, an error of eps |x| per term before the terms partly cancel."""
    x = np.abs(logits.astype(np.float64))
    term_scale = float(np.sum(x + 1.0)) / max(x.shape[0], 1)
    return loss_tol(ref_loss, dtype, x.shape, term_scale)


def make_logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_labels(rng, rows, cols, dtype=np.int64):
    return rng.integers(0, max(cols, 1), size=rows).astype(dtype)


# ---------------------------------------------------------------------------------------------
# agreement with the float64 references


def backend_loss(backend, loss_fn, logits, second):
    """loss_fn on the backend, as (float loss, host gradient): on CUDA the loss comes back as a
    device scalar and the gradient as a device array."""
    loss, grad = loss_fn(backend.put(logits), backend.put(second))
    if backend == "cuda":
        loss = float(backend.get(loss))
    return loss, backend.get(grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_squared_error_matches_float64_reference(backend, rng, dtype, shape):
    pred = make_logits(rng, shape, dtype)
    target = make_logits(rng, shape, dtype)
    loss, grad = backend_loss(backend, K.squared_error, pred, target)
    ref_loss, ref_grad = ref_squared_error(pred, target)
    eps = eps_of(dtype)
    assert isinstance(loss, float)
    assert grad.shape == shape and grad.dtype == dtype
    assert abs(loss - ref_loss) <= loss_tol(ref_loss, dtype, pred.shape)
    np.testing.assert_allclose(grad, ref_grad, rtol=4 * eps, atol=np.finfo(dtype).tiny)


@pytest.mark.parametrize("label_dtype", (np.int32, np.int64))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] > 0 or s[0] == 0])
def test_softmax_cross_entropy_matches_float64_reference(backend, rng, dtype, shape, label_dtype):
    rows, cols = shape
    logits = make_logits(rng, shape, dtype)
    labels = make_labels(rng, rows, cols, label_dtype)
    loss, grad = backend_loss(backend, K.softmax_cross_entropy, logits, labels)
    ref_loss, ref_grad = ref_softmax_cross_entropy(logits, labels)
    eps = eps_of(dtype)
    assert isinstance(loss, float)
    assert grad.shape == shape and grad.dtype == dtype
    assert abs(loss - ref_loss) <= loss_tol(ref_loss, dtype, logits.shape)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=8 * eps / max(rows, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_cross_entropy_matches_float64_reference(backend, rng, dtype, shape):
    logits = make_logits(rng, shape, dtype)
    targets = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
    targets[rng.uniform(size=shape) < 0.3] = 1.0  # the usual 0/1 labels too
    targets[rng.uniform(size=shape) < 0.3] = 0.0
    loss, grad = backend_loss(backend, K.sigmoid_cross_entropy, logits, targets)
    ref_loss, ref_grad = ref_sigmoid_cross_entropy(logits, targets)
    eps = eps_of(dtype)
    assert isinstance(loss, float)
    assert grad.shape == shape and grad.dtype == dtype
    assert abs(loss - ref_loss) <= sigmoid_loss_tol(ref_loss, logits, dtype)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=8 * eps / max(shape[0], 1))


def test_zero_rows_give_zero_loss_and_empty_grad(isa):
    for dtype in DTYPES:
        x = np.zeros((0, 4), dtype)
        for loss, grad in (K.squared_error(x, x.copy()),
                           K.softmax_cross_entropy(x, np.zeros(0, np.int64)),
                           K.sigmoid_cross_entropy(x, x.copy())):
            assert loss == 0.0 and isinstance(loss, float)
            assert grad.shape == (0, 4) and grad.dtype == dtype


def test_zero_columns_give_zero_loss(isa):
    x = np.zeros((5, 0), np.float32)
    for loss, grad in (K.squared_error(x, x.copy()), K.sigmoid_cross_entropy(x, x.copy())):
        assert loss == 0.0
        assert grad.shape == (5, 0)


# ---------------------------------------------------------------------------------------------
# finite differences (float64)


def central_difference(f, x, index, h=1e-6):
    xp, xm = x.copy(), x.copy()
    xp[index] += h
    xm[index] -= h
    return (f(xp) - f(xm)) / (2 * h)


@pytest.mark.parametrize("name", ("squared", "softmax", "sigmoid"))
def test_loss_gradients_match_central_differences(isa, rng, name):
    rows, cols = 6, 5
    x = rng.standard_normal((rows, cols))
    if name == "squared":
        other = rng.standard_normal((rows, cols))
        f = lambda z: K.squared_error(z, other)  # noqa: E731
    elif name == "softmax":
        labels = make_labels(rng, rows, cols)
        f = lambda z: K.softmax_cross_entropy(z, labels)  # noqa: E731
    else:
        other = rng.uniform(size=(rows, cols))
        f = lambda z: K.sigmoid_cross_entropy(z, other)  # noqa: E731
    _, grad = f(x)
    numeric = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        numeric[index] = central_difference(lambda z: f(z)[0], x, index)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# stability, non-finite values, in place


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_is_stable_for_logits_of_magnitude_1e4(isa, rng, dtype):
    rows, cols = 9, 6
    logits = (rng.standard_normal((rows, cols)) * 1e4).astype(dtype)
    logits[0] = 1e4  # a tie at the top
    labels = make_labels(rng, rows, cols)
    loss, grad = K.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = ref_softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    eps = eps_of(dtype)
    assert abs(loss - ref_loss) <= loss_tol(ref_loss, dtype, logits.shape)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=8 * eps / rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_cross_entropy_is_stable_for_logits_of_magnitude_1e4(isa, rng, dtype):
    logits = np.array([[1e4, -1e4, 3e4, -3e4], [1e4, -1e4, 0.0, 50.0]], dtype)
    targets = np.array([[1.0, 0.0, 0.0, 1.0], [0.25, 0.75, 0.5, 1.0]], dtype)
    loss, grad = K.sigmoid_cross_entropy(logits, targets)
    ref_loss, ref_grad = ref_sigmoid_cross_entropy(logits, targets)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - ref_loss) <= sigmoid_loss_tol(ref_loss, logits, dtype)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=8 * eps_of(dtype) / 2)


@pytest.mark.parametrize("cols", [1, 17, 32, 67, 300, 1030])
@pytest.mark.parametrize("in_place", [False, True])
def test_sigmoid_cross_entropy_loss_stays_finite_near_the_float_range(isa, cols, in_place):
    # relu(x) - t*x of float32 inputs is finite in float64 even when it exceeds the float range:
    # the SIMD bundles must not overflow where the double formula (and the scalar tail) do not.
    # Targets outside [0, 1] are accepted, so t = -1 doubles the term. Wide rows put such terms in
    # several bundles of one lane's float sum; in place, the gradient overwrites the logits as
    # the row goes (with 4 rows the gradient's 1/rows is a float product, stored at once), so the
    # double formula must not read them back.
    rng = np.random.default_rng(cols)
    for value, target in ((2e38, 0.0), (3e38, -1.0), (-3e38, 1.0), (1e30, 1e9)):
        x = rng.standard_normal((4, cols)).astype(np.float32)
        t = rng.uniform(size=(4, cols)).astype(np.float32)
        x[0, ::16] = value
        t[0, ::16] = target
        x[2, cols // 2] = value  # one huge term in the middle of a row
        t[2, cols // 2] = target
        ref_loss, ref_grad = ref_sigmoid_cross_entropy(x, t)
        if in_place:
            grad = x.copy()
            loss, out = K.sigmoid_cross_entropy(grad, t, out=grad)
            assert out is grad
        else:
            loss, grad = K.sigmoid_cross_entropy(x, t)
        assert np.isfinite(ref_loss) and np.isfinite(loss), (value, target)
        assert loss == pytest.approx(ref_loss, rel=8 * eps_of(np.float32)), (value, target)
        np.testing.assert_allclose(grad, ref_grad, rtol=eps_of(np.float32), atol=8 * eps_of(np.float32))


def test_sigmoid_cross_entropy_keeps_tiny_losses_accurate(isa):
    # Confident, correct predictions: each term is log1p(exp(-|x|)) ~ exp(-|x|), far below eps.
    logits = np.array([[20.0, -30.0, 60.0]], np.float32)
    targets = np.array([[1.0, 0.0, 1.0]], np.float32)
    loss, _ = K.sigmoid_cross_entropy(logits, targets)
    ref_loss, _ = ref_sigmoid_cross_entropy(logits, targets)
    assert loss == pytest.approx(ref_loss, rel=8 * eps_of(np.float32))


def test_sigmoid_cross_entropy_keeps_tiny_losses_accurate_in_wide_rows(isa, rng):
    # The SIMD path takes one log per lane for many elements (a product of 1 + e): terms far below
    # eps must survive beside ordinary ones, and rows of only tiny terms keep full relative accuracy.
    cols = 1100
    x = rng.uniform(15.0, 40.0, size=(2, cols)).astype(np.float32)
    t = np.ones((2, cols), np.float32)
    x[0, ::7] = rng.uniform(-3.0, 3.0, size=x[0, ::7].shape).astype(np.float32)  # row 0: mixed
    t[0, ::7] = rng.uniform(0.0, 1.0, size=t[0, ::7].shape).astype(np.float32)
    for rows in (x, x[1:]):  # both rows; then the all-tiny row alone
        targets = np.ascontiguousarray(t[-rows.shape[0]:])
        loss, _ = K.sigmoid_cross_entropy(np.ascontiguousarray(rows), targets)
        ref_loss, _ = ref_sigmoid_cross_entropy(rows, targets)
        assert loss == pytest.approx(ref_loss, rel=8 * eps_of(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_logits_propagate_to_the_loss(isa, dtype):
    labels = np.array([0, 1], np.int64)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([[0.5, bad, 1.0], [1.0, 2.0, 3.0]], dtype)
        t = np.full_like(x, 0.5)
        assert not np.isfinite(K.sigmoid_cross_entropy(x, t)[0])
        assert not np.isfinite(K.squared_error(x, t)[0])
        if bad != -np.inf:  # -inf is a valid logit for softmax (see below)
            assert not np.isfinite(K.softmax_cross_entropy(x, labels)[0])
    x = np.array([[np.nan, 0.0], [1.0, 2.0]], dtype)
    assert np.isnan(K.softmax_cross_entropy(x, labels)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", (3, 4))  # 4: the GPU's register-resident rows
def test_softmax_cross_entropy_treats_minus_inf_as_probability_zero(backend, dtype, cols):
    x = np.array([[0.5, -np.inf, 1.0, 2.0], [1.0, 2.0, -np.inf, -np.inf]], dtype)[:, :cols].copy()
    labels = np.array([0, 1], np.int64)
    loss, grad = backend_loss(backend, K.softmax_cross_entropy, x, labels)
    ref_loss, ref_grad = ref_softmax_cross_entropy(x, labels)
    eps = eps_of(dtype)
    assert abs(loss - ref_loss) <= loss_tol(ref_loss, dtype, x.shape)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=8 * eps / 2)
    # the label's own logit at -inf: probability 0, loss +inf
    assert backend_loss(backend, K.softmax_cross_entropy, x, np.array([1, 0], np.int64))[0] == np.inf


@pytest.mark.parametrize("name", ("squared", "softmax", "sigmoid"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_can_be_written_in_place_over_the_logits(backend, rng, name, dtype):
    # 300 columns: past the CUDA kernels' four-columns-per-lane batches (and a label inside them)
    x = make_logits(rng, (13, 300), dtype)
    put, get = backend.put, backend.get
    other = put(rng.uniform(size=x.shape).astype(dtype))
    labels = put(make_labels(rng, 13, 300))
    fn = {"squared": lambda z, out=None: K.squared_error(z, other, out=out),
          "softmax": lambda z, out=None: K.softmax_cross_entropy(z, labels, out=out),
          "sigmoid": lambda z, out=None: K.sigmoid_cross_entropy(z, other, out=out)}[name]
    loss, grad = fn(put(x))
    buf = put(np.full_like(x, np.nan))
    loss_out, grad_out = fn(put(x), out=buf)
    assert grad_out is buf
    inplace = put(x.copy())
    loss_in, grad_in = fn(inplace, out=inplace)
    assert grad_in is inplace
    assert float(get(loss_out)) == float(get(loss)) and float(get(loss_in)) == float(get(loss))
    np.testing.assert_array_equal(get(grad_out), get(grad))
    np.testing.assert_array_equal(get(grad_in), get(grad))


# ---------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("shape", [(5 * 256 + 3, 37), (600, 1000), (1100, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_are_bitwise_identical_on_1_and_several_threads(isa, rng, threads, shape, dtype):
    rows, cols = shape
    x = make_logits(rng, shape, dtype)
    t = rng.uniform(size=shape).astype(dtype)
    labels = make_labels(rng, rows, cols)
    calls = (lambda: K.squared_error(x, t), lambda: K.softmax_cross_entropy(x, labels),
             lambda: K.sigmoid_cross_entropy(x, t))
    fastmlp.set_num_threads(1)
    single = [call() for call in calls]
    for n in (2, 3):
        fastmlp.set_num_threads(n)
        for (loss1, grad1), call in zip(single, calls):
            loss_n, grad_n = call()
            assert loss_n == loss1
            np.testing.assert_array_equal(grad_n, grad1)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 12, 16])
def test_float32_sigmoid_gradient_is_one_rounding_of_the_scaled_difference(isa, rng, rows):
    # grad = float32(float64(sigmoid(x) - t) / rows): with 1/rows a power of two the kernel scales in
    # float32 (exact, so the same bits), otherwise in float64; both must give this rounding. Rows of
    # 277 columns cover whole runs, bundles and a scalar tail; logits near -87 with target 0 make
    # gradients near the float32 normal limit, subnormal once divided by rows.
    x = make_logits(rng, (rows, 277), np.float32)
    t = rng.uniform(size=(rows, 277)).astype(np.float32)
    x[:, ::5] = rng.uniform(-88.0, -85.0, size=x[:, ::5].shape).astype(np.float32)
    t[:, ::5] = 0.0
    _, grad = K.sigmoid_cross_entropy(x, t)
    d = np.concatenate([K.sigmoid_cross_entropy(x[r:r + 1].copy(), t[r:r + 1].copy())[1] for r in range(rows)])
    expected = (d.astype(np.float64) * (1.0 / rows)).astype(np.float32)
    assert rows == 1 or np.any((expected != 0) & (np.abs(expected) < np.finfo(np.float32).tiny))
    np.testing.assert_array_equal(grad.view(np.uint32), expected.view(np.uint32))


def test_float32_loss_gradients_agree_bitwise_in_vector_bundles_and_scalar_tails(isa, rng):
    # Rows of 67 columns run SIMD bundles then a tail (one padded bundle); single-column rows are all
    # tail.
    # Per-element gradients (rows = 1, so no batch scaling differs) must match bit for bit.
    x = make_logits(rng, (1, 67), np.float32)
    t = rng.uniform(size=(1, 67)).astype(np.float32)
    _, grad = K.sigmoid_cross_entropy(x, t)
    for c in range(67):
        _, g1 = K.sigmoid_cross_entropy(x[:, c:c + 1].copy(), t[:, c:c + 1].copy())
        assert g1.view(np.uint32)[0, 0] == grad.view(np.uint32)[0, c], c
    # softmax: appending a zero-probability column regroups the row's bundles and tail; only the
    # summation order of the normaliser changes, so the probabilities agree to float32 rounding.
    row = make_logits(rng, (1, 67), np.float32)
    _, g_a = K.softmax_cross_entropy(row, np.array([0]))
    _, g_b = K.softmax_cross_entropy(np.concatenate([row, row[:, :1] * 0 - 1e30], axis=1).astype(np.float32),
                                     np.array([0]))
    np.testing.assert_allclose(g_b[:, :67], g_a, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 64), (3, 67), (257, 100), (40, 1000), (5, 4099), (70, 3), (1100, 17)])
def test_streamed_sigmoid_gradient_is_bitwise_the_plain_one(isa, rng, threads, shape):
    # A large float gradient is streamed (csrc/cpu/stream.h), one stream per task across its rows
    # of at least 64 columns. Forced here (threshold 0, 2 threads, several tasks for the larger
    # shapes) into outputs that start off a cache line: the same loss and gradient bits as plain
    # stores, nothing written outside out.
    x = make_logits(rng, shape, np.float32)
    t = rng.uniform(size=shape).astype(np.float32)
    fastmlp.set_num_threads(2)
    previous = fastmlp._core._get_stream_min_bytes()
    try:
        fastmlp._core._set_stream_min_bytes(2**63 - 1)
        loss, grad = K.sigmoid_cross_entropy(x, t)
        fastmlp._core._set_stream_min_bytes(0)
        n = x.size
        for shift in (0, 1, 5):
            base = np.full(n + 64, -7.25, np.float32)
            start = (-base.ctypes.data % 64) // 4 + shift
            out = base[start:start + n].reshape(shape)
            loss_s, grad_s = K.sigmoid_cross_entropy(x, t, out=out)
            assert grad_s is out and loss_s == loss
            np.testing.assert_array_equal(out, grad)
            assert (base[:start] == -7.25).all() and (base[start + n:] == -7.25).all(), "wrote outside out"
    finally:
        fastmlp._core._set_stream_min_bytes(previous)


# ---------------------------------------------------------------------------------------------
# bad input


def test_squared_error_rejects_bad_input():
    x = np.ones((4, 3), np.float32)
    t = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="pred"):
        K.squared_error(x.astype(np.int32), t)
    with pytest.raises(TypeError, match="pred"):
        K.squared_error(None, t)
    with pytest.raises(TypeError, match="pred"):
        K.squared_error([[1.0]], t)
    with pytest.raises(TypeError, match="target"):
        K.squared_error(x, t.astype(np.float64))
    with pytest.raises(ValueError, match="pred"):
        K.squared_error(x[0], t[0])
    with pytest.raises(ValueError, match="target"):
        K.squared_error(x, t[:3])
    with pytest.raises(ValueError, match="pred"):
        K.squared_error(np.ones((4, 6), np.float32)[:, ::2], t)
    with pytest.raises(ValueError, match="target"):
        K.squared_error(x, np.zeros((3, 4), np.float32).T)
    with pytest.raises(ValueError, match="out"):
        K.squared_error(x, t, out=np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="out"):
        K.squared_error(x, t, out=np.zeros((4, 3), np.float64))
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        K.squared_error(x, t, out=ro)
    with pytest.raises(ValueError, match="out"):
        K.squared_error(x, t, out=t)  # the gradient may overwrite pred, never target
    big = np.zeros(13, np.float32)
    with pytest.raises(ValueError, match="out"):  # partial overlap with pred
        K.squared_error(big[:12].reshape(4, 3), t, out=big[1:].reshape(4, 3))


def test_softmax_cross_entropy_rejects_bad_input():
    x = np.zeros((4, 3), np.float64)
    labels = np.array([0, 1, 2, 0], np.int64)
    with pytest.raises(TypeError, match="logits"):
        K.softmax_cross_entropy(x.astype(np.int64), labels)
    with pytest.raises(ValueError, match="logits"):
        K.softmax_cross_entropy(np.zeros((2, 3, 4)), labels)
    with pytest.raises(TypeError, match="labels"):
        K.softmax_cross_entropy(x, labels.astype(np.float64))
    with pytest.raises(TypeError, match="labels"):
        K.softmax_cross_entropy(x, labels.astype(np.int16))
    with pytest.raises(ValueError, match="labels"):
        K.softmax_cross_entropy(x, labels[:3])
    with pytest.raises(ValueError, match="labels"):
        K.softmax_cross_entropy(x, labels.reshape(4, 1))
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        K.softmax_cross_entropy(x, np.array([0, 3, 1, 1]))
    with pytest.raises(ValueError, match=r"labels\[2\] = -1"):
        K.softmax_cross_entropy(x, np.array([0, 1, -1, 1], np.int32))
    with pytest.raises(ValueError, match="labels"):  # no class is valid
        K.softmax_cross_entropy(np.zeros((2, 0)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="out"):
        K.softmax_cross_entropy(x, labels, out=np.zeros((4, 4)))
    with pytest.raises(TypeError, match="out"):
        K.softmax_cross_entropy(x, labels, out=np.zeros((4, 3), np.float32))
    big = np.zeros(13)
    with pytest.raises(ValueError, match="out"):
        K.softmax_cross_entropy(big[:12].reshape(4, 3), labels, out=big[1:].reshape(4, 3))


def test_sigmoid_cross_entropy_rejects_bad_input():
    x = np.zeros((4, 3), np.float32)
    t = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="logits"):
        K.sigmoid_cross_entropy(x.astype(np.float16), t)
    with pytest.raises(TypeError, match="targets"):
        K.sigmoid_cross_entropy(x, t.astype(np.float64))
    with pytest.raises(TypeError, match="targets"):
        K.sigmoid_cross_entropy(x, t.astype(np.int64))
    with pytest.raises(ValueError, match="targets"):
        K.sigmoid_cross_entropy(x, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="logits"):
        K.sigmoid_cross_entropy(np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="logits"):
        K.sigmoid_cross_entropy(np.asfortranarray(np.zeros((4, 3), np.float32)), t)
    with pytest.raises(ValueError, match="out"):
        K.sigmoid_cross_entropy(x, t, out=t)
    with pytest.raises(ValueError, match="out"):
        K.sigmoid_cross_entropy(x, t, out=np.zeros((4, 3), np.float32)[::-1])
