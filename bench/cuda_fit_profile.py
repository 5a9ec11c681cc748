"""Where Trainer.fit's time goes beyond its steps on the GPU: the 784-512-512-10 network (batch 256,
dropout 0.2, Adam) fitted for one epoch of STEPS batches on device-resident data, timed whole, and
the same fit under cProfile (the Python side; CUDA API calls show as the native functions that
make them):

    python bench/cuda_fit_profile.py [STEPS]

Prints the fit's time per step, the graph replay's time per step measured beside it, the fixed
part (fit minus steps x replay), and the profile's top functions by cumulative time.
"""
import cProfile
import io
import pstats
import sys
import time

import numpy as np

import fastmlp
from fastmlp import bench, cuda


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    rng = np.random.default_rng(0)
    sizes, batch = [784, 512, 512, 10], 256
    X = cuda.asarray(rng.standard_normal((batch * steps, sizes[0])).astype(np.float32))
    Y = cuda.asarray(rng.integers(0, sizes[-1], batch * steps).astype(np.int64))

    def trainer():
        model = fastmlp.MLP(sizes, output="softmax", dropout=0.2, device="cuda")
        return fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-4), batch_size=batch, epochs=1,
                               progress=False)

    def fit_seconds(tr) -> float:
        cuda.synchronize()
        t = time.perf_counter()
        tr.fit(X, Y)
        cuda.synchronize()
        return time.perf_counter() - t

    fit_seconds(trainer())  # warm-up: first-use costs of the process
    fits = [fit_seconds(trainer()) for _ in range(3)]
    # The replayed step alone, built as the benchmark builds it (fit's step minus the batch gather).
    step = bench._fastmlp_cuda_step(sizes, 0.2, 1e-4, X[:batch].to_numpy(), Y[:batch].to_numpy(), True)
    for _ in range(20):
        step()
    cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    cuda.synchronize()
    replay = (time.perf_counter() - t) / steps
    best = min(fits)
    print(f"fit: {best / steps * 1e6:.1f} us per step (best of {', '.join(f'{f * 1e3:.1f}' for f in fits)} ms "
          f"for {steps} steps); replay {replay * 1e6:.1f} us per step; fixed part "
          f"{(best - steps * replay) * 1e3:.2f} ms per fit")

    tr = trainer()
    prof = cProfile.Profile()
    cuda.synchronize()
    prof.enable()
    tr.fit(X, Y)
    cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
    print(out.getvalue())


if __name__ == "__main__":
    main()
