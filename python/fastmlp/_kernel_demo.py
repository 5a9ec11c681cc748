"""``fastmlp kernels``: a short demo of the kernels. It trains a two-layer
ReLU network on a synthetic 10-class problem with nothing but fastmlp.kernels (fused GEMM +
bias + ReLU, softmax cross-entropy, backward GEMMs, one fused Adam step over one flat parameter
arena) and prints the loss, the accuracy and the kernel throughput."""

from __future__ import annotations

import sys
import time

import numpy as np

import fastmlp
from fastmlp import kernels as K


def make_data(rng: np.random.Generator, rows: int, features: int, classes: int):
    centers = rng.standard_normal((classes, features)).astype(np.float32) * 2.0
    labels = rng.integers(0, classes, rows)
    x = centers[labels] + rng.standard_normal((rows, features)).astype(np.float32)
    return x.astype(np.float32), labels.astype(np.int64)


def demo(epochs: int, batch: int, hidden: int, seed: int, out=sys.stdout) -> float:
    rng = np.random.default_rng(seed)
    features, classes = 64, 10
    x, y = make_data(rng, 8192, features, classes)

    # One flat arena: W1 (hidden, features), b1, W2 (classes, hidden), b2 — views into `params`.
    sizes = [hidden * features, hidden, classes * hidden, classes]
    bounds = np.cumsum([0] + sizes)
    params = np.zeros(bounds[-1], np.float32)
    grads = np.zeros_like(params)
    views = lambda arena: [arena[bounds[i]:bounds[i + 1]] for i in range(4)]  # noqa: E731
    w1, b1, w2, b2 = views(params)
    dw1, db1, dw2, db2 = views(grads)
    w1, dw1 = w1.reshape(hidden, features), dw1.reshape(hidden, features)
    w2, dw2 = w2.reshape(classes, hidden), dw2.reshape(classes, hidden)
    K.random_normal(w1.shape, seed=seed, offset=0, std=np.sqrt(2.0 / features), out=w1)
    K.random_normal(w2.shape, seed=seed, offset=1, std=np.sqrt(2.0 / hidden), out=w2)
    exp_avg, exp_avg_sq = np.zeros_like(params), np.zeros_like(params)

    h = np.empty((batch, hidden), np.float32)
    logits = np.empty((batch, classes), np.float32)
    dh = np.empty_like(h)
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            xb, yb = x[idx], y[idx]
            K.gemm(xb, w1, trans_b=True, bias=b1, activation="relu", out=h)     # h = relu(x W1^T + b1)
            K.gemm(h, w2, trans_b=True, bias=b2, out=logits)                     # logits = h W2^T + b2
            loss, dlogits = K.softmax_cross_entropy(logits, yb)
            K.gemm(dlogits, h, trans_a=True, out=dw2)                            # dW2 = dlogits^T h
            K.bias_grad(dlogits, out=db2)
            K.gemm(dlogits, w2, out=dh)                                          # dh = dlogits W2
            K.activation_backward(dh, h, "relu", out=dh)
            K.gemm(dh, xb, trans_a=True, out=dw1)                                # dW1 = dh^T x
            K.bias_grad(dh, out=db1)
            step += 1
            K.adam_step(params, grads, exp_avg, exp_avg_sq, step=step, lr=1e-3)  # one pass, all layers
            total += loss
        print(f"epoch {epoch + 1}: mean loss {total / (len(x) // batch):.4f}", file=out)
    seconds = time.perf_counter() - start

    hidden_all = K.gemm(x, w1, trans_b=True, bias=b1, activation="relu")
    accuracy = float((K.gemm(hidden_all, w2, trans_b=True, bias=b2).argmax(1) == y).mean())
    samples = epochs * (len(x) // batch) * batch
    print(f"training accuracy {accuracy:.3f}; {samples / seconds:,.0f} samples/s on "
          f"{fastmlp.get_num_threads()} thread(s), ISA path {fastmlp.get_isa()}", file=out)
    return accuracy
