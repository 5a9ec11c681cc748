"""pytest-benchmark suites: ``pytest bench --benchmark-only`` (pip install ".[bench]").

The side-by-side table with NumPy, PyTorch and JAX and the machine's limits comes from
``python -m fastmlp.bench``; these suites track fastmlp's own kernels over time
(``--benchmark-autosave`` / ``--benchmark-compare``)."""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K

pytest.importorskip("pytest_benchmark")

GEMM_SHAPES = [(256, 512, 784), (256, 512, 512), (256, 784, 512), (512, 784, 256), (1024, 1024, 1024), (32, 64, 64)]


@pytest.mark.parametrize("trans", ["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm(benchmark, shape, trans):
    M, N, Kd = shape
    rng = np.random.default_rng(0)
    ta, tb = trans[0] == "T", trans[1] == "T"
    a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
    b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    benchmark(K.gemm, a, b, trans_a=ta, trans_b=tb, out=out)
    benchmark.extra_info["gflops"] = 2.0 * M * N * Kd / benchmark.stats.stats.median / 1e9


def test_gemm_bias_relu(benchmark):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 784)).astype(np.float32)
    w = rng.standard_normal((512, 784)).astype(np.float32)
    bias = rng.standard_normal(512).astype(np.float32)
    out = np.empty((256, 512), np.float32)
    benchmark(K.gemm, x, w, trans_b=True, bias=bias, activation="relu", out=out)


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "adagrad"])
def test_optimizer_16m(benchmark, name):
    n = 16 * 1024 * 1024
    rng = np.random.default_rng(2)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32) * 1e-3
    s1, s2 = np.zeros_like(p), np.zeros_like(p)
    call = {"adam": lambda: K.adam_step(p, g, s1, s2, step=2, lr=1e-6),
            "sgd": lambda: K.sgd_step(p, g, s1, step=2, lr=1e-6, momentum=0.9),
            "rmsprop": lambda: K.rmsprop_step(p, g, s1, lr=1e-6),
            "adagrad": lambda: K.adagrad_step(p, g, s1, step=2, lr=1e-6)}[name]
    benchmark(call)


@pytest.mark.parametrize("op", ["dropout", "relu", "sigmoid", "tanh", "bias_grad", "softmax_ce"])
def test_memory_bound(benchmark, op):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8192, 4096)).astype(np.float32)
    y = np.empty_like(x)
    if op == "dropout":
        benchmark(K.dropout, x, 0.2, seed=1, offset=0, out=y)
    elif op == "bias_grad":
        benchmark(K.bias_grad, x)
    elif op == "softmax_ce":
        logits = x.reshape(-1, 1024)
        labels = rng.integers(0, 1024, logits.shape[0]).astype(np.int64)
        benchmark(K.softmax_cross_entropy, logits, labels, out=y.reshape(-1, 1024))
    else:
        benchmark(K.activation, x, op, out=y)


@pytest.mark.parametrize("sizes,batch,dropout", [([784, 512, 512, 10], 256, 0.2), ([64, 64, 64, 1], 32, 0.0)],
                         ids=["784-512-512-10", "64-64-64-1"])
def test_train_step(benchmark, sizes, batch, dropout):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    classification = sizes[-1] > 1
    y = rng.integers(0, sizes[-1], batch) if classification else rng.standard_normal((batch, 1)).astype(np.float32)
    model = fastmlp.MLP(sizes, output="softmax" if classification else "identity", dropout=dropout)
    trainer = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-4), batch_size=batch, progress=False)
    benchmark(trainer.train_step, x, y)
