// Column sums in the fixed order of bias_grad, for the per-ISA sources (elementwise.cpp's
// bias_grad and the GEMM, which sums op(a) while packing it): per column, runs of kSumRows rows
// summed in T, runs added in double within blocks of kReduceRowBlock rows, the block sums added in
// double in block order, then rounded to T once. The order depends only on the row index, never
// on how columns are split among tasks, so every caller gets bitwise the same sums.
#pragma once
#include <cstdint>

#include "core/parallel.h"
#include "cpu/kernels.h"

namespace fastmlp {
namespace cpu {
namespace {

constexpr int64_t kColumnSumRun = 16;  // rows summed in T before a conversion to double

// Partial sums of rows [r0, r1) (a block of at most kReduceRowBlock rows) for `width` columns
// starting at src (row stride ld): p[c] = sum over the block's runs, in order, of double(run sum).
// acc: scratch for 2 * width elements. Two runs are summed side by side, row k of one beside row k
// of the next (two streams from memory, 16 rows apart, instead of one), and added to p in order:
// the same sums. Bound by memory latency more than bandwidth on AMD EPYC (Zen 4): one stream per
// core read 8192 x 4096 floats at ~13 GB/s; two, toggled in one process, 1.12x on two threads and
// 1.19x on one (four overflowed L1 with 4096-column chunks: 0.84-0.92x).
template <class T>
inline void column_block_sums(const T* src, int64_t ld, int64_t r0, int64_t r1, int64_t width, T* __restrict acc,
                              double* __restrict p) {
  for (int64_t c = 0; c < width; ++c) p[c] = 0.0;
  int64_t r = r0;
  T* __restrict acc2 = acc + width;
  for (; r + 2 * kColumnSumRun <= r1; r += 2 * kColumnSumRun) {
    for (int64_t c = 0; c < width; ++c) acc[c] = T(0);
    for (int64_t c = 0; c < width; ++c) acc2[c] = T(0);
    for (int64_t rr = r; rr < r + kColumnSumRun; ++rr) {
      const T* __restrict row = src + rr * ld;
      const T* __restrict row2 = row + kColumnSumRun * ld;
      for (int64_t c = 0; c < width; ++c) {
        acc[c] += row[c];
        acc2[c] += row2[c];
      }
    }
    for (int64_t c = 0; c < width; ++c) p[c] += static_cast<double>(acc[c]);
    for (int64_t c = 0; c < width; ++c) p[c] += static_cast<double>(acc2[c]);
  }
  for (; r < r1; r += kColumnSumRun) {
    const int64_t r_end = min_i64(r1, r + kColumnSumRun);
    for (int64_t c = 0; c < width; ++c) acc[c] = T(0);
    for (int64_t rr = r; rr < r_end; ++rr) {
      const T* __restrict row = src + rr * ld;
      for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
    }
    for (int64_t c = 0; c < width; ++c) p[c] += static_cast<double>(acc[c]);
  }
}

// out[c - c0] = the sum of column c of a rows x ld row-major matrix, for c in [c0, c1), on the
// calling thread.
template <class T>
void column_sums(const T* src, int64_t rows, int64_t ld, int64_t c0, int64_t c1, T* out) {
  constexpr int64_t kChunk = 256;
  T acc[2 * kChunk];
  double p[kChunk], total[kChunk];
  for (int64_t cc = c0; cc < c1; cc += kChunk) {
    const int64_t width = min_i64(kChunk, c1 - cc);
    for (int64_t c = 0; c < width; ++c) total[c] = 0.0;
    for (int64_t r0 = 0; r0 < rows; r0 += kReduceRowBlock) {
      column_block_sums(src + cc, ld, r0, min_i64(rows, r0 + kReduceRowBlock), width, acc, p);
      for (int64_t c = 0; c < width; ++c) total[c] = r0 == 0 ? p[c] : total[c] + p[c];
    }
    for (int64_t c = 0; c < width; ++c) out[cc - c0 + c] = static_cast<T>(total[c]);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace fastmlp
