// Elementwise kernels (activations, dropout, noise, random fills) and the bias gradient. Work is
// cut into fixed chunks of kElementwiseChunk elements (a multiple of 4, so a chunk starts on a
// Philox block): what an element gets depends only on its index, never on the thread count.
#include <cmath>

#include "core/parallel.h"
#include "core/scratch.h"
#include "cpu/isa.h"
#include "ops/random.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {
namespace {

static_assert(kElementwiseChunk % 4 == 0, "chunks must start on a Philox block");

template <class F>
void for_chunks(int64_t n, const F& f) {
  parallel_for(ceil_div(n, kElementwiseChunk), [&](int64_t task) {
    const int64_t begin = task * kElementwiseChunk;
    f(begin, min_i64(n, begin + kElementwiseChunk));
  });
}

template <Act A, class T>
void activation_act(const T* __restrict x, T* __restrict out, int64_t n) {
  for_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = ops::activate<A>(x[i]);
  });
}

template <Act A, class T>
void activation_backward_act(const T* __restrict g, const T* __restrict y, T* __restrict out, int64_t n) {
  for_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = ops::activate_backward<A>(g[i], y[i]);
  });
}

// Applies f(i, word) for every element i in [b, e), word = word i%4 of Philox block i/4.
template <class F>
void for_words(int64_t b, int64_t e, uint64_t seed, uint64_t offset, const F& f) {
  constexpr int64_t kBatch = 64;  // blocks generated before they are consumed
  uint32_t words[kBatch * 4];
  for (int64_t start = b; start < e; start += kBatch * 4) {
    const int64_t end = min_i64(e, start + kBatch * 4);
    const int64_t first_block = start / 4, blocks = ceil_div(end - start, 4);
    for (int64_t k = 0; k < blocks; ++k) {
      const Philox4 r = philox4x32_10(seed, offset, static_cast<uint64_t>(first_block + k));
      words[4 * k] = r.w[0];
      words[4 * k + 1] = r.w[1];
      words[4 * k + 2] = r.w[2];
      words[4 * k + 3] = r.w[3];
    }
    for (int64_t i = start; i < end; ++i) f(i, words[i - start]);
  }
}

}  // namespace

template <class T>
void activation(const T* x, T* out, int64_t n, Act act) {
  switch (act) {
    case Act::relu: activation_act<Act::relu>(x, out, n); break;
    case Act::sigmoid: activation_act<Act::sigmoid>(x, out, n); break;
    case Act::tanh: activation_act<Act::tanh>(x, out, n); break;
    default: activation_act<Act::identity>(x, out, n); break;
  }
}

template <class T>
void activation_backward(const T* grad_out, const T* y, T* out, int64_t n, Act act) {
  switch (act) {
    case Act::relu: activation_backward_act<Act::relu>(grad_out, y, out, n); break;
    case Act::sigmoid: activation_backward_act<Act::sigmoid>(grad_out, y, out, n); break;
    case Act::tanh: activation_backward_act<Act::tanh>(grad_out, y, out, n); break;
    default: activation_backward_act<Act::identity>(grad_out, y, out, n); break;
  }
}

// Column sums: fixed blocks of kReduceRowBlock rows summed in double, then the block partials
// added in block order. Tasks split rows blocks and column chunks; the order never changes.
template <class T>
void bias_grad(const T* grad, T* out, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  constexpr int64_t kColChunk = 1024;
  const int64_t row_blocks = ceil_div(rows, kReduceRowBlock), col_chunks = ceil_div(cols, kColChunk);
  if (row_blocks == 0) {
    for (int64_t c = 0; c < cols; ++c) out[c] = T(0);
    return;
  }
  double* partial = static_cast<double*>(thread_scratch(kScratchReduce, sizeof(double) * static_cast<size_t>(row_blocks * cols)));
  parallel_for(row_blocks * col_chunks, [&](int64_t task) {
    const int64_t rb = task / col_chunks, cc = task % col_chunks;
    const int64_t r0 = rb * kReduceRowBlock, r1 = min_i64(rows, r0 + kReduceRowBlock);
    const int64_t c0 = cc * kColChunk, c1 = min_i64(cols, c0 + kColChunk);
    double* p = partial + rb * cols;
    for (int64_t c = c0; c < c1; ++c) p[c] = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const T* g = grad + r * cols;
      for (int64_t c = c0; c < c1; ++c) p[c] += static_cast<double>(g[c]);
    }
  });
  parallel_for(col_chunks, [&](int64_t cc) {
    const int64_t c0 = cc * kColChunk, c1 = min_i64(cols, c0 + kColChunk);
    for (int64_t c = c0; c < c1; ++c) {
      double s = partial[c];
      for (int64_t rb = 1; rb < row_blocks; ++rb) s += partial[rb * cols + c];
      out[c] = static_cast<T>(s);
    }
  });
}

template <class T>
void dropout(const T* x, T* out, int64_t n, double p, uint64_t seed, uint64_t offset) {
  const uint32_t threshold = ops::drop_threshold(p);
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_words(b, e, seed, offset, [&](int64_t i, uint32_t w) { out[i] = ops::keep(w, threshold) ? x[i] * scale : T(0); });
  });
}

void dropout_mask(uint8_t* out, int64_t n, double p, uint64_t seed, uint64_t offset) {
  const uint32_t threshold = ops::drop_threshold(p);
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_words(b, e, seed, offset, [&](int64_t i, uint32_t w) { out[i] = ops::keep(w, threshold) ? 1 : 0; });
  });
}

template <class T>
void random_uniform(T* out, int64_t n, double low, double high, uint64_t seed, uint64_t offset) {
  const T lo = static_cast<T>(low), width = static_cast<T>(high - low);
  // lo + width * u can round up to high; the largest value below high keeps [low, high).
  const T hi = static_cast<T>(high);
  const T below_hi = low < high ? std::nextafter(hi, lo) : lo;
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_words(b, e, seed, offset, [&](int64_t i, uint32_t w) {
      const T v = lo + width * static_cast<T>(ops::uniform01(w));
      out[i] = v < hi ? v : below_hi;
    });
  });
}

// Normals for elements [b, e): element i takes normal i%4 of block i/4.
template <class F>
void for_normals(int64_t b, int64_t e, uint64_t seed, uint64_t offset, const F& f) {
  for (int64_t blk = b / 4; blk * 4 < e; ++blk) {
    float z[4];
    ops::normal4(philox4x32_10(seed, offset, static_cast<uint64_t>(blk)), z);
    const int64_t i0 = max_i64(b, blk * 4), i1 = min_i64(e, blk * 4 + 4);
    for (int64_t i = i0; i < i1; ++i) f(i, z[i - blk * 4]);
  }
}

template <class T>
void random_normal(T* out, int64_t n, double mean, double std, uint64_t seed, uint64_t offset) {
  const T mu = static_cast<T>(mean), sigma = static_cast<T>(std);
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_normals(b, e, seed, offset, [&](int64_t i, float z) { out[i] = mu + sigma * static_cast<T>(z); });
  });
}

template <class T>
void add_noise(const T* x, T* out, int64_t n, NoiseKind kind, double level, uint64_t seed, uint64_t offset) {
  if (kind == NoiseKind::mask) {
    const uint32_t threshold = ops::drop_threshold(level);
    for_chunks(n, [&](int64_t b, int64_t e) {
      for_words(b, e, seed, offset, [&](int64_t i, uint32_t w) { out[i] = ops::keep(w, threshold) ? x[i] : T(0); });
    });
  } else {
    const T sigma = static_cast<T>(level);
    for_chunks(n, [&](int64_t b, int64_t e) {
      for_normals(b, e, seed, offset, [&](int64_t i, float z) { out[i] = x[i] + sigma * static_cast<T>(z); });
    });
  }
}

#define FASTMLP_INSTANTIATE(T)                                                                              \
  template void activation<T>(const T*, T*, int64_t, Act);                                                   \
  template void activation_backward<T>(const T*, const T*, T*, int64_t, Act);                                \
  template void bias_grad<T>(const T*, T*, int64_t, int64_t);                                                \
  template void dropout<T>(const T*, T*, int64_t, double, uint64_t, uint64_t);                               \
  template void add_noise<T>(const T*, T*, int64_t, NoiseKind, double, uint64_t, uint64_t);                  \
  template void random_uniform<T>(T*, int64_t, double, double, uint64_t, uint64_t);                          \
  template void random_normal<T>(T*, int64_t, double, double, uint64_t, uint64_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
