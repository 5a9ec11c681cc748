"""One line of timings for an A/B of the GPU's memory-bound kernels under whatever FASTMLP_CUDA_*
variables the environment sets (tools/gpu_check.sh's `memab` stage runs it once per setting,
alternating settings for several rounds): adam_step on 16M parameters (device step), bias_grad and
softmax cross-entropy on 65536 x 1024, dropout and relu on 64M elements, each beside a 768 MiB
STREAM triad in the same process, as a share of it; and a hash of the results (an Adam step, the
column sums, the loss gradients of odd shapes and a bad label, the dropout) so that variants which
must be bitwise the same can be checked to be.

    python bench/cuda_memory_ab.py [LABEL]
"""
import hashlib
import os
import sys

import numpy as np

from fastmlp import bench, cuda
from fastmlp import kernels as K


def main() -> None:
    torch = bench._try_torch()
    timer = bench._gpu_timer(torch if torch is not None and torch.cuda.is_available() else None)
    rng = np.random.default_rng(0)
    native, s = cuda._native(), cuda.PER_THREAD_DEFAULT_STREAM
    n = 64 * 1024 * 1024
    a, b, c = (cuda.asarray(rng.standard_normal(n, dtype=np.float32)) for _ in range(3))
    rows, cols = n // 1024, 1024
    x2, g2 = a.reshape(rows, cols), c.reshape(rows, cols)
    colsum, loss = cuda.empty((cols,)), cuda.empty(())
    labels = cuda.asarray(rng.integers(0, cols, rows).astype(np.int64))
    na = 16 * 1024 * 1024
    p, g = (cuda.asarray(rng.standard_normal(na, dtype=np.float32)) for _ in range(2))
    m, v = cuda.zeros(na), cuda.zeros(na)
    step = cuda.asarray(np.zeros(1, np.int64))

    h = hashlib.sha1()  # results that every variant must reproduce bit for bit
    K.adam_step(p, g, m, v, step=step, lr=1e-3)
    K.bias_grad(g2, out=colsum)
    K.softmax_cross_entropy(x2, labels, out=g2, loss_out=loss)
    K.dropout(a, 0.2, seed=1, offset=0, out=b)
    for arr in (p, m, v, step, colsum, g2, loss, b):
        h.update(arr.to_numpy().tobytes())
    for r, k in ((1000, 260), (257, 100), (3, 1024), (1000, 12)):
        x = cuda.asarray(rng.standard_normal((r, k), dtype=np.float32))
        y = rng.integers(0, k, r).astype(np.int64)
        y[0] = k + 5  # a label outside the classes: a NaN row
        grad, lo = cuda.empty((r, k)), cuda.empty(())
        K.softmax_cross_entropy(x, cuda.asarray(y), out=grad, loss_out=lo)
        for arr in (grad, lo, K.bias_grad(x)):
            h.update(arr.to_numpy().tobytes())

    fns = {"triad": lambda: native.triad(a.ptr, b.ptr, c.ptr, 2.0, n, s),
           "adam": lambda: K.adam_step(p, g, m, v, step=step, lr=1e-3),
           "bias_grad": lambda: K.bias_grad(g2, out=colsum),
           "softmax_ce": lambda: K.softmax_cross_entropy(x2, labels, out=g2, loss_out=loss),
           "dropout": lambda: K.dropout(a, 0.2, seed=1, offset=0, out=b),
           "relu": lambda: K.activation(a, "relu", out=b)}
    t = bench._gpu_times(fns, timer, 20)
    bw = 12 * n / t["triad"]
    nbytes = {"adam": 28 * na, "bias_grad": 4 * n, "softmax_ce": 8 * n, "dropout": 8 * n, "relu": 8 * n}
    env = ",".join(f"{k[len('FASTMLP_CUDA_'):]}={val}" for k, val in sorted(os.environ.items())
                   if k.startswith("FASTMLP_CUDA_")) or "defaults"
    cells = [f"{k} {t[k] * 1e6:6.1f}us {nbytes[k] / t[k] / bw:4.0%}" for k in nbytes]
    print(f"{sys.argv[1] if len(sys.argv) > 1 else ''} {env}: triad {bw / 1e9:.0f} GB/s | " + " | ".join(cells)
          + f" | results {h.hexdigest()[:12]}", flush=True)


if __name__ == "__main__":
    main()
