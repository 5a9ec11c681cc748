// Probes of the machine's limits for the benchmark suite: peak FMA throughput with this ISA's
// widest vectors, and a STREAM-style triad for memory bandwidth (DESIGN.md, "Bandwidth").
#include "core/parallel.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {

// 12 independent FMA chains (enough to cover 2 pipes x 4-5 cycles latency); returns the flops.
double fma_probe(int64_t iterations, float* sink) {
  using S = Simd<float>;
  using V = typename S::V;
  constexpr int kChains = 12;
  V acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = S::set1(1.0f + 1e-7f * static_cast<float>(c));
  const V a = S::set1(0.999999f), b = S::set1(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = S::fma(acc[c], a, b);
  }
  float lanes[64];
  V total = acc[0];
  for (int c = 1; c < kChains; ++c) total = S::fma(total, a, acc[c]);
  S::store(lanes, total);
  *sink = lanes[0];
  return 2.0 * kChains * S::W * static_cast<double>(iterations);
}

template <class T>
void triad(T* a, const T* b, const T* c, T s, int64_t n) {
  parallel_for(ceil_div(n, kElementwiseChunk), [&](int64_t task) {
    const int64_t lo = task * kElementwiseChunk, hi = min_i64(n, lo + kElementwiseChunk);
    for (int64_t i = lo; i < hi; ++i) a[i] = b[i] + s * c[i];
  });
}

template void triad<float>(float*, const float*, const float*, float, int64_t);
template void triad<double>(double*, const double*, const double*, double, int64_t);

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
