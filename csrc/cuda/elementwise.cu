// Elementwise kernels (activations, dropout, noise, random fills, probes, row gather) and the bias
// gradient. Random kernels give each thread one Philox block, i.e. elements 4b..4b+3, so element i
// uses word i % 4 of block i / 4 exactly as on the CPU; compiled with --fmad=false so uniforms and
// normals round like the CPU build (-ffp-contract=off) and come out bit-identical.
#include <cmath>

#include "cuda/check.cuh"
#include "cuda/reduce.cuh"
#include "ops/activation.h"
#include "ops/random.h"

namespace fastmlp {
namespace cuda {
namespace {

// ---- groups of four consecutive elements ------------------------------------------------------
// Vec: both pointers are 16-byte aligned, so a full group is one float4 access.

template <bool Vec>
__device__ __forceinline__ void load4(const float* p, int64_t i, int64_t n, float (&v)[4]) {
  if (Vec && i + 4 <= n) {
    const float4 t = *reinterpret_cast<const float4*>(p + i);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = i + j < n ? p[i + j] : 0.0f;
  }
}

template <bool Vec>
__device__ __forceinline__ void store4(float* p, int64_t i, int64_t n, const float (&v)[4]) {
  if (Vec && i + 4 <= n) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (i + j < n) p[i + j] = v[j];
  }
}

// Groups of four for n elements.
int64_t groups_of_4(int64_t n) { return ceil_div(n, 4); }

// ---- activations ------------------------------------------------------------------------------

template <Act A, bool Vec>
__global__ void activation_kernel(const float* x, float* out, int64_t n) {
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    float v[4];
    load4<Vec>(x, 4 * g, n, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = ops::activate<A>(v[j]);
    store4<Vec>(out, 4 * g, n, v);
  }
}

template <Act A, bool Vec>
__global__ void activation_backward_kernel(const float* grad_out, const float* y, float* out, int64_t n) {
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    float go[4], yv[4];
    load4<Vec>(grad_out, 4 * g, n, go);
    load4<Vec>(y, 4 * g, n, yv);
#pragma unroll
    for (int j = 0; j < 4; ++j) go[j] = ops::activate_backward<A>(go[j], yv[j]);
    store4<Vec>(out, 4 * g, n, go);
  }
}

template <Act A>
void launch_activation(const float* x, float* out, int64_t n, cudaStream_t stream) {
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(x) && aligned16(out)) activation_kernel<A, true><<<blocks, kBlockThreads, 0, stream>>>(x, out, n);
  else activation_kernel<A, false><<<blocks, kBlockThreads, 0, stream>>>(x, out, n);
  check_launch("activation");
}

template <Act A>
void launch_activation_backward(const float* grad_out, const float* y, float* out, int64_t n, cudaStream_t stream) {
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(grad_out) && aligned16(y) && aligned16(out))
    activation_backward_kernel<A, true><<<blocks, kBlockThreads, 0, stream>>>(grad_out, y, out, n);
  else
    activation_backward_kernel<A, false><<<blocks, kBlockThreads, 0, stream>>>(grad_out, y, out, n);
  check_launch("activation_backward");
}

// relu_dropout_backward: where y = dropout(relu(z)) > 0 the element was kept and z > 0, so the
// gradient is grad * scale; elsewhere 0. The CPU kernel's arithmetic (one float multiply), so the
// result is bitwise the CPU's, and bitwise dropout_backward followed by relu's backward, NaNs aside:
// the GPU's multiply returns its canonical NaN (0x7fffffff) where x86 keeps the input's payload.
template <bool Vec>
__global__ void relu_dropout_backward_kernel(const float* grad_out, const float* y, float* out, int64_t n,
                                             float scale) {
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    float go[4], yv[4];
    load4<Vec>(grad_out, 4 * g, n, go);
    load4<Vec>(y, 4 * g, n, yv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float v = go[j] * scale;
      go[j] = yv[j] > 0.0f ? v : 0.0f;
    }
    store4<Vec>(out, 4 * g, n, go);
  }
}

// ---- randomness -------------------------------------------------------------------------------

// The Philox stream actually used: offset, or step_ptr[0] * n_streams + offset (mod 2^64).
__device__ __forceinline__ uint64_t stream_id(const RandomStream& rs) {
  return rs.step_ptr ? static_cast<uint64_t>(*rs.step_ptr) * rs.n_streams + rs.offset : rs.offset;
}

template <bool Vec>
__global__ void dropout_kernel(const float* x, float* out, int64_t n, uint32_t threshold, float scale,
                               RandomStream rs) {
  const uint64_t stream = stream_id(rs);
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    const Philox4 w = philox4x32_10(rs.seed, stream, static_cast<uint64_t>(g));
    float v[4];
    load4<Vec>(x, 4 * g, n, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = ops::keep(w.w[j], threshold) ? v[j] * scale : 0.0f;
    store4<Vec>(out, 4 * g, n, v);
  }
}

__global__ void dropout_mask_kernel(uint8_t* out, int64_t n, uint32_t threshold, RandomStream rs) {
  const uint64_t stream = stream_id(rs);
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    const Philox4 w = philox4x32_10(rs.seed, stream, static_cast<uint64_t>(g));
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (4 * g + j < n) out[4 * g + j] = ops::keep(w.w[j], threshold) ? 1 : 0;
  }
}

template <bool Vec>
__global__ void mask_noise_kernel(const float* x, float* out, int64_t n, uint32_t threshold, RandomStream rs) {
  const uint64_t stream = stream_id(rs);
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    const Philox4 w = philox4x32_10(rs.seed, stream, static_cast<uint64_t>(g));
    float v[4];
    load4<Vec>(x, 4 * g, n, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = ops::keep(w.w[j], threshold) ? v[j] : 0.0f;
    store4<Vec>(out, 4 * g, n, v);
  }
}

// out = mean + sigma * z, plus x when x is given (Gaussian input noise).
template <bool Vec>
__global__ void normal_kernel(const float* x, float* out, int64_t n, float mean, float sigma, RandomStream rs) {
  const uint64_t stream = stream_id(rs);
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    const Philox4 w = philox4x32_10(rs.seed, stream, static_cast<uint64_t>(g));
    float z[4];
    ops::normal4(w, z);
    float v[4];
    if (x) {
      load4<Vec>(x, 4 * g, n, v);
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = v[j] + sigma * z[j];
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = mean + sigma * z[j];
    }
    store4<Vec>(out, 4 * g, n, v);
  }
}

template <bool Vec>
__global__ void uniform_kernel(float* out, int64_t n, float low, float width, float high, float below_high,
                               RandomStream rs) {
  const uint64_t stream = stream_id(rs);
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    const Philox4 w = philox4x32_10(rs.seed, stream, static_cast<uint64_t>(g));
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float u = low + width * ops::uniform01(w.w[j]);
      v[j] = u < high ? u : below_high;  // low + width*u may round up to high
    }
    store4<Vec>(out, 4 * g, n, v);
  }
}

// ---- probes and data movement -----------------------------------------------------------------

template <bool Vec>
__global__ void triad_kernel(float* a, const float* b, const float* c, float s, int64_t n) {
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    float bv[4], cv[4];
    load4<Vec>(b, 4 * g, n, bv);
    load4<Vec>(c, 4 * g, n, cv);
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = bv[j] + s * cv[j];
    store4<Vec>(a, 4 * g, n, bv);
  }
}

template <bool Vec>
__global__ void copy_kernel(float* dst, const float* src, int64_t n) {
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    float v[4];
    load4<Vec>(src, 4 * g, n, v);
    store4<Vec>(dst, 4 * g, n, v);
  }
}

template <bool Vec>
__global__ void scale_kernel(float* x, float s, int64_t n) {
  for (int64_t g = grid_start(); g < ceil_div(n, 4); g += grid_stride()) {
    float v[4];
    load4<Vec>(x, 4 * g, n, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = v[j] * s;
    store4<Vec>(x, 4 * g, n, v);
  }
}

__global__ void is_finite_kernel(const float* x, int64_t n, int32_t* flag) {
  bool bad = false;
  for (int64_t i = grid_start(); i < n; i += grid_stride())
    bad = bad || (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;  // Inf or NaN: exponent all ones
  if (bad) *flag = 1;  // every writer stores the same value: no atomic needed
}

// Word: uint4, uint32_t or uint8_t, whichever the row size and both pointers allow.
template <class Word>
__global__ void gather_rows_kernel(const Word* src, const int64_t* idx, Word* out, int64_t rows,
                                   int64_t words_per_row) {
  const int64_t total = rows * words_per_row;
  for (int64_t i = grid_start(); i < total; i += grid_stride()) {
    const int64_t r = i / words_per_row, w = i - r * words_per_row;
    out[i] = src[idx[r] * words_per_row + w];
  }
}

// bias_grad's terms and result.
struct GradTerm {
  const float* grad;
  int64_t cols;
  __device__ Sums<1> operator()(int64_t r, int64_t c) const { return Sums<1>{{static_cast<double>(grad[r * cols + c])}}; }
};
struct StoreColumn {
  float* out;
  __device__ void operator()(int64_t c, const Sums<1>& total) const { out[c] = static_cast<float>(total.v[0]); }
};

// bias_grad's first stage over groups of four columns (cols % 4 == 0, grad 16-byte aligned): a
// block is 32 lanes x 4 columns wide (512 bytes per row and warp, one float4 load per lane)
// and kRowLanes rows deep, on the same row blocks as column_partials_kernel; each column's
// rows are added in the same order, so the partials are bitwise the scalar kernel's.
__global__ void __launch_bounds__(kColTile* kRowLanes)
    bias_grad_partials_vec_kernel(const float* grad, int64_t rows, int64_t cols, int64_t row_block,
                                  int64_t row_blocks, double* partial) {
  __shared__ double lanes[kRowLanes][4 * kColTile];
  const int lane = threadIdx.x, ry = threadIdx.y;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * kColTile + lane) * 4;
  for (int64_t rb = blockIdx.y; rb < row_blocks; rb += gridDim.y) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    if (c < cols) {
      const int64_t r0 = rb * row_block;
      const int64_t r1 = rows < r0 + row_block ? rows : r0 + row_block;
#pragma unroll 8
      for (int64_t r = r0 + ry; r < r1; r += kRowLanes) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(grad + r * cols + c));
        acc[0] += static_cast<double>(t.x);
        acc[1] += static_cast<double>(t.y);
        acc[2] += static_cast<double>(t.z);
        acc[3] += static_cast<double>(t.w);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) lanes[ry][4 * lane + j] = acc[j];
    __syncthreads();
    // Threads t < 128 finish the block's column t: its kRowLanes partials added in order.
    const int t = ry * kColTile + lane;
    if (t < 4 * kColTile) {
      const int64_t col = static_cast<int64_t>(blockIdx.x) * 4 * kColTile + t;
      if (col < cols) {
        double total = lanes[0][t];
#pragma unroll
        for (int k = 1; k < kRowLanes; ++k) total += lanes[k][t];
        partial[rb * cols + col] = total;
      }
    }
    __syncthreads();
  }
}

}  // namespace

void activation(const float* x, float* out, int64_t n, Act act, Stream stream) {
  if (n == 0) return;
  switch (act) {
    case Act::relu: launch_activation<Act::relu>(x, out, n, stream); break;
    case Act::sigmoid: launch_activation<Act::sigmoid>(x, out, n, stream); break;
    case Act::tanh: launch_activation<Act::tanh>(x, out, n, stream); break;
    default: launch_activation<Act::identity>(x, out, n, stream); break;
  }
}

void activation_backward(const float* grad_out, const float* y, float* out, int64_t n, Act act, Stream stream) {
  if (n == 0) return;
  switch (act) {
    case Act::relu: launch_activation_backward<Act::relu>(grad_out, y, out, n, stream); break;
    case Act::sigmoid: launch_activation_backward<Act::sigmoid>(grad_out, y, out, n, stream); break;
    case Act::tanh: launch_activation_backward<Act::tanh>(grad_out, y, out, n, stream); break;
    default: launch_activation_backward<Act::identity>(grad_out, y, out, n, stream); break;
  }
}

void relu_dropout_backward(const float* grad_out, const float* y, float* out, int64_t n, double p, Stream stream) {
  if (n == 0) return;
  const float scale = static_cast<float>(1.0 / (1.0 - p));  // as dropout's
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(grad_out) && aligned16(y) && aligned16(out))
    relu_dropout_backward_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(grad_out, y, out, n, scale);
  else
    relu_dropout_backward_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(grad_out, y, out, n, scale);
  check_launch("relu_dropout_backward");
}

void bias_grad(const float* grad, float* out, int64_t rows, int64_t cols, Stream stream) {
  if (cols == 0) return;
  if (rows == 0) {
    check(cudaMemsetAsync(out, 0, sizeof(float) * static_cast<size_t>(cols), stream), "cudaMemsetAsync");
    return;
  }
  const int64_t row_blocks = column_row_blocks(rows, cols);
  double* partial =
      static_cast<double*>(scratch(sizeof(double) * static_cast<size_t>(row_blocks * cols), stream, "bias_grad"));
  if (cols % 4 == 0 && aligned16(grad)) {  // H100, 65536 x 1024: 109.7-110.8 -> 104.2-106.2 us (82 -> 86% of the triad)
    const int64_t row_block = column_row_block(rows, cols);
    const dim3 block(kColTile, kRowLanes);
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, 4 * kColTile)),
                    static_cast<unsigned>(row_blocks < 65535 ? row_blocks : 65535));
    bias_grad_partials_vec_kernel<<<grid, block, 0, stream>>>(grad, rows, cols, row_block, row_blocks, partial);
    check_launch("bias_grad");
    column_combine_kernel<1><<<static_cast<unsigned>(ceil_div(cols, kColTile)), block, 0, stream>>>(
        StoreColumn{out}, partial, cols, row_blocks);
    check_launch("bias_grad");
    return;
  }
  column_reduce<1>(GradTerm{grad, cols}, StoreColumn{out}, rows, cols, partial, stream, "bias_grad");
}

void dropout(const float* x, float* out, int64_t n, double p, const RandomStream& rs, Stream stream) {
  if (n == 0) return;
  const uint32_t threshold = ops::drop_threshold(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));  // as the CPU: 1/(1-p) in double, then float
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(x) && aligned16(out))
    dropout_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(x, out, n, threshold, scale, rs);
  else
    dropout_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(x, out, n, threshold, scale, rs);
  check_launch("dropout");
}

void dropout_mask(uint8_t* out, int64_t n, double p, const RandomStream& rs, Stream stream) {
  if (n == 0) return;
  dropout_mask_kernel<<<grid_blocks(groups_of_4(n)), kBlockThreads, 0, stream>>>(out, n, ops::drop_threshold(p), rs);
  check_launch("dropout_mask");
}

void add_noise(const float* x, float* out, int64_t n, NoiseKind kind, double level, const RandomStream& rs,
               Stream stream) {
  if (n == 0) return;
  const unsigned blocks = grid_blocks(groups_of_4(n));
  const bool vec = aligned16(x) && aligned16(out);
  if (kind == NoiseKind::mask) {
    const uint32_t threshold = ops::drop_threshold(level);
    if (vec) mask_noise_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(x, out, n, threshold, rs);
    else mask_noise_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(x, out, n, threshold, rs);
  } else {
    const float sigma = static_cast<float>(level);
    if (vec) normal_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(x, out, n, 0.0f, sigma, rs);
    else normal_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(x, out, n, 0.0f, sigma, rs);
  }
  check_launch("add_noise");
}

void random_uniform(float* out, int64_t n, double low, double high, uint64_t seed, uint64_t offset, Stream stream) {
  if (n == 0) return;
  const float lo = static_cast<float>(low), width = static_cast<float>(high - low), hi = static_cast<float>(high);
  const float below_hi = low < high ? std::nextafter(hi, lo) : lo;
  const RandomStream rs{seed, offset, nullptr, 0};
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(out)) uniform_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(out, n, lo, width, hi, below_hi, rs);
  else uniform_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(out, n, lo, width, hi, below_hi, rs);
  check_launch("random_uniform");
}

void random_normal(float* out, int64_t n, double mean, double std, uint64_t seed, uint64_t offset, Stream stream) {
  if (n == 0) return;
  const RandomStream rs{seed, offset, nullptr, 0};
  const float mu = static_cast<float>(mean), sigma = static_cast<float>(std);
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(out)) normal_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(nullptr, out, n, mu, sigma, rs);
  else normal_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(nullptr, out, n, mu, sigma, rs);
  check_launch("random_normal");
}

void triad(float* a, const float* b, const float* c, float s, int64_t n, Stream stream) {
  if (n == 0) return;
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(a) && aligned16(b) && aligned16(c)) triad_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(a, b, c, s, n);
  else triad_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(a, b, c, s, n);
  check_launch("triad");
}

void copy(float* dst, const float* src, int64_t n, Stream stream) {
  if (n == 0) return;
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(dst) && aligned16(src)) copy_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(dst, src, n);
  else copy_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(dst, src, n);
  check_launch("copy");
}

void scale(float* x, float s, int64_t n, Stream stream) {
  if (n == 0) return;
  const unsigned blocks = grid_blocks(groups_of_4(n));
  if (aligned16(x)) scale_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(x, s, n);
  else scale_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(x, s, n);
  check_launch("scale");
}

void is_finite(const float* x, int64_t n, int32_t* flag, Stream stream) {
  if (n == 0) return;
  is_finite_kernel<<<grid_blocks(n), kBlockThreads, 0, stream>>>(x, n, flag);
  check_launch("is_finite");
}

void gather_rows(const void* src, const int64_t* idx, void* out, int64_t rows, int64_t row_bytes, Stream stream) {
  if (rows == 0 || row_bytes == 0) return;
  const std::uintptr_t bits =
      reinterpret_cast<std::uintptr_t>(src) | reinterpret_cast<std::uintptr_t>(out) | static_cast<std::uintptr_t>(row_bytes);
  if ((bits & 15u) == 0) {
    const int64_t words = row_bytes / 16;
    gather_rows_kernel<uint4><<<grid_blocks(rows * words), kBlockThreads, 0, stream>>>(
        static_cast<const uint4*>(src), idx, static_cast<uint4*>(out), rows, words);
  } else if ((bits & 3u) == 0) {
    const int64_t words = row_bytes / 4;
    gather_rows_kernel<uint32_t><<<grid_blocks(rows * words), kBlockThreads, 0, stream>>>(
        static_cast<const uint32_t*>(src), idx, static_cast<uint32_t*>(out), rows, words);
  } else {
    gather_rows_kernel<uint8_t><<<grid_blocks(rows * row_bytes), kBlockThreads, 0, stream>>>(
        static_cast<const uint8_t*>(src), idx, static_cast<uint8_t*>(out), rows, row_bytes);
  }
  check_launch("gather_rows");
}

}  // namespace cuda
}  // namespace fastmlp
