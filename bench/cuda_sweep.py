"""One line of GPU timings for the GEMM sweep in tools/gpu_check.sh: the small MLP GEMM shapes
(each timed inside a captured graph of 20 calls) and the 784-512-512-10 training step's graph
replay, and TFLOP/s at 4096^3 and 8192x1024x1024 (A.B^T and A^T.B, and A.B, the pair furthest
below cuBLAS there), under whatever the FASTMLP_CUDA_GEMM_* tuning variables
(csrc/cuda/INTERFACE.md) say.

    python bench/cuda_sweep.py LABEL
"""
import os
import sys

import numpy as np

from fastmlp import bench, cuda
from fastmlp import kernels as K


def main() -> None:
    torch = bench._try_torch()
    timer = bench._gpu_timer(torch if torch is not None and torch.cuda.is_available() else None)
    rng = np.random.default_rng(0)
    cells = []
    for M, N, inner, ta, tb in ((256, 512, 784, False, True), (256, 512, 512, False, True),
                                (512, 784, 256, True, False), (512, 512, 256, True, False),
                                (256, 784, 512, False, False), (10, 512, 256, True, False),
                                (4096, 4096, 4096, False, True), (8192, 1024, 1024, True, False),
                                (4096, 4096, 4096, False, False), (8192, 1024, 1024, False, False)):
        A = cuda.asarray(rng.standard_normal((inner, M) if ta else (M, inner), dtype=np.float32))
        B = cuda.asarray(rng.standard_normal((N, inner) if tb else (inner, N), dtype=np.float32))
        out = cuda.empty((M, N))
        reps = 2 if M * N * inner > 2**30 else 20
        fn = bench._fastmlp_graph(lambda: K.gemm(A, B, trans_a=ta, trans_b=tb, out=out), reps)
        t = bench._gpu_times({"f": fn}, timer, 15 if reps > 2 else 5)["f"] / reps
        label = f"{M}x{N}x{inner}{'T' if ta else 'N'}{'T' if tb else 'N'}"
        cells.append(f"{label} {t * 1e6:6.1f}us" if reps > 2 else f"{label} {2 * M * N * inner / t / 1e12:4.1f}TF")
    x = rng.standard_normal((256, 784)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int64)
    step = bench._fastmlp_cuda_step([784, 512, 512, 10], 0.2, 1e-4, x, y, True)
    t = bench._gpu_times({"f": step}, timer, 30)["f"]
    cells.append(f"step {t * 1e6:6.1f}us")
    env = ",".join(f"{k[len('FASTMLP_CUDA_GEMM_'):]}={v}" for k, v in sorted(os.environ.items())
                   if k.startswith("FASTMLP_CUDA_GEMM_")) or "defaults"
    print(f"{sys.argv[1] if len(sys.argv) > 1 else ''} {env}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
