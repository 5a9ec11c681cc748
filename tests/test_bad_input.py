"""Bad input to every kernel raises TypeError / ValueError naming the argument (never a crash, never
a silent copy); edge-case input that is valid (zero-size arrays, exact in-place) works.

Most checks are generated from KERNELS, one entry per kernel: how to call it with valid arrays of a
dtype, and which of its arguments are float arrays. Messages have the form "<kernel>: <argument> ...".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np
import pytest

from fastmlp import kernels

F32, F64 = np.float32, np.float64
BAD_DTYPES = (np.int32, np.int64, np.float16, np.complex64, np.bool_)


@dataclass
class Kernel:
    name: str
    make: Callable[[type], Dict[str, np.ndarray]]  # valid arrays of a dtype, by argument name
    call: Callable[..., object]                    # call(**arrays)
    float_args: Tuple[str, ...]                     # checked by dtype / contiguity / mixing; first is the reference

    def arrays(self, dtype=F32, **replace):
        arrays = self.make(dtype)
        arrays.update(replace)
        return arrays


def _r(shape, dtype, value=0.5):
    return np.full(shape, value, dtype=dtype)


KERNELS = [
    Kernel("gemm", lambda d: dict(a=_r((5, 4), d), b=_r((4, 3), d), bias=_r(3, d), out=_r((5, 3), d)),
           lambda a, b, bias, out: kernels.gemm(a, b, bias=bias, out=out, beta=0.5),
           ("a", "b", "bias", "out")),
    Kernel("activation", lambda d: dict(x=_r((6, 7), d), out=_r((6, 7), d)),
           lambda x, out: kernels.activation(x, "tanh", out=out), ("x", "out")),
    Kernel("activation_backward", lambda d: dict(grad_out=_r((6, 7), d), y=_r((6, 7), d), out=_r((6, 7), d)),
           lambda grad_out, y, out: kernels.activation_backward(grad_out, y, "sigmoid", out=out),
           ("grad_out", "y", "out")),
    Kernel("bias_grad", lambda d: dict(grad=_r((6, 7), d), out=_r(7, d)),
           lambda grad, out: kernels.bias_grad(grad, out=out), ("grad", "out")),
    Kernel("dropout", lambda d: dict(x=_r((6, 7), d), out=_r((6, 7), d)),
           lambda x, out: kernels.dropout(x, 0.5, seed=1, offset=2, out=out), ("x", "out")),
    Kernel("dropout_backward", lambda d: dict(grad_out=_r((6, 7), d), out=_r((6, 7), d)),
           lambda grad_out, out: kernels.dropout_backward(grad_out, 0.5, seed=1, offset=2, out=out),
           ("grad_out", "out")),
    Kernel("add_noise", lambda d: dict(x=_r((6, 7), d), out=_r((6, 7), d)),
           lambda x, out: kernels.add_noise(x, "gaussian", 0.1, seed=1, offset=2, out=out), ("x", "out")),
    Kernel("random_uniform", lambda d: dict(out=_r((6, 7), d)),
           lambda out: kernels.random_uniform((6, 7), seed=1, offset=2, out=out), ("out",)),
    Kernel("random_normal", lambda d: dict(out=_r((6, 7), d)),
           lambda out: kernels.random_normal((6, 7), seed=1, offset=2, out=out), ("out",)),
    # Covered in depth by their own test files; here one pass of the generic checks.
    Kernel("squared_error", lambda d: dict(pred=_r((4, 3), d), target=_r((4, 3), d)),
           lambda pred, target: kernels.squared_error(pred, target), ("pred", "target")),
    Kernel("softmax_cross_entropy", lambda d: dict(logits=_r((4, 3), d), labels=np.array([0, 1, 2, 1])),
           lambda logits, labels: kernels.softmax_cross_entropy(logits, labels), ("logits",)),
    Kernel("sigmoid_cross_entropy", lambda d: dict(logits=_r((4, 3), d), targets=_r((4, 3), d)),
           lambda logits, targets: kernels.sigmoid_cross_entropy(logits, targets), ("logits", "targets")),
    Kernel("batch_norm", lambda d: dict(x=np.arange(12, dtype=d).reshape(4, 3), gamma=_r(3, d), beta=_r(3, d),
                                        running_mean=_r(3, d), running_var=_r(3, d)),
           lambda **a: kernels.batch_norm(**a, training=True),
           ("x", "gamma", "beta", "running_mean", "running_var")),
    Kernel("batch_norm_backward", lambda d: dict(grad_out=_r((4, 3), d), x=np.arange(12, dtype=d).reshape(4, 3),
                                                 gamma=_r(3, d), save_mean=_r(3, d), save_invstd=_r(3, d)),
           lambda **a: kernels.batch_norm_backward(**a),
           ("grad_out", "x", "gamma", "save_mean", "save_invstd")),
    Kernel("sgd_step", lambda d: dict(param=_r((4, 3), d), grad=_r((4, 3), d), momentum_buffer=_r((4, 3), d)),
           lambda **a: kernels.sgd_step(**a, step=1, lr=0.1, momentum=0.9),
           ("param", "grad", "momentum_buffer")),
    Kernel("adam_step", lambda d: dict(param=_r((4, 3), d), grad=_r((4, 3), d), exp_avg=_r((4, 3), d),
                                       exp_avg_sq=_r((4, 3), d)),
           lambda **a: kernels.adam_step(**a, step=1, lr=1e-3), ("param", "grad", "exp_avg", "exp_avg_sq")),
    Kernel("clip_grad_norm", lambda d: dict(grad=_r((4, 3), d)),
           lambda grad: kernels.clip_grad_norm(grad, 0.5), ("grad",)),
]
BY_NAME = {k.name: k for k in KERNELS}
KERNEL_ARGS = [(k, arg) for k in KERNELS for arg in k.float_args]


def kernel_arg_id(pair):
    kernel, arg = pair
    return f"{kernel.name}-{arg}"


def names(kernel, arg):
    """A regex for a message that starts by naming the argument: 'gemm: a has ...'."""
    return rf"{kernel.name}: {re.escape(arg)}\b"


def non_contiguous_like(array, how):
    """A view with array's shape and dtype that is not C-contiguous."""
    if how == "every-other-column":
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), dtype=array.dtype)
        return wide[..., ::2]
    if how == "transposed":
        return np.zeros(array.shape[::-1], dtype=array.dtype).T
    raise AssertionError(how)


def test_every_public_kernel_is_covered():
    public = {name for name in kernels.__all__ if name != "ACTIVATIONS"}
    covered = set(BY_NAME) | {"dropout_mask", "adagrad_step", "rmsprop_step"}
    assert public <= covered, f"kernels without bad-input tests: {sorted(public - covered)}"


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", (F32, F64), ids=("float32", "float64"))
def test_valid_arguments_of_the_table_are_accepted(kernel, dtype):
    kernel.call(**kernel.arrays(dtype))


# --- arrays: type, dtype, mixing, contiguity -----------------------------------------------------

@pytest.mark.parametrize("pair", KERNEL_ARGS, ids=kernel_arg_id)
def test_list_instead_of_array_raises_type_error_naming_the_argument(pair):
    kernel, arg = pair
    arrays = kernel.arrays()
    arrays[arg] = arrays[arg].tolist()
    with pytest.raises(TypeError, match=names(kernel, arg) + r".*numpy\.ndarray"):
        kernel.call(**arrays)


@pytest.mark.parametrize("bad_dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("pair", KERNEL_ARGS, ids=kernel_arg_id)
def test_non_float32_float64_dtype_raises_type_error_naming_the_argument(pair, bad_dtype):
    kernel, arg = pair
    arrays = kernel.arrays()
    arrays[arg] = arrays[arg].astype(bad_dtype)
    with pytest.raises(TypeError, match=names(kernel, arg)):
        kernel.call(**arrays)


@pytest.mark.parametrize("pair", KERNEL_ARGS, ids=kernel_arg_id)
def test_non_native_byte_order_raises_type_error_naming_the_argument(pair):
    kernel, arg = pair
    arrays = kernel.arrays()
    arrays[arg] = arrays[arg].astype(arrays[arg].dtype.newbyteorder())
    with pytest.raises(TypeError, match=names(kernel, arg)):
        kernel.call(**arrays)


@pytest.mark.parametrize("pair", [p for p in KERNEL_ARGS if len(p[0].float_args) > 1], ids=kernel_arg_id)
def test_mixed_float_dtypes_raise_type_error_naming_both_arguments(pair):
    kernel, arg = pair
    others = "|".join(re.escape(a) for a in kernel.float_args if a != arg)
    for odd, rest in ((F64, F32), (F32, F64)):
        arrays = kernel.arrays(rest)
        arrays[arg] = arrays[arg].astype(odd)
        with pytest.raises(TypeError, match=rf"{kernel.name}: ({re.escape(arg)}|{others})\b") as info:
            kernel.call(**arrays)
        message = str(info.value)
        odd_name, rest_name = np.dtype(odd).name, np.dtype(rest).name
        if arg == "out" or (arg == kernel.float_args[0] and kernel.float_args[1:] == ("out",)):
            # out is compared with the dtype of the result
            out_dtype = odd_name if arg == "out" else rest_name
            assert re.search(rf"\bout has dtype {out_dtype} but the result has dtype", message), message
        else:
            # Whichever argument is checked first, both dtypes and both names appear.
            assert re.search(rf"\b{re.escape(arg)} has dtype {odd_name}\b", message), message
            assert re.search(rf"\b({others}) has dtype {rest_name}\b", message), message


@pytest.mark.parametrize("how", ("every-other-column", "transposed"))
@pytest.mark.parametrize("pair", KERNEL_ARGS, ids=kernel_arg_id)
def test_non_contiguous_array_raises_value_error_naming_the_argument(pair, how):
    kernel, arg = pair
    arrays = kernel.arrays()
    if how == "transposed" and arrays[arg].ndim < 2:
        pytest.skip("a 1-D array is its own transpose")
    arrays[arg] = non_contiguous_like(arrays[arg], how)
    assert not arrays[arg].flags.c_contiguous
    with pytest.raises(ValueError, match=names(kernel, arg) + r".*C-contiguous"):
        kernel.call(**arrays)


OUT_KERNELS = [k for k in KERNELS if "out" in k.float_args]


@pytest.mark.parametrize("kernel", OUT_KERNELS, ids=lambda k: k.name)
def test_out_with_wrong_shape_dtype_or_read_only_is_rejected(kernel):
    arrays = kernel.arrays()
    good = arrays["out"]
    wrong_shapes = (good.shape + (1,), (good.size + 1,), good.shape[::-1] + (2,))
    for wrong in (np.zeros(shape, F32) for shape in wrong_shapes):
        with pytest.raises(ValueError, match=names(kernel, "out") + r" has shape"):
            kernel.call(**kernel.arrays(out=wrong))
    if not kernel.name.startswith("random_"):  # a random fill takes its dtype from out
        with pytest.raises(TypeError, match=names(kernel, "out") + r" has dtype float64"):
            kernel.call(**kernel.arrays(out=good.astype(F64)))
    read_only = good.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=names(kernel, "out") + r" is read-only"):
        kernel.call(**kernel.arrays(out=read_only))


def test_out_of_a_random_fill_must_match_the_requested_dtype():
    out = np.zeros((2, 3), F64)
    with pytest.raises(TypeError, match=r"random_uniform: dtype is float32 but out has dtype float64"):
        kernels.random_uniform((2, 3), seed=0, offset=0, dtype=F32, out=out)
    with pytest.raises(TypeError, match=r"random_normal: dtype is float32 but out has dtype float64"):
        kernels.random_normal((2, 3), seed=0, offset=0, dtype=F32, out=out)
    for fill in (kernels.random_uniform, kernels.random_normal):
        for dtype in (np.int32, np.float16, "complex64"):
            with pytest.raises(TypeError, match=r"dtype must be float32 or float64"):
                fill(3, seed=0, offset=0, dtype=dtype)


# --- shapes --------------------------------------------------------------------------------------

def test_gemm_inner_dimension_mismatch_names_both_shapes_and_flags():
    a, b = np.zeros((3, 4), F32), np.zeros((5, 2), F32)
    with pytest.raises(ValueError, match=r"gemm: a has shape \(3, 4\) but b has shape \(5, 2\); with trans_a=False "
                                         r"and trans_b=False the inner dimensions must match \(4 != 5\)"):
        kernels.gemm(a, b)
    with pytest.raises(ValueError, match=r"gemm: a has shape \(3, 4\) but b has shape \(5, 2\); with trans_a=True "
                                         r"and trans_b=True.*\(3 != 2\)"):
        kernels.gemm(a, b, trans_a=True, trans_b=True)
    with pytest.raises(ValueError, match=r"\(4 != 2\)"):
        kernels.gemm(a, b, trans_b=True)


@pytest.mark.parametrize("arg, shape", [("a", (4,)), ("a", (2, 2, 2)), ("b", (4,)), ("b", (4, 3, 1)), ("a", ())])
def test_gemm_operands_must_be_2d(arg, shape):
    arrays = dict(a=np.zeros((5, 4), F32), b=np.zeros((4, 3), F32))
    arrays[arg] = np.zeros(shape, F32)
    with pytest.raises(ValueError, match=rf"gemm: {arg} must be 2-D, got shape"):
        kernels.gemm(**arrays)


@pytest.mark.parametrize("shape", [(4,), (1, 3), (3, 1), (), (2,)])
def test_gemm_bias_must_have_one_value_per_output_column(shape):
    with pytest.raises(ValueError, match=r"gemm: bias has shape .* but \(3,\) is required"):
        kernels.gemm(np.zeros((5, 4), F32), np.zeros((4, 3), F32), bias=np.zeros(shape, F32))


def test_gemm_out_shape_follows_the_transposes():
    a, b = np.zeros((4, 5), F32), np.zeros((3, 4), F32)
    kernels.gemm(a, b, trans_a=True, trans_b=True, out=np.zeros((5, 3), F32))
    with pytest.raises(ValueError, match=r"gemm: out has shape \(3, 5\) but \(5, 3\) is required"):
        kernels.gemm(a, b, trans_a=True, trans_b=True, out=np.zeros((3, 5), F32))


def test_activation_backward_y_must_match_grad_out_shape():
    with pytest.raises(ValueError, match=r"activation_backward: y has shape \(7, 6\) but \(6, 7\) is required"):
        kernels.activation_backward(np.zeros((6, 7), F32), np.zeros((7, 6), F32), "relu")
    with pytest.raises(ValueError, match=r"activation_backward: y has shape \(42,\) but \(6, 7\) is required"):
        kernels.activation_backward(np.zeros((6, 7), F32), np.zeros(42, F32), "relu")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_bias_grad_needs_a_2d_gradient(shape):
    with pytest.raises(ValueError, match=r"bias_grad: grad must be 2-D, got shape"):
        kernels.bias_grad(np.zeros(shape, F32))


@pytest.mark.parametrize("fill", (kernels.random_uniform, kernels.random_normal, kernels.dropout_mask))
def test_random_shapes_are_validated(fill):
    extra = dict(p=0.5) if fill is kernels.dropout_mask else {}
    name = fill.__name__
    with pytest.raises(ValueError, match=rf"{name}: shape \(3, -1\) has a negative dimension"):
        fill((3, -1), seed=0, offset=0, **extra)
    for bad in ("3", 2.5, (2, 1.5), (True, 2), None):
        with pytest.raises(TypeError, match=rf"{name}: shape must be an int or a sequence of ints"):
            fill(bad, seed=0, offset=0, **extra)


def test_random_fill_out_must_have_the_requested_shape():
    with pytest.raises(ValueError, match=r"random_uniform: out has shape \(2, 3\) but \(3, 2\) is required"):
        kernels.random_uniform((3, 2), seed=0, offset=0, out=np.zeros((2, 3), F32))
    with pytest.raises(ValueError, match=r"random_normal: out has shape \(6,\) but \(2, 3\) is required"):
        kernels.random_normal((2, 3), seed=0, offset=0, out=np.zeros(6, F32))


# --- overlapping memory --------------------------------------------------------------------------

@pytest.mark.parametrize("operand", ("a", "b", "bias"))
def test_gemm_out_overlapping_an_input_raises(operand):
    buf = np.zeros(64, F32)
    arrays = dict(a=np.zeros((4, 4), F32), b=np.zeros((4, 4), F32), bias=np.zeros(4, F32))
    out = buf[:16].reshape(4, 4)
    if operand == "bias":
        arrays["bias"] = buf[12:16]
    else:
        arrays[operand] = buf[8:24].reshape(4, 4)  # partly overlaps out
    with pytest.raises(ValueError, match=rf"gemm: out and {operand} share memory"):
        kernels.gemm(**arrays, out=out)
    if operand != "bias":
        same = np.zeros((4, 4), F32)
        arrays[operand] = same
        with pytest.raises(ValueError, match=rf"gemm: out and {operand} share memory"):
            kernels.gemm(**arrays, out=same)  # in place is not allowed for gemm


ELEMENTWISE = {
    "activation": lambda x, out: kernels.activation(x, "relu", out=out),
    "activation_backward": lambda x, out: kernels.activation_backward(x, np.ones_like(x), "relu", out=out),
    "dropout": lambda x, out: kernels.dropout(x, 0.5, seed=0, offset=0, out=out),
    "dropout_backward": lambda x, out: kernels.dropout_backward(x, 0.5, seed=0, offset=0, out=out),
    "add_noise": lambda x, out: kernels.add_noise(x, "mask", 0.5, seed=0, offset=0, out=out),
}
INPUT_NAME = {"activation": "x", "activation_backward": "grad_out", "dropout": "x", "dropout_backward": "grad_out",
              "add_noise": "x"}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_out_partly_overlapping_its_input_raises_but_exact_in_place_works(name):
    op = ELEMENTWISE[name]
    buf = np.arange(300, dtype=F32) - 150
    x, out = buf[0:200], buf[100:300]
    with pytest.raises(ValueError, match=rf"{name}: out and {INPUT_NAME[name]} share memory"):
        op(x, out)
    x, out = buf[100:300], buf[0:200]
    with pytest.raises(ValueError, match=rf"{name}: out and {INPUT_NAME[name]} share memory"):
        op(x, out)
    x = (np.arange(300, dtype=F32) - 150).reshape(30, 10)
    expected = op(x, None)
    assert op(x, x) is x
    np.testing.assert_array_equal(x, expected)


def test_activation_backward_out_partly_overlapping_y_raises():
    buf = np.ones(30, F32)
    with pytest.raises(ValueError, match=r"activation_backward: out and y share memory"):
        kernels.activation_backward(np.ones(20, F32), buf[:20], "relu", out=buf[10:30])


def test_bias_grad_out_overlapping_grad_raises():
    grad = np.ones((4, 3), F32)
    with pytest.raises(ValueError, match=r"bias_grad: out and grad share memory"):
        kernels.bias_grad(grad, out=grad[0])


# --- scalars -------------------------------------------------------------------------------------

BAD_PROBABILITIES = (-0.1, -0.0 - 1e-300, 1.0, 1.5, math.nan, math.inf, -math.inf)


@pytest.mark.parametrize("p", BAD_PROBABILITIES)
def test_dropout_probability_outside_0_1_raises(p):
    x = np.ones(5, F32)
    with pytest.raises(ValueError, match=r"dropout: p must satisfy 0 <= p < 1"):
        kernels.dropout(x, p, seed=0, offset=0)
    with pytest.raises(ValueError, match=r"dropout_backward: p must satisfy 0 <= p < 1"):
        kernels.dropout_backward(x, p, seed=0, offset=0)
    with pytest.raises(ValueError, match=r"dropout_mask: p must satisfy 0 <= p < 1"):
        kernels.dropout_mask(5, p, seed=0, offset=0)
    with pytest.raises(ValueError, match=r"add_noise: level must satisfy 0 <= level < 1"):
        kernels.add_noise(x, "mask", p, seed=0, offset=0)


@pytest.mark.parametrize("level", (-0.5, -1e-300, math.nan, math.inf))
def test_gaussian_noise_level_must_be_finite_and_non_negative(level):
    with pytest.raises(ValueError, match=r"add_noise: level must be a finite number >= 0"):
        kernels.add_noise(np.ones(5, F32), "gaussian", level, seed=0, offset=0)


@pytest.mark.parametrize("name, value", [("alpha", math.nan), ("alpha", math.inf), ("beta", math.nan),
                                         ("beta", -math.inf)])
def test_gemm_alpha_and_beta_must_be_finite(name, value):
    a = np.ones((2, 2), F32)
    with pytest.raises(ValueError, match=rf"gemm: {name} must be finite"):
        kernels.gemm(a, a, out=np.ones((2, 2), F32), **{name: value})


def test_gemm_beta_without_out_raises():
    a = np.ones((2, 2), F32)
    with pytest.raises(ValueError, match=r"gemm: beta=.* reads out, but out was not given"):
        kernels.gemm(a, a, beta=1.0)


@pytest.mark.parametrize("std", (-1.0, -1e-300, math.nan, math.inf))
def test_random_normal_std_must_be_finite_and_non_negative(std):
    with pytest.raises(ValueError, match=r"random_normal: std must be a finite number >= 0"):
        kernels.random_normal(3, seed=0, offset=0, std=std)


def test_random_normal_mean_must_be_finite():
    with pytest.raises(ValueError, match=r"random_normal: mean must be finite"):
        kernels.random_normal(3, seed=0, offset=0, mean=math.nan)


@pytest.mark.parametrize("low, high, match", [(1.0, 0.0, "low must be <= high"), (math.nan, 1.0, "low must be finite"),
                                              (0.0, math.inf, "high must be finite"),
                                              (-1e308, 1e308, "high - low overflows")])
def test_random_uniform_range_is_validated(low, high, match):
    with pytest.raises(ValueError, match=rf"random_uniform: {match}"):
        kernels.random_uniform(3, seed=0, offset=0, low=low, high=high)


def test_random_uniform_range_too_wide_for_float32_raises_or_stays_finite():
    # high - low = 6e38 is a finite double but overflows float32 (max 3.4e38).
    try:
        got = kernels.random_uniform(1000, seed=0, offset=0, low=-3e38, high=3e38)
    except ValueError as e:
        assert "random_uniform" in str(e) and "float32" in str(e)
    else:
        assert np.isfinite(got).all(), f"{int((~np.isfinite(got)).sum())} of 1000 values are not finite"


def test_random_uniform_with_low_equal_high_is_constant():
    np.testing.assert_array_equal(kernels.random_uniform(9, seed=0, offset=0, low=2.5, high=2.5), 2.5)


RANDOM_CALLS = {
    "dropout": lambda **s: kernels.dropout(np.ones(5, F32), 0.5, **s),
    "dropout_backward": lambda **s: kernels.dropout_backward(np.ones(5, F32), 0.5, **s),
    "dropout_mask": lambda **s: kernels.dropout_mask(5, 0.5, **s),
    "add_noise": lambda **s: kernels.add_noise(np.ones(5, F32), "gaussian", 0.5, **s),
    "random_uniform": lambda **s: kernels.random_uniform(5, **s),
    "random_normal": lambda **s: kernels.random_normal(5, **s),
}


@pytest.mark.parametrize("which", ("seed", "offset"))
@pytest.mark.parametrize("name", list(RANDOM_CALLS))
def test_seed_and_offset_must_be_integers_in_0_to_2_pow_64(name, which):
    call = RANDOM_CALLS[name]
    other = "offset" if which == "seed" else "seed"
    for value in (-1, 2**64, 2**70, -(2**64)):
        with pytest.raises(ValueError, match=rf"{name}: {which} must be in \[0, 2\*\*64\)"):
            call(**{which: value, other: 0})
    for value in (1.0, "1", True, None, 1 + 0j):
        with pytest.raises(TypeError, match=rf"{name}: {which} must be an integer"):
            call(**{which: value, other: 0})
    # Edge values and NumPy integers are fine.
    for value in (0, 2**64 - 1, np.uint64(2**64 - 1), np.int64(5), np.uint32(7)):
        call(**{which: value, other: 0})


@pytest.mark.parametrize("bad", ("softmax", "ReLU", "", "sigmoid "))
def test_unknown_activation_name_raises_value_error_listing_the_valid_names(bad):
    x = np.ones((2, 2), F32)
    valid = r".*'identity', 'relu', 'sigmoid' \(or 'logistic'\), 'tanh'"
    with pytest.raises(ValueError, match=rf"gemm: activation must be one of{valid}"):
        kernels.gemm(x, x, activation=bad)
    with pytest.raises(ValueError, match=rf"activation: kind must be one of{valid}"):
        kernels.activation(x, bad)
    with pytest.raises(ValueError, match=rf"activation_backward: kind must be one of{valid}"):
        kernels.activation_backward(x, x, bad)


def test_every_documented_activation_name_is_accepted():
    x = np.ones((2, 2), F32)
    for name in kernels.ACTIVATIONS:
        y = kernels.activation(x, name)
        assert y.shape == x.shape and np.isfinite(y).all(), name
        np.testing.assert_array_equal(kernels.gemm(x, x, activation=name), kernels.activation(x @ x, name))
        assert kernels.activation_backward(x, y, name).shape == x.shape


def test_unknown_noise_kind_raises_value_error_listing_the_valid_kinds():
    with pytest.raises(ValueError, match=r"add_noise: kind must be 'gaussian' or 'mask'"):
        kernels.add_noise(np.ones(3, F32), "uniform", 0.1, seed=0, offset=0)


def test_non_string_activation_raises_type_error():
    x = np.ones((2, 2), F32)
    with pytest.raises(TypeError):
        kernels.activation(x, None)
    with pytest.raises(TypeError):
        kernels.gemm(x, x, activation=1)


# --- zero-size arrays work and give the right answer ---------------------------------------------

@pytest.mark.parametrize("dtype", (F32, F64), ids=("float32", "float64"))
def test_zero_size_arrays_work_in_every_elementwise_kernel(dtype):
    for shape in [(0,), (0, 5), (5, 0), (3, 0, 2)]:
        x = np.zeros(shape, dtype)
        for kind in kernels.ACTIVATIONS:
            assert kernels.activation(x, kind).shape == shape
            assert kernels.activation_backward(x, x, kind).shape == shape
        assert kernels.dropout(x, 0.5, seed=0, offset=0).shape == shape
        assert kernels.dropout_backward(x, 0.5, seed=0, offset=0).shape == shape
        assert kernels.dropout_mask(shape, 0.5, seed=0, offset=0).shape == shape
        assert kernels.add_noise(x, "gaussian", 0.5, seed=0, offset=0).shape == shape
        assert kernels.add_noise(x, "mask", 0.5, seed=0, offset=0).shape == shape
        assert kernels.random_uniform(shape, seed=0, offset=0, dtype=dtype).shape == shape
        assert kernels.random_normal(shape, seed=0, offset=0, dtype=dtype).shape == shape


@pytest.mark.parametrize("dtype", (F32, F64), ids=("float32", "float64"))
def test_zero_size_bias_grad_and_gemm(dtype):
    np.testing.assert_array_equal(kernels.bias_grad(np.zeros((0, 5), dtype)), np.zeros(5, dtype))
    assert kernels.bias_grad(np.zeros((5, 0), dtype)).shape == (0,)
    assert kernels.bias_grad(np.zeros((0, 0), dtype)).shape == (0,)
    np.testing.assert_array_equal(kernels.gemm(np.zeros((3, 0), dtype), np.zeros((0, 4), dtype)), np.zeros((3, 4)))
    np.testing.assert_array_equal(
        kernels.gemm(np.zeros((3, 0), dtype), np.zeros((0, 4), dtype), bias=np.arange(4, dtype=dtype)),
        np.tile(np.arange(4, dtype=dtype), (3, 1)))
    assert kernels.gemm(np.zeros((0, 3), dtype), np.zeros((3, 4), dtype)).shape == (0, 4)
    assert kernels.gemm(np.zeros((3, 2), dtype), np.zeros((2, 0), dtype)).shape == (3, 0)
    assert kernels.gemm(np.zeros((0, 3), dtype), np.zeros((4, 3), dtype), trans_b=True).shape == (0, 4)


@pytest.mark.parametrize("dtype", (F32, F64), ids=("float32", "float64"))
def test_zero_rows_give_zero_loss_and_an_empty_gradient(dtype):
    empty = np.zeros((0, 3), dtype)
    for loss, grad in (kernels.squared_error(empty, empty),
                       kernels.softmax_cross_entropy(empty, np.zeros(0, np.int64)),
                       kernels.sigmoid_cross_entropy(empty, empty)):
        assert loss == 0.0
        assert grad.shape == (0, 3) and grad.dtype == dtype


@pytest.mark.parametrize("dtype", (F32, F64), ids=("float32", "float64"))
def test_optimizer_steps_on_empty_parameters_are_no_ops(dtype):
    e = np.zeros(0, dtype)
    assert kernels.sgd_step(e, e.copy(), e.copy(), step=1, lr=0.1, momentum=0.9) is e
    assert kernels.adam_step(e, e.copy(), e.copy(), e.copy(), step=1, lr=0.1) is e


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0, 1.0]), np.array([0, 1, 2, 1], np.uint8),
                                    np.array([0, 1, 2, 1], np.int16), [0, 1, 2, 1]],
                         ids=("float64", "uint8", "int16", "list"))
def test_softmax_cross_entropy_labels_must_be_int32_or_int64(labels):
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: labels\b"):
        kernels.softmax_cross_entropy(np.zeros((4, 3), F32), labels)


@pytest.mark.parametrize("bad", (-1, 3))
def test_softmax_cross_entropy_labels_must_be_valid_class_indices(bad):
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels\[1\] = " + str(bad)):
        kernels.softmax_cross_entropy(np.zeros((4, 3), F32), np.array([0, bad, 2, 1]))


# kernels.gemm reaches the kernel through _core._gemm, a METH_FASTCALL function that converts its
# positional arguments itself (pybind11 does it for the other entry points): the same conversions,
# and the same exceptions, as pybind11's.
def _gemm_operands():
    return np.ones((3, 4), F32), np.ones((4, 5), F32)


def test_gemm_scalar_arguments_convert_like_pybind11():
    a, b = _gemm_operands()
    expected = kernels.gemm(a, b, alpha=2.0)
    for alpha in (2, np.float32(2.0), np.float64(2.0), np.int64(2)):
        np.testing.assert_array_equal(kernels.gemm(a, b, alpha=alpha), expected)
    at = np.ascontiguousarray(a.T)
    for flag in (True, np.bool_(True), 1):
        np.testing.assert_array_equal(kernels.gemm(at, b, trans_a=flag, alpha=2.0), expected)


def test_gemm_bad_scalar_arguments_raise_type_errors():
    a, b = _gemm_operands()
    with pytest.raises(TypeError, match="gemm: alpha must be a real number, not str"):
        kernels.gemm(a, b, alpha="2")
    with pytest.raises(TypeError, match="gemm: beta must be a real number, not NoneType"):
        kernels.gemm(a, b, beta=None)
    with pytest.raises(TypeError, match="gemm: alpha must be a real number, not int .*too large"):
        kernels.gemm(a, b, alpha=10**400)
    with pytest.raises(TypeError, match="gemm: trans_b must be a bool, not numpy.ndarray .*ambiguous"):
        kernels.gemm(a, b, trans_b=np.ones(2))
    with pytest.raises(TypeError, match="gemm: activation must be a str, not int"):
        kernels.gemm(a, b, activation=3)
    with pytest.raises(ValueError, match="activation"):
        kernels.gemm(a, b, activation="bogus")

    class Bad:
        def __bool__(self):
            raise RuntimeError("no truth value")

    with pytest.raises(TypeError, match="gemm: trans_a must be a bool, not Bad .*no truth value"):
        kernels.gemm(a, b, trans_a=Bad())


def test_gemm_positional_entry_point_checks_its_argument_count():
    from fastmlp import _core

    a, b = _gemm_operands()
    with pytest.raises(TypeError, match="9 to 12 positional arguments"):
        _core._gemm(a, b, False, False, 1.0, 0.0, None, None)
    with pytest.raises(TypeError, match="9 to 12 positional arguments"):
        _core._gemm(a, b, False, False, 1.0, 0.0, None, None, "identity", None, None, 0.0, 1)
    with pytest.raises(TypeError):
        _core._gemm(a, b, False, False, 1.0, 0.0, None, None, activation="identity")
    out = _core._gemm(a, b, False, False, 1.0, 0.0, None, None, "relu")
    np.testing.assert_array_equal(out, np.full((3, 5), 4.0, F32))
    # the validation's errors surface as the same Python exceptions
    with pytest.raises(ValueError, match="inner dimensions must match"):
        _core._gemm(a, a, False, False, 1.0, 0.0, None, None, "identity")
