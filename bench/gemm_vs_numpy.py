"""GEMM throughput of fastmlp.kernels.gemm beside numpy.matmul at M=N=K (float32), measured in
one process with fastmlp.bench's block interleaving (medians; OPENBLAS_CORETYPE/L2_SIZE cleared).
Usage: python bench/gemm_vs_numpy.py [--sizes 256 512 1024]"""

from __future__ import annotations

import argparse
import os
import sys

if (os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE")) and not os.environ.get("_GEMM_REEXEC"):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["_GEMM_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import kernels as K  # noqa: E402
from fastmlp.bench import interleaved  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"cpu: {fastmlp._core.cpu_model_name()}; isa: {fastmlp.get_isa()}; threads: {fastmlp.get_num_threads()}")
    print(f"{'M=N=K':>6} {'fastmlp GFLOP/s':>16} {'numpy GFLOP/s':>14} {'ratio':>6}")
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        out = np.empty((n, n), np.float32)
        t = interleaved({"fastmlp": lambda: K.gemm(a, b, out=out), "numpy": lambda: np.matmul(a, b, out=out)},
                        repeats=args.repeats, min_time=0.002)
        flops = 2.0 * n ** 3
        g1, g2 = flops / t["fastmlp"] / 1e9, flops / t["numpy"] / 1e9
        print(f"{n:>6} {g1:>16.1f} {g2:>14.1f} {g1 / g2:>6.2f}")


if __name__ == "__main__":
    main()
