"""fastmlp.cuda and the CUDA path of fastmlp.kernels.

Two halves. The first runs everywhere: without a usable GPU every entry point answers with a clear
error, a mix of host and device arrays is refused before any device is touched, and the CPU
kernels refuse the device-only keywords. The second needs a CUDA device (skipped with "no CUDA
device"): every kernel against the CPU kernels and float64 references on awkward shapes, random
streams bit-identical to the CPU, capturable optimizer steps and CUDA graphs, and interop with
torch and CuPy (each skipped when absent).

GPU tolerances follow test_gemm.py: an FMA chain over K terms errs by at most K*eps*|a||b|, and a
split-K or tree reduction on the GPU has the same bound with another order of additions.
"""

from __future__ import annotations

import gc
import itertools
import os
import weakref

import numpy as np
import pytest

from fastmlp import cuda
from fastmlp import kernels as K

from reference import keep_mask, uniform01

GPU = cuda.is_available()
requires_gpu = pytest.mark.skipif(not GPU, reason="no CUDA device")
no_gpu_only = pytest.mark.skipif(GPU, reason="a CUDA device is present")
EPS32 = float(np.finfo(np.float32).eps)


class FakeDeviceArray:
    """Exposes ``__cuda_array_interface__`` (version 3) over an address that needs no GPU to describe."""

    def __init__(self, shape=(3, 4), typestr="<f4", ptr=0x7F0000000000, strides=None, stream=None):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, False),
                                         "version": 3, "strides": strides, "stream": stream}


def to_device(x, device):
    return cuda.asarray(x) if device == "cuda" else x


def to_host(x):
    return x.to_numpy() if isinstance(x, cuda.DeviceArray) else np.asarray(x)


# -- everywhere: availability and refusals --------------------------------------------------------


def test_is_available_is_a_bool_and_never_raises():
    assert isinstance(cuda.is_available(), bool)
    assert isinstance(cuda.device_count(), int)
    assert (cuda.unavailable_reason() is None) == cuda.is_available()


@no_gpu_only
def test_without_a_device_count_is_zero_and_entry_points_say_why():
    assert cuda.device_count() == 0
    for call in (lambda: cuda.asarray(np.zeros(3, np.float32)), lambda: cuda.empty(3), lambda: cuda.zeros((2, 2)),
                 lambda: cuda.synchronize(), lambda: cuda.current_device(), lambda: cuda.Stream(),
                 lambda: cuda.Event()):
        with pytest.raises(RuntimeError, match="no CUDA device|no CUDA backend"):
            call()


@no_gpu_only
@pytest.mark.parametrize("call", [
    lambda a: K.gemm(a, FakeDeviceArray((4, 2))),
    lambda a: K.activation(a, "relu"),
    lambda a: K.bias_grad(a),
    lambda a: K.dropout(a, 0.5, seed=1, offset=0),
    lambda a: K.squared_error(a, FakeDeviceArray()),
    lambda a: K.softmax_cross_entropy(a, np.zeros(3, np.int64)),
    lambda a: K.adam_step(a, FakeDeviceArray(), FakeDeviceArray(), FakeDeviceArray(), step=1, lr=0.1),
], ids=["gemm", "activation", "bias_grad", "dropout", "squared_error", "softmax_cross_entropy", "adam_step"])
def test_kernels_given_device_arrays_without_a_device_raise_a_clear_runtime_error(call):
    with pytest.raises(RuntimeError, match="no CUDA device|no CUDA backend"):
        call(FakeDeviceArray())


@pytest.mark.parametrize("call, device_name, host_name", [
    (lambda d, h: K.gemm(h, d), "b", "a"),
    (lambda d, h: K.gemm(d, h), "a", "b"),
    (lambda d, h: K.gemm(h, h.T.copy(), out=d), "out", "a"),
    (lambda d, h: K.gemm(d, d, bias=h[0]), "a", "bias"),
    (lambda d, h: K.activation(h, "relu", out=d), "out", "x"),
    (lambda d, h: K.activation_backward(d, h, "relu"), "grad_out", "y"),
    (lambda d, h: K.squared_error(h, d), "target", "pred"),
    (lambda d, h: K.softmax_cross_entropy(h, FakeDeviceArray((3,), "<i8")), "labels", "logits"),
    (lambda d, h: K.batch_norm(d, h[0], h[0], h[0], h[0], training=True), "x", "gamma"),
    (lambda d, h: K.adam_step(h, d, h, h, step=1, lr=0.1), "grad", "param"),
    (lambda d, h: K.dropout(h, 0.5, seed=1, offset=0, step=FakeDeviceArray((1,), "<i8"), n_streams=2), "step", "x"),
], ids=["gemm-b", "gemm-a", "gemm-out", "gemm-bias", "activation", "activation_backward", "squared_error",
        "softmax_cross_entropy", "batch_norm", "adam_step", "dropout-step"])
def test_mixing_host_and_device_arrays_is_a_type_error_naming_both(call, device_name, host_name):
    # Decided before any device is touched, so this runs without a GPU too.
    host = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match=rf"{device_name} is a CUDA array but {host_name} is a NumPy array; "
                                        r"move both to the same device"):
        call(FakeDeviceArray(), host)


@pytest.mark.parametrize("call", [
    lambda a: K.gemm(a, a.T.copy(), stream=2),
    lambda a: K.activation(a, "relu", stream=2),
    lambda a: K.activation_backward(a, a, "relu", stream=2),
    lambda a: K.bias_grad(a, stream=2),
    lambda a: K.dropout(a, 0.5, seed=1, offset=0, stream=2),
    lambda a: K.dropout_backward(a, 0.5, seed=1, offset=0, stream=2),
    lambda a: K.dropout_mask(3, 0.5, seed=1, offset=0, stream=2),
    lambda a: K.add_noise(a, "mask", 0.5, seed=1, offset=0, stream=2),
    lambda a: K.random_uniform(3, seed=1, offset=0, stream=2),
    lambda a: K.random_normal(3, seed=1, offset=0, stream=2),
    lambda a: K.squared_error(a, a.copy(), stream=2),
    lambda a: K.softmax_cross_entropy(a, np.zeros(3, np.int64), stream=2),
    lambda a: K.sigmoid_cross_entropy(a, a.copy(), stream=2),
    lambda a: K.batch_norm(a, a[0].copy(), a[0].copy(), a[0].copy(), a[0].copy(), training=True, stream=2),
    lambda a: K.sgd_step(a, a.copy(), None, step=1, lr=0.1, stream=2),
    lambda a: K.adagrad_step(a, a.copy(), a.copy(), step=1, lr=0.1, stream=2),
    lambda a: K.rmsprop_step(a, a.copy(), a.copy(), lr=0.1, stream=2),
    lambda a: K.adam_step(a, a.copy(), a.copy(), a.copy(), step=1, lr=0.1, stream=2),
], ids=lambda f: "")
def test_cpu_kernels_refuse_a_stream(call):
    with pytest.raises(ValueError, match="stream= applies to CUDA arrays only"):
        call(np.ones((3, 4), np.float32))


def test_cpu_kernels_refuse_device_only_keywords():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="loss_out= applies to CUDA arrays only"):
        K.squared_error(a, a.copy(), loss_out=np.zeros((), np.float32))
    with pytest.raises(ValueError, match="save_mean= applies to CUDA arrays only"):
        K.batch_norm(a, a[0].copy(), a[0].copy(), a[0].copy(), a[0].copy(), training=True, save_mean=a[0].copy())
    with pytest.raises(ValueError, match="dx= applies to CUDA arrays only"):
        K.batch_norm_backward(a, a, a[0], a[0], a[0], dx=a.copy())


def test_an_int_step_folds_into_the_random_stream_on_the_cpu():
    x = np.ones((5, 7), np.float32)
    # The Trainer's stream i of step t is t * n_streams + i (DESIGN.md, "Randomness").
    np.testing.assert_array_equal(K.dropout(x, 0.4, seed=3, offset=1, step=6, n_streams=3),
                                  K.dropout(x, 0.4, seed=3, offset=6 * 3 + 1))
    np.testing.assert_array_equal(K.dropout_mask(35, 0.4, seed=3, offset=2, step=1, n_streams=3),
                                  K.dropout_mask(35, 0.4, seed=3, offset=5))
    np.testing.assert_array_equal(K.add_noise(x, "mask", 0.4, seed=3, offset=0, step=2, n_streams=1),
                                  K.add_noise(x, "mask", 0.4, seed=3, offset=2))


def test_step_needs_n_streams_and_a_stream_index_below_it():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="needs n_streams"):
        K.dropout(x, 0.5, seed=1, offset=0, step=3)
    with pytest.raises(ValueError, match="must be < n_streams"):
        K.dropout(x, 0.5, seed=1, offset=2, step=3, n_streams=2)


def test_the_default_stream_is_the_per_thread_one_and_stream_blocks_nest():
    assert int(cuda.current_stream()) == cuda.PER_THREAD_DEFAULT_STREAM
    with cuda.stream(12345) as outer:
        assert cuda.current_stream() == outer and int(outer) == 12345
        with cuda.stream(cuda.Stream.from_handle(777)):
            assert int(cuda.current_stream()) == 777
        assert int(cuda.current_stream()) == 12345
    assert int(cuda.current_stream()) == cuda.PER_THREAD_DEFAULT_STREAM


def test_stream_handle_zero_is_refused_as_ambiguous():
    with pytest.raises(ValueError, match="ambiguous"):
        cuda.Stream.from_handle(0)
    with pytest.raises(ValueError, match="ambiguous"):
        with cuda.stream(0):
            pass


def test_non_contiguous_interface_is_refused_naming_the_argument():
    if not GPU:
        pytest.skip("parsing a device pointer needs a device")
    buf = cuda.empty((4, 4))
    strided = FakeDeviceArray((4, 2), "<f4", buf.ptr, strides=(16, 4))
    with pytest.raises(ValueError, match=r"gemm: a with shape \(4, 2\) and dtype float32 is not C-contiguous"):
        K.gemm(strided, cuda.empty((2, 3)))


def test_torch_cpu_tensors_are_not_device_arrays():
    torch = pytest.importorskip("torch")
    assert not cuda.is_device_array(torch.zeros(3))
    assert not cuda.is_device_array(np.zeros(3))
    assert cuda.is_device_array(FakeDeviceArray())


# -- GPU: device arrays ---------------------------------------------------------------------------


@requires_gpu
@pytest.mark.parametrize("dtype", ["float32", "int32", "int64", "uint8", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (3, 0), (13, 31), (2, 3, 5)])
def test_device_array_round_trips_host_data(shape, dtype, rng):
    host = (rng.standard_normal(shape) * 50).astype(dtype)
    dev = cuda.asarray(host)
    assert (dev.shape, dev.dtype, dev.size, dev.ndim, dev.nbytes) == (host.shape, host.dtype, host.size, host.ndim,
                                                                      host.nbytes)
    assert dev.device == cuda.current_device()
    np.testing.assert_array_equal(dev.to_numpy(), host)
    np.testing.assert_array_equal(dev.copy().to_numpy(), host)
    if host.size:
        dev.fill(0)
        assert not dev.to_numpy().any()
        dev.copy_(host)
        np.testing.assert_array_equal(dev.to_numpy(), host)


@requires_gpu
def test_device_array_views_share_memory():
    host = np.arange(24, dtype=np.float32).reshape(4, 6)
    dev = cuda.asarray(host)
    np.testing.assert_array_equal(dev.reshape(6, 4).to_numpy(), host.reshape(6, 4))
    np.testing.assert_array_equal(dev.reshape(-1).to_numpy(), host.reshape(-1))
    np.testing.assert_array_equal(dev[1:3].to_numpy(), host[1:3])
    np.testing.assert_array_equal(dev[-1].to_numpy(), host[-1])
    assert dev[4:4].shape == (0, 6)
    dev[1:3].fill(7)
    host[1:3] = 7
    np.testing.assert_array_equal(dev.to_numpy(), host)
    assert dev.view(np.int32).to_numpy().tobytes() == host.tobytes()
    assert float(cuda.asarray(np.array([2.5], np.float32))) == 2.5
    with pytest.raises(TypeError, match="converts to float"):
        float(dev)
    with pytest.raises(IndexError, match="step 1"):
        dev[::2]


@requires_gpu
def test_numpy_conversion_is_refused_rather_than_copying_behind_your_back():
    dev = cuda.zeros(3)
    with pytest.raises(TypeError, match=r"call \.to_numpy\(\)"):
        np.asarray(dev)
    with pytest.raises(TypeError):
        np.ones(3) + dev


@requires_gpu
def test_asarray_refuses_float64_host_data_unless_a_dtype_is_given():
    with pytest.raises(TypeError, match="float64.*dtype=numpy.float32"):
        cuda.asarray(np.zeros(3))
    assert cuda.asarray(np.zeros(3), dtype=np.float32).dtype == np.float32


@requires_gpu
def test_cuda_array_interface_is_version_3_with_the_stream_last_written():
    dev = cuda.empty((3, 4))
    cai = dev.__cuda_array_interface__
    assert cai["version"] == 3 and cai["shape"] == (3, 4) and cai["typestr"] == "<f4"
    assert cai["data"] == (dev.ptr, False) and cai["strides"] is None
    assert cai["stream"] is None  # nothing pending
    K.activation(cuda.zeros((3, 4)), "relu", out=dev)
    assert dev.__cuda_array_interface__["stream"] == cuda.PER_THREAD_DEFAULT_STREAM
    s = cuda.Stream()
    K.activation(cuda.zeros((3, 4)), "relu", out=dev, stream=s)
    assert dev.__cuda_array_interface__["stream"] == int(s)
    s.synchronize()


@requires_gpu
def test_viewing_a_foreign_interface_is_zero_copy():
    owner = cuda.asarray(np.arange(6, dtype=np.float32))
    view = cuda.asarray(FakeDeviceArray((2, 3), "<f4", owner.ptr))
    assert view.ptr == owner.ptr and view.shape == (2, 3)
    np.testing.assert_array_equal(view.to_numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


# -- GPU: kernels against the CPU and float64 ----------------------------------------------------

# Outputs of fewer 128x128 tiles than the GPU has multiprocessors take the 64x64 kernel, split over
# k in the kernel when long enough (on an H100: (97, 65, 129) into 3 splits, (255, 33, 1000) into 16,
# (96, 132, 260) into 5 with float4 loads of both operands in every transpose case);
# test_gemm_of_many_tiles_... covers the 128x128 kernel.
SHAPES = [(0, 5, 3), (5, 0, 3), (5, 3, 0), (1, 1, 1), (7, 13, 31), (97, 65, 129), (128, 257, 64), (255, 33, 1000),
          (1000, 3, 7), (3, 1000, 513), (96, 132, 260)]
ACTIVATIONS = ("identity", "relu", "sigmoid", "logistic", "tanh")


def _act64(x, kind):
    if kind == "relu":
        return np.maximum(x, 0)
    if kind in ("sigmoid", "logistic"):
        return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    return x


def _gemm_case(rng, M, N, K_, trans_a, trans_b):
    """Operands for out = act(1.5 op(a) op(b) + 0.5 c0 + bias), the float64 product 1.5 op(a) op(b)
    + 0.5 c0 + bias before the activation, and the bound on a float32 result's error."""
    a = rng.uniform(-1, 1, (K_, M) if trans_a else (M, K_)).astype(np.float32)
    b = rng.uniform(-1, 1, (N, K_) if trans_b else (K_, N)).astype(np.float32)
    bias = rng.uniform(-1, 1, N).astype(np.float32)
    c0 = rng.uniform(-1, 1, (M, N)).astype(np.float32)
    opa = a.astype(np.float64).T if trans_a else a.astype(np.float64)
    opb = b.astype(np.float64).T if trans_b else b.astype(np.float64)
    bound = (K_ + 4) * EPS32 * (1.5 * np.abs(opa) @ np.abs(opb) + 0.5 * np.abs(c0) + np.abs(bias)) + 1.2e-38
    return a, b, bias, c0, 1.5 * opa @ opb + 0.5 * c0 + bias, bound


@requires_gpu
@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product((False, True), repeat=2)))
@pytest.mark.parametrize("M, N, K_", SHAPES, ids=lambda v: str(v))
def test_gemm_matches_the_float64_reference_for_every_transpose_and_activation(M, N, K_, trans_a, trans_b, rng):
    a, b, bias, c0, pre, bound = _gemm_case(rng, M, N, K_, trans_a, trans_b)
    da, db = cuda.asarray(a), cuda.asarray(b)
    for act in ACTIVATIONS:
        out = cuda.asarray(c0)
        r = K.gemm(da, db, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=0.5, out=out, bias=cuda.asarray(bias),
                   activation=act)
        assert r is out
        ref = _act64(pre, act)
        got = out.to_numpy()
        assert got.shape == (M, N)
        assert np.all(np.abs(got - ref) <= bound + 4 * EPS32 * np.abs(ref)), act
    # beta == 0 never reads out: NaN there does not propagate
    nan_out = cuda.asarray(np.full((M, N), np.nan, np.float32))
    K.gemm(da, db, trans_a=trans_a, trans_b=trans_b, out=nan_out)
    assert np.isfinite(nan_out.to_numpy()).all()


@requires_gpu
@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product((False, True), repeat=2)))
@pytest.mark.parametrize("M, N, K_", [(2049, 2053, 37), (2048, 2052, 36)], ids=lambda v: str(v))
def test_gemm_of_many_tiles_matches_the_float64_reference_on_the_large_tile_kernel(M, N, K_, trans_a, trans_b, rng):
    # 17 x 17 = 289 tiles of 128x128 (16 x 17 = 272): the large-tile kernel on any GPU with fewer
    # multiprocessors. Odd sizes leave partial tiles on both edges and a partial stage, with scalar
    # loads; multiples of 4 take the float4 loads (a partial stage and column tile still).
    a, b, bias, c0, pre, bound = _gemm_case(rng, M, N, K_, trans_a, trans_b)
    out = cuda.asarray(c0)
    K.gemm(cuda.asarray(a), cuda.asarray(b), trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=0.5, out=out,
           bias=cuda.asarray(bias), activation="relu")
    assert np.all(np.abs(out.to_numpy() - np.maximum(pre, 0)) <= bound)


@requires_gpu
def test_gemm_with_small_tiles_off_splits_on_large_tiles_with_a_reduction_kernel():
    # FASTMLP_CUDA_GEMM_SMALL_TILES=0 (read once per process, hence a subprocess) keeps 128x128 tiles
    # for small outputs, split over k and reduced by a second kernel (scalar and float4 forms).
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, sys
        if os.environ.get("FASTMLP_EMULATE_CUDA") == "1":  # as the conftest does
            sys.path.insert(0, os.environ["TESTS_DIR"])
            import emulated_cuda
            emulated_cuda.install()
        import numpy as np
        from fastmlp import cuda, kernels as K
        rng = np.random.default_rng(3)
        for M, N, K_ in ((255, 33, 1000), (96, 132, 260)):
            a = rng.uniform(-1, 1, (M, K_)).astype(np.float32)
            b = rng.uniform(-1, 1, (N, K_)).astype(np.float32)
            bias = rng.uniform(-1, 1, N).astype(np.float32)
            c0 = rng.uniform(-1, 1, (M, N)).astype(np.float32)
            out = cuda.asarray(c0)
            K.gemm(cuda.asarray(a), cuda.asarray(b), trans_b=True, alpha=1.5, beta=0.5, out=out,
                   bias=cuda.asarray(bias), activation="relu")
            a64, b64 = a.astype(np.float64), b.astype(np.float64).T
            ref = np.maximum(1.5 * a64 @ b64 + 0.5 * c0 + bias, 0)
            bound = (K_ + 4) * 2.0**-24 * (1.5 * np.abs(a64) @ np.abs(b64) + 0.5 * np.abs(c0) + np.abs(bias))
            err = np.abs(out.to_numpy() - ref) - bound
            assert (err <= 0).all(), (M, N, K_, err.max())
            # the fused extras there: a's column sums by the column reduction, and the mask in the
            # reduction kernel's epilogue
            from fastmlp import _cuda_kernels as ck
            da, db = cuda.asarray(a), cuda.asarray(rng.uniform(-1, 1, (M, N)).astype(np.float32))
            y = cuda.asarray(rng.uniform(-1, 1, (K_, N)).astype(np.float32))
            sums, out = cuda.zeros(K_), cuda.empty((K_, N))
            ck.gemm(da, db, trans_a=True, trans_b=False, alpha=1.0, beta=0.0, out=out, bias=None,
                    activation="identity", stream=None, a_sums=sums, relu_mask=y, mask_p=0.25)
            want = ck.relu_dropout_backward(K.gemm(da, db, trans_a=True), y, 0.25, out=None, stream=None)
            assert np.array_equal(out.to_numpy(), want.to_numpy())
            ck.gemm(da, db, trans_a=True, trans_b=False, alpha=1.0, beta=0.0, out=out, bias=None,
                    activation="relu", stream=None, dropout=(0.3, 4, 2, None, None))
            want = K.dropout(K.gemm(da, db, trans_a=True, activation="relu"), 0.3, seed=4, offset=2)
            assert np.array_equal(out.to_numpy(), want.to_numpy())
            ref = a.astype(np.float64).sum(axis=0)
            assert (np.abs(sums.to_numpy() - ref) <= (M + 1) * 2.0**-23 * np.abs(a).sum(axis=0) + 1e-30).all()
        print("ok")
    """)
    env = dict(os.environ, FASTMLP_CUDA_GEMM_SMALL_TILES="0", TESTS_DIR=os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# The shapes of a layer's backward GEMMs with their fused extras: dW = dz^T x with the bias gradient
# (a_sums) and dX = dz W through the dropout and ReLU before (relu_mask). 64x64 tiles with and
# without k splits, N == 0 and K == 0, odd sizes (scalar loads) and the 128x128 kernel
# (2049, 2053, 37), where a_sums comes from the column reduction instead.
FUSED_SHAPES = [(5, 0, 3), (5, 3, 0), (1, 1, 1), (7, 13, 31), (97, 65, 129), (255, 33, 1000), (1000, 3, 7),
                (96, 132, 260), (512, 784, 256), (10, 512, 256), (256, 512, 10), (2049, 2053, 37)]


def _fused_gemm(a, b, trans_a, trans_b, out, **extra):
    from fastmlp import _cuda_kernels

    return _cuda_kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.0, out=out, bias=None,
                              activation="identity", stream=None, **extra)


@requires_gpu
@pytest.mark.parametrize("trans_b", (False, True))
@pytest.mark.parametrize("M, N, K_", FUSED_SHAPES, ids=lambda v: str(v))
def test_gemm_a_sums_are_the_column_sums_of_a_beside_an_unchanged_product(M, N, K_, trans_b, rng):
    a = rng.uniform(-1, 1, (K_, M)).astype(np.float32)
    b = rng.uniform(-1, 1, (N, K_) if trans_b else (K_, N)).astype(np.float32)
    da, db = cuda.asarray(a), cuda.asarray(b)
    plain = K.gemm(da, db, trans_a=True, trans_b=trans_b).to_numpy()
    out, sums = cuda.asarray(np.full((M, N), np.nan, np.float32)), cuda.asarray(np.full(M, np.nan, np.float32))
    assert _fused_gemm(da, db, True, trans_b, out, a_sums=sums) is out
    np.testing.assert_array_equal(out.to_numpy(), plain)  # the product is the plain GEMM's, bitwise
    ref = a.astype(np.float64).sum(axis=0)
    got = sums.to_numpy()
    # a float32 sum's bound (the GPU adds in double and rounds once, well inside it)
    bound = (K_ + 1) * EPS32 * np.abs(a.astype(np.float64)).sum(axis=0) + 1e-30
    assert np.all(np.abs(got - ref) <= bound), np.abs(got - ref).max()
    again = cuda.asarray(np.zeros(M, np.float32))
    _fused_gemm(da, db, True, trans_b, out, a_sums=again)
    np.testing.assert_array_equal(again.to_numpy(), got)  # deterministic


@requires_gpu
@pytest.mark.parametrize("trans_a", (False, True))
@pytest.mark.parametrize("M, N, K_", FUSED_SHAPES, ids=lambda v: str(v))
def test_gemm_relu_mask_is_bitwise_the_product_then_relu_dropout_backward(M, N, K_, trans_a, rng):
    from fastmlp import _cuda_kernels

    a = rng.uniform(-1, 1, (K_, M) if trans_a else (M, K_)).astype(np.float32)
    b = rng.uniform(-1, 1, (K_, N)).astype(np.float32)
    y = rng.uniform(-1, 2, (M, N)).astype(np.float32)  # y > 0: kept; also 0, -0 and NaN: dropped
    y[rng.random((M, N)) < 0.2] = 0.0
    y[rng.random((M, N)) < 0.05] = -0.0
    y[rng.random((M, N)) < 0.05] = np.nan
    da, db, dy = cuda.asarray(a), cuda.asarray(b), cuda.asarray(y)
    for p in (0.0, 0.2):
        plain = K.gemm(da, db, trans_a=trans_a)
        want = _cuda_kernels.relu_dropout_backward(plain, dy, p, out=None, stream=None).to_numpy()
        out = cuda.asarray(np.full((M, N), np.nan, np.float32))
        _fused_gemm(da, db, trans_a, False, out, relu_mask=dy, mask_p=p)
        np.testing.assert_array_equal(out.to_numpy(), want)


@requires_gpu
@pytest.mark.parametrize("trans_b", (False, True))
@pytest.mark.parametrize("M, N, K_", FUSED_SHAPES + [(256, 512, 784)], ids=lambda v: str(v))
def test_gemm_dropout_epilogue_is_bitwise_the_product_then_dropout(M, N, K_, trans_b, rng):
    # A ReLU layer's forward with its dropout in the GEMM's epilogue: the mask of the same Philox
    # stream over out's flat index (float4 stores with N % 4 == 0, element by element otherwise),
    # with an int offset and with a device step counter.
    a = rng.uniform(-1, 1, (M, K_)).astype(np.float32)
    b = rng.uniform(-1, 1, (N, K_) if trans_b else (K_, N)).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, N).astype(np.float32)
    da, db, dbias = cuda.asarray(a), cuda.asarray(b), cuda.asarray(bias)
    step = cuda.asarray(np.array([12], np.int64))
    plain = K.gemm(da, db, trans_b=trans_b, bias=dbias, activation="relu")
    for p, offset, dstep, n_streams in ((0.2, 5, None, None), (0.5, 1, step, 3)):
        want = K.dropout(plain, p, seed=11, offset=offset, step=dstep, n_streams=n_streams).to_numpy()
        out = cuda.asarray(np.full((M, N), np.nan, np.float32))
        from fastmlp import _cuda_kernels

        _cuda_kernels.gemm(da, db, trans_a=False, trans_b=trans_b, alpha=1.0, beta=0.0, out=out, bias=dbias,
                           activation="relu", stream=None, dropout=(p, 11, offset, dstep, n_streams))
        np.testing.assert_array_equal(out.to_numpy(), want)
    assert int(step) == 12  # only the optimizer advances it


@requires_gpu
def test_gemm_fused_extras_are_validated():
    a, b, out = cuda.zeros((4, 3)), cuda.zeros((4, 5)), cuda.zeros((3, 5))
    with pytest.raises(ValueError, match="a_sums .* needs trans_a=True"):
        _fused_gemm(cuda.zeros((3, 4)), b, False, False, out, a_sums=cuda.zeros(3))
    with pytest.raises(ValueError, match=r"a_sums has shape \(4,\) but \(3,\) is required"):
        _fused_gemm(a, b, True, False, out, a_sums=cuda.zeros(4))
    with pytest.raises(ValueError, match="relu_mask has shape"):
        _fused_gemm(a, b, True, False, out, relu_mask=cuda.zeros((5, 3)))
    with pytest.raises(ValueError, match="mask_p must satisfy"):
        _fused_gemm(a, b, True, False, out, relu_mask=cuda.zeros((3, 5)), mask_p=1.0)
    with pytest.raises(ValueError, match="a_sums and a share memory"):
        _fused_gemm(a, b, True, False, out, a_sums=a.reshape(-1)[:3])
    with pytest.raises(ValueError, match="out and relu_mask share memory"):
        _fused_gemm(a, b, True, False, out, relu_mask=out)
    with pytest.raises(TypeError, match="a_sums"):
        _fused_gemm(a, b, True, False, out, a_sums=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="p must satisfy"):
        _fused_gemm(a, b, True, False, out, dropout=(1.0, 0, 0, None, None))
    with pytest.raises(TypeError, match="dropout epilogue is for device arrays"):
        _fused_gemm(np.zeros((4, 3), np.float32), np.zeros((4, 5), np.float32), True, False, None,
                    dropout=(0.5, 0, 0, None, None))


@requires_gpu
def test_gemm_is_deterministic_run_to_run(rng):
    a = cuda.asarray(rng.standard_normal((257, 1031)).astype(np.float32))
    b = cuda.asarray(rng.standard_normal((1031, 129)).astype(np.float32))
    first = K.gemm(a, b).to_numpy()
    for _ in range(3):
        np.testing.assert_array_equal(K.gemm(a, b).to_numpy(), first)


@requires_gpu
def test_split_k_gemm_from_threads_on_their_own_streams_and_in_graph_replays_gives_one_result(rng):
    # (255, 33, 1000) splits k inside the kernel, whose per-stream arrival counters must be back at
    # zero after every launch: several threads, each on a stream of its own, and graph replays all
    # give the single-threaded product bitwise.
    import threading

    a = cuda.asarray(rng.standard_normal((255, 1000)).astype(np.float32))
    b = cuda.asarray(rng.standard_normal((33, 1000)).astype(np.float32))
    bias = cuda.asarray(rng.standard_normal(33).astype(np.float32))
    want = K.gemm(a, b, trans_b=True, bias=bias, activation="relu").to_numpy()
    ref = np.maximum(a.to_numpy().astype(np.float64) @ b.to_numpy().T.astype(np.float64) + bias.to_numpy(), 0)
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4)
    results, errors = [], []

    def work():
        try:
            s = cuda.Stream()
            outs = [cuda.empty((255, 33)) for _ in range(8)]
            for out in outs:
                K.gemm(a, b, trans_b=True, bias=bias, activation="relu", out=out, stream=s)
            s.synchronize()
            results.extend(out.to_numpy() for out in outs)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 32
    for r in results:
        np.testing.assert_array_equal(r, want)
    out = cuda.empty((255, 33))
    K.gemm(a, b, trans_b=True, bias=bias, activation="relu", out=out)  # counters and scratch exist before capture
    with cuda.graph_capture() as graph:
        K.gemm(a, b, trans_b=True, bias=bias, activation="relu", out=out)
    for _ in range(3):
        out.fill(np.nan)
        cuda.synchronize()
        graph.replay()
        cuda.synchronize()
        np.testing.assert_array_equal(out.to_numpy(), want)


@requires_gpu
def test_gemm_validates_like_the_cpu_binding():
    a, b = np.ones((3, 4), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(ValueError) as cpu_error:
        K.gemm(a, b)
    with pytest.raises(ValueError) as gpu_error:
        K.gemm(cuda.asarray(a), cuda.asarray(b))
    assert str(gpu_error.value) == str(cpu_error.value)
    with pytest.raises(ValueError, match="beta=.* reads out"):
        K.gemm(cuda.asarray(a), cuda.asarray(a.T.copy()), beta=1.0)
    with pytest.raises(ValueError, match="one value per output column"):
        K.gemm(cuda.asarray(a), cuda.asarray(a.T.copy()), bias=cuda.zeros(4))
    x = cuda.zeros((4, 4))
    with pytest.raises(ValueError, match="out and a share memory"):
        K.gemm(x, cuda.zeros((4, 4)), out=x)


@requires_gpu
def test_device_kernels_take_float32_only():
    buf = cuda.empty(16)
    f64 = FakeDeviceArray((2, 4), "<f8", buf.ptr)
    with pytest.raises(TypeError, match="a has dtype float64; CUDA kernels take float32"):
        K.gemm(f64, cuda.empty((4, 2)))
    with pytest.raises(TypeError, match="CUDA kernels take float32"):
        K.random_uniform(3, seed=0, offset=0, device="cuda", dtype=np.float64)


@requires_gpu
@pytest.mark.parametrize("n", [0, 1, 5, 1031, 100_003])
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_and_its_backward_match_the_cpu(n, kind, rng):
    x = rng.standard_normal(n).astype(np.float32) * 4
    g = rng.standard_normal(n).astype(np.float32)
    y_cpu = K.activation(x, kind)
    y_gpu = K.activation(cuda.asarray(x), kind).to_numpy()
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=4 * EPS32, atol=1e-37)
    dx_cpu = K.activation_backward(g, y_cpu, kind)
    dx_gpu = K.activation_backward(cuda.asarray(g), cuda.asarray(y_cpu), kind).to_numpy()
    np.testing.assert_allclose(dx_gpu, dx_cpu, rtol=4 * EPS32, atol=1e-37)
    inplace = cuda.asarray(x)
    assert K.activation(inplace, kind, out=inplace) is inplace


@requires_gpu
@pytest.mark.parametrize("rows, cols", [(0, 3), (3, 0), (1, 1), (7, 13), (1000, 33), (4097, 129), (1, 4), (7, 128),
                                        (64, 132), (4097, 1024)])
def test_bias_grad_matches_the_float64_column_sums(rows, cols, rng):
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    got = K.bias_grad(cuda.asarray(g)).to_numpy()
    bound = (rows + 2) * EPS32 * np.abs(g).astype(np.float64).sum(axis=0) + 1e-30
    assert np.all(np.abs(got - g.astype(np.float64).sum(axis=0)) <= bound)


@requires_gpu
@pytest.mark.parametrize("rows, cols", [(1, 4), (7, 128), (64, 132), (4097, 1024), (300, 8)])
def test_bias_grad_is_bitwise_the_same_on_aligned_and_misaligned_rows(rows, cols, rng):
    # cols % 4 == 0 with 16-byte aligned rows takes the four-columns-per-lane kernel; the same data
    # one float off alignment takes the scalar one: the same row blocks and order, the same bits.
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    aligned = cuda.asarray(g)
    flat = cuda.asarray(np.concatenate([np.zeros(1, np.float32), g.ravel()]))
    shifted = flat[1:].reshape(rows, cols)
    assert aligned.ptr % 16 == 0 and shifted.ptr % 16 == 4
    np.testing.assert_array_equal(K.bias_grad(shifted).to_numpy().view(np.uint32),
                                  K.bias_grad(aligned).to_numpy().view(np.uint32))


# -- GPU: random streams --------------------------------------------------------------------------

RANDOM_CASES = [(0, 0.5, 1, 0), (1, 0.5, 1, 0), (5, 0.1, 2**64 - 1, 3), (1001, 0.9, 12345, 2**40 + 7),
                (4096, 0.0, 7, 2**64 - 1), (100_003, 0.37, 2**33, 11)]


@requires_gpu
@pytest.mark.parametrize("n, p, seed, offset", RANDOM_CASES)
def test_dropout_masks_and_uniforms_are_bit_identical_to_the_cpu(n, p, seed, offset, rng):
    cpu_mask = K.dropout_mask(n, p, seed=seed, offset=offset)
    gpu_mask = K.dropout_mask(n, p, seed=seed, offset=offset, device="cuda")
    assert gpu_mask.dtype == np.bool_
    np.testing.assert_array_equal(gpu_mask.to_numpy(), cpu_mask)
    np.testing.assert_array_equal(cpu_mask, keep_mask(n, p, seed, offset))
    x = rng.standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(K.dropout(cuda.asarray(x), p, seed=seed, offset=offset).to_numpy(),
                                  K.dropout(x, p, seed=seed, offset=offset))
    np.testing.assert_array_equal(K.dropout_backward(cuda.asarray(x), p, seed=seed, offset=offset).to_numpy(),
                                  K.dropout_backward(x, p, seed=seed, offset=offset))
    np.testing.assert_array_equal(K.add_noise(cuda.asarray(x), "mask", p, seed=seed, offset=offset).to_numpy(),
                                  K.add_noise(x, "mask", p, seed=seed, offset=offset))
    u_gpu = K.random_uniform(n, seed=seed, offset=offset, low=-2.0, high=3.0, device="cuda").to_numpy()
    np.testing.assert_array_equal(u_gpu, K.random_uniform(n, seed=seed, offset=offset, low=-2.0, high=3.0))
    np.testing.assert_array_equal(K.random_uniform(n, seed=seed, offset=offset, device="cuda").to_numpy(),
                                  uniform01(n, seed, offset).astype(np.float32))


@requires_gpu
@pytest.mark.parametrize("n, p, seed, offset", RANDOM_CASES)
def test_normals_match_the_cpu_within_4_ulp(n, p, seed, offset, rng):
    z_cpu = K.random_normal(n, seed=seed, offset=offset, mean=1.0, std=2.0)
    z_gpu = K.random_normal(n, seed=seed, offset=offset, mean=1.0, std=2.0, out=cuda.empty(n)).to_numpy()
    np.testing.assert_array_max_ulp(z_gpu, z_cpu, maxulp=4)
    x = rng.standard_normal(n).astype(np.float32)
    noisy_cpu = K.add_noise(x, "gaussian", 0.5, seed=seed, offset=offset)
    noisy_gpu = K.add_noise(cuda.asarray(x), "gaussian", 0.5, seed=seed, offset=offset).to_numpy()
    assert np.all(np.abs(noisy_gpu - noisy_cpu) <= 8 * EPS32 * (np.abs(noisy_cpu) + 1))


@requires_gpu
def test_a_device_step_counter_names_the_same_stream_as_the_cpu():
    x = np.ones((33, 17), np.float32)
    step = cuda.asarray(np.array([41], np.int64))
    got = K.dropout(cuda.asarray(x), 0.3, seed=9, offset=2, step=step, n_streams=5).to_numpy()
    np.testing.assert_array_equal(got, K.dropout(x, 0.3, seed=9, offset=41 * 5 + 2))
    assert int(step) == 41  # only the optimizer advances it
    mask = K.dropout_mask(x.shape, 0.3, seed=9, offset=2, step=step, n_streams=5)
    np.testing.assert_array_equal(mask.to_numpy(), K.dropout_mask(x.shape, 0.3, seed=9, offset=207))


# -- GPU: losses and batch norm -------------------------------------------------------------------


@requires_gpu
@pytest.mark.parametrize("rows, cols", [(0, 3), (1, 1), (7, 10), (257, 33), (1000, 1000)])
def test_losses_match_the_cpu_and_return_a_device_scalar(rows, cols, rng):
    logits = (rng.standard_normal((rows, cols)) * 5).astype(np.float32)
    target = rng.uniform(0, 1, (rows, cols)).astype(np.float32)
    labels = rng.integers(0, cols, rows)
    tol = dict(rtol=1e-5, atol=1e-6)
    for name, second in (("squared_error", target), ("sigmoid_cross_entropy", target),
                         ("softmax_cross_entropy", labels.astype(np.int64)),
                         ("softmax_cross_entropy", labels.astype(np.int32))):
        kernel = getattr(K, name)
        loss_cpu, grad_cpu = kernel(logits, second)
        for dev_second in (cuda.asarray(second), second) if second.dtype.kind == "i" else (cuda.asarray(second),):
            loss, grad = kernel(cuda.asarray(logits), dev_second)
            assert isinstance(loss, cuda.DeviceArray) and loss.shape == ()
            assert float(loss) == pytest.approx(loss_cpu, **{"rel": 1e-5, "abs": 1e-6})
            np.testing.assert_allclose(grad.to_numpy(), grad_cpu, **tol)
        loss_out = cuda.empty((1,))
        grad_out = cuda.empty((rows, cols))
        loss, grad = kernel(cuda.asarray(logits), cuda.asarray(second), out=grad_out, loss_out=loss_out)
        assert loss is loss_out and grad is grad_out


@requires_gpu
@pytest.mark.parametrize("rows", [3, 5000, 70000])
def test_a_loss_captured_before_its_stream_has_arrival_counters_is_the_eager_loss_bitwise(rows, rng):
    # Eagerly the row kernel's last block adds the partial losses (an arrival counter); a capture
    # on a stream without counters yet (scratch from bias_grad only) takes a second kernel for it.
    # The additions run in the same order, so the loss is the same.
    logits = cuda.asarray((rng.standard_normal((rows, 10)) * 3).astype(np.float32))
    labels = cuda.asarray(rng.integers(0, 10, rows).astype(np.int64))
    target = cuda.asarray(rng.uniform(0, 1, (rows, 10)).astype(np.float32))
    for name, second in (("softmax_cross_entropy", labels), ("squared_error", target),
                         ("sigmoid_cross_entropy", target)):
        kernel = getattr(K, name)
        eager_loss, eager_grad = kernel(logits, second)
        s = cuda.Stream()
        K.bias_grad(cuda.zeros((1 << 16, 64)), stream=s)  # scratch on s, no counters
        grad, loss = cuda.empty((rows, 10)), cuda.empty(())
        with cuda.graph_capture(s) as graph:
            kernel(logits, second, out=grad, loss_out=loss)
        graph.replay(s)
        s.synchronize()
        # Freed before the next capture: destroying a graph or a stream while a capture is in
        # progress would invalidate that capture.
        del graph, s
        assert float(loss) == float(eager_loss), name
        np.testing.assert_array_equal(grad.to_numpy(), eager_grad.to_numpy())


@requires_gpu
def test_host_labels_are_range_checked_and_device_ones_give_nan_rows():
    logits = cuda.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels\[1\] = 4 is out of range for 4 classes"):
        K.softmax_cross_entropy(logits, np.array([0, 4, 1], np.int64))
    loss, grad = K.softmax_cross_entropy(logits, cuda.asarray(np.array([0, 4, 1], np.int32)))
    assert np.isnan(float(loss))
    assert np.isnan(grad.to_numpy()[1]).all() and np.isfinite(grad.to_numpy()[[0, 2]]).all()


@requires_gpu
def test_loss_out_and_device_labels_sharing_memory_with_other_arguments_raise():
    # The kernels read the logits and labels while they write the gradient and the loss: no overlap.
    logits, out = cuda.asarray(np.ones((4, 4), np.float32)), cuda.zeros((4, 4))
    with pytest.raises(ValueError, match="softmax_cross_entropy: out and labels share memory"):
        K.softmax_cross_entropy(logits, FakeDeviceArray((4,), "<i4", out.ptr), out=out)
    for name, second, first_name, second_name in (
            ("squared_error", cuda.zeros((4, 4)), "pred", "target"),
            ("sigmoid_cross_entropy", cuda.zeros((4, 4)), "logits", "targets"),
            ("softmax_cross_entropy", cuda.asarray(np.zeros(4, np.int64)), "logits", "labels")):
        kernel = getattr(K, name)
        for victim, ptr in (("out", out.ptr + 8), (first_name, logits.ptr + 60), (second_name, second.ptr)):
            with pytest.raises(ValueError, match=f"{name}: loss_out and {victim} share memory"):
                kernel(logits, second, out=out, loss_out=FakeDeviceArray((1,), "<f4", ptr))
        loss, _ = kernel(logits, second, out=out, loss_out=cuda.zeros((1,)))  # apart: accepted
        assert np.isfinite(float(loss))


@requires_gpu
@pytest.mark.parametrize("rows, cols", [(2, 1), (7, 13), (1000, 65)])
@pytest.mark.parametrize("act", ["identity", "relu", "tanh"])
def test_batch_norm_forward_and_backward_match_the_cpu(rows, cols, act, rng):
    x = (rng.standard_normal((rows, cols)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, cols).astype(np.float32), rng.standard_normal(cols).astype(np.float32)
    rm, rv = np.zeros(cols, np.float32), np.ones(cols, np.float32)
    drm, drv = cuda.asarray(rm), cuda.asarray(rv)
    out_c, mean_c, inv_c = K.batch_norm(x, gamma, beta, rm, rv, training=True, activation=act)
    out_g, mean_g, inv_g = K.batch_norm(cuda.asarray(x), cuda.asarray(gamma), cuda.asarray(beta), drm, drv,
                                        training=True, activation=act)
    tol = dict(rtol=1e-4, atol=1e-5)
    for got, want in ((out_g, out_c), (mean_g, mean_c), (inv_g, inv_c), (drm, rm), (drv, rv)):
        np.testing.assert_allclose(got.to_numpy(), want, **tol)
    back_c = K.batch_norm_backward(g, x, gamma, mean_c, inv_c, activation=act, y=out_c)
    back_g = K.batch_norm_backward(cuda.asarray(g), cuda.asarray(x), cuda.asarray(gamma), mean_g, inv_g,
                                   activation=act, y=out_g)
    for got, want in zip(back_g, back_c):
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-3, atol=1e-4 * np.sqrt(rows))


# -- GPU: optimizers, capturable steps and graphs -------------------------------------------------

SEGMENTS = (np.array([[0, 600], [700, 300]], np.int64), np.array([[1.0, 1e-2, 0.0], [2.0, 0.0, 1e-3]]))
OPTIMIZERS = {
    "sgd": (("momentum_buffer",), dict(momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adagrad": (("state_sum",), dict(lr_decay=1e-3, weight_decay=1e-3)),
    "rmsprop": (("square_avg", "momentum_buffer", "grad_avg"), dict(momentum=0.5, centered=True, weight_decay=1e-3)),
    "adam": (("exp_avg", "exp_avg_sq"), dict(weight_decay=1e-2, decoupled=True)),
}


def _optimizer_step(name, arrays, step, lr, segments):
    state, hyper = OPTIMIZERS[name]
    p, g = arrays["param"], arrays["grad"]
    if name == "sgd":
        return K.sgd_step(p, g, arrays["momentum_buffer"], step=step, lr=lr, segments=segments, **hyper)
    if name == "adagrad":
        return K.adagrad_step(p, g, arrays["state_sum"], step=step, lr=lr, segments=segments, **hyper)
    if name == "rmsprop":
        kw = {} if isinstance(p, np.ndarray) else {"step": step}
        return K.rmsprop_step(p, g, arrays["square_avg"], lr=lr, momentum_buffer=arrays["momentum_buffer"],
                              grad_avg=arrays["grad_avg"], segments=segments, **kw, **hyper)
    return K.adam_step(p, g, arrays["exp_avg"], arrays["exp_avg_sq"], step=step, lr=lr, segments=segments, **hyper)


@requires_gpu
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("layout", ["aligned", "tail", "offset"])
def test_optimizer_steps_match_the_cpu_over_ten_steps(name, capturable, layout, rng):
    # aligned: n % 4 == 0 on fresh buffers (float4 groups); tail: n % 4 == 3, the last three one by
    # one; offset: views one element into their buffers (not 16-byte aligned: the scalar path).
    # The latter two also put segment boundaries inside groups of four (601, 702, 1001).
    n = {"aligned": 1000, "tail": 1003, "offset": 1001}[layout]
    segments = SEGMENTS if layout == "aligned" else (np.array([[0, 601], [702, 299]], np.int64), SEGMENTS[1])

    def upload(v):
        return cuda.asarray(np.concatenate([np.zeros(1, v.dtype), v]))[1:] if layout == "offset" else cuda.asarray(v)

    host = {"param": rng.standard_normal(n).astype(np.float32)}
    host.update({k: np.zeros(n, np.float32) for k in OPTIMIZERS[name][0]})
    dev = {k: upload(v) for k, v in host.items()}
    step_counter = cuda.asarray(np.array([0], np.int64))
    lr_scalar = cuda.asarray(np.array([0.01], np.float32))
    for t in range(1, 11):
        grad = rng.standard_normal(n).astype(np.float32)
        host["grad"], dev["grad"] = grad, upload(grad)
        _optimizer_step(name, host, t, 0.01, segments)
        step = step_counter if capturable else t
        lr = lr_scalar if capturable else 0.01
        assert _optimizer_step(name, dev, step, lr, segments) is dev["param"]
    if capturable:
        assert int(step_counter) == 10  # advanced exactly once per call
    for k in host:
        if k != "grad":
            np.testing.assert_allclose(dev[k].to_numpy(), host[k], rtol=1e-5, atol=1e-6, err_msg=k)


@requires_gpu
def test_a_device_step_is_read_by_every_block_before_the_last_one_advances_it(rng):
    # Many blocks: all must see one step (Adam's bias corrections depend on it), and the step moves
    # once per call, from the kernel's last block to finish. A capture on a stream that has never
    # run a step (no arrival counters yet) advances it with a kernel of its own instead.
    n = (1 << 21) + 3
    host = {"param": rng.standard_normal(n).astype(np.float32), "exp_avg": np.zeros(n, np.float32),
            "exp_avg_sq": np.zeros(n, np.float32)}
    dev = {k: cuda.asarray(v) for k, v in host.items()}
    step, lr, grad = cuda.asarray(np.array([0], np.int64)), cuda.asarray(np.array([0.01], np.float32)), cuda.empty(n)
    s = cuda.Stream()
    with cuda.graph_capture(s) as graph:
        K.adam_step(dev["param"], grad, dev["exp_avg"], dev["exp_avg_sq"], step=step, lr=lr, stream=s)
    for t in range(1, 7):
        g = rng.standard_normal(n).astype(np.float32)
        K.adam_step(host["param"], g, host["exp_avg"], host["exp_avg_sq"], step=t, lr=0.01)
        grad.copy_(g)
        cuda.synchronize()
        if t % 2:
            K.adam_step(dev["param"], grad, dev["exp_avg"], dev["exp_avg_sq"], step=step, lr=lr)
            cuda.synchronize()
        else:
            graph.replay(s)
            s.synchronize()
        assert int(step) == t
    for k in ("param", "exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(dev[k].to_numpy(), host[k], rtol=1e-5, atol=1e-6, err_msg=k)


@requires_gpu
def test_segment_tables_are_uploaded_once_per_content():
    from fastmlp import _cuda_kernels

    p, g, m, v = (cuda.zeros(1000) for _ in range(4))
    bounds, values = SEGMENTS[0].copy(), SEGMENTS[1] * 3
    before = len(_cuda_kernels._segment_cache)
    for t in range(1, 4):
        K.adam_step(p, g, m, v, step=t, lr=0.1, segments=(bounds.copy(), values.copy()))
    assert len(_cuda_kernels._segment_cache) == min(before + 1, _cuda_kernels._SEGMENT_CACHE_SIZE)
    with pytest.raises(ValueError, match="past the end of param"):
        K.adam_step(p, g, m, v, step=1, lr=0.1, segments=(np.array([[900, 200]], np.int64), np.ones((1, 3))))


@requires_gpu
def test_graph_capture_of_dropout_and_adam_replays_like_eager_steps(rng):
    n, p, n_streams = 1000, 0.3, 2
    x0 = rng.standard_normal(n).astype(np.float32)
    p0 = rng.standard_normal(n).astype(np.float32)

    def make():
        return {"param": cuda.asarray(p0), "m": cuda.zeros(n), "v": cuda.zeros(n), "x": cuda.asarray(x0),
                "g": cuda.empty(n), "step": cuda.asarray(np.array([0], np.int64)),
                "lr": cuda.asarray(np.array([1e-2], np.float32))}

    def body(s):
        K.dropout(s["x"], p, seed=7, offset=1, out=s["g"], step=s["step"], n_streams=n_streams)
        K.adam_step(s["param"], s["g"], s["m"], s["v"], step=s["step"], lr=s["lr"], segments=SEGMENTS)

    eager = make()
    for _ in range(4):
        body(eager)
    graphed = make()
    body(graphed)  # once eagerly: the segment table and scratch memory exist before the capture
    with cuda.graph_capture() as graph:
        body(graphed)
    assert int(graphed["step"]) == 1  # capturing records, it does not run
    for _ in range(3):
        graph.replay()
    cuda.synchronize()
    assert int(graphed["step"]) == 4
    for k in ("param", "m", "v", "g"):
        np.testing.assert_array_equal(graphed[k].to_numpy(), eager[k].to_numpy(), err_msg=k)
    # and the eager device steps are the CPU's steps t = 1..4 with streams (t - 1) * n_streams + 1
    param, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t in range(1, 5):
        g = K.dropout(x0, p, seed=7, offset=(t - 1) * n_streams + 1)
        K.adam_step(param, g, m, v, step=t, lr=1e-2, segments=SEGMENTS)
    np.testing.assert_allclose(eager["param"].to_numpy(), param, rtol=1e-5, atol=1e-6)


@requires_gpu
def test_an_array_freed_inside_a_capture_lives_as_long_as_the_graph(rng):
    # Freeing device memory during a capture would void it; fastmlp holds the free back and gives
    # the buffer to the graph, which may still read it on every replay.
    host = rng.standard_normal(1000).astype(np.float32)
    tmp, out = cuda.asarray(host), cuda.empty(1000)
    K.activation(tmp, "relu", out=out)  # warm-up outside the capture
    with cuda.graph_capture() as g:
        K.activation(tmp, "relu", out=out)
        del tmp
        gc.collect()
    out.fill(-1.0)
    for _ in range(2):
        g.replay()
        np.testing.assert_array_equal(out.to_numpy(), np.maximum(host, 0))
    del g
    gc.collect()


@requires_gpu
def test_old_cyclic_garbage_collected_inside_a_capture_leaves_it_intact(rng, monkeypatch):
    # graph_capture collects only the young generations before it begins (a full collection costs
    # 100 ms or more with torch or JAX loaded, once per Trainer.fit): a stream and an array in an
    # old reference cycle can still die inside the block, where their destruction waits for its end.
    a = cuda.asarray(rng.standard_normal((64, 1024)).astype(np.float32))
    h = cuda.empty((64, 64))
    K.gemm(a, a, trans_b=True, out=h)

    class Cycle:
        pass

    old = Cycle()
    old.me, old.stream, old.array = old, cuda.Stream(), cuda.asarray(np.ones(4096, np.float32))
    K.gemm(a, a, trans_b=True, out=h, stream=old.stream)  # scratch of its own, freed with it
    old.stream.synchronize()
    gc.collect()  # reachable: promoted to the oldest generation
    alive = weakref.ref(old)
    del old  # now old garbage, which a young collection leaves
    generations = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda generation=2: generations.append(generation) or real_collect(generation))
    with cuda.graph_capture() as g:
        assert generations and all(gen < 2 for gen in generations), generations
        assert alive() is not None  # (Python 3.14's incremental collector may differ: then this says so)
        real_collect()  # the cycle dies here, mid-capture
        assert alive() is None
        K.gemm(a, a, trans_b=True, out=h, alpha=3.0)
    g.replay()
    cuda.synchronize()
    a64 = a.to_numpy().astype(np.float64)
    np.testing.assert_allclose(h.to_numpy(), 3 * a64 @ a64.T, rtol=1e-4, atol=1e-3)


@requires_gpu
def test_capture_refuses_allocations_with_a_clear_error():
    x = cuda.zeros(8)
    K.activation(x, "relu")  # warm
    with pytest.raises(RuntimeError, match="being captured"):
        with cuda.graph_capture():
            K.activation(x, "relu")  # no out=: would allocate
    np.testing.assert_array_equal(K.activation(x, "relu").to_numpy(), np.zeros(8))  # still usable


@requires_gpu
def test_stream_argument_and_stream_blocks_choose_the_launch_stream(rng):
    s = cuda.Stream()
    a = cuda.asarray(rng.standard_normal((64, 32)).astype(np.float32))
    out = cuda.empty((64, 64))
    K.gemm(a, a, trans_b=True, out=out, stream=s)
    assert out.stream == s
    with cuda.stream(s):
        r = K.activation(out, "relu")
    assert r.stream == s
    s.synchronize()
    np.testing.assert_allclose(r.to_numpy(), np.maximum(a.to_numpy() @ a.to_numpy().T, 0), rtol=1e-4, atol=1e-4)


@requires_gpu
def test_events_order_work_across_streams_and_fork_a_capture_that_must_be_joined(rng):
    s1, s2 = cuda.Stream(), cuda.Stream()
    a = cuda.asarray(rng.standard_normal((256, 300)).astype(np.float32))
    h, out = cuda.empty((256, 256)), cuda.empty((256, 256))
    for _ in range(3):
        K.gemm(a, a, trans_b=True, out=h, stream=s1)
        s2.wait_event(s1.record_event())  # s2's work waits for the product on s1
        K.activation(h, "relu", out=out, stream=s2)
        s2.synchronize()
        np.testing.assert_allclose(out.to_numpy(), np.maximum(a.to_numpy() @ a.to_numpy().T, 0), rtol=1e-4,
                                   atol=1e-4)
    with pytest.raises(TypeError, match="event must be a fastmlp.cuda.Event"):
        s2.wait_event(s1)
    # In a capture: s2 forks from s1 and joins back; the graph replays both branches in order.
    fork, join = cuda.Event(), cuda.Event()
    h2 = cuda.empty((256, 256))
    K.gemm(a, a, trans_b=True, out=h, stream=s1)  # scratch for both streams before the capture
    K.gemm(a, a, trans_b=True, out=h2, stream=s2)
    s1.synchronize()
    s2.synchronize()
    with cuda.graph_capture(s1) as graph:
        K.activation(a, "tanh", out=a)
        fork.record(s1)
        s2.wait_event(fork)
        K.gemm(a, a, trans_b=True, out=h2, stream=s2)
        K.gemm(a, a, trans_b=True, out=h, alpha=2.0)
        s2.record_event(join)
        s1.wait_event(join)
    a0 = a.to_numpy().astype(np.float64)
    graph.replay(s1)
    s1.synchronize()
    t = np.tanh(a0)
    np.testing.assert_allclose(h2.to_numpy(), t @ t.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h.to_numpy(), 2 * t @ t.T, rtol=1e-4, atol=1e-4)


@requires_gpu
def test_streams_events_and_graphs_collected_during_a_capture_leave_it_intact(rng):
    # Destroying a stream synchronises it and frees its scratch, which would invalidate the capture
    # (the next launch then fails "due to a previous error during capture"): a stream, event or
    # graph that dies inside graph_capture (e.g. a cycle from earlier work) goes when it ends.
    a = cuda.asarray(rng.standard_normal((64, 1024)).astype(np.float32))
    h = cuda.empty((64, 64))
    K.gemm(a, a, trans_b=True, out=h)  # split-K: scratch and counters on the current stream
    streams = [cuda.Stream() for _ in range(2)]
    for s in streams:
        K.gemm(a, a, trans_b=True, out=h, stream=s)  # scratch of their own, freed with them
        s.record_event()
        s.synchronize()
    events = [streams[0].record_event()]
    streams[0].synchronize()
    with cuda.graph_capture(streams[1]) as old:
        K.gemm(a, a, trans_b=True, out=h, stream=streams[1])
    graphs = [old]
    del old
    with cuda.graph_capture() as g:
        del streams[:], events[:], graphs[:], s
        K.gemm(a, a, trans_b=True, out=h, alpha=2.0)
    g.replay()
    cuda.synchronize()
    a64 = a.to_numpy().astype(np.float64)
    np.testing.assert_allclose(h.to_numpy(), 2 * a64 @ a64.T, rtol=1e-4, atol=1e-3)
    s2 = cuda.Stream()  # and the device is still usable on new streams afterwards
    K.gemm(a, a, trans_b=True, out=h, stream=s2)
    s2.synchronize()
    np.testing.assert_allclose(h.to_numpy(), a64 @ a64.T, rtol=1e-4, atol=1e-3)


@requires_gpu
def test_a_capture_with_an_unjoined_fork_is_refused(rng):
    # (A deliberate CUDA API error, which compute-sanitizer reports: tools/gpu_check.sh leaves this
    # test out of its sanitizer runs.)
    s1, s2 = cuda.Stream(), cuda.Stream()
    a, h = cuda.asarray(rng.standard_normal((64, 64)).astype(np.float32)), cuda.empty((64, 64))
    K.gemm(a, a, out=h, stream=s2)
    s2.synchronize()
    fork = cuda.Event()
    with pytest.raises(RuntimeError, match="unjoined|not joined|capture"):
        with cuda.graph_capture(s1):
            fork.record(s1)
            s2.wait_event(fork)
            K.gemm(a, a, out=h, stream=s2)
    s1.synchronize()
    s2.synchronize()


@requires_gpu
def test_arrays_on_different_devices_are_refused():
    if cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    a = cuda.zeros((3, 4), device=0)
    b = cuda.zeros((4, 2), device=1)
    with pytest.raises(ValueError, match=r"a is on cuda:0 but b is on cuda:1"):
        K.gemm(a, b)
    c = cuda.asarray(a, device=1)
    assert c.device == 1


# -- GPU: torch and CuPy interop ------------------------------------------------------------------


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


@requires_gpu
def test_torch_tensors_in_give_torch_tensors_out_zero_copy():
    torch = _torch_cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(33, 17, device="cuda")
    b = torch.randn(17, 9, device="cuda")
    r = K.gemm(a, b, activation="relu")
    assert isinstance(r, torch.Tensor) and r.device == a.device and r.dtype == torch.float32
    torch.testing.assert_close(r, torch.relu(a @ b), rtol=1e-4, atol=1e-4)
    out = torch.empty(33, 9, device="cuda")
    assert K.gemm(a, b, out=out) is out
    torch.testing.assert_close(out, a @ b, rtol=1e-4, atol=1e-4)
    loss, grad = K.softmax_cross_entropy(a, torch.randint(0, 17, (33,), device="cuda"))
    assert isinstance(loss, torch.Tensor) and loss.shape == () and isinstance(float(loss), float)
    view = cuda.asarray(a)
    assert view.ptr == a.data_ptr()
    with pytest.raises(ValueError, match="a with shape .* is not C-contiguous"):
        K.gemm(a.t(), a)


@requires_gpu
def test_dlpack_export_is_viewed_by_torch_without_a_copy():
    torch = _torch_cuda()
    dev = cuda.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    t = torch.from_dlpack(dev)
    assert t.data_ptr() == dev.ptr and tuple(t.shape) == (3, 4) and t.device.type == "cuda"
    t[0, 0] = 100.0
    torch.cuda.synchronize()
    assert dev.to_numpy()[0, 0] == 100.0
    assert dev.__dlpack_device__() == (2, dev.device)
    back = cuda.asarray(torch.from_dlpack(dev.__dlpack__()))
    assert back.ptr == dev.ptr


@requires_gpu
def test_cupy_arrays_in_give_cupy_arrays_out_and_dlpack_round_trips():
    cupy = pytest.importorskip("cupy")
    a = cupy.random.standard_normal((31, 7), dtype=cupy.float32)
    b = cupy.random.standard_normal((7, 5), dtype=cupy.float32)
    r = K.gemm(a, b)
    assert isinstance(r, cupy.ndarray)
    cupy.testing.assert_allclose(r, a @ b, rtol=1e-4, atol=1e-4)
    out = cupy.empty((31, 5), dtype=cupy.float32)
    assert K.gemm(a, b, out=out) is out
    dev = cuda.asarray(np.arange(6, dtype=np.float32))
    c = cupy.from_dlpack(dev)
    assert c.data.ptr == dev.ptr
    np.testing.assert_array_equal(cupy.asnumpy(cupy.asarray(dev)), np.arange(6, dtype=np.float32))


# -- clip_grad_norm, the weighted losses, scale (device training's sample_weight, loss_scale) ------

@requires_gpu
@pytest.mark.parametrize("n", [0, 1, 97, 4096 * 16 + 5, 1_000_003])
def test_clip_grad_norm_on_the_device_matches_the_cpu_and_replays_in_a_graph(n, rng):
    g0 = rng.standard_normal(n).astype(np.float32)
    ref = float(np.sqrt(np.sum(g0.astype(np.float64) ** 2)))
    for bound in (max(ref, 1.0) / 3, 2 * ref + 1):
        g, norm = cuda.asarray(g0), cuda.empty((), np.float32)
        assert K.clip_grad_norm(g, bound, norm_out=norm) is norm
        assert float(norm) == pytest.approx(ref, rel=1e-6, abs=1e-30)
        host = g0.copy()
        K.clip_grad_norm(host, bound)
        np.testing.assert_allclose(g.to_numpy(), host, rtol=4 * EPS32, atol=0)
    g = cuda.asarray(g0)
    K.clip_grad_norm(g, 1.0, norm_out=norm)  # scratch exists before the capture
    with cuda.graph_capture() as graph:
        K.clip_grad_norm(g, 1.0, norm_out=norm)
    for _ in range(2):
        cuda.copy_(g, g0)
        graph.replay()
        cuda.synchronize()
        host = g0.copy()
        K.clip_grad_norm(host, 1.0)
        np.testing.assert_allclose(g.to_numpy(), host, rtol=4 * EPS32, atol=0)


@requires_gpu
@pytest.mark.parametrize("kind", ["squared", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("rows,cols", [(1, 1), (64, 10), (33, 130), (256, 1030), (40, 12), (64, 128), (9, 1024)])
def test_weighted_loss_forms_the_cpu_trainers_weighted_mean(kind, rows, cols, rng):
    # cols % 4 == 0 up to 1024: the softmax's register path (float4 rows) under the weighted rescale
    from fastmlp import _cuda_kernels, losses

    z = rng.standard_normal((rows, cols)).astype(np.float32) * 3
    if kind == "cross_entropy":
        t = rng.integers(0, cols, rows).astype(np.int64)
    elif kind == "squared":
        t = rng.standard_normal((rows, cols)).astype(np.float32)
    else:
        t = (rng.random((rows, cols)) < 0.4).astype(np.float32)
    for w in (rng.uniform(0, 3, rows), np.zeros(rows)):
        # what Trainer._forward_backward forms on the CPU
        grad_ref = losses.compute(kind, z, t)[1].copy()
        total = float(w.sum())
        loss_ref = float(losses.per_row(kind, z, t) @ w) / total if total > 0 else 0.0
        grad_ref *= (w * (rows / total if total > 0 else 0.0)).astype(np.float32)[:, None]
        dz, dt = cuda.asarray(z), cuda.asarray(t)
        dw, dtotal = cuda.asarray(w, dtype=np.float64), cuda.empty((1,), np.float64)
        loss, grad = _cuda_kernels.weighted_loss(kind, dz, dt, dw, out=None, loss_out=None, total=dtotal, stream=None)
        assert float(loss) == pytest.approx(loss_ref, rel=1e-5, abs=1e-7)
        assert dtotal.to_numpy()[0] == pytest.approx(total, rel=1e-12)
        np.testing.assert_allclose(grad.to_numpy(), grad_ref, rtol=1e-4, atol=1e-7)
        # in place over the logits, and replayed from a captured graph
        loss_out = cuda.empty((), np.float32)
        with cuda.graph_capture() as graph:
            _cuda_kernels.weighted_loss(kind, dz, dt, dw, out=dz, loss_out=loss_out, total=dtotal, stream=None)
        for _ in range(2):
            cuda.copy_(dz, z)
            graph.replay()
            cuda.synchronize()
            assert float(loss_out) == pytest.approx(loss_ref, rel=1e-5, abs=1e-7)
            np.testing.assert_allclose(dz.to_numpy(), grad_ref, rtol=1e-4, atol=1e-7)


@requires_gpu
@pytest.mark.parametrize("n", [1, 3, 4, 4097])
def test_scale_multiplies_in_place_like_the_cpu(n, rng):
    from fastmlp import _cuda_kernels

    x0 = rng.standard_normal(n + 1).astype(np.float32)
    x = cuda.asarray(x0)
    _cuda_kernels.scale_(x[1:], 1.0 / 3.0)  # a misaligned view: the scalar path
    want = x0.copy()
    want[1:] *= np.float32(1.0 / 3.0)
    np.testing.assert_array_equal(x.to_numpy(), want)
    _cuda_kernels.scale_(x, 7.0)  # aligned: float4 groups and the tail
    want *= np.float32(7.0)
    np.testing.assert_array_equal(x.to_numpy(), want)
