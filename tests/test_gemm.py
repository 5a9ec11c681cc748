"""gemm against a long-double NumPy reference, and the guarantees DESIGN.md ("GEMM") makes.

Tolerance, derived from the problem rather than tuned: an FMA (or multiply-add) chain over K terms
errs by at most K*u*|a||b| (u = eps/2), and the epilogue (alpha*, +beta*out, +bias) adds a few more
roundings of the same magnitude. So, elementwise and before the activation,

    |out - ref| <= (K + EPILOGUE_ROUNDINGS) * eps * (|alpha| |op(a)| @ |op(b)| + |beta*out| + |bias|)

i.e. the constant c = 1 on K*eps (twice the worst-case bound). The activations are 1-Lipschitz,
so the bound carries through them; the activation's own rounding adds ACT_ULPS ulp of the result
(fastmlp's float32 exp/tanh are documented at about 2 ulp) plus the smallest normal number: below it
results are subnormal, where ulps stop scaling, and sigmoid may flush to 0 (its exp saturates).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels

DTYPES = (np.float32, np.float64)
TRANSPOSES = list(itertools.product((False, True), repeat=2))
ACTIVATIONS = ("identity", "relu", "sigmoid", "logistic", "tanh")
EPILOGUE_ROUNDINGS = 4
ACT_ULPS = 4

# (M, N, K): empty dimensions, tiny ones, primes, sizes one past a tile or block edge
# (MR = 6/12, NR = 8..32, KC = 1024 (256 before), MC = 20*MR, NC = 16*NR) and tall-skinny problems.
SHAPES = [
    (0, 0, 0), (0, 7, 13), (7, 0, 13), (7, 13, 0), (0, 0, 5),
    (1, 1, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1), (2, 2, 2),
    (1, 13, 7), (13, 1, 7), (7, 13, 1), (7, 7, 7),
    (13, 31, 97), (97, 13, 31), (31, 97, 2),
    (17, 33, 65), (33, 65, 17), (65, 17, 33),
    (129, 33, 257), (33, 257, 129), (257, 129, 17),
    (6, 16, 256), (12, 32, 512), (7, 17, 257), (121, 257, 1),
    (1000, 3, 7), (3, 1000, 513), (1, 1000, 300), (1000, 1, 300),
    (19, 37, 2053), (8, 3, 1031),  # several k blocks on every ISA path (blocks hold up to 1024)
    (5, 40, 1100), (11, 1024, 30),  # op(b) read in place (few row panels) with k blocks; or packed (4 KiB rows)
    # a last column panel of at most one vector (784 = 24 x 32 + 16; 16 on AVX2 tiles of 16 + 8),
    # with full and partial row panels, threaded, with and without k blocks
    (256, 784, 512), (37, 792, 1100),
]


def shape_id(shape):
    return "M{}-N{}-K{}".format(*shape)


def trans_id(t):
    return f"ta{int(t[0])}-tb{int(t[1])}"


def operands(rng, M, N, K, trans_a, trans_b, dtype):
    """a and b such that op(a) is (M, K) and op(b) is (K, N), entries uniform in [-1, 1)."""
    a = rng.uniform(-1, 1, size=(K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.uniform(-1, 1, size=(N, K) if trans_b else (K, N)).astype(dtype)
    return a, b


def act_reference(x, activation):
    if activation == "identity":
        return x
    if activation == "relu":
        return np.where(x < 0, 0, x)
    if activation in ("sigmoid", "logistic"):
        with np.errstate(over="ignore"):  # exp(-x) = inf gives the right limit, 0
            return 1 / (1 + np.exp(-x))
    if activation == "tanh":
        return np.tanh(x)
    raise AssertionError(activation)


def gemm_reference(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None, bias=None,
                   activation="identity"):
    """(act(pre), error bound) in long double, for the arguments gemm received."""
    ld = np.longdouble
    eps = np.finfo(a.dtype).eps
    opa = (a.T if trans_a else a).astype(ld)
    opb = (b.T if trans_b else b).astype(ld)
    K = opa.shape[1]
    pre = ld(alpha) * (opa @ opb)
    mag = abs(ld(alpha)) * (np.abs(opa) @ np.abs(opb))
    if beta != 0:
        pre = pre + ld(beta) * out.astype(ld)
        mag = mag + np.abs(ld(beta) * out.astype(ld))
    if bias is not None:
        pre = pre + bias.astype(ld)
        mag = mag + np.abs(bias.astype(ld))
    y = act_reference(pre, activation)
    bound = (K + EPILOGUE_ROUNDINGS) * eps * mag
    if activation not in ("identity", "relu"):
        bound = bound + ACT_ULPS * eps * np.abs(y) + np.finfo(a.dtype).tiny
    return y, bound


def assert_within(got, expected, bound, what=""):
    assert got.shape == expected.shape
    err = np.abs(got.astype(np.longdouble) - expected)
    bad = ~(err <= bound)  # also catches NaN
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.size} elements outside the bound; first at {i}: "
                    f"got {got[i]!r}, expected {float(expected[i])!r}, |err| {float(err[i]):.3g} > "
                    f"bound {float(bound[i]):.3g}")


def call_and_check(a, b, backend=None, **kw):
    """gemm(a, b, **kw) on the backend (the CPU when None), checked against the reference."""
    out_before = None if kw.get("out") is None else kw["out"].copy()
    ref_kw = dict(kw)
    ref_kw["out"] = out_before
    if backend is None or backend == "cpu":
        got = kernels.gemm(a, b, **kw)
    else:
        got = backend.get(kernels.gemm(backend.put(a), backend.put(b), **{k: backend.put(v) for k, v in kw.items()}))
    assert got.dtype == a.dtype
    assert got.flags.c_contiguous
    expected, bound = gemm_reference(a, b, **ref_kw)
    assert_within(got, expected, bound, f"gemm(a{a.shape}, b{b.shape}, {ref_kw | {'out': None}})")
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=trans_id)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gemm_matches_float64_reference_on_awkward_shapes(backend, rng, shape, trans, dtype):
    M, N, K = shape
    a, b = operands(rng, M, N, K, *trans, dtype)
    got = call_and_check(a, b, backend, trans_a=trans[0], trans_b=trans[1])
    assert got.shape == (M, N)


EPILOGUES = {
    "plain": dict(),
    "alpha=-0.7": dict(alpha=-0.7),
    "bias": dict(bias=True),
    "beta=1": dict(beta=1.0),
    "alpha=2.5,beta=-0.75,bias": dict(alpha=2.5, beta=-0.75, bias=True),
    "alpha=0,beta=0.5,bias": dict(alpha=0.0, beta=0.5, bias=True),
}
EPILOGUE_SHAPES = [(33, 17, 65), (7, 257, 13), (1, 1, 300), (130, 20, 0), (129, 40, 300), (13, 35, 1031)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("epilogue", list(EPILOGUES), ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gemm_fused_epilogue_matches_reference(backend, rng, activation, epilogue, dtype):
    spec = EPILOGUES[epilogue]
    for (M, N, K), trans in zip(EPILOGUE_SHAPES, itertools.cycle(TRANSPOSES)):
        a, b = operands(rng, M, N, K, *trans, dtype)
        kw = dict(trans_a=trans[0], trans_b=trans[1], activation=activation)
        if "alpha" in spec:
            kw["alpha"] = spec["alpha"]
        if "beta" in spec:
            kw["beta"] = spec["beta"]
            kw["out"] = rng.uniform(-2, 2, size=(M, N)).astype(dtype)
        if spec.get("bias"):
            kw["bias"] = rng.uniform(-2, 2, size=N).astype(dtype)
        call_and_check(a, b, backend, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gemm_with_beta_zero_never_reads_out(isa, rng, activation, dtype):
    for (M, N, K), trans in zip([(33, 17, 65), (1, 40, 7), (9, 9, 0)], TRANSPOSES):
        a, b = operands(rng, M, N, K, *trans, dtype)
        bias = rng.uniform(-1, 1, size=N).astype(dtype)
        out = np.full((M, N), np.nan, dtype=dtype)
        out[::2] = np.inf
        got = kernels.gemm(a, b, trans_a=trans[0], trans_b=trans[1], beta=0.0, out=out, bias=bias,
                           activation=activation)
        assert got is out
        assert np.isfinite(out).all()
        expected, bound = gemm_reference(a, b, trans_a=trans[0], trans_b=trans[1], bias=bias, activation=activation)
        assert_within(out, expected, bound, "beta=0 with NaN/Inf in out")


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
def test_gemm_with_a_beta_that_rounds_to_zero_in_float32_never_reads_out(isa, rng, activation):
    # beta = 1e-50 is 0 as a float: no tile may form 0 * out (NaN for Inf), whether it is stored
    # from registers (whole register tiles) or from parked sums (the partial ones).
    for M, N, K in [(48, 80, 64), (256, 70, 64), (37, 33, 1100)]:
        a, b = operands(rng, M, N, K, False, True, np.float32)
        out = np.full((M, N), np.inf, dtype=np.float32)
        out[::3] = np.nan
        got = kernels.gemm(a, b, trans_b=True, beta=1e-50, out=out, activation=activation)
        np.testing.assert_array_equal(got, kernels.gemm(a, b, trans_b=True, activation=activation))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gemm_with_k_zero_gives_activation_of_beta_out_plus_bias(isa, rng, activation, dtype):
    M, N = 13, 37
    a = np.empty((M, 0), dtype=dtype)
    b = np.empty((0, N), dtype=dtype)
    out = rng.uniform(-2, 2, size=(M, N)).astype(dtype)
    bias = rng.uniform(-2, 2, size=N).astype(dtype)
    expected, bound = gemm_reference(a, b, alpha=3.0, beta=0.5, out=out.copy(), bias=bias, activation=activation)
    ld = np.longdouble
    direct = act_reference(ld(0.5) * out.astype(ld) + bias.astype(ld), activation)
    np.testing.assert_array_equal(expected, direct)
    got = kernels.gemm(a, b, alpha=3.0, beta=0.5, out=out, bias=bias, activation=activation)
    assert got is out
    assert_within(got, expected, bound, "K == 0")
    # Nothing at all to add: act(0).
    zero = kernels.gemm(a, b, activation=activation)
    np.testing.assert_array_equal(zero, np.full((M, N), act_reference(np.float64(0), activation), dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gemm_returns_and_writes_out(isa, rng, dtype):
    a, b = operands(rng, 20, 30, 40, False, True, dtype)
    out = np.full((20, 30), np.nan, dtype=dtype)
    got = kernels.gemm(a, b, trans_b=True, out=out)
    assert got is out
    fresh = kernels.gemm(a, b, trans_b=True)
    assert fresh is not out
    np.testing.assert_array_equal(out, fresh)
    # beta accumulates into the given out, in place.
    got = kernels.gemm(a, b, trans_b=True, beta=1.0, out=out)
    assert got is out
    expected, bound = gemm_reference(a, b, trans_b=True, beta=1.0, out=fresh)
    assert_within(out, expected, bound, "out += a @ b.T")


# (M, N, K) through every way op(a) is handled: packed (with several k blocks too), read in place
# (N <= 16), one row (M = 1), nothing computed (N = 0, M = 0), an empty sum (K = 0), and shapes
# large enough to split among threads.
A_SUMS_SHAPES = [(512, 784, 256), (10, 512, 256), (7, 17, 5), (6, 300, 1100), (257, 33, 513), (100, 300, 2100),
                 (64, 16, 32), (5, 3, 7), (1, 64, 32), (1, 1, 1), (13, 17, 0), (5, 0, 7), (0, 20, 5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", A_SUMS_SHAPES, ids=shape_id)
def test_gemm_a_sums_are_bitwise_bias_grad_of_a(isa, rng, shape, dtype):
    # A layer's dW = dz^T x also yields its bias gradient, dz's column sums, from the packing of
    # dz: bitwise what bias_grad(dz) gives, and the product is unchanged.
    M, N, Kd = shape
    from fastmlp import _core
    a = rng.standard_normal((Kd, M)).astype(dtype)
    b = rng.standard_normal((Kd, N)).astype(dtype)
    out = np.full((M, N), np.nan, dtype)
    sums = np.full(M, np.nan, dtype)
    assert _core._gemm(a, b, True, False, 1.0, 0.0, out, None, "identity", sums) is out
    np.testing.assert_array_equal(out, kernels.gemm(a, b, trans_a=True))
    np.testing.assert_array_equal(sums, kernels.bias_grad(a) if Kd else np.zeros(M, dtype))


def test_gemm_a_sums_arguments_are_checked():
    from fastmlp import _core
    a, b = np.ones((4, 3), np.float32), np.ones((4, 5), np.float32)
    out = np.empty((3, 5), np.float32)
    with pytest.raises(ValueError, match="a_sums .* needs trans_a=True"):
        _core._gemm(np.ones((3, 4), np.float32), b, False, False, 1.0, 0.0, out, None, "identity",
                    np.empty(3, np.float32))
    with pytest.raises(ValueError, match="a_sums"):
        _core._gemm(a, b, True, False, 1.0, 0.0, out, None, "identity", np.empty(4, np.float32))
    with pytest.raises(TypeError, match="a_sums"):
        _core._gemm(a, b, True, False, 1.0, 0.0, out, None, "identity", np.empty(3, np.float64))
    with pytest.raises(ValueError, match="overlap"):
        _core._gemm(a, b, True, False, 1.0, 0.0, out, None, "identity", out.reshape(-1)[:3])
    frozen = np.zeros(3, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="a_sums is read-only"):
        _core._gemm(a, b, True, False, 1.0, 0.0, out, None, "identity", frozen)
    np.testing.assert_array_equal(frozen, 0)


# A small float32 A^T.B^T with M <= 2K runs, on AVX-512, as tiles of its transpose B.A with no
# transposing pack (gemm_tt_swapped). The shapes reach 16-row output tails of 0 and 9..15 rows, the
# last-columns classes of 4, 8, 12 and 16 rows of b (1, 2, 4, 7 and 9..16 columns), and K from 8
# to 256 with and without a k tail. Each output must be bitwise (sign of zero and NaN
# included) what the packing paths give for the same product (A.B of the materialised transposes),
# under every epilogue, with and without a relu_mask; with beta == 0 out is never read.
TT_SWAP_SHAPES = [(16, 2, 8), (32, 64, 64), (25, 17, 40), (48, 30, 100), (31, 45, 16), (64, 13, 256),
                  (16, 255, 20), (80, 48, 64), (57, 7, 29), (26, 12, 13), (44, 25, 100), (30, 27, 255),
                  (29, 44, 250), (16, 10, 8), (60, 14, 33), (27, 20, 20)]


def bits(x):
    return x.view(np.uint32)


@pytest.mark.parametrize("epilogue", list(EPILOGUES), ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_small_at_bt_is_bitwise_the_product_of_the_packing_paths(isa, rng, activation, epilogue):
    from fastmlp import _core
    spec = EPILOGUES[epilogue]
    for M, N, K in TT_SWAP_SHAPES:
        a, b = operands(rng, M, N, K, True, True, np.float32)
        a[:, 0] = 0.0  # a zero row of op(a): -0 after alpha < 0, which ReLU keeps
        a[K // 2, M - 1] = np.nan
        b[N - 1, 0] = np.inf
        a_t, b_t = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
        alpha, beta = spec.get("alpha", 1.0), spec.get("beta", 0.0)
        out0 = rng.uniform(-2, 2, size=(M, N)).astype(np.float32) if "beta" in spec else np.full((M, N), np.nan, np.float32)
        bias = rng.uniform(-2, 2, size=N).astype(np.float32) if spec.get("bias") else None
        y = np.maximum(rng.standard_normal((M, N)), 0).astype(np.float32)
        for mask in (None, y):
            got, want = (_core._gemm(x, w, t, t, alpha, beta, out0.copy(), bias, activation, None, mask, 0.2)
                         for x, w, t in ((a, b, True), (a_t, b_t, False)))
            where = f"{M}x{N}x{K}" + ("" if mask is None else ", relu_mask")
            np.testing.assert_array_equal(bits(got), bits(want), err_msg=where)
            if beta == 0.0:  # the NaN-filled out never read: NaN only in op(a)'s NaN row and 0 * Inf
                assert np.isfinite(got[:M - 1, :N - 1]).all(), where
        if epilogue == "plain" and activation == "identity":
            finite_a, finite_b = operands(rng, M, N, K, True, True, np.float32)
            call_and_check(finite_a, finite_b, trans_a=True, trans_b=True)


# The last three end in a partial row panel of exactly a third or two thirds of the register tile
# (MR = 12 on AVX-512, 6 elsewhere), which has its own register epilogue: 56 = 4 x 12 + 8,
# 52 = 4 x 12 + 4 = 8 x 6 + 4, 38 = 6 x 6 + 2.
# (131, 100, 300): threaded, one k block, op(a) read in place (row-major, or transposed and at most
# 256 KiB), with a partial
# last row panel of no register-tile size (131 = 10 x 12 + 11 = 21 x 6 + 5) and a partial last
# column panel on every path. (260, 100, 300): the same with a transposed op(a) of 1 KiB rows and
# more than 256 KiB, read in place on AVX-512 (packed on AVX2), ending in a partial row panel of
# two thirds of the AVX-512 tile (260 = 21 x 12 + 8).
RELU_MASK_SHAPES = [(256, 512, 10), (64, 96, 70), (7, 17, 5), (1, 64, 32), (1, 5, 3), (13, 16, 0), (64, 8, 32),
                    (37, 300, 13), (30, 40, 1100), (56, 64, 1100), (52, 64, 30), (38, 48, 40), (131, 100, 300),
                    (260, 100, 300)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=trans_id)
@pytest.mark.parametrize("shape", RELU_MASK_SHAPES, ids=shape_id)
def test_gemm_relu_mask_is_bitwise_relu_dropout_backward_of_the_product(isa, rng, shape, trans, dtype):
    # The backward of dropout(relu(z)) fused into the GEMM that forms its incoming gradient:
    # register epilogue (full tiles, op(a) packed or read in place), store_tile (edges, one row,
    # one column panel) alike.
    from fastmlp import _core
    M, N, Kd = shape
    ta, tb = trans
    a, b = operands(rng, M, N, Kd, ta, tb, dtype)
    y = np.maximum(rng.standard_normal((M, N)), 0).astype(dtype)
    y.reshape(-1)[::7] = np.nan
    for p in (0.0, 0.2, 0.5):
        ref = kernels.gemm(a, b, trans_a=ta, trans_b=tb)
        ref = _core._relu_dropout_backward(ref, y, p, ref)
        out = np.full((M, N), np.nan, dtype)
        assert _core._gemm(a, b, ta, tb, 1.0, 0.0, out, None, "identity", None, y, p) is out
        np.testing.assert_array_equal(out, ref, err_msg=f"p={p}")


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
def test_gemm_relu_mask_follows_any_epilogue_and_a_sums(isa, rng, activation):
    # With alpha, beta, a bias or an activation the masked tiles go through store_tile; the mask
    # still comes last, on the stored values, and a_sums (bias_grad of a) is unaffected.
    from fastmlp import _core
    for M, N, Kd in ((50, 70, 30), (1, 40, 9), (20, 12, 1100)):
        a, b = operands(rng, M, N, Kd, True, False, np.float32)
        y = np.maximum(rng.standard_normal((M, N)), 0).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        start = rng.standard_normal((M, N)).astype(np.float32)
        ref = kernels.gemm(a, b, trans_a=True, alpha=0.7, beta=0.5, out=start.copy(), bias=bias, activation=activation)
        ref = _core._relu_dropout_backward(ref, y, 0.25, ref)
        out, sums = start.copy(), np.empty(M, np.float32)
        _core._gemm(a, b, True, False, 0.7, 0.5, out, bias, activation, sums, y, 0.25)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(sums, kernels.bias_grad(a))


def test_gemm_relu_mask_arguments_are_checked():
    from fastmlp import _core
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    out = np.empty((3, 5), np.float32)
    with pytest.raises(ValueError, match="relu_mask"):
        _core._gemm(a, b, False, False, 1.0, 0.0, out, None, "identity", None, np.ones((5, 3), np.float32), 0.1)
    with pytest.raises(TypeError, match="relu_mask"):
        _core._gemm(a, b, False, False, 1.0, 0.0, out, None, "identity", None, np.ones((3, 5)), 0.1)
    with pytest.raises(ValueError, match="overlap"):
        _core._gemm(a, b, False, False, 1.0, 0.0, out, None, "identity", None, out, 0.1)
    with pytest.raises(ValueError, match="mask_p"):
        _core._gemm(a, b, False, False, 1.0, 0.0, out, None, "identity", None, np.ones((3, 5), np.float32), 1.0)
    with pytest.raises(ValueError, match="mask_p"):
        _core._gemm(a, b, False, False, 1.0, 0.0, out, None, "identity", None, None, 5.0)
    buf = np.ones(4 * 5 + 4, np.float32)  # a_sums inside the mask: written while it is read
    with pytest.raises(ValueError, match="overlap"):
        _core._gemm(np.ones((3, 4), np.float32), np.ones((3, 5), np.float32), True, False, 1.0, 0.0,
                    np.empty((4, 5), np.float32), None, "identity", buf[:4], buf[:20].reshape(4, 5), 0.5)


ACT_OF_INF = {"identity": (np.inf, -np.inf), "relu": (np.inf, 0.0), "sigmoid": (1.0, 0.0),
              "logistic": (1.0, 0.0), "tanh": (1.0, -1.0)}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=trans_id)
def test_gemm_propagates_nan_and_inf(isa, rng, trans, activation, dtype):
    M, N, K = 19, 23, 37
    opa = rng.uniform(0.5, 1, size=(M, K))
    opb = rng.uniform(0.5, 1, size=(K, N))  # positive, so inf * b keeps its sign
    opa[3, 5] = np.nan        # row 3 -> NaN
    opb[7, 11] = np.nan       # column 11 -> NaN
    opa[8, 0] = np.inf        # row 8 -> +inf ...
    opa[12, 30] = -np.inf     # row 12 -> -inf ...
    opb[30, 4] = 0.0          # ... except -inf * 0 = NaN at (12, 4)
    a = np.ascontiguousarray(opa.T if trans[0] else opa, dtype=dtype)
    b = np.ascontiguousarray(opb.T if trans[1] else opb, dtype=dtype)
    got = kernels.gemm(a, b, trans_a=trans[0], trans_b=trans[1], activation=activation)

    nan = np.zeros((M, N), bool)
    nan[3, :] = nan[:, 11] = True
    nan[12, 4] = True
    pos_inf = np.zeros((M, N), bool)
    pos_inf[8, :] = True
    neg_inf = np.zeros((M, N), bool)
    neg_inf[12, :] = True
    pos_inf &= ~nan
    neg_inf &= ~nan
    assert np.isnan(got[nan]).all(), "NaN must propagate"
    np.testing.assert_array_equal(got[pos_inf], ACT_OF_INF[activation][0])
    np.testing.assert_array_equal(got[neg_inf], ACT_OF_INF[activation][1])
    finite = ~(nan | pos_inf | neg_inf)
    clean_a, clean_b = np.nan_to_num(opa, posinf=0, neginf=0), np.nan_to_num(opb)
    expected, bound = gemm_reference(clean_a.astype(dtype), clean_b.astype(dtype), activation=activation)
    assert_within(got[finite], expected[finite], bound[finite], "elements untouched by NaN/Inf")


# Shapes large enough to be split into several row blocks, column blocks and KC blocks.
INVARIANCE_CASES = [
    ((300, 70, 300), dict()),  # transposed op(a) of 360 KiB: read in place on AVX-512, packed on AVX2
    ((130, 300, 40), dict(bias=True, activation="relu")),
    ((250, 33, 257), dict(alpha=0.5, bias=True, activation="sigmoid")),
    ((64, 129, 17), dict(beta=0.5, activation="tanh")),
    ((70, 40, 1100), dict(bias=True, activation="relu")),  # two k blocks even on AVX2
    # Partial row panels of two thirds / a third of the register tile, through its register
    # epilogue (68 = 5 x 12 + 8 = 11 x 6 + 2; 52 = 4 x 12 + 4 = 8 x 6 + 4), two k blocks in the first
    ((68, 64, 1100), dict(bias=True, activation="relu")),
    ((52, 96, 300), dict(beta=0.5, bias=True)),
    # Small enough for one thread (op(a) read in place by the register-epilogue kernels, as in the
    # threaded cases above whose op(a) is row-major or small), beta and bias included; single rows
    # and the windows below take the other kernels; A^T.B^T goes through gemm_tt_swapped
    ((48, 80, 64), dict(beta=0.5, bias=True, activation="relu")),
]


def invariance_inputs(rng, shape, spec, trans, dtype):
    M, N, K = shape
    a, b = operands(rng, M, N, K, *trans, dtype)
    kw = dict(trans_a=trans[0], trans_b=trans[1], alpha=spec.get("alpha", 1.0),
              activation=spec.get("activation", "identity"))
    if spec.get("bias"):
        kw["bias"] = rng.uniform(-1, 1, size=N).astype(dtype)
    out0 = None
    if "beta" in spec:
        kw["beta"] = spec["beta"]
        out0 = rng.uniform(-1, 1, size=(M, N)).astype(dtype)
    return a, b, kw, out0


def rows_of_op_a(a, rows, trans_a):
    """The a whose op(a) is op(a)[rows], C-contiguous."""
    return np.ascontiguousarray(a[:, rows] if trans_a else a[rows])


def gemm_with_out(a, b, kw, out0, rows=None):
    if out0 is None:
        return kernels.gemm(a, b, **kw)
    out = out0.copy() if rows is None else np.ascontiguousarray(out0[rows])
    return kernels.gemm(a, b, out=out, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=trans_id)
@pytest.mark.parametrize("case", range(len(INVARIANCE_CASES)))
def test_gemm_row_is_bitwise_independent_of_batch_composition(isa, rng, case, trans, dtype):
    shape, spec = INVARIANCE_CASES[case]
    M = shape[0]
    a, b, kw, out0 = invariance_inputs(rng, shape, spec, trans, dtype)
    full = gemm_with_out(a, b, kw, out0)
    for i in sorted({0, 1, M // 2, M - 1}):
        single = gemm_with_out(rows_of_op_a(a, [i], trans[0]), b, kw, out0, [i])
        np.testing.assert_array_equal(single[0], full[i], err_msg=f"row {i} alone")
    # 37 rows, and 16 and 20 (a whole register tile plus a third or two thirds of one on AVX-512,
    # 6 + 6 + 4 and 6 + 6 + 6 + 2 on AVX2): every row class of the small-GEMM kernels
    for size in (37, 16, 20):
        window = np.arange(5, min(M, 5 + size))
        part = gemm_with_out(rows_of_op_a(a, window, trans[0]), b, kw, out0, window)
        np.testing.assert_array_equal(part, full[window], err_msg=f"rows 5..{4 + size} as a batch")
    perm = rng.permutation(M)
    inverse = np.argsort(perm)
    shuffled = gemm_with_out(rows_of_op_a(a, perm, trans[0]), b, kw, out0, perm)
    np.testing.assert_array_equal(shuffled[inverse], full, err_msg="permuted batch")


def cols_of_op_b(b, cols, trans_b):
    """The b whose op(b) is op(b)[:, cols], C-contiguous."""
    return np.ascontiguousarray(b[cols] if trans_b else b[:, cols])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=trans_id)
@pytest.mark.parametrize("case", range(len(INVARIANCE_CASES)))
def test_gemm_column_is_bitwise_independent_of_the_other_columns(isa, rng, case, trans, dtype):
    # A narrow op(b) (one register panel: an output layer) reads op(a) in place instead of packing
    # it; its columns must still be bitwise those of the wide product.
    shape, spec = INVARIANCE_CASES[case]
    a, b, kw, out0 = invariance_inputs(rng, shape, spec, trans, dtype)
    full = gemm_with_out(a, b, kw, out0)
    N = shape[1]
    for cols in ([0], [N - 1], list(range(3, 13)), list(range(N - 17, N - 1)), list(range(1, min(N, 40), 2))):
        narrow_kw = dict(kw)
        if "bias" in kw:
            narrow_kw["bias"] = np.ascontiguousarray(kw["bias"][cols])
        out = None if out0 is None else np.ascontiguousarray(out0[:, cols])
        got = kernels.gemm(a, cols_of_op_b(b, cols, trans[1]), out=out, **narrow_kw)
        np.testing.assert_array_equal(got, full[:, cols], err_msg=f"columns {cols[0]}..{cols[-1]} ({len(cols)})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=trans_id)
def test_gemm_is_bitwise_identical_on_1_and_2_threads(isa, threads, rng, trans, dtype):
    for shape, spec in INVARIANCE_CASES + [((1, 500, 700), dict(bias=True))]:
        a, b, kw, out0 = invariance_inputs(rng, shape, spec, trans, dtype)
        fastmlp.set_num_threads(1)
        one = gemm_with_out(a, b, kw, out0)
        fastmlp.set_num_threads(2)
        two = gemm_with_out(a, b, kw, out0)
        np.testing.assert_array_equal(one, two, err_msg=f"shape {shape}, {spec}")
    # and with a relu_mask (its own register epilogue, op(a) packed or read in place)
    from fastmlp import _core
    M, N, Kd = 131, 100, 300
    a, b = operands(rng, M, N, Kd, trans[0], trans[1], dtype)
    y = np.maximum(rng.standard_normal((M, N)), 0).astype(dtype)
    outs = []
    for n in (1, 2):
        fastmlp.set_num_threads(n)
        outs.append(_core._gemm(a, b, trans[0], trans[1], 1.0, 0.0, np.empty((M, N), dtype), None, "identity", None,
                                y, 0.2))
    np.testing.assert_array_equal(outs[0], outs[1], err_msg="relu_mask")
