"""batch_norm / batch_norm_backward (torch.nn.BatchNorm1d semantics, DESIGN.md "Batch norm")
against float64 NumPy references, central finite differences, thread-count determinism, zero
sizes and every bad-input rule.

Tolerances, with eps = the machine epsilon of the dtype under test and n = rows. The statistics
are summed in float64 (recursive summation: n float64 roundings of the sum of |terms|) and then
rounded once to the dtype; the output z = gamma (x - mean) invstd + beta is formed in float64,
rounded, and passed through the activation (a few ulp), so per element
    |out - ref| <= 8 eps (1 + |z| + |gamma| invstd (|x| + |mean|) + |beta|).
The backward pass forms g through the activation in the dtype (2 roundings) and everything else in
float64; its cancellation-prone dx = gamma invstd / n (n g - dbeta - xhat dgamma) gets
    |dx - ref| <= 8 eps |gamma invstd| / n (n |g| + sum|g| + |xhat| sum|g xhat|)
and dbeta, dgamma get 8 eps (sum|g|, sum|g xhat|). Finite differences (float64, h = 1e-6): O(h^2)
truncation plus eps |L| / h rounding, far below the 1e-6 relative tolerance used.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K

DTYPES = (np.float32, np.float64)
ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")
# primes, non-multiples of the 128-column chunk, more than one 256-row reduction block
SHAPES = [(2, 1), (3, 5), (7, 13), (31, 129), (257, 3), (600, 7)]
EPS64 = float(np.finfo(np.float64).eps)


def eps_of(dtype) -> float:
    return float(np.finfo(dtype).eps)


# ---------------------------------------------------------------------------------------------
# float64 references


def act_ref(z, kind):
    if kind == "relu":
        return np.maximum(z, 0.0)
    if kind in ("sigmoid", "logistic"):
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for any z
    if kind == "tanh":
        return np.tanh(z)
    return z


def act_backward_ref(g, y, kind):
    if kind == "relu":
        return g * (y > 0)
    if kind in ("sigmoid", "logistic"):
        return g * y * (1.0 - y)
    if kind == "tanh":
        return g * (1.0 - y * y)
    return g


def ref_batch_norm(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1, eps=1e-5,
                   activation="identity"):
    """(out, mean, invstd, z, new running_mean, new running_var) in float64."""
    x, gamma, beta = (a.astype(np.float64) for a in (x, gamma, beta))
    rm, rv = running_mean.astype(np.float64), running_var.astype(np.float64)
    if training:
        n = x.shape[0]
        mean = x.mean(axis=0)
        var = ((x - mean) ** 2).mean(axis=0)
        new_rm = (1 - momentum) * rm + momentum * mean
        new_rv = (1 - momentum) * rv + momentum * var * n / (n - 1)
    else:
        mean, var, new_rm, new_rv = rm, rv, rm, rv
    invstd = 1.0 / np.sqrt(var + eps)
    z = gamma * (x - mean) * invstd + beta
    return act_ref(z, activation), mean, invstd, z, new_rm, new_rv


def ref_batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, y, activation):
    """(dx, dgamma, dbeta, g, xhat) in float64, from the saved statistics."""
    grad_out, x, gamma, mean, invstd = (a.astype(np.float64) for a in (grad_out, x, gamma, save_mean, save_invstd))
    g = act_backward_ref(grad_out, None if y is None else y.astype(np.float64), activation)
    n = x.shape[0]
    xhat = (x - mean) * invstd
    dbeta = g.sum(axis=0)
    dgamma = (g * xhat).sum(axis=0)
    dx = gamma * invstd / n * (n * g - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta, g, xhat


def make_inputs(rng, shape, dtype, offset=3.0):
    rows, cols = shape
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, size=cols).astype(dtype)
    beta = rng.uniform(-0.5, 0.5, size=cols).astype(dtype)
    running_mean = rng.standard_normal(cols).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, size=cols).astype(dtype)
    return x, gamma, beta, running_mean, running_var


def check_forward(x, gamma, beta, rm_before, rv_before, result, rm_after, rv_after, *, training, momentum,
                  eps, activation):
    dtype = x.dtype
    e = eps_of(dtype)
    out, save_mean, save_invstd = result
    ref_out, mean, invstd, z, new_rm, new_rv = ref_batch_norm(
        x, gamma, beta, rm_before, rv_before, training=training, momentum=momentum, eps=eps, activation=activation)
    rows = x.shape[0]
    assert out.shape == x.shape and out.dtype == dtype
    assert save_mean.shape == save_invstd.shape == gamma.shape
    assert save_mean.dtype == save_invstd.dtype == dtype
    x64 = x.astype(np.float64)
    bound = 8 * e * (1 + np.abs(z) + np.abs(gamma.astype(np.float64)) * invstd * (np.abs(x64) + np.abs(mean))
                     + np.abs(beta.astype(np.float64)))
    assert np.all(np.abs(out - ref_out) <= bound), np.max(np.abs(out - ref_out) / bound)
    # the statistics: float64 sums of n terms, then one rounding to the dtype
    sum_err = 2 * rows * EPS64
    abs_x = np.abs(x64).mean(axis=0) if rows else np.zeros_like(mean)
    np.testing.assert_allclose(save_mean, mean, rtol=e, atol=sum_err * np.max(abs_x, initial=0.0) + 1e-300)
    np.testing.assert_allclose(save_invstd, invstd, rtol=2 * e + sum_err)
    stat_tol = 2 * e + sum_err
    np.testing.assert_allclose(rm_after, new_rm, rtol=stat_tol, atol=stat_tol * np.max(abs_x, initial=0.0) + 1e-300)
    np.testing.assert_allclose(rv_after, new_rv, rtol=stat_tol)


# ---------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_training_matches_float64_reference(backend, rng, shape, dtype, activation):
    x, gamma, beta, rm, rv = make_inputs(rng, shape, dtype)
    rm_before, rv_before = rm.copy(), rv.copy()
    put, get = backend.put, backend.get
    d_rm, d_rv = put(rm), put(rv)
    result = K.batch_norm(put(x), put(gamma), put(beta), d_rm, d_rv, training=True, activation=activation)
    check_forward(x, gamma, beta, rm_before, rv_before, tuple(get(r) for r in result), get(d_rm), get(d_rv),
                  training=True, momentum=0.1, eps=1e-5, activation=activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (1, 4)] + SHAPES)
def test_batch_norm_inference_uses_running_stats_and_leaves_them_alone(isa, rng, shape, dtype, activation):
    x, gamma, beta, rm, rv = make_inputs(rng, shape, dtype)
    rm_before, rv_before = rm.copy(), rv.copy()
    result = K.batch_norm(x, gamma, beta, rm, rv, training=False, momentum=0.3, eps=1e-3, activation=activation)
    check_forward(x, gamma, beta, rm_before, rv_before, result, rm, rv, training=False, momentum=0.3, eps=1e-3,
                  activation=activation)
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)
    np.testing.assert_array_equal(result[1], rm_before)  # save_mean is a copy of running_mean
    assert result[1] is not rm


def test_batch_norm_inference_accepts_read_only_running_stats(isa, rng):
    x, gamma, beta, rm, rv = make_inputs(rng, (5, 3), np.float32)
    rm.flags.writeable = False
    rv.flags.writeable = False
    out, _, _ = K.batch_norm(x, gamma, beta, rm, rv, training=False)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("momentum", (0.0, 0.25, 1.0))
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_running_stats_follow_torch_momentum_and_unbiased_variance(isa, rng, momentum, dtype):
    x, gamma, beta, rm, rv = make_inputs(rng, (9, 4), dtype)
    rm_before, rv_before = rm.copy(), rv.copy()
    result = K.batch_norm(x, gamma, beta, rm, rv, training=True, momentum=momentum, eps=1e-2)
    check_forward(x, gamma, beta, rm_before, rv_before, result, rm, rv, training=True, momentum=momentum, eps=1e-2,
                  activation="identity")
    if momentum == 0.0:
        np.testing.assert_array_equal(rm, rm_before)
        np.testing.assert_array_equal(rv, rv_before)
    if momentum == 1.0:
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(rv, x64.var(axis=0, ddof=1), rtol=4 * eps_of(dtype))


def test_batch_norm_training_needs_two_rows_and_two_suffice(isa, rng):
    x, gamma, beta, rm, rv = make_inputs(rng, (2, 3), np.float64)
    out, _, _ = K.batch_norm(x, gamma, beta, rm, rv, training=True, eps=1e-12)
    xhat = (out - beta) / gamma  # two rows normalise to -1 and +1
    np.testing.assert_allclose(np.abs(xhat), 1.0, rtol=1e-9)
    np.testing.assert_allclose(xhat[0], -xhat[1], rtol=1e-9)
    for rows in (0, 1):
        with pytest.raises(ValueError, match="at least 2 rows.*torch"):
            K.batch_norm(x[:rows], gamma, beta, rm, rv, training=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_writes_into_out_and_may_work_in_place(isa, rng, dtype):
    x, gamma, beta, rm, rv = make_inputs(rng, (11, 6), dtype)
    expected = K.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=True, activation="tanh")
    buf = np.full_like(x, np.nan)
    got = K.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=True, activation="tanh", out=buf)
    assert got[0] is buf
    inplace = x.copy()
    got_in = K.batch_norm(inplace, gamma, beta, rm.copy(), rv.copy(), training=True, activation="tanh", out=inplace)
    assert got_in[0] is inplace
    for a, b, c in zip(expected, got, got_in):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_batch_norm_accepts_logistic_as_sigmoid(isa, rng):
    x, gamma, beta, rm, rv = make_inputs(rng, (5, 3), np.float32)
    a = K.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=True, activation="sigmoid")[0]
    b = K.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=True, activation="logistic")[0]
    np.testing.assert_array_equal(a, b)


def test_batch_norm_with_zero_features(isa):
    x = np.zeros((4, 0), np.float32)
    e = np.zeros(0, np.float32)
    out, sm, si = K.batch_norm(x, e, e, e.copy(), e.copy(), training=True)
    assert out.shape == (4, 0) and sm.shape == (0,) and si.shape == (0,)
    dx, dgamma, dbeta = K.batch_norm_backward(x, x, e, sm, si, activation="relu", y=out)
    assert dx.shape == (4, 0) and dgamma.shape == (0,) and dbeta.shape == (0,)


def test_batch_norm_backward_over_zero_rows_is_zero(isa):
    x = np.zeros((0, 3))
    dx, dgamma, dbeta = K.batch_norm_backward(x, x, np.ones(3), np.zeros(3), np.ones(3))
    assert dx.shape == (0, 3)
    np.testing.assert_array_equal(dgamma, 0.0)
    np.testing.assert_array_equal(dbeta, 0.0)


# ---------------------------------------------------------------------------------------------
# backward


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_backward_matches_float64_reference(backend, rng, shape, dtype, activation):
    x, gamma, beta, rm, rv = make_inputs(rng, shape, dtype)
    put, get = backend.put, backend.get
    dev = [put(v) for v in (x, gamma, beta, rm, rv)]
    y, save_mean, save_invstd = K.batch_norm(*dev, training=True, activation=activation)
    grad_out = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = (get(r) for r in K.batch_norm_backward(put(grad_out), dev[0], dev[1], save_mean, save_invstd,
                                                               activation=activation, y=y))
    y, save_mean, save_invstd = get(y), get(save_mean), get(save_invstd)
    assert dx.shape == shape and dx.dtype == dtype
    assert dgamma.shape == dbeta.shape == gamma.shape and dgamma.dtype == dbeta.dtype == dtype
    ref_dx, ref_dgamma, ref_dbeta, g, xhat = ref_batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, y,
                                                                     activation)
    e = eps_of(dtype)
    n = shape[0]
    sum_g = np.abs(g).sum(axis=0)
    sum_gx = np.abs(g * xhat).sum(axis=0)
    assert np.all(np.abs(dbeta - ref_dbeta) <= 8 * e * sum_g + 1e-300)
    assert np.all(np.abs(dgamma - ref_dgamma) <= 8 * e * sum_gx + 1e-300)
    coef = np.abs(gamma.astype(np.float64) * save_invstd.astype(np.float64)) / n
    bound = 8 * e * coef * (n * np.abs(g) + sum_g + np.abs(xhat) * sum_gx) + 1e-300
    assert np.all(np.abs(dx - ref_dx) <= bound), np.max(np.abs(dx - ref_dx) / bound)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_batch_norm_backward_matches_central_differences(isa, rng, activation):
    rows, cols = 7, 4
    x, gamma, beta, rm, rv = make_inputs(rng, (rows, cols), np.float64, offset=0.5)
    w = rng.standard_normal((rows, cols))

    def loss(x_, gamma_, beta_):
        out = K.batch_norm(x_, gamma_, beta_, rm.copy(), rv.copy(), training=True, activation=activation)[0]
        return float(np.sum(w * out))

    y, save_mean, save_invstd = K.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=True,
                                             activation=activation)
    dx, dgamma, dbeta = K.batch_norm_backward(w, x, gamma, save_mean, save_invstd, activation=activation, y=y)
    h = 1e-6
    for which, value, analytic in (("x", x, dx), ("gamma", gamma, dgamma), ("beta", beta, dbeta)):
        numeric = np.empty_like(value)
        for index in np.ndindex(*value.shape):
            args = {"x": x, "gamma": gamma, "beta": beta}
            plus, minus = value.copy(), value.copy()
            plus[index] += h
            minus[index] -= h
            f_plus = loss(**{"x_" if k == "x" else k + "_": (plus if k == which else v) for k, v in args.items()})
            f_minus = loss(**{"x_" if k == "x" else k + "_": (minus if k == which else v) for k, v in args.items()})
            numeric[index] = (f_plus - f_minus) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=which)


def test_batch_norm_backward_ignores_y_for_identity(isa, rng):
    x, gamma, beta, rm, rv = make_inputs(rng, (6, 3), np.float64)
    y, sm, si = K.batch_norm(x, gamma, beta, rm, rv, training=True)
    g = rng.standard_normal(x.shape)
    a = K.batch_norm_backward(g, x, gamma, sm, si)
    b = K.batch_norm_backward(g, x, gamma, sm, si, y=y)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("activation", ("identity", "sigmoid"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_is_bitwise_identical_on_1_and_several_threads(isa, rng, threads, dtype, activation):
    shape = (3 * 256 + 17, 2 * 128 + 44)  # several row blocks and column chunks
    x, gamma, beta, rm, rv = make_inputs(rng, shape, dtype)
    grad_out = rng.standard_normal(shape).astype(dtype)

    def run():
        rm_, rv_ = rm.copy(), rv.copy()
        y, sm, si = K.batch_norm(x, gamma, beta, rm_, rv_, training=True, activation=activation)
        return (y, sm, si, rm_, rv_) + K.batch_norm_backward(grad_out, x, gamma, sm, si, activation=activation, y=y)

    fastmlp.set_num_threads(1)
    single = run()
    for n in (2, 3):
        fastmlp.set_num_threads(n)
        for a, b in zip(single, run()):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# bad input


def bn_args(dtype=np.float32, rows=4, cols=3):
    rng = np.random.default_rng(0)
    x, gamma, beta, rm, rv = make_inputs(rng, (rows, cols), dtype)
    return dict(x=x, gamma=gamma, beta=beta, running_mean=rm, running_var=rv)


def call_bn(**overrides):
    kw = bn_args()
    training = overrides.pop("training", True)
    kw.update(overrides)
    positional = [kw.pop(k) for k in ("x", "gamma", "beta", "running_mean", "running_var")]
    return K.batch_norm(*positional, training=training, **kw)


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def test_batch_norm_rejects_bad_input():
    a = bn_args()
    with pytest.raises(TypeError, match="batch_norm: x "):
        call_bn(x=a["x"].astype(np.int32))
    with pytest.raises(TypeError, match="batch_norm: x "):
        call_bn(x=None)
    with pytest.raises(ValueError, match="batch_norm: x "):
        call_bn(x=a["x"].ravel())
    with pytest.raises(ValueError, match="batch_norm: x "):
        call_bn(x=np.asfortranarray(a["x"]))
    with pytest.raises(TypeError, match="gamma"):
        call_bn(gamma=a["gamma"].astype(np.float64))
    with pytest.raises(ValueError, match="gamma"):
        call_bn(gamma=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="beta"):
        call_bn(beta=np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="beta"):
        call_bn(beta=np.ones(3, np.int64))
    with pytest.raises(ValueError, match="running_mean"):
        call_bn(running_mean=np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="running_var"):
        call_bn(running_var=np.ones(3))
    with pytest.raises(ValueError, match="running_mean"):
        call_bn(running_mean=read_only(a["running_mean"]))
    with pytest.raises(ValueError, match="running_var"):
        call_bn(running_var=read_only(a["running_var"]))
    with pytest.raises(ValueError, match="running_var"):
        call_bn(running_var=np.ones(6, np.float32)[::2])
    shared = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="running_mean"):
        call_bn(running_mean=shared, running_var=shared)
    with pytest.raises(ValueError, match="running_mean"):  # written in place over the input
        x = a["x"].copy()
        call_bn(x=x, running_mean=x[0])
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="momentum"):
            call_bn(momentum=bad)
    for bad in (0.0, -1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            call_bn(eps=bad)
    with pytest.raises(ValueError, match="activation"):
        call_bn(activation="gelu")
    with pytest.raises(ValueError, match="at least 2 rows"):
        call_bn(x=a["x"][:1])
    with pytest.raises(ValueError, match="out"):
        call_bn(out=np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="out"):
        call_bn(out=np.zeros((4, 3), np.float64))
    with pytest.raises(ValueError, match="out"):
        call_bn(out=read_only(np.zeros((4, 3), np.float32)))
    big = np.zeros(13, np.float32)
    with pytest.raises(ValueError, match="out"):  # partial overlap with x
        call_bn(x=big[:12].reshape(4, 3), out=big[1:].reshape(4, 3))
    g = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="out"):
        call_bn(gamma=g[:3], out=g.reshape(4, 3))
    with pytest.raises(TypeError):
        K.batch_norm(a["x"], a["gamma"], a["beta"], a["running_mean"], a["running_var"])  # training is required


def test_batch_norm_backward_rejects_bad_input():
    a = bn_args(np.float64)
    y, sm, si = K.batch_norm(a["x"], a["gamma"], a["beta"], a["running_mean"], a["running_var"], training=True,
                             activation="relu")
    g = np.ones_like(a["x"])
    x, gamma = a["x"], a["gamma"]
    with pytest.raises(ValueError, match="y"):
        K.batch_norm_backward(g, x, gamma, sm, si, activation="relu")
    with pytest.raises(ValueError, match="activation"):
        K.batch_norm_backward(g, x, gamma, sm, si, activation="swish", y=y)
    with pytest.raises(TypeError, match="grad_out"):
        K.batch_norm_backward(g.astype(np.int64), x, gamma, sm, si)
    with pytest.raises(ValueError, match="grad_out"):
        K.batch_norm_backward(g.ravel(), x, gamma, sm, si)
    with pytest.raises(TypeError, match="batch_norm_backward: x "):
        K.batch_norm_backward(g, x.astype(np.float32), gamma, sm, si)
    with pytest.raises(ValueError, match="batch_norm_backward: x "):
        K.batch_norm_backward(g, x[:3], gamma, sm, si)
    with pytest.raises(ValueError, match="gamma"):
        K.batch_norm_backward(g, x, gamma[:2], sm, si)
    with pytest.raises(TypeError, match="save_mean"):
        K.batch_norm_backward(g, x, gamma, sm.astype(np.float32), si)
    with pytest.raises(ValueError, match="save_invstd"):
        K.batch_norm_backward(g, x, gamma, sm, np.ones((3, 1)))
    with pytest.raises(ValueError, match="save_invstd"):
        K.batch_norm_backward(g, x, gamma, sm, np.ones(6)[::2])
    with pytest.raises(ValueError, match="y"):
        K.batch_norm_backward(g, x, gamma, sm, si, activation="relu", y=y[:2])
    with pytest.raises(TypeError, match="y"):
        K.batch_norm_backward(g, x, gamma, sm, si, activation="relu", y=y.astype(np.float32))
