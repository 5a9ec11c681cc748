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


# --- layouts, optimizer formulas, model files (issue 8) ----------------------------------------------

def _strided(rng, shape, dtype, how):
    """A non-C-contiguous view of ``shape``: every other column, or a transpose."""
    if how == "transposed" and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
        return np.ascontiguousarray(rng.standard_normal(shape[::-1]).astype(dtype)).T
    wide = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)
    return wide[..., ::2]


# (kernel name, the argument made non-contiguous, call(arrays by name) -> result)
_LAYOUT_CALLS = [
    ("gemm", "a", lambda v: kernels.gemm(v["a"], v["b"], out=v["out"])),
    ("gemm", "b", lambda v: kernels.gemm(v["a"], v["b"], out=v["out"])),
    ("gemm", "out", lambda v: kernels.gemm(v["a"], v["b"], out=v["out"])),
    ("activation", "x", lambda v: kernels.activation(v["x"], "tanh", out=v["out"])),
    ("activation", "out", lambda v: kernels.activation(v["x"], "relu", out=v["out"])),
    ("activation_backward", "grad_out", lambda v: kernels.activation_backward(v["grad_out"], v["y"], "sigmoid")),
    ("activation_backward", "y", lambda v: kernels.activation_backward(v["grad_out"], v["y"], "tanh")),
    ("bias_grad", "grad", lambda v: kernels.bias_grad(v["grad"])),
    ("dropout", "x", lambda v: kernels.dropout(v["x"], 0.5, seed=1, offset=2)),
    ("dropout_backward", "grad_out", lambda v: kernels.dropout_backward(v["grad_out"], 0.5, seed=1, offset=2)),
    ("add_noise", "x", lambda v: kernels.add_noise(v["x"], "gaussian", 0.1, seed=1, offset=2)),
    ("squared_error", "pred", lambda v: kernels.squared_error(v["pred"], v["target"])),
    ("sigmoid_cross_entropy", "targets", lambda v: kernels.sigmoid_cross_entropy(v["logits"], v["targets"])),
    ("sgd_step", "grad", lambda v: kernels.sgd_step(v["param"], v["grad"], None, step=1, lr=0.1)),
    ("adam_step", "exp_avg_sq", lambda v: kernels.adam_step(v["param"], v["grad"], v["exp_avg"], v["exp_avg_sq"],
                                                             step=1, lr=0.1)),
]


@PROFILE
@given(case=st.sampled_from(_LAYOUT_CALLS), rows=st.integers(2, 9), cols=st.integers(2, 9), dtype=dtypes,
       how=st.sampled_from(["columns", "transposed"]), seed=seeds)
def test_non_contiguous_arguments_are_rejected_with_a_value_error_naming_them(case, rows, cols, dtype, how, seed):
    name, arg, call = case
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal((rows, cols)).astype(dtype)
              for k in ("x", "y", "grad_out", "grad", "pred", "target", "logits", "targets", "param", "exp_avg",
                        "exp_avg_sq")}
    arrays.update(a=rng.standard_normal((rows, cols)).astype(dtype), b=rng.standard_normal((cols, rows)).astype(dtype),
                  out=np.zeros((rows, rows) if name == "gemm" else (rows, cols), dtype))
    arrays[arg] = _strided(rng, arrays[arg].shape, dtype, how)
    assert not arrays[arg].flags.c_contiguous
    with pytest.raises(ValueError, match=f"^{name}: {arg} .*not C-contiguous"):
        call(arrays)


def _optimizer_hyper_parameters(opt):
    small = st.floats(0.0, 0.05)
    if opt == "sgd":
        return st.fixed_dictionaries(dict(
            lr=st.floats(0.0, 0.1), momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]), weight_decay=small, l1=small,
            dampening=st.sampled_from([0.0, 0.0, 0.3, 1.0]), nesterov=st.booleans())).map(
            lambda hp: dict(hp, nesterov=hp["nesterov"] and hp["momentum"] > 0 and hp["dampening"] == 0))
    if opt == "adagrad":
        return st.fixed_dictionaries(dict(lr=st.floats(0.0, 0.1), lr_decay=st.floats(0.0, 0.5), weight_decay=small,
                                          eps=st.sampled_from([0.0, 1e-10, 1e-6, 0.1]), l1=small))
    if opt == "rmsprop":
        return st.fixed_dictionaries(dict(lr=st.floats(0.0, 0.05), alpha=st.floats(0.0, 1.0), weight_decay=small,
                                          eps=st.sampled_from([1e-8, 1e-3, 0.5]), l1=small,
                                          momentum=st.sampled_from([0.0, 0.9]), centered=st.booleans()))
    return st.fixed_dictionaries(dict(lr=st.floats(0.0, 0.05), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.0, 0.999),
                                      eps=st.sampled_from([0.0, 1e-8, 1e-3]), weight_decay=small, l1=small,
                                      decoupled=st.booleans()))


@PROFILE
@given(data=st.data(), opt=st.sampled_from(["sgd", "adagrad", "rmsprop", "adam"]), n=st.integers(1, 300),
       steps=st.integers(1, 4), with_segments=st.booleans(), seed=seeds, isa=isas)
def test_optimizer_steps_match_the_reference_formula_for_arbitrary_hyper_parameters(data, opt, n, steps, with_segments,
                                                                                    seed, isa):
    from test_optim_kernels import (assert_float64_close, gradients, initial_params, new_state, random_segments,
                                    run_kernel, run_reference)

    hp = data.draw(_optimizer_hyper_parameters(opt), label="hyper-parameters")
    rng = np.random.default_rng(seed)
    if with_segments and n >= 8:
        hp["segments"] = random_segments(rng, n, rows=int(rng.integers(1, min(4, n // 2) + 1)))
    p_ref = initial_params(rng, n)
    grads = gradients(rng, n, steps)
    p, state, state_ref = p_ref.copy(), new_state(opt, n, np.float64), new_state(opt, n, np.float64)
    with on_isa(isa):
        for t in range(1, steps + 1):
            run_reference(opt, p_ref, grads[t - 1], state_ref, t, hp)
            assert run_kernel(opt, p, grads[t - 1].copy(), state, t, hp) is p
    assert_float64_close(p, p_ref, f"{opt} param after {steps} steps with {hp}")
    for name in state:
        assert_float64_close(state[name], state_ref[name], f"{opt} {name}")


@PROFILE
@given(sizes=st.lists(st.integers(1, 7), min_size=2, max_size=4), activation=st.sampled_from(["relu", "tanh",
       "sigmoid"]), output=st.sampled_from(["identity", "softmax", "sigmoid"]), batch_norm=st.booleans(),
       dropout=st.sampled_from([0.0, 0.25]), dtype=st.sampled_from(["float32", "float64"]),
       scaler=st.booleans(), seed=st.integers(0, 2**63 - 1), kind=st.sampled_from(["mlp", "autoencoder"]))
def test_load_of_save_is_the_same_model_for_random_architectures(sizes, activation, output, batch_norm, dropout, dtype,
                                                                 scaler, seed, kind):
    import tempfile

    rng = np.random.default_rng(seed % 2**32)
    if kind == "autoencoder":
        model = fastmlp.Autoencoder(sizes, activation=activation, tied=batch_norm, dropout=dropout, seed=seed,
                                    dtype=dtype)
        net = model.model
    else:
        model = net = fastmlp.MLP(sizes, activation=activation, output=output, batch_norm=batch_norm and len(sizes) > 2,
                                  dropout=dropout, seed=seed, dtype=dtype)
    for buf in net.buffers().values():  # batch-norm statistics as after training
        buf[...] = rng.uniform(0.5, 2.0, buf.shape)
    if scaler:
        net.scaler = {"x_mean": rng.standard_normal(sizes[0]), "x_scale": rng.uniform(0.5, 2, sizes[0])}
    with tempfile.TemporaryDirectory() as d:
        model.save(os.path.join(d, "m.npz"))
        loaded = fastmlp.load(os.path.join(d, "m.npz"))
    assert type(loaded) is type(model)
    loaded_net = loaded.model if kind == "autoencoder" else loaded
    np.testing.assert_array_equal(loaded_net.parameters(), net.parameters())
    assert loaded_net.parameters().dtype == net.parameters().dtype
    for name, buf in net.buffers().items():
        np.testing.assert_array_equal(loaded_net.buffers()[name], buf)
    X = rng.standard_normal((3, sizes[0]))
    if kind == "autoencoder":
        np.testing.assert_array_equal(loaded.reconstruct(X), model.reconstruct(X))
    else:
        np.testing.assert_array_equal(loaded.forward(X), model.forward(X))
        assert loaded.config() == model.config()
