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
// acc: scratch for `width` elements. Four runs are summed side by side, row k of each (four
// streams from memory, 16 rows apart, instead of one), over pieces of kSumPiece columns so that
// the four run sums stay in L1, and added to p in run order: the same sums. Bound by memory
// latency more than bandwidth on AMD EPYC (Zen 4), where one stream per core read 8192 x 4096
// floats at ~13 GB/s. Against one stream, in alternating processes: two streams of whole
// 4096-column rows 1.12x on two threads, 1.19x on one; four of those overflowed L1 (0.84-0.92x);
// four over 1024-column pieces, against two, 1.04-1.11x on two threads, 1.06-1.18x on one, 1.22x
// with 512 rows (from L3). Sums kept in registers per strip and software prefetch lost.
template <class T>
inline void column_block_sums(const T* src, int64_t ld, int64_t r0, int64_t r1, int64_t width, T* __restrict acc,
                              double* __restrict p) {
  constexpr int64_t kStreams = 4, kSumPiece = 1024;
  for (int64_t c = 0; c < width; ++c) p[c] = 0.0;
  int64_t r = r0;
  if (r + kStreams * kColumnSumRun <= r1) {
    alignas(64) T q[kStreams][kSumPiece];
    const int64_t step = kColumnSumRun * ld;  // from a row of one run to the same row of the next
    for (; r + kStreams * kColumnSumRun <= r1; r += kStreams * kColumnSumRun) {
      for (int64_t s0 = 0; s0 < width; s0 += kSumPiece) {
        const int64_t w = min_i64(kSumPiece, width - s0);
        for (int64_t n = 0; n < kStreams; ++n)
          for (int64_t c = 0; c < w; ++c) q[n][c] = T(0);
        T* __restrict q0 = q[0];
        T* __restrict q1 = q[1];
        T* __restrict q2 = q[2];
        T* __restrict q3 = q[3];
        for (int64_t rr = r; rr < r + kColumnSumRun; ++rr) {
          const T* __restrict row = src + rr * ld + s0;
          for (int64_t c = 0; c < w; ++c) {
            q0[c] += row[c];
            q1[c] += row[step + c];
            q2[c] += row[2 * step + c];
            q3[c] += row[3 * step + c];
          }
        }
        for (int64_t n = 0; n < kStreams; ++n)
          for (int64_t c = 0; c < w; ++c) p[s0 + c] += static_cast<double>(q[n][c]);
      }
    }
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
  T acc[kChunk];
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
