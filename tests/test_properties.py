"""Property tests (hypothesis): the kernels agree with the references on arbitrary small problems,
and arbitrary bad shapes raise ValueError / TypeError instead of crashing.

Profiles bound the run time; pick one with HYPOTHESIS_PROFILE (default "ci"):
"dev" (20 examples), "ci" (60), "thorough" (1000). Array values come from a NumPy generator seeded
by hypothesis, so shapes, flags and scalars shrink while the values stay broad.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import fastmlp
from fastmlp import kernels
from reference import keep_mask
from test_elementwise import (act_reference, act_tolerance, backward_reference, backward_tolerance,
                              bias_grad_tolerance)
from test_gemm import assert_within, gemm_reference
from test_random import dropout_tolerance

for _name, _examples in (("dev", 20), ("ci", 60), ("thorough", 1000)):
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, max_examples=_examples, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
# Applied per test, so loading it does not change other files' hypothesis settings.
PROFILE = settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))

DTYPES = (np.float32, np.float64)
ACTIVATIONS = ("identity", "relu", "sigmoid", "logistic", "tanh")
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**32 - 1)
isas = st.sampled_from(fastmlp.available_isas())


class on_isa:
    """Runs a block on one ISA path (hypothesis cannot use the function-scoped `isa` fixture)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = fastmlp.get_isa()
        fastmlp.set_isa(self.name)

    def __exit__(self, *exc):
        fastmlp.set_isa(self.previous)


def values(rng, shape, dtype, kind):
    if kind == "integers":  # small integers: every product and sum is exact
        return rng.integers(-3, 4, size=shape).astype(dtype)
    if kind == "wide":
        return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)).astype(dtype)
    return rng.uniform(-1, 1, size=shape).astype(dtype)


@PROFILE
@given(M=st.integers(0, 40), N=st.integers(0, 40), K=st.integers(0, 40), trans_a=st.booleans(),
       trans_b=st.booleans(), dtype=dtypes, alpha=st.sampled_from([1.0, 0.0, -1.0, 0.5, 3.25]),
       beta=st.sampled_from([0.0, 1.0, -0.5]), with_bias=st.booleans(), activation=st.sampled_from(ACTIVATIONS),
       kind=st.sampled_from(["uniform", "integers", "wide"]), seed=seeds, isa=isas)
def test_gemm_matches_reference_on_arbitrary_small_problems(M, N, K, trans_a, trans_b, dtype, alpha, beta,
                                                            with_bias, activation, kind, seed, isa):
    rng = np.random.default_rng(seed)
    a = values(rng, (K, M) if trans_a else (M, K), dtype, kind)
    b = values(rng, (N, K) if trans_b else (K, N), dtype, kind)
    bias = values(rng, (N,), dtype, kind) if with_bias else None
    out = values(rng, (M, N), dtype, kind) if beta != 0 else None
    expected, bound = gemm_reference(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                                     out=None if out is None else out.copy(), bias=bias, activation=activation)
    with on_isa(isa):
        got = kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out, bias=bias,
                           activation=activation)
    assert got.shape == (M, N) and got.dtype == dtype
    if out is not None:
        assert got is out
    assert_within(got, expected, bound, "gemm")


@PROFILE
@given(n=st.integers(0, 3000), kind=st.sampled_from(ACTIVATIONS), dtype=dtypes, scale=st.sampled_from([0.1, 1, 5, 30]),
       seed=seeds, isa=isas)
def test_activation_and_its_backward_match_the_reference(n, kind, dtype, scale, seed, isa):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    with on_isa(isa):
        y = kernels.activation(x, kind)
        dx = kernels.activation_backward(g, y, kind)
    y_ref = act_reference(x, kind)
    assert_within(y, y_ref, act_tolerance(y_ref, dtype), kind)
    dx_ref, dx_scale = backward_reference(g, y, kind)
    assert_within(dx, dx_ref, backward_tolerance(dx_scale, dtype), kind + " backward")


@PROFILE
@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=3), p=st.floats(0, 1, exclude_max=True),
       seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1), dtype=dtypes, isa=isas)
def test_dropout_is_x_times_reference_mask_over_keep_probability(shape, p, seed, offset, dtype, isa):
    rng = np.random.default_rng(seed % 2**32)
    x = rng.standard_normal(shape).astype(dtype)
    with on_isa(isa):
        got = kernels.dropout(x, p, seed=seed, offset=offset)
        back = kernels.dropout_backward(x, p, seed=seed, offset=offset)
        mask = kernels.dropout_mask(shape, p, seed=seed, offset=offset)
    expected_mask = keep_mask(x.size, p, seed, offset).reshape(shape)
    np.testing.assert_array_equal(mask, expected_mask)
    ld = np.longdouble
    expected = np.where(expected_mask, x.astype(ld) / (1 - ld(p)), ld(0))
    assert_within(got, expected, dropout_tolerance(expected, dtype), f"dropout p={p!r}")
    np.testing.assert_array_equal(back, got)


@PROFILE
@given(rows=st.integers(0, 700), cols=st.integers(0, 40), dtype=dtypes, offset=st.floats(-1e3, 1e3), seed=seeds,
       isa=isas)
def test_bias_grad_matches_column_sums(rows, cols, dtype, offset, seed, isa):
    rng = np.random.default_rng(seed)
    grad = (rng.standard_normal((rows, cols)) + offset).astype(dtype)
    with on_isa(isa):
        got = kernels.bias_grad(grad)
    expected = grad.astype(np.longdouble).sum(axis=0)
    assert_within(got, expected, bias_grad_tolerance(grad, expected), "bias_grad")


shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)
array_dtypes = st.sampled_from([np.float32, np.float64, np.float32, np.float64, np.int32, np.float16])


@PROFILE
@given(a_shape=shapes, b_shape=shapes, bias_shape=st.none() | shapes, out_shape=st.none() | shapes,
       a_dtype=array_dtypes, b_dtype=array_dtypes, trans_a=st.booleans(), trans_b=st.booleans(),
       beta=st.sampled_from([0.0, 1.0]))
def test_gemm_with_arbitrary_shapes_and_dtypes_either_works_or_raises_cleanly(a_shape, b_shape, bias_shape, out_shape,
                                                                              a_dtype, b_dtype, trans_a, trans_b, beta):
    a, b = np.ones(a_shape, a_dtype), np.ones(b_shape, b_dtype)
    bias = None if bias_shape is None else np.ones(bias_shape, a_dtype)
    out = None if out_shape is None else np.zeros(out_shape, a_dtype)
    valid = (a_dtype == b_dtype and a_dtype in DTYPES and a.ndim == 2 and b.ndim == 2)
    if valid:
        M, K = a.shape[::-1] if trans_a else a.shape
        Kb, N = b.shape[::-1] if trans_b else b.shape
        valid = (K == Kb and (bias is None or bias.shape == (N,)) and (out is None or out.shape == (M, N))
                 and (beta == 0 or out is not None))
    try:
        got = kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b, beta=beta, out=out, bias=bias)
    except (ValueError, TypeError) as e:
        assert not valid, f"valid arguments were rejected: {e}"
        assert str(e).startswith("gemm: "), str(e)
        return
    assert valid, "invalid arguments were accepted"
    expected = K + (0 if bias is None else 1)  # out is zeros, so beta * out adds nothing
    np.testing.assert_array_equal(got, np.full((M, N), expected))


@PROFILE
@given(g_shape=shapes, y_shape=shapes, out_shape=st.none() | shapes, g_dtype=array_dtypes, y_dtype=array_dtypes,
       kind=st.sampled_from(ACTIVATIONS + ("bogus",)))
def test_activation_backward_with_arbitrary_shapes_either_works_or_raises_cleanly(g_shape, y_shape, out_shape, g_dtype,
                                                                                  y_dtype, kind):
    g, y = np.ones(g_shape, g_dtype), np.full(y_shape, 0.5, y_dtype)
    out = None if out_shape is None else np.zeros(out_shape, g_dtype)
    valid = (g_dtype == y_dtype and g_dtype in DTYPES and g_shape == y_shape and kind != "bogus"
             and (out is None or out.shape == g_shape))
    try:
        got = kernels.activation_backward(g, y, kind, out=out)
    except (ValueError, TypeError) as e:
        assert not valid, f"valid arguments were rejected: {e}"
        assert str(e).startswith("activation_backward: "), str(e)
        return
    assert valid, "invalid arguments were accepted"
    assert got.shape == g_shape


@PROFILE
@given(shape=shapes, dtype=array_dtypes, out_shape=st.none() | shapes)
def test_bias_grad_with_arbitrary_shapes_either_works_or_raises_cleanly(shape, dtype, out_shape):
    grad = np.ones(shape, dtype)
    out = None if out_shape is None else np.zeros(out_shape, dtype)
    valid = dtype in DTYPES and len(shape) == 2 and (out is None or out.shape == shape[1:])
    try:
        got = kernels.bias_grad(grad, out=out)
    except (ValueError, TypeError) as e:
        assert not valid, f"valid arguments were rejected: {e}"
        assert str(e).startswith("bias_grad: "), str(e)
        return
    assert valid, "invalid arguments were accepted"
    np.testing.assert_array_equal(got, np.full(shape[1], shape[0]))


@pytest.mark.parametrize("name", ["dev", "ci", "thorough"])
def test_hypothesis_profiles_are_registered(name):
    assert settings.get_profile(name).deadline is None
