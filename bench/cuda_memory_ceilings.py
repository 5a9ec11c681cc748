"""How close the GPU's bandwidth-bound kernels come to the ceiling of their own memory pattern,
which the STREAM triad (DESIGN.md's yardstick) does not show: `adam_step` on 16M parameters beside
a CuPy kernel that moves the same bytes (four float4 loads and three float4 stores per group of four
parameters, trivial math; on a resident grid and on one thread per group) and torch's fused Adam;
`bias_grad` on 16384 x 1024 beside a read-only float4 sum of the same 64 MiB. Medians of
interleaved rounds, as percentages of the triad measured in the same run.

    python bench/cuda_memory_ceilings.py
"""
import numpy as np

from fastmlp import bench, cuda
from fastmlp import kernels as K

PATTERN = r"""
extern "C" __global__ void pattern(float4* p, const float4* g, float4* m, float4* v, long long groups) {
  for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < groups;
       q += (long long)gridDim.x * blockDim.x) {
    float4 a = p[q], b = g[q], c = m[q], d = v[q];
    a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
    c.x += b.x; c.y += b.y; c.z += b.z; c.w += b.w;
    d.x += a.x; d.y += a.y; d.z += a.z; d.w += a.w;
    p[q] = a; m[q] = c; v[q] = d;
  }
}
extern "C" __global__ void read_only(const float4* x, float* out, long long groups) {
  float acc = 0.0f;
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  for (; q + 3 * stride < groups; q += 4 * stride) {  // four loads in flight per thread
    const float4 a = x[q], b = x[q + stride], c = x[q + 2 * stride], d = x[q + 3 * stride];
    acc += (a.x + a.y + a.z + a.w) + (b.x + b.y + b.z + b.w) + (c.x + c.y + c.z + c.w) + (d.x + d.y + d.z + d.w);
  }
  for (; q < groups; q += stride) {
    const float4 a = x[q];
    acc += a.x + a.y + a.z + a.w;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
"""


def main() -> None:
    torch = bench._try_torch()
    timer = bench._gpu_timer(torch)
    rng = np.random.default_rng(0)
    n = 16 * 1024 * 1024
    p, g, m, v = cuda.asarray(rng.standard_normal(n, dtype=np.float32)), cuda.zeros(n), cuda.zeros(n), cuda.zeros(n)
    step = cuda.asarray(np.zeros(1, np.int64))
    native, s = cuda._native(), cuda.PER_THREAD_DEFAULT_STREAM
    a, b, c = (cuda.asarray(rng.standard_normal(n, dtype=np.float32)) for _ in range(3))
    fns = {"triad (12 B/elem)": lambda: native.triad(a.ptr, b.ptr, c.ptr, 2.0, n, s)}
    fns["adam_step"] = lambda: K.adam_step(p, g, m, v, step=step, lr=1e-3)
    try:
        import cupy
        kern = cupy.RawKernel(PATTERN, "pattern")
        arrays = [cupy.zeros(n, cupy.float32) for _ in range(4)]  # its own: it would drive Adam's state to NaN
        groups = n // 4
        sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
        for per_sm in (4, 8):
            fns[f"pattern resident {per_sm}/SM"] = (
                lambda per_sm=per_sm: kern((sms * per_sm,), (256,), (*arrays, np.int64(groups))))
        fns["pattern one thread/group"] = lambda: kern(((groups + 255) // 256,), (256,), (*arrays, np.int64(groups)))
        reader = cupy.RawKernel(PATTERN, "read_only")
        sink = cupy.empty(sms * 8 * 256, cupy.float32)
        x = cupy.asarray(a)
        fns["read-only resident 8/SM"] = lambda: reader((sms * 8,), (256,), (x, sink, np.int64(groups)))
    except Exception as e:  # noqa: BLE001
        print(f"cupy pattern skipped: {type(e).__name__}: {e}")
    grad2, colsum = a.reshape(n // 1024, 1024), cuda.empty((1024,))
    fns["bias_grad 16384x1024"] = lambda: K.bias_grad(grad2, out=colsum)
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_dlpack(p.copy()))
        tp.grad = torch.zeros_like(tp)
        fns["torch fused Adam"] = torch.optim.Adam([tp], lr=1e-3, fused=True).step
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        fn()
    for _ in range(5):
        for name, fn in fns.items():
            samples[name].append(timer(fn, 20))
    triad_s = np.median(samples["triad (12 B/elem)"])
    bw = 12 * n / triad_s
    for name, t in samples.items():
        t = float(np.median(t))
        nbytes = 12 * n if name.startswith("triad") else 4 * n if name.startswith(("read", "bias")) else 28 * n
        print(f"{name:28s} {t * 1e6:8.1f} us  {nbytes / t / 1e9:7.0f} GB/s  {nbytes / t / bw:5.0%} of triad")


if __name__ == "__main__":
    main()
