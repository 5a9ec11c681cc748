// SGEMM with a fused epilogue: out = act(alpha * op(a) op(b) + beta * out + bias). The classic
// 128x128 design with 16 k per stage: 256 threads, an 8x8 register tile each, both operands staged
// k-major in double-buffered shared memory, the next stage on its way while this one is multiplied:
// row-contiguous operands by cp.async when both operands take float4 loads, the others (k-contiguous
// ones transposed on the way) through registers, whose loads are issued before the stage's FMAs and
// are not under a condition, which nvcc would merge with the stores' and sink below the FMAs (H100:
// 4096^3 from 0.77-0.83x to 0.89-0.96x cuBLAS). cp.async needs sm_80 (cmake/cuda.cmake checks).
// One loader serves all four transpose cases: an operand is either k-contiguous or row-contiguous
// in memory; float4 loads are used where the pointer and leading dimension allow (checked at run
// time), guarded scalar loads elsewhere, so any M, N, K is correct.
// Outputs with fewer 128x128 tiles than the GPU has multiprocessors (the MLP's shapes at small
// batches) take 64x64 tiles with 32 k per stage instead, and with long K are split over k
// (split-K): each split writes its partial sums to scratch, and the split of a tile that arrives
// last adds them in split order and applies the epilogue, in the same kernel, so the result is
// deterministic for a given shape (H100, in graph replay: the 784-512-512-10 step 121 -> 111-113 us
// against 128x128 tiles with a second reduction kernel, which FASTMLP_CUDA_GEMM_SMALL_TILES=0 still
// selects for comparison).
// A layer's neighbouring passes ride along (GemmFusion, api.h): the dropout after a ReLU layer in the
// epilogue, the relu_dropout_backward mask in the epilogue, and the bias gradient (the row sums of
// op(a), from the 64x64 kernel's loader registers). H100, the same step: 117.3 -> 105.8 us, 22 -> 10
// kernels with the loss and optimizer changes of the same commit series.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "cuda/check.cuh"
#include "ops/activation.h"
#include "ops/random.h"

namespace fastmlp {
namespace cuda {
namespace {

constexpr int kTileM = 128;                    // rows of out per block
constexpr int kTileN = 128;                    // columns of out per block
constexpr int kTileK = 16;                     // k per shared-memory stage (H100: 8 -> 16 took the 784-512-512-10
                                               // step 138.7 -> 131.6 us, 8192x1024x1024 TN 37.9 -> 41.2 TFLOP/s)
constexpr int kGemmThreads = 256;              // 16 x 16 threads, each an 8 x 8 register tile
constexpr int kSmemPad = 4;                    // transposed stores at most 2-way conflicts, float4 reads aligned
constexpr int kSmemLd = kTileM + kSmemPad;     // 2 stages x 16 x 132 x 4 B = 16.5 KiB per operand
constexpr int kTileGroup = 8;                  // row tiles walked together, so blocks in flight share B in L2
// Split-K aims at about one block per multiprocessor (H200 sweep, BK = 16: 132 blocks vs 256 took
// 512x784x256 TN 15.0 -> 13.5 us and 256x784x512 NN 15.9 -> 13.9 us, the step 120.9 -> 119.3 us).
constexpr int64_t kMinSplitK = 32;             // k per split at least: 2 stages (H200 sweeps: 64 -> 32 took
                                               // (256,512,512) 13.9 -> 11.1 us, the step 152 -> 139 us at
                                               // BK = 8; 48 and 64 were slower at BK = 16 too)
constexpr int64_t kMaxSplits = 32;             // and at most this many partials per output
constexpr int kSmallTile = 64;                 // outputs of fewer 128x128 tiles than multiprocessors: 64x64 tiles
                                               // (gemm_small_kernel), split-K finished in the kernel
constexpr int kSmallTileK = 32;                // its k per stage (H100, the 784-512-512-10 step in graph replay:
                                               // 16: 118.0 us, 32: 113.3, 64: 118.8)
constexpr int kSmallSmemBytes = 2 * 2 * kSmallTileK * (kSmallTile + kSmemPad) * 4;  // 34 KiB: no opt-in needed
static_assert(kSmallSmemBytes <= 48 * 1024, "beyond 48 KiB a kernel must opt in (cudaFuncSetAttribute)");

static_assert(kTileM == kTileN, "one loader layout serves both operands");
static_assert(kTileK % 8 == 0 && kTileM * kTileK == kGemmThreads * 4 * (kTileK / 8),
              "a stage is kTileK / 8 groups of four elements of each operand per thread");

// op(x) seen as `rows` x K: a gives op(a) (M x K), b gives op(b)^T (N x K). KContig: stored
// (rows, K) and element (row, k) is ptr[row * ld + k]; otherwise stored (K, rows) and it is
// ptr[k * ld + row].
struct Operand {
  const float* ptr;
  int64_t rows, ld;
};

struct Epilogue {
  float* out;          // (M, N)
  const float* bias;   // (N) or nullptr
  float alpha, beta;   // beta == 0: out is not read
  int act;             // ops::Act
  bool out_vec;        // out (and mask, when set) 16-byte aligned and N % 4 == 0
  const float* mask;   // (M, N) or nullptr: then relu_dropout_grad(result, mask, mask_scale) is stored
  float mask_scale;
  bool drop;           // dropout on the result: element e = gm * N + gn kept when word e % 4 of Philox block
  uint32_t drop_threshold;  // e / 4 of the stream (as dropout_kernel) is >= drop_threshold, then times
  float drop_scale;         // drop_scale, else 0
  RandomStream drop_rs;
};

// The dropout's Philox stream id (read from the device step counter when there is one).
__device__ __forceinline__ uint64_t drop_stream(const Epilogue& ep) {
  const RandomStream& rs = ep.drop_rs;
  return rs.step_ptr ? static_cast<uint64_t>(*rs.step_ptr) * rs.n_streams + rs.offset : rs.offset;
}

struct GemmParams {
  Operand a, b;
  Epilogue ep;
  int64_t M, N, K;
  int64_t tiles_m, tiles_n;
  int64_t k_chunk;   // k per split (when split, a multiple of kTileK, or of kSmallTileK on 64x64 tiles)
  float* partial;    // split-K: raw sums to partial[z][M][N] (128 tiles) or partial[z][tile][64 * 64]
                     // (64 tiles); nullptr: apply the epilogue
  unsigned* tickets;  // 64 tiles, split-K: one arrival counter per tile, zero before and after the launch
  float* a_sums;      // 64 tiles only, or nullptr: the row sums of op(a) (M), from the blocks of column tile 0
  double* sum_partial;  // a_sums with split-K: each split's row sums, sum_partial[z][M]
};

__device__ __forceinline__ float apply_act(int act, float x) {
  switch (act) {
    case static_cast<int>(Act::relu): return ops::activate<Act::relu>(x);
    case static_cast<int>(Act::sigmoid): return ops::activate<Act::sigmoid>(x);
    case static_cast<int>(Act::tanh): return ops::activate<Act::tanh>(x);
    default: return x;
  }
}

// Stores out[gm, gn .. gn+3] (the part inside N) = act(alpha * v + beta * out + bias), then with
// `drop` dropout's arithmetic on that value (stream `drop_stream`), then with a mask
// relu_dropout_backward's, each bitwise its separate kernel's. Not inlined: 16 calls per thread
// instead of 16 inlined copies of every activation keep the kernels small (and their compile
// fast); it runs once per output, after the k loop.
__device__ __noinline__ void store_epilogue(float* out, const float* bias, float alpha, float beta, int act,
                                            bool out_vec, const float* mask, float mask_scale, bool drop,
                                            uint32_t drop_threshold, float drop_scale, uint64_t drop_seed,
                                            uint64_t drop_stream, int64_t N, int64_t gm, int64_t gn, float v0,
                                            float v1, float v2, float v3) {
  const float v[4] = {v0, v1, v2, v3};
  float* o = out + gm * N + gn;
  const float* m = mask ? mask + gm * N + gn : nullptr;
  const int64_t e = gm * N + gn;  // the flat index of the first element
  if (out_vec && gn + 3 < N) {
    float old[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (beta != 0.0f) {
      const float4 t = *reinterpret_cast<const float4*>(o);
      old[0] = t.x;
      old[1] = t.y;
      old[2] = t.z;
      old[3] = t.w;
    }
    float r[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float x = alpha * v[j];
      if (beta != 0.0f) x += beta * old[j];
      if (bias) x += bias[gn + j];
      r[j] = apply_act(act, x);
    }
    if (drop) {  // N % 4 == 0 and gn % 4 == 0: the four elements are Philox block e / 4
      const Philox4 w = philox4x32_10(drop_seed, drop_stream, static_cast<uint64_t>(e / 4));
#pragma unroll
      for (int j = 0; j < 4; ++j) r[j] = ops::keep(w.w[j], drop_threshold) ? r[j] * drop_scale : 0.0f;
    }
    if (m) {
      const float4 t = __ldg(reinterpret_cast<const float4*>(m));
      r[0] = ops::relu_dropout_grad(r[0], t.x, mask_scale);
      r[1] = ops::relu_dropout_grad(r[1], t.y, mask_scale);
      r[2] = ops::relu_dropout_grad(r[2], t.z, mask_scale);
      r[3] = ops::relu_dropout_grad(r[3], t.w, mask_scale);
    }
    *reinterpret_cast<float4*>(o) = make_float4(r[0], r[1], r[2], r[3]);
  } else {
    for (int j = 0; j < 4 && gn + j < N; ++j) {
      float x = alpha * v[j];
      if (beta != 0.0f) x += beta * o[j];
      if (bias) x += bias[gn + j];
      x = apply_act(act, x);
      if (drop) {
        const Philox4 w = philox4x32_10(drop_seed, drop_stream, static_cast<uint64_t>((e + j) / 4));
        x = ops::keep(w.w[(e + j) % 4], drop_threshold) ? x * drop_scale : 0.0f;
      }
      o[j] = m ? ops::relu_dropout_grad(x, __ldg(m + j), mask_scale) : x;
    }
  }
}

// cp.async (sm_80+): 16 bytes global -> shared, zero-filled when !in; a commit closes a group,
// and wait_all waits for this thread's groups (the block's: a barrier after it).
__device__ __forceinline__ void copy_async16(float* dst, const float* src, bool in) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(in ? 16 : 0) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Walks this thread's elements of each stage of one operand: rows [row0, row0 + Rows) x
// k [k0, k0 + BK), zero outside rows x [k_begin, k_end). A stage is Rows * BK / 1024 groups of four
// per thread (kLoads); everything but a pointer bump and a counter is computed once, which keeps the
// kernel within 128 registers. KContig: group j is row t / (BK / 4) + j * kRowStep, k (t % (BK / 4)) * 4;
// otherwise row (t % (Rows / 4)) * 4, k t / (Rows / 4) + j * kKStep. Vec: one float4 per group (pointer
// 16-byte aligned and the contiguous extent % 4 == 0, so a group lies wholly inside or wholly outside).
// load() takes a stage into registers (store_stage then writes it to shared memory); copy() takes it
// straight to shared memory by cp.async, for a row-contiguous operand with Vec.
// (A KContig layout of row t / 2, k (t % 2) * 4 + 8 j, whose transposed stores are conflict-free
// where these are 2-way, measured the same or slower on the H100: 4096^3 NT 39.6 -> 40.1, NN
// 40.8 -> 39.9 TFLOP/s, the step 129.0 -> 130.6 us.)
template <int Rows, int BK, bool KContig, bool Vec>
struct StageLoader {
  static constexpr int kLoads = Rows * BK / (kGemmThreads * 4);
  static constexpr int kRowStep = kGemmThreads / (BK / 4);  // KContig: rows between a thread's groups
  static constexpr int kKStep = kGemmThreads / (Rows / 4);  // otherwise: k between a thread's groups
  static_assert(kLoads >= 1 && Rows * BK == kLoads * kGemmThreads * 4, "a stage is whole groups of four per thread");
  static_assert((Rows / 4) * kKStep == kGemmThreads, "the rows of a k-major stage are whole groups of four");
  static_assert(kRowStep * (BK / 4) == kGemmThreads, "the k of a row-major stage are whole groups of four");
  const float* src;   // this thread's first element at the current stage
  int k_rel;          // this thread's k at the current stage minus k_end (K < 2^31 - 32 is checked on the host)
  unsigned row_mask;  // KContig: bit j: group j's row is inside; else bit j: row + j is inside

  __device__ __forceinline__ StageLoader(const Operand& op, int64_t row0, int64_t k_begin, int64_t k_end) {
    const int t = threadIdx.x;
    if constexpr (KContig) {
      const int64_t gr = row0 + t / (BK / 4), gk = k_begin + (t % (BK / 4)) * 4;
      src = op.ptr + gr * op.ld + gk;
      k_rel = static_cast<int>(gk - k_end);
      row_mask = 0;
      for (int j = 0; j < kLoads; ++j) row_mask |= (gr + j * kRowStep < op.rows ? 1u : 0u) << j;
    } else {
      const int64_t gk = k_begin + t / (Rows / 4), gr = row0 + (t % (Rows / 4)) * 4;
      src = op.ptr + gk * op.ld + gr;
      k_rel = static_cast<int>(gk - k_end);
      row_mask = 0;
      for (int j = 0; j < 4; ++j) row_mask |= (gr + j < op.rows ? 1u : 0u) << j;
    }
  }

  // The current stage into r, then on to the next; ld is the operand's (a kernel parameter, so it
  // costs no register).
  __device__ __forceinline__ void load(float (&r)[kLoads][4], int64_t ld) {
#pragma unroll
    for (int g = 0; g < kLoads; ++g) {
      const float* p = src + (KContig ? g * kRowStep * ld : g * kKStep * ld);
      const int kr = KContig ? k_rel : k_rel + g * kKStep;
      const bool row_in = KContig ? ((row_mask >> g) & 1u) : true;
      if constexpr (Vec) {
        if (row_in && (KContig || (row_mask & 1u)) && kr < 0) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(p));
          r[g][0] = v.x;
          r[g][1] = v.y;
          r[g][2] = v.z;
          r[g][3] = v.w;
        } else {
          r[g][0] = r[g][1] = r[g][2] = r[g][3] = 0.0f;
        }
      } else if constexpr (KContig) {
#pragma unroll
        for (int j = 0; j < 4; ++j) r[g][j] = (row_in && kr + j < 0) ? __ldg(p + j) : 0.0f;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) r[g][j] = (((row_mask >> j) & 1u) && kr < 0) ? __ldg(p + j) : 0.0f;
      }
    }
    src += KContig ? static_cast<int64_t>(BK) : BK * ld;
    k_rel += BK;
  }

  // The current stage straight into the k-major stage tile s[k][row] by cp.async (no registers,
  // and the copies cannot sink below the FMAs they should overlap), then on to the next stage: for
  // a row-contiguous operand with float4 loads, one 16-byte copy per group. Outside the operand,
  // zeros (src-size 0; the source is then the operand's base, never read).
  __device__ __forceinline__ void copy(float (*s)[Rows + kSmemPad], const float* base, int64_t ld) {
    static_assert(!KContig && Vec, "cp.async copies whole row-contiguous groups of four");
    const int t = threadIdx.x;
#pragma unroll
    for (int g = 0; g < kLoads; ++g) {
      const bool in = (row_mask & 1u) && k_rel + g * kKStep < 0;
      copy_async16(&s[t / (Rows / 4) + g * kKStep][(t % (Rows / 4)) * 4], in ? src + g * kKStep * ld : base, in);
    }
    src += BK * ld;
    k_rel += BK;
  }
};

// Writes the registers of StageLoader::load into the k-major stage tile s[k][row].
template <int Rows, int BK, bool KContig>
__device__ __forceinline__ void store_stage(float (*s)[Rows + kSmemPad],
                                            const float (&r)[StageLoader<Rows, BK, KContig, true>::kLoads][4]) {
  using Loader = StageLoader<Rows, BK, KContig, true>;
  const int t = threadIdx.x;
#pragma unroll
  for (int g = 0; g < Loader::kLoads; ++g) {
    if constexpr (KContig) {
      const int row = t / (BK / 4) + g * Loader::kRowStep, kk = (t % (BK / 4)) * 4;
#pragma unroll
      for (int j = 0; j < 4; ++j) s[kk + j][row] = r[g][j];
    } else {
      const int kk = t / (Rows / 4) + g * Loader::kKStep, row = (t % (Rows / 4)) * 4;
      *reinterpret_cast<float4*>(&s[kk][row]) = make_float4(r[g][0], r[g][1], r[g][2], r[g][3]);
    }
  }
}

// One operand's stage: by cp.async into the tile (Async), else into the registers r, which
// store_if_loaded then writes to the tile.
template <bool Async, class Loader, class Tile>
__device__ __forceinline__ void load_or_copy(Loader& loader, Tile tile, float (&r)[Loader::kLoads][4], const Operand& op) {
  if constexpr (Async) loader.copy(tile, op.ptr, op.ld);
  else loader.load(r, op.ld);
}
template <bool Async, int Rows, int BK, bool KContig>
__device__ __forceinline__ void store_if_loaded(float (*s)[Rows + kSmemPad],
                                                const float (&r)[StageLoader<Rows, BK, KContig, true>::kLoads][4]) {
  if constexpr (!Async) store_stage<Rows, BK, KContig>(s, r);
}

// a_sums: this thread's share of the row sums of op(a) over the block's k range, added in double
// from the registers of StageLoader::load (zeros outside the operand), so they cost a few adds per
// stage and no extra loads. Only for an op(a) stored (K, rows), as a_sums needs (trans_a): thread
// t loads rows (t % (Rows / 4)) * 4 + j, j < 4, at kLoads values of k; the kSlots threads that
// share a row are told apart by t / (Rows / 4).
template <int Rows, int BK>
struct RowSums {
  using Loader = StageLoader<Rows, BK, false, true>;
  static constexpr int kSlots = Loader::kKStep;
  double s[4];

  __device__ __forceinline__ RowSums() {
#pragma unroll
    for (int j = 0; j < 4; ++j) s[j] = 0.0;
  }
  __device__ __forceinline__ void add(const float (&r)[Loader::kLoads][4]) {
#pragma unroll
    for (int g = 0; g < Loader::kLoads; ++g)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += static_cast<double>(r[g][j]);
  }
  // The block's row sums, slots added in order: threads t < Rows return row t's (others 0). `red`
  // holds kSlots * Rows doubles of shared memory nobody reads any more; the whole block calls it.
  __device__ __forceinline__ double block_total(double* red) const {
    const int t = threadIdx.x, slot = t / (Rows / 4), row = (t % (Rows / 4)) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) red[slot * Rows + row + j] = s[j];
    __syncthreads();
    double total = 0.0;
    if (t < Rows)
      for (int q = 0; q < kSlots; ++q) total += red[q * Rows + t];
    return total;
  }
};

// This block's split of k, [k_begin, k_end) (blockIdx.z of k_chunk each), and its stages of bk.
__device__ __forceinline__ int split_stages(const GemmParams& p, int bk, int64_t& k_begin, int64_t& k_end) {
  k_begin = static_cast<int64_t>(blockIdx.z) * p.k_chunk;
  k_end = p.K < k_begin + p.k_chunk ? p.K : k_begin + p.k_chunk;
  return k_end > k_begin ? static_cast<int>(ceil_div(k_end - k_begin, bk)) : 0;
}

// The register tile of thread (ty, tx): rows ty*4 + {0..3} and 64 + ty*4 + {0..3} of the block
// tile, columns likewise with tx, so each k reads two float4 of each operand from shared memory.
__device__ __forceinline__ int tile_offset(int half_index, int t) { return (half_index < 4 ? 0 : 64) + t * 4 + (half_index & 3); }

// Two blocks per multiprocessor: at most 128 registers, a few bytes spilled. (One block, up to 255
// registers: on the H200 at BK = 16, 4096^3 NT 39.5 -> 32.4 and 8192x1024x1024 TN 41.0 -> 33.1
// TFLOP/s, so it was dropped.)
template <bool AKContig, bool BKContig, bool Vec>
__global__ void __launch_bounds__(kGemmThreads, 2) gemm_kernel(const GemmParams p) {
  constexpr int BK = kTileK;
  __shared__ __align__(16) float a_tile[2][BK][kSmemLd];
  __shared__ __align__(16) float b_tile[2][BK][kSmemLd];

  // Grouped tile order: kTileGroup row tiles share each column tile while they are in flight.
  const int64_t pid = blockIdx.x;
  const int64_t group_width = kTileGroup * p.tiles_n;
  const int64_t first_m = (pid / group_width) * kTileGroup;
  const int64_t group_rows = p.tiles_m - first_m < kTileGroup ? p.tiles_m - first_m : kTileGroup;
  const int64_t m0 = (first_m + (pid % group_width) % group_rows) * kTileM;
  const int64_t n0 = ((pid % group_width) / group_rows) * kTileN;

  int64_t k_begin, k_end;
  const int stages = split_stages(p, BK, k_begin, k_end);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  StageLoader<kTileM, BK, AKContig, Vec> a_loader(p.a, m0, k_begin, k_end);
  StageLoader<kTileN, BK, BKContig, Vec> b_loader(p.b, n0, k_begin, k_end);
  // Row-contiguous operands with float4 loads go global -> shared by cp.async; the others through
  // registers, transposed on the way into the k-major tile (H100, 4096^3: A^T B, both by cp.async,
  // 43.8 -> 47.2 TFLOP/s against registers; A B^T, both k-contiguous, 46.3 through registers
  // against 38.8 with 4-byte cp.async copies).
  constexpr bool a_async = !AKContig && Vec, b_async = !BKContig && Vec;
  float ra[BK / 8][4], rb[BK / 8][4];
  if (stages > 0) {
    load_or_copy<a_async>(a_loader, a_tile[0], ra, p.a);
    load_or_copy<b_async>(b_loader, b_tile[0], rb, p.b);
    if constexpr (a_async || b_async) copy_async_commit();
    store_if_loaded<a_async, kTileM, BK, AKContig>(a_tile[0], ra);
    store_if_loaded<b_async, kTileN, BK, BKContig>(b_tile[0], rb);
  }
  for (int s = 0; s < stages; ++s) {
    const int cur = s & 1;
    const bool more = s + 1 < stages;
    // Stage s is in shared memory (this thread's copies, then everyone's stores and copies), and
    // every thread is done with stage s - 1's buffer, which stage s + 1 now fills.
    if constexpr (a_async || b_async) copy_async_wait_all();
    __syncthreads();
    // The next stage's loads and copies, issued before this stage's FMAs so that they overlap them.
    // The register loads are unconditional: past the last stage the loader's k guard makes them
    // zeros without an access (under `if (more)`, nvcc sank them below the FMAs into the stores'
    // `if (more)`, and every stage waited out a global load: 4096^3 A B^T 40.0 -> 46.3 TFLOP/s).
    if constexpr (a_async || b_async) {
      if (more) {
        if constexpr (a_async) a_loader.copy(a_tile[cur ^ 1], p.a.ptr, p.a.ld);
        if constexpr (b_async) b_loader.copy(b_tile[cur ^ 1], p.b.ptr, p.b.ld);
        copy_async_commit();
      }
    }
    if constexpr (!a_async) a_loader.load(ra, p.a.ld);
    if constexpr (!b_async) b_loader.load(rb, p.b.ld);
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float4 a_lo = *reinterpret_cast<const float4*>(&a_tile[cur][k][ty * 4]);
      const float4 a_hi = *reinterpret_cast<const float4*>(&a_tile[cur][k][64 + ty * 4]);
      const float4 b_lo = *reinterpret_cast<const float4*>(&b_tile[cur][k][tx * 4]);
      const float4 b_hi = *reinterpret_cast<const float4*>(&b_tile[cur][k][64 + tx * 4]);
      const float av[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
      const float bv[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (more) {  // the other buffer: everyone was done with it at this stage's barrier
      store_if_loaded<a_async, kTileM, BK, AKContig>(a_tile[cur ^ 1], ra);
      store_if_loaded<b_async, kTileN, BK, BKContig>(b_tile[cur ^ 1], rb);
    }
  }

  const int64_t M = p.M, N = p.N;
  const uint64_t stream_id = p.ep.drop && !p.partial ? drop_stream(p.ep) : 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t gm = m0 + tile_offset(i, ty);
    if (gm >= M) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t gn = n0 + half * 64 + tx * 4;
      if (gn >= N) continue;
      const float v[4] = {acc[i][half * 4], acc[i][half * 4 + 1], acc[i][half * 4 + 2], acc[i][half * 4 + 3]};
      if (p.partial) {
        float* dst = p.partial + static_cast<int64_t>(blockIdx.z) * M * N + gm * N + gn;
        if ((N & 3) == 0) {  // scratch is 256-byte aligned: row starts are 16-byte aligned when N % 4 == 0
          *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (gn + j < N) dst[j] = v[j];
        }
      } else {
        store_epilogue(p.ep.out, p.ep.bias, p.ep.alpha, p.ep.beta, p.ep.act, p.ep.out_vec, p.ep.mask, p.ep.mask_scale,
                       p.ep.drop, p.ep.drop_threshold, p.ep.drop_scale, p.ep.drop_rs.seed, stream_id, N, gm, gn, v[0],
                       v[1], v[2], v[3]);
      }
    }
  }
}

// The small-output kernel: 64x64 tiles, 256 threads with a 4x4 register tile each (rows ty * 4 + i,
// columns tx * 4 + j), so that outputs of a few 128x128 tiles still spread over the whole GPU with
// few k splits. Split-K is finished inside the kernel: every split writes its raw sums to
// partial[z][tile], then takes a ticket for its tile; the split that arrives last adds the partials
// in z order (its own from registers: the same value it stored) and applies the epilogue, so the
// result does not depend on which split finishes last, and no second kernel or partial pass over
// [M][N] is needed. The last split also puts the ticket back to zero for the next launch (graph
// replays included): kernels on one stream never overlap, and every stream has tickets of its own.
template <bool AKContig, bool BKContig, bool Vec>
__global__ void __launch_bounds__(kGemmThreads, 2) gemm_small_kernel(const GemmParams p) {
  constexpr int BK = kSmallTileK, T = kSmallTile;
  // Dynamic shared memory (kSmallSmemBytes: two stages of each operand), as in the form measured on
  // the H100, whose sweep also tried 64 k per stage (past the 48 KiB of static shared memory).
  extern __shared__ float4 small_smem[];
  auto a_tile = reinterpret_cast<float (*)[BK][T + kSmemPad]>(small_smem);
  auto b_tile = a_tile + 2;
  __shared__ bool last_split;

  const int64_t tile = blockIdx.x;
  const int64_t m0 = (tile / p.tiles_n) * T, n0 = (tile % p.tiles_n) * T;
  int64_t k_begin, k_end;
  const int stages = split_stages(p, BK, k_begin, k_end);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  using ALoader = StageLoader<T, BK, AKContig, Vec>;
  using BLoader = StageLoader<T, BK, BKContig, Vec>;
  ALoader a_loader(p.a, m0, k_begin, k_end);
  BLoader b_loader(p.b, n0, k_begin, k_end);
  float ra[ALoader::kLoads][4], rb[BLoader::kLoads][4];
  // The row sums of op(a) (a layer's bias gradient) come from the blocks of column tile 0, which
  // load every row of op(a) over their k range anyway.
  const bool sums = !AKContig && p.a_sums != nullptr && n0 == 0;  // a_sums comes with trans_a only
  RowSums<T, BK> row_sums;
  if (stages > 0) {
    a_loader.load(ra, p.a.ld);
    b_loader.load(rb, p.b.ld);
    if constexpr (!AKContig) {
      if (sums) row_sums.add(ra);
    }
    store_stage<T, BK, AKContig>(a_tile[0], ra);
    store_stage<T, BK, BKContig>(b_tile[0], rb);
  }
  // Both operands through registers, as in gemm_kernel without cp.async (H100, cp.async for the
  // row-contiguous ones here: 512x784x256 A^T B 11.5 -> 12.1 us, 256x784x512 A B 14.1 -> 15.9).
  for (int s = 0; s < stages; ++s) {
    const int cur = s & 1;
    const bool more = s + 1 < stages;
    __syncthreads();
    a_loader.load(ra, p.a.ld);  // unconditional, as in gemm_kernel, so that they overlap the FMAs
    b_loader.load(rb, p.b.ld);
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float4 a4 = *reinterpret_cast<const float4*>(&a_tile[cur][k][ty * 4]);
      const float4 b4 = *reinterpret_cast<const float4*>(&b_tile[cur][k][tx * 4]);
      const float av[4] = {a4.x, a4.y, a4.z, a4.w};
      const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (more) {
      if constexpr (!AKContig) {
        if (sums) row_sums.add(ra);  // here, not beside the loads: it would wait for them
      }
      store_stage<T, BK, AKContig>(a_tile[cur ^ 1], ra);
      store_stage<T, BK, BKContig>(b_tile[cur ^ 1], rb);
    }
  }
  if (sums) __syncthreads();  // the row sums reuse the tiles: only after everyone's last stage

  // The block's row sums (threads t < T: row m0 + t), through shared memory the k loop is done
  // with: stored when the block has the whole of k, else kept in sum_partial[z] for the last split.
  double row_total = 0.0;
  if (sums) {
    row_total = row_sums.block_total(reinterpret_cast<double*>(small_smem));
    if (threadIdx.x < T && m0 + threadIdx.x < p.M) {
      if (!p.partial) p.a_sums[m0 + threadIdx.x] = static_cast<float>(row_total);
      else p.sum_partial[blockIdx.z * p.M + m0 + threadIdx.x] = row_total;
    }
  }

  if (p.partial) {
    const int64_t splits = gridDim.z, tiles = gridDim.x, my_z = blockIdx.z;
    // This thread's float4 of row ty * 4 + i of the tile is element i * 16 of its slot (T / 4 = 16
    // float4 per row): a warp stores two rows of 256 contiguous bytes.
    float4* const slot = reinterpret_cast<float4*>(p.partial) + (my_z * tiles + tile) * (T * T / 4) +
                   ty * 4 * (T / 4) + tx;
#pragma unroll
    for (int i = 0; i < 4; ++i) slot[i * (T / 4)] = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    __threadfence();  // this split's partial is visible device-wide before its ticket
    __syncthreads();
    if (threadIdx.x == 0) {
      // The last arrival wraps the counter back to zero in the same atomic (atomicInc: old >=
      // splits - 1 ? 0 : old + 1), ready for the next launch. Counters belong to a stream: a graph
      // replayed on another stream while eager GEMMs run on its capture stream would share them,
      // as it would share scratch (fastmlp.cuda.Graph.replay says so).
      const unsigned arrived = atomicInc(&p.tickets[tile], static_cast<unsigned>(splits - 1));
      last_split = arrived == static_cast<unsigned>(splits - 1);
    }
    __syncthreads();
    if (!last_split) return;
    __threadfence();
    if (sums && threadIdx.x < T && m0 + threadIdx.x < p.M) {  // every split's row sums, in z order
      double total = 0.0;
      for (int64_t z = 0; z < splits; ++z)
        total += z == my_z ? row_total : __ldcg(p.sum_partial + z * p.M + m0 + threadIdx.x);
      p.a_sums[m0 + threadIdx.x] = static_cast<float>(total);
    }
    // kBatch partials in flight per thread before any is added (16 float4 loads from L2), added
    // in z order; the split's own partial comes from registers (the value it stored).
    constexpr int kBatch = 4;
    const float4* mine = slot;
    float4 sum[4];
    for (int64_t z0 = 0; z0 < splits; z0 += kBatch) {
      float4 v[kBatch][4];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t z = z0 + b;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (z == my_z || z >= splits) v[b][i] = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
          else v[b][i] = __ldcg(mine + (z - my_z) * tiles * (T * T / 4) + i * (T / 4));  // other SMs wrote it
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (z0 + b >= splits) break;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (z0 + b == 0) {
            sum[i] = v[b][i];
          } else {
            sum[i].x += v[b][i].x;
            sum[i].y += v[b][i].y;
            sum[i].z += v[b][i].z;
            sum[i].w += v[b][i].w;
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc[i][0] = sum[i].x;
      acc[i][1] = sum[i].y;
      acc[i][2] = sum[i].z;
      acc[i][3] = sum[i].w;
    }
  }

  const int64_t M = p.M, N = p.N, gn = n0 + tx * 4;
  if (gn >= N) return;
  const uint64_t stream_id = p.ep.drop ? drop_stream(p.ep) : 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty * 4 + i;
    if (gm < M)
      store_epilogue(p.ep.out, p.ep.bias, p.ep.alpha, p.ep.beta, p.ep.act, p.ep.out_vec, p.ep.mask, p.ep.mask_scale,
                     p.ep.drop, p.ep.drop_threshold, p.ep.drop_scale, p.ep.drop_rs.seed, stream_id, N, gm, gn,
                     acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
  }
}

// out = epilogue(sum over z of partial[z]), z in order.
__global__ void split_k_reduce_kernel(const float* partial, int64_t splits, Epilogue ep, int64_t M, int64_t N) {
  const int64_t total = M * N;
  const uint64_t stream = ep.drop ? drop_stream(ep) : 0;
  for (int64_t idx = grid_start(); idx < total; idx += grid_stride()) {
    float s = partial[idx];
    for (int64_t z = 1; z < splits; ++z) s += partial[z * total + idx];
    const int64_t gn = idx % N;
    float x = ep.alpha * s;
    if (ep.beta != 0.0f) x += ep.beta * ep.out[idx];
    if (ep.bias) x += ep.bias[gn];
    x = apply_act(ep.act, x);
    if (ep.drop) {
      const Philox4 w = philox4x32_10(ep.drop_rs.seed, stream, static_cast<uint64_t>(idx / 4));
      x = ops::keep(w.w[idx % 4], ep.drop_threshold) ? x * ep.drop_scale : 0.0f;
    }
    ep.out[idx] = ep.mask ? ops::relu_dropout_grad(x, ep.mask[idx], ep.mask_scale) : x;
  }
}

// The same over groups of four columns (N % 4 == 0 and out 16-byte aligned): float4 loads of each
// partial, the same sums in the same order, so the result is bitwise the scalar kernel's.
__global__ void split_k_reduce_vec_kernel(const float4* partial, int64_t splits, Epilogue ep, int64_t M, int64_t N) {
  const int64_t total = M * N / 4;
  const uint64_t stream = ep.drop ? drop_stream(ep) : 0;
  for (int64_t idx = grid_start(); idx < total; idx += grid_stride()) {
    float4 s = partial[idx];
    for (int64_t z = 1; z < splits; ++z) {
      const float4 t = partial[z * total + idx];
      s.x += t.x;
      s.y += t.y;
      s.z += t.z;
      s.w += t.w;
    }
    const int64_t gn = (idx * 4) % N;
    float4 old = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ep.beta != 0.0f) old = reinterpret_cast<const float4*>(ep.out)[idx];
    const float v[4] = {s.x, s.y, s.z, s.w}, o[4] = {old.x, old.y, old.z, old.w};
    float r[4];
    Philox4 w{};
    if (ep.drop) w = philox4x32_10(ep.drop_rs.seed, stream, static_cast<uint64_t>(idx));  // elements 4 idx ..
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float x = ep.alpha * v[j];
      if (ep.beta != 0.0f) x += ep.beta * o[j];
      if (ep.bias) x += ep.bias[gn + j];
      r[j] = apply_act(ep.act, x);
      if (ep.drop) r[j] = ops::keep(w.w[j], ep.drop_threshold) ? r[j] * ep.drop_scale : 0.0f;
      if (ep.mask) r[j] = ops::relu_dropout_grad(r[j], ep.mask[idx * 4 + j], ep.mask_scale);
    }
    reinterpret_cast<float4*>(ep.out)[idx] = make_float4(r[0], r[1], r[2], r[3]);
  }
}

// The split-K policy: about one block per multiprocessor and kMinSplitK, or for tuning sweeps the
// environment's FASTMLP_CUDA_GEMM_SPLIT_BLOCKS / FASTMLP_CUDA_GEMM_MIN_SPLIT_K (read once; a
// multiple of kTileK and at least kTileK for the latter, rounded down to one; a value out of range
// is reported on stderr and ignored), and FASTMLP_CUDA_GEMM_SMALL_TILES=0, which keeps every shape
// on 128x128 tiles (split-K then reduced by a second kernel). Either way the result is
// deterministic for a given shape on a given device.
struct SplitPolicy {
  int64_t target_blocks;  // 0: the device's multiprocessor count
  int64_t min_split_k;
  bool small_tiles;
};

int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (end && *end == 0 && x >= lo && x <= hi) return x;
  std::fprintf(stderr, "fastmlp: ignoring %s=%s (an integer in [%lld, %lld] is expected); using %lld\n", name, v,
               static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(fallback));
  return fallback;
}

const SplitPolicy& split_policy() {
  static const SplitPolicy policy{
      env_int("FASTMLP_CUDA_GEMM_SPLIT_BLOCKS", 0, 1, 1 << 16),
      env_int("FASTMLP_CUDA_GEMM_MIN_SPLIT_K", kMinSplitK, kTileK, 1 << 20) / kTileK * kTileK,
      env_int("FASTMLP_CUDA_GEMM_SMALL_TILES", 1, 0, 1) == 1};
  return policy;
}

// Splits of K for `tiles` output tiles: enough to give about `target_blocks` blocks, each at least
// min_split_k deep, at most kMaxSplits; k_chunk (a multiple of granule) receives k per split. Every
// split is non-empty. `round_up`: aim at no fewer blocks than target (else no more).
int64_t choose_splits(int64_t tiles, int64_t K, int64_t target_blocks, int64_t min_split_k, bool round_up,
                      int64_t granule, int64_t* k_chunk) {
  *k_chunk = K;
  if (tiles * 2 > target_blocks || K < 2 * min_split_k) return 1;
  int64_t splits = round_up ? ceil_div(target_blocks, tiles) : target_blocks / tiles;
  const int64_t by_k = K / min_split_k;
  splits = splits < by_k ? splits : by_k;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  *k_chunk = ceil_div(ceil_div(K, splits), granule) * granule;
  return ceil_div(K, *k_chunk);
}

template <bool Small, bool AK, bool BK, bool Vec>
void launch_gemm(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  if constexpr (Small) gemm_small_kernel<AK, BK, Vec><<<grid, kGemmThreads, kSmallSmemBytes, stream>>>(p);
  else gemm_kernel<AK, BK, Vec><<<grid, kGemmThreads, 0, stream>>>(p);
}

// Turns the tile size and the three layout flags into template arguments.
template <bool... Fixed>
void dispatch_gemm(const GemmParams& p, dim3 grid, cudaStream_t stream, bool f0, bool f1, bool f2, bool f3) {
  constexpr size_t kFixed = sizeof...(Fixed);
  if constexpr (kFixed == 4) {
    launch_gemm<Fixed...>(p, grid, stream);
  } else {
    const bool flags[4] = {f0, f1, f2, f3};
    if (flags[kFixed]) dispatch_gemm<Fixed..., true>(p, grid, stream, f0, f1, f2, f3);
    else dispatch_gemm<Fixed..., false>(p, grid, stream, f0, f1, f2, f3);
  }
}

}  // namespace

void gemm(const float* a, const float* b, float* out, const float* bias, int64_t M, int64_t N, int64_t K,
          bool trans_a, bool trans_b, float alpha, float beta, Act act, Stream stream, const GemmFusion& fusion) {
  if (fusion.a_sums && !trans_a) throw std::invalid_argument("gemm: a_sums (the column sums of a) needs trans_a");
  if (M == 0) return;
  if (N == 0) {  // no product, but a's column sums are still wanted
    if (fusion.a_sums) bias_grad(a, fusion.a_sums, K, M, stream);
    return;
  }
  GemmParams p;
  // op(a) (M x K): k-contiguous unless trans_a (then stored (K, M)).
  p.a = Operand{a, M, trans_a ? M : K};
  // op(b)^T (N x K): k-contiguous when trans_b (stored (N, K)), else stored (K, N).
  p.b = Operand{b, N, trans_b ? K : N};
  p.ep = Epilogue{out,
                  bias,
                  alpha,
                  beta,
                  static_cast<int>(act),
                  aligned16(out) && N % 4 == 0 && (!fusion.relu_mask || aligned16(fusion.relu_mask)),
                  fusion.relu_mask,
                  ops::dropout_scale<float>(fusion.mask_p),
                  fusion.dropout,
                  ops::drop_threshold(fusion.drop_p),
                  static_cast<float>(1.0 / (1.0 - fusion.drop_p)),  // as dropout()
                  fusion.drop_rs};
  p.M = M;
  p.N = N;
  p.K = K;
  p.partial = nullptr;
  p.tickets = nullptr;
  p.a_sums = nullptr;
  p.sum_partial = nullptr;

  // Outputs with fewer 128x128 tiles than blocks aimed at (one per multiprocessor) take 64x64
  // tiles, and at most that many blocks; the others never split.
  const SplitPolicy& policy = split_policy();
  const int64_t target_blocks = policy.target_blocks > 0 ? policy.target_blocks : multiprocessors();
  const bool small = policy.small_tiles && ceil_div(M, kTileM) * ceil_div(N, kTileN) < target_blocks;
  const int64_t tile = small ? kSmallTile : kTileM;
  p.tiles_m = ceil_div(M, tile);
  p.tiles_n = ceil_div(N, tile);
  const int64_t tiles = p.tiles_m * p.tiles_n;
  int64_t splits = choose_splits(tiles, K, target_blocks, policy.min_split_k, !small, small ? kSmallTileK : kTileK,
                                 &p.k_chunk);
  // The last two counters are the loss's and the optimizers' (kernels on one stream never overlap
  // and each leaves its counters at zero, but the layout stays simple).
  if (small && tiles > kTickets - 2) {  // only reachable through FASTMLP_CUDA_GEMM_SPLIT_BLOCKS
    splits = 1;
    p.k_chunk = K;
  }
  if (small) p.a_sums = fusion.a_sums;  // else bias_grad after the product
  if (splits > 1) {
    const size_t partial_floats = static_cast<size_t>(splits * (small ? tiles * kSmallTile * kSmallTile : M * N));
    // The row sums' partials (double, splits x M) follow the tiles' at a 256-byte boundary.
    const size_t sums_at = (sizeof(float) * partial_floats + 255) / 256 * 256;
    const size_t sums_bytes = p.a_sums ? sizeof(double) * static_cast<size_t>(splits * M) : 0;
    char* base = static_cast<char*>(scratch(sums_at + sums_bytes, stream, "gemm (split-K partial sums)"));
    p.partial = reinterpret_cast<float*>(base);
    if (p.a_sums) p.sum_partial = reinterpret_cast<double*>(base + sums_at);
    if (small) p.tickets = tickets(stream, "gemm (split-K)");
  }

  // float4 loads: the contiguous extent is K for a k-contiguous operand, its rows otherwise.
  const bool a_kcontig = !trans_a, b_kcontig = trans_b;
  const bool a_vec = aligned16(a) && (a_kcontig ? K : M) % 4 == 0;
  const bool b_vec = aligned16(b) && (b_kcontig ? K : N) % 4 == 0;
  if (tiles > 0x7fffffffLL) throw std::invalid_argument("gemm: the output has too many tiles for one grid");
  if (K > 0x7fffffffLL - 32) throw std::invalid_argument("gemm: K must be below 2^31 - 32 on the GPU");
  const dim3 grid(static_cast<unsigned>(tiles), 1, static_cast<unsigned>(splits));
  // One vector flag for both operands (8 kernels per tile size, not 16): a mixed case takes the scalar loads.
  dispatch_gemm<>(p, grid, stream, small, a_kcontig, b_kcontig, a_vec && b_vec);
  check_launch("gemm");
  if (splits > 1 && !small) {
    if (p.ep.out_vec)  // N % 4 == 0 too: partial rows start 16-byte aligned (scratch is 256-byte aligned)
      split_k_reduce_vec_kernel<<<grid_blocks(M * N / 4), kBlockThreads, 0, stream>>>(
          reinterpret_cast<const float4*>(p.partial), splits, p.ep, M, N);
    else
      split_k_reduce_kernel<<<grid_blocks(M * N), kBlockThreads, 0, stream>>>(p.partial, splits, p.ep, M, N);
    check_launch("gemm (split-K reduction)");
  }
  // Outputs of 128x128 tiles: a's column sums by the column reduction (a is stored (K, M)); the
  // product's kernels are done with scratch by then (one stream runs in order).
  if (fusion.a_sums && !small) bias_grad(a, fusion.a_sums, K, M, stream);
}

}  // namespace cuda
}  // namespace fastmlp
