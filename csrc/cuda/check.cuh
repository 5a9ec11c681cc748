// What every .cu file shares: CUDA errors turned into std::runtime_error with the call's name,
// launch checks, grid sizing for grid-stride loops (int64 indices: n may exceed 2^31), and the
// per-(device, thread, stream) scratch buffer that grows only outside stream capture, and the
// per-(device, thread, stream) arrival counters of in-kernel split-K.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/api.h"

namespace fastmlp {
namespace cuda {

static_assert(sizeof(Stream) == sizeof(cudaStream_t), "Stream must be cudaStream_t");

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call);  // runtime.cu

inline void check(cudaError_t err, const char* call) {
  if (err != cudaSuccess) throw_cuda_error(err, call);
}

// After a <<<...>>> launch: a bad configuration, or an earlier asynchronous fault.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

constexpr int kBlockThreads = 256;           // threads per block of the elementwise kernels: 8 warps
constexpr int64_t kMaxGridBlocks = 1 << 16;  // grid-stride loops cover the rest (2^24 threads in flight)

// Whether a pointer allows 16-byte (float4) accesses.
inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `items` with `threads` per block (items > 0).
inline unsigned grid_blocks(int64_t items, int threads = kBlockThreads) {
  const int64_t blocks = ceil_div(items, threads);
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

// The current device's multiprocessor count (cached per thread and device).
int multiprocessors();  // runtime.cu

// Blocks for a grid-stride loop whose threads carry per-thread setup worth amortising (the
// optimizers form their coefficients in double, with pow, per thread): at most as many blocks of
// `kernel` as the current device keeps resident at once (its occupancy, from its registers), so
// the grid is one full wave and each thread walks many elements instead of paying the setup for
// one or two.
unsigned resident_blocks(const void* kernel, int64_t items, int threads = kBlockThreads);  // runtime.cu
template <class... Args>
unsigned resident_blocks(void (*kernel)(Args...), int64_t items, int threads = kBlockThreads) {
  return resident_blocks(reinterpret_cast<const void*>(kernel), items, threads);
}

__device__ __forceinline__ int64_t grid_start() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// At least `bytes` of device memory (256-byte aligned) for work on `stream` by this thread on the
// current device; contents are not preserved. Grows only outside capture: a stream being captured
// that needs more throws, naming `who`. A buffer handed out during a capture is shared with the graph
// (which may use it): it is freed when both the stream has let it go and the graphs captured
// with it are destroyed (kept for good when the capture was begun outside fastmlp). Kernels of one stream run in order, so two calls never overlap.
void* scratch(std::size_t bytes, Stream stream, const char* who);

// kTickets unsigned ints on the current device for kernels on `stream` by this thread that count arrivals
// (the GEMM's in-kernel split-K): zero when first handed out, and every kernel that uses them
// leaves them zero. Allocated outside capture only, like scratch; never shared between streams.
// `optional`: during a capture before they exist, nullptr instead of an error (the caller has a
// way without them).
constexpr int kTickets = 1024;
unsigned* tickets(Stream stream, const char* who, bool optional = false);

}  // namespace cuda
}  // namespace fastmlp
