// Deterministic column reductions (bias_grad, batch-norm statistics): rows are cut into a fixed
// number of row blocks that depends only on the shape, each block sums its rows in a fixed order
// (in double), and a second kernel adds the block partials per column in a fixed order. No atomics,
// so every result is bitwise the same run to run.
#pragma once
#include "cuda/check.cuh"

namespace fastmlp {
namespace cuda {

constexpr int kColTile = 32;              // columns per block: a warp reads 32 consecutive floats (128 B)
constexpr int kRowLanes = 8;              // rows summed side by side per block; blockDim = (32, 8)
constexpr int64_t kMinRowBlock = 64;      // rows per partial at least: 8 per thread
constexpr int64_t kMaxRowBlocks = 256;    // partials per column at most
// First-stage blocks aimed at: about two waves of 8 resident blocks on a 132-SM GPU, so each block
// sums many rows (loads in flight, few block starts) and the combine reads few partials. A shape
// constant, not the device's: the summation order depends on the shape alone.
constexpr int64_t kPartialBlocks = 2048;

// Rows per partial sum for a rows x cols reduction: a multiple of kRowLanes.
inline int64_t column_row_block(int64_t rows, int64_t cols) {
  int64_t want = ceil_div(kPartialBlocks, ceil_div(cols, kColTile));  // row blocks wanted
  want = want < 1 ? 1 : want > kMaxRowBlocks ? kMaxRowBlocks : want;
  const int64_t block = ceil_div(ceil_div(rows, want), kRowLanes) * kRowLanes;
  return block < kMinRowBlock ? kMinRowBlock : block;
}

template <int S>
struct Sums {
  double v[S];
};

// partial[(rb * S + s) * cols + c] = sum over the rows r of row block rb of term(r, c).v[s].
template <int S, class Term>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    column_partials_kernel(Term term, int64_t rows, int64_t cols, int64_t row_block, int64_t row_blocks,
                           double* partial) {
  __shared__ double lanes[S][kRowLanes][kColTile];
  const int lane = threadIdx.x, ry = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + lane;
  for (int64_t rb = blockIdx.y; rb < row_blocks; rb += gridDim.y) {
    double acc[S];
#pragma unroll
    for (int s = 0; s < S; ++s) acc[s] = 0.0;
    if (c < cols) {
      const int64_t r0 = rb * row_block;
      const int64_t r1 = rows < r0 + row_block ? rows : r0 + row_block;
      // Unrolled so that several rows' loads are in flight before their (ordered) adds.
#pragma unroll 8
      for (int64_t r = r0 + ry; r < r1; r += kRowLanes) {
        const Sums<S> t = term(r, c);
#pragma unroll
        for (int s = 0; s < S; ++s) acc[s] += t.v[s];
      }
    }
#pragma unroll
    for (int s = 0; s < S; ++s) lanes[s][ry][lane] = acc[s];
    __syncthreads();
    if (ry == 0 && c < cols) {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        double total = lanes[s][0][lane];
#pragma unroll
        for (int k = 1; k < kRowLanes; ++k) total += lanes[s][k][lane];
        partial[(rb * S + s) * cols + c] = total;
      }
    }
    __syncthreads();
  }
}

// finish(c, totals) per column. The row-block partials are summed as the rows were: lane ry adds
// blocks ry, ry + kRowLanes, ..., then the lanes are added in order (a fixed order, so deterministic).
template <int S, class Finish>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    column_combine_kernel(Finish finish, const double* partial, int64_t cols, int64_t row_blocks) {
  __shared__ double lanes[S][kRowLanes][kColTile];
  const int lane = threadIdx.x, ry = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + lane;
  double acc[S];
#pragma unroll
  for (int s = 0; s < S; ++s) acc[s] = 0.0;
  if (c < cols) {
#pragma unroll 4
    for (int64_t rb = ry; rb < row_blocks; rb += kRowLanes) {
#pragma unroll
      for (int s = 0; s < S; ++s) acc[s] += partial[(rb * S + s) * cols + c];
    }
  }
#pragma unroll
  for (int s = 0; s < S; ++s) lanes[s][ry][lane] = acc[s];
  __syncthreads();
  if (ry == 0 && c < cols) {
    Sums<S> total;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      double t = lanes[s][0][lane];
#pragma unroll
      for (int k = 1; k < kRowLanes; ++k) t += lanes[s][k][lane];
      total.v[s] = t;
    }
    finish(c, total);
  }
}

// Both stages, for rows >= 1 and cols >= 1; `partial` holds column_row_blocks(rows, cols) * S * cols doubles.
inline int64_t column_row_blocks(int64_t rows, int64_t cols) { return ceil_div(rows, column_row_block(rows, cols)); }

template <int S, class Term, class Finish>
void column_reduce(const Term& term, const Finish& finish, int64_t rows, int64_t cols, double* partial,
                   cudaStream_t stream, const char* name) {
  const int64_t row_block = column_row_block(rows, cols);
  const int64_t row_blocks = ceil_div(rows, row_block);
  const dim3 block(kColTile, kRowLanes);
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kColTile)),
                  static_cast<unsigned>(row_blocks < 65535 ? row_blocks : 65535));
  column_partials_kernel<S><<<grid, block, 0, stream>>>(term, rows, cols, row_block, row_blocks, partial);
  check_launch(name);
  column_combine_kernel<S><<<static_cast<unsigned>(ceil_div(cols, kColTile)), block, 0, stream>>>(finish, partial, cols,
                                                                                                 row_blocks);
  check_launch(name);
}

}  // namespace cuda
}  // namespace fastmlp
