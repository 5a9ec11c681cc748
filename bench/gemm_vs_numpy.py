"""GEMM throughput of fastmlp.kernels.gemm beside numpy.matmul, measured interleaved in one process
(medians of repeated runs). Clears OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for its own process so
NumPy runs its best kernel. Usage: python bench/gemm_vs_numpy.py [--sizes 256 512 1024]"""

from __future__ import annotations

import argparse
import os
import sys

if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import time  # noqa: E402

import numpy as np  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import kernels as K  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"cpu: {fastmlp._core.cpu_model_name()}; isa: {fastmlp.get_isa()}; threads: {fastmlp.get_num_threads()}")
    print(f"{'M=N=K':>6} {'fastmlp GFLOP/s':>16} {'numpy GFLOP/s':>14} {'ratio':>6}")
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        out = np.empty((n, n), np.float32)
        for _ in range(3):
            K.gemm(a, b, out=out)
            np.matmul(a, b, out=out)
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved
            ours.append(median_seconds(lambda: K.gemm(a, b, out=out), 1))
            theirs.append(median_seconds(lambda: np.matmul(a, b, out=out), 1))
        flops = 2.0 * n ** 3
        g1, g2 = flops / np.median(ours) / 1e9, flops / np.median(theirs) / 1e9
        print(f"{n:>6} {g1:>16.1f} {g2:>14.1f} {g1 / g2:>6.2f}")


if __name__ == "__main__":
    main()
