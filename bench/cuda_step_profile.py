"""Kernel by kernel: the 784-512-512-10 training step (batch 256, dropout 0.2, Adam) run eagerly
three times, for Nsight Compute to time each kernel of the last step:

    ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv \
        python bench/cuda_step_profile.py

(tools/gpu_check.sh's `profile` stage runs it; tools/ncu_summary.py prints the last third of the
kernels, the third step once the first two have allocated everything, with their times and sum.)
"""
import numpy as np

import fastmlp
from fastmlp import cuda

rng = np.random.default_rng(0)
x = cuda.asarray(rng.standard_normal((256, 784)).astype(np.float32))
y = cuda.asarray(rng.integers(0, 10, 256).astype(np.int64))
model = fastmlp.MLP([784, 512, 512, 10], output="softmax", dropout=0.2, device="cuda")
trainer = fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-4), batch_size=256, progress=False)
for _ in range(3):
    trainer.train_step(x, y)
cuda.synchronize()
