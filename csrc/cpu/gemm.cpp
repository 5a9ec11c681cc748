// Blocked GEMM with a fused epilogue: out = act(alpha * op(a) op(b) + beta * out + bias).
// op(a) and op(b) are packed once per call into MR-high and NR-wide panels (per KC block of k), by
// whichever task over (MC rows x NC columns) first needs a panel; the tasks run an MR x NR
// register-tiled micro-kernel on them. Every output element is one FMA chain over k = 0..K-1 in
// order, starting from zero (partial sums are parked in a per-task tile buffer between KC blocks,
// never added), so row i is bitwise the same for any batch composition, tile position and thread
// count. The epilogue is applied once per tile, as the tile is stored: from registers for tiles of
// NR columns and MR, 2MR/3 or MR/3 rows with the identity or ReLU (or relu_mask), else from the
// parked partial sums. Some shapes skip a packing, with the same FMA chains: one column panel
// reads op(a) in place (direct_a), as do, in their register-epilogue tiles, a small GEMM (one
// thread, one k block) and a threaded one-k-block GEMM whose op(a) meets few columns (row-major,
// or on AVX-512 transposed with short rows) or whose transposed op(a) is small (a_in_place); one or two row panels (or a small op(b)) read a
// row-major op(b) in place (direct_b); a single row (M = 1) streams op(b) without tiles
// (gemm_one_row); and on AVX-512 a small float A^T.B^T runs as tiles of its transpose B.A,
// with no transposing pack of op(b) (gemm_tt_swapped).
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>

#include "core/parallel.h"
#include "core/scratch.h"
#include "cpu/colsum.h"
#include "cpu/isa.h"
#include "cpu/simd.h"
#include "ops/random.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {
namespace {

template <class T>
struct Blocking {
  static constexpr int MR = kMicroRows;          // rows of the register tile
  static constexpr int NV = 2;                   // vectors per register-tile row
  static constexpr int NR = NV * Simd<T>::W;     // columns of the register tile
  // k per block: up to 1024, so the MLP shapes (K = 784, 512) take one block and no partial sums
  // are parked; the B micro-panel (64 KiB on AVX2, 128 KiB on AVX-512) then streams from L2 beside
  // A (on AVX-512 micro_tile prefetches it). Against 256 (half of L1), toggled in one process:
  // AVX2 (AMD Zen 3) +1-4% at K = 784 and 1024; AVX-512 (Xeon, Emerald Rapids) +1-4% at K = 784,
  // +0.4-5% at 1024^3, +1.2% in the 784-512-512-10 training step.
  static constexpr int64_t KC = 1024;
  static constexpr int64_t MC_MAX = 20 * MR;     // A block MC*KC: up to 480 KiB (AVX2) or 960 KiB (AVX-512) of floats
  static constexpr int64_t NC_MAX = 16 * NR;     // columns per task: the B block streams from L2/L3
};

// Row k of the B panel (see micro_tile) to b.
template <class T, int NV>
inline __attribute__((always_inline)) void load_b_row(const T* __restrict B, int64_t k, int64_t ldb,
                                                      typename Simd<T>::V (&b)[NV]) {
  using S = Simd<T>;
  constexpr int W = S::W;
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) b[j] = S::load(B + k * ldb + j * W);
#if defined(__AVX512F__)
  // The B panel is larger than L1 and read once per A panel: fetch its row k + 16 now (the
  // address is formed as an integer: past the panel's end it is a harmless prefetch, not a
  // pointer out of range). Toggled in one process on a Xeon (Emerald
  // Rapids): AVX-512 +0-4% at the MLP shapes and 1024^3, and within +-3% (mostly a gain) inside
  // the training step; AVX2 gained 2-6% on isolated GEMMs but lost 1.3-1.7% inside the step
  // (three runs), so AVX2 does without.
#pragma GCC unroll 4
  for (int l = 0; l < NV * W * static_cast<int>(sizeof(T)) / 64; ++l)
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(B) +
                                                     static_cast<uintptr_t>((k + 16) * ldb) * sizeof(T) + 64 * l));
#endif
}

// micro_tile's k loop for a tile of more than 8 rows with op(a) read in place at a row stride si
// known only at run time (each row of op(a) contiguous in k, sk = 1, or rows contiguous, si = 1).
// Left to itself GCC kept one pointer per row (12 on AVX-512), ran out of the 16 general
// registers and reloaded four of them every k from the stack and from vector registers; those
// vmovq moves issue on an FMA port. Here rows are addressed from one pointer per three rows plus
// 0, si or 2 si (base + index * scale), the pointers hidden from the optimiser so it cannot split
// them again. The FMAs and their order are micro_tile's: bitwise the same sums. Toggled in one
// process on a Xeon (Emerald Rapids, AVX-512, 2 threads, 24 alternations): 256x784x512 A.B,
// 256x512x784 A.Bt, 512x784x256 A.Bt and 256x512x512 A.B 1.13x (1.12-1.14x on one thread),
// 64x128x64 A.B 1.04x, 128^3 At.B 1.06x, the 784-512-512-10 training step 1.04x (faster in 25 of
// 30). The AVX2 tiles (6 rows) kept their pointers in registers and lost 3-5% this way.
template <class T, int Rows, int NV>
inline __attribute__((always_inline)) void k_loop_rows_in_place(int64_t kc, const T* __restrict A, int64_t si,
                                                                int64_t sk, const T* __restrict B, int64_t ldb,
                                                                typename Simd<T>::V (&c)[Rows][NV]) {
  using S = Simd<T>;
  using V = typename S::V;
  if (si == 1) {  // rows side by side: one pointer, the rows at fixed offsets
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      V b[NV];
      load_b_row<T, NV>(B, k, ldb, b);
      const T* a = A + k * sk;
#pragma GCC unroll 16
      for (int i = 0; i < Rows; ++i) {
        const V ai = S::set1(a[i]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) c[i][j] = S::fma(ai, b[j], c[i][j]);
      }
    }
    return;
  }
  constexpr int G = (Rows + 2) / 3;
  const T* base[G];
#pragma GCC unroll 8
  for (int q = 0; q < G; ++q) base[q] = A + 3 * q * si;
  for (int64_t k = 0; k < kc; ++k) {
    V b[NV];
    load_b_row<T, NV>(B, k, ldb, b);
#pragma GCC unroll 16
    for (int i = 0; i < Rows; ++i) {
      const V ai = S::set1(base[i / 3][(i % 3) * si]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) c[i][j] = S::fma(ai, b[j], c[i][j]);
    }
#pragma GCC unroll 8
    for (int q = 0; q < G; ++q) {
      base[q] += sk;
      asm("" : "+r"(base[q]));
    }
  }
}

// c (Rows x NR registers) = (load ? acc : 0) + sum_k A[k] (x) B[k], then finish(c); row k of the
// B panel at B + k * ldb (NR when packed k-major by NR; op(b)'s row stride when read in place), A
// packed k-major by MR or, when Direct, read in place: element (i, k) at A[i * si + k * sk].
// Vecs < NV: only the first Vecs * W columns of the tile (an op(b) of at most that many columns).
template <class T, bool Direct = false, int Rows = Blocking<T>::MR, int Vecs = Blocking<T>::NV, class Finish>
inline __attribute__((always_inline)) void micro_tile(int64_t kc, const T* __restrict A, const T* __restrict B,
                                                      int64_t ldb, const T* __restrict acc, bool load,
                                                      const Finish& finish, int64_t si = 0, int64_t sk = 0) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int MR = Blocking<T>::MR, NV = Vecs, W = S::W, NR = Blocking<T>::NR;
  static_assert(Vecs >= 1 && Vecs <= Blocking<T>::NV, "a register tile has at most NV vectors per row");
  static_assert(Rows >= 1 && (Rows <= MR || (Direct && Vecs == 1 && Rows <= 16 && W * sizeof(T) == 64)),
                "a register tile has at most MR rows (16 with op(a) in place, one vector, on AVX-512)");
  V c[Rows][NV];
#pragma GCC unroll 16
  for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[i][j] = load ? S::load(acc + i * NR + j * W) : S::zero();
  if constexpr (Direct && Rows > 8) {
    if (!__builtin_constant_p(si)) {
      k_loop_rows_in_place<T, Rows, NV>(kc, A, si, sk, B, ldb, c);
      finish(c);
      return;
    }
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    V b[NV];
    load_b_row<T, NV>(B, k, ldb, b);
    const T* a = Direct ? A + k * sk : A + k * MR;
#pragma GCC unroll 16
    for (int i = 0; i < Rows; ++i) {
      const V ai = S::set1(Direct ? a[i * si] : a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) c[i][j] = S::fma(ai, b[j], c[i][j]);
    }
  }
  finish(c);
}

// The tile's partial sums to acc (Rows x NR of an MR x NR row-major tile). Rows < MR: the first
// rows of a partial panel only (its packed rows past M are zeros that no output needs). Vecs = 1:
// the first W columns only (a last column panel of at most W columns), half the FMAs.
template <class T, int Rows = Blocking<T>::MR, int Vecs = Blocking<T>::NV>
void micro_kernel(int64_t kc, const T* __restrict A, const T* __restrict B, int64_t ldb, T* __restrict acc, bool load) {
  using S = Simd<T>;
  constexpr int NV = Vecs, W = S::W, NR = Blocking<T>::NR;
  micro_tile<T, false, Rows, Vecs>(kc, A, B, ldb, acc, load, [acc](const typename S::V (&c)[Rows][NV]) __attribute__((always_inline)) {
#pragma GCC unroll 16
    for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) S::store(acc + i * NR + j * W, c[i][j]);
  });
}

// micro_kernel with op(a) read in place (see micro_tile): all MR rows must exist. Vecs = 1: a
// column panel of at most W columns (an output layer of few classes, or the last panel of N = 784),
// half the FMAs of a full tile; the tile's other columns are left as they are.
template <class T, int Vecs = Blocking<T>::NV>
void micro_kernel_direct(int64_t kc, const T* __restrict A, int64_t si, int64_t sk, const T* __restrict B,
                         T* __restrict acc, bool load) {
  using S = Simd<T>;
  constexpr int MR = Blocking<T>::MR, NV = Vecs, W = S::W, NR = Blocking<T>::NR;
  micro_tile<T, true, MR, Vecs>(
      kc, A, B, NR, acc, load,
      [acc](const typename S::V (&c)[MR][NV]) __attribute__((always_inline)) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j) S::store(acc + i * NR + j * W, c[i][j]);
      },
      si, sk);
}

// The last k block of a tile of Rows x NR (Rows: MR, or a partial panel's 2MR/3 or MR/3 that all
// exist) with the identity or ReLU epilogue applied in registers and stored to out (row stride
// ld): the operations of store_rows, in its order, a vector at a time.
// Direct: op(a) read in place, element (i, k) at A[i * si + k * sk] (see micro_tile).
template <Act Ac, bool HasBeta, bool HasBias, class T, int Rows, bool Direct>
inline __attribute__((always_inline)) void out_tile(int64_t kc, const T* __restrict A, int64_t si, int64_t sk,
                                                    const T* __restrict B, int64_t ldb, const T* __restrict acc,
                                                    bool load, T* __restrict out, int64_t ld, const T* __restrict bias,
                                                    T alpha, T beta) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int NV = Blocking<T>::NV, W = S::W;
  static_assert(Ac == Act::identity || Ac == Act::relu, "other activations go through store_tile");
  micro_tile<T, Direct, Rows>(kc, A, B, ldb, acc, load, [&](const V (&c)[Rows][NV]) __attribute__((always_inline)) {
    const V va = S::set1(alpha), vb = S::set1(beta), zero = S::zero();
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = HasBias ? S::load(bias + j * W) : zero;
#pragma GCC unroll 16
    for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        T* o = out + i * ld + j * W;
        V v = va * c[i][j];
        if constexpr (HasBeta) v = v + vb * S::load(o);
        if constexpr (HasBias) v = v + bv[j];
        if constexpr (Ac == Act::relu) v = v < zero ? zero : v;  // as ops::relu: NaN and -0 kept
        S::store(o, v);
      }
  }, si, sk);
}

template <Act Ac, bool HasBeta, bool HasBias, class T, int Rows = Blocking<T>::MR>
void micro_kernel_out(int64_t kc, const T* __restrict A, const T* __restrict B, int64_t ldb, const T* __restrict acc,
                      bool load, T* __restrict out, int64_t ld, const T* __restrict bias, T alpha, T beta) {
  out_tile<Ac, HasBeta, HasBias, T, Rows, false>(kc, A, 0, 0, B, ldb, acc, load, out, ld, bias, alpha, beta);
}

// micro_kernel_out with op(a) read in place: one k block, no partial sums (a tile of a_in_place).
template <Act Ac, bool HasBeta, bool HasBias, class T, int Rows = Blocking<T>::MR>
void micro_kernel_out_direct(int64_t kc, const T* __restrict A, int64_t si, int64_t sk, const T* __restrict B,
                             int64_t ldb, T* __restrict out, int64_t ld, const T* __restrict bias, T alpha, T beta) {
  out_tile<Ac, HasBeta, HasBias, T, Rows, true>(kc, A, si, sk, B, ldb, nullptr, false, out, ld, bias, alpha, beta);
}

// The last k block of a Rows x NR tile (as micro_kernel_out) with the identity epilogue (no beta,
// no bias) and GemmArgs' relu_mask (`mask`, row stride ld like out): out = mask > 0 ? (alpha * c) * scale : 0.
// Direct: op(a) read in place (si, sk as in micro_tile; one k block, acc unused).
template <class T, int Rows = Blocking<T>::MR, bool Direct = false>
void masked_tile(int64_t kc, const T* __restrict A, int64_t si, int64_t sk, const T* __restrict B, int64_t ldb,
                 const T* __restrict acc, bool load, T* __restrict out, int64_t ld, const T* __restrict mask, T alpha,
                 T scale) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int NV = Blocking<T>::NV, W = S::W, NR = Blocking<T>::NR;
  // The tile's mask and out lines are fetched now, to arrive while the k loop runs: by the time a
  // training step's backward pass reaches this GEMM the mask (the layer's activations) has left
  // the caches, and the epilogue's loads then stall on them (256x512x512 with the caches evicted,
  // paired: 1.05-1.07x; 1.02-1.03x from cache).
#pragma GCC unroll 16
  for (int i = 0; i < Rows; ++i) {
    __builtin_prefetch(mask + i * ld);
    __builtin_prefetch(mask + i * ld + NR - 1);
    __builtin_prefetch(out + i * ld, 1);
    __builtin_prefetch(out + i * ld + NR - 1, 1);
  }
  micro_tile<T, Direct, Rows>(kc, A, B, ldb, acc, load, [&](const V (&c)[Rows][NV]) __attribute__((always_inline)) {
    const V va = S::set1(alpha), vs = S::set1(scale), zero = S::zero();
#pragma GCC unroll 16
    for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        const V v = (va * c[i][j]) * vs;
        S::store(out + i * ld + j * W, S::load(mask + i * ld + j * W) > zero ? v : zero);
      }
  }, si, sk);
}

template <class T, int Rows = Blocking<T>::MR>
void micro_kernel_out_masked(int64_t kc, const T* __restrict A, const T* __restrict B, int64_t ldb,
                             const T* __restrict acc, bool load, T* __restrict out, int64_t ld,
                             const T* __restrict mask, T alpha, T scale) {
  masked_tile<T, Rows, false>(kc, A, 0, 0, B, ldb, acc, load, out, ld, mask, alpha, scale);
}

// micro_kernel_out_masked with op(a) read in place (a tile of a_in_place).
template <class T, int Rows = Blocking<T>::MR>
void micro_kernel_out_masked_direct(int64_t kc, const T* __restrict A, int64_t si, int64_t sk,
                                    const T* __restrict B, int64_t ldb, T* __restrict out, int64_t ld,
                                    const T* __restrict mask, T alpha, T scale) {
  masked_tile<T, Rows, true>(kc, A, si, sk, B, ldb, nullptr, false, out, ld, mask, alpha, scale);
}

template <class T>
using OutKernel = void (*)(int64_t, const T*, const T*, int64_t, const T*, bool, T*, int64_t, const T*, T, T);
template <class T>
using DirectOutKernel = void (*)(int64_t, const T*, int64_t, int64_t, const T*, int64_t, T*, int64_t, const T*, T, T);

// The register-epilogue kernel of one epilogue: packed op(a), or (Direct) op(a) read in place.
template <bool Direct, Act Ac, bool HasBeta, bool HasBias, class T, int Rows>
constexpr auto out_kernel() {
  if constexpr (Direct) return &micro_kernel_out_direct<Ac, HasBeta, HasBias, T, Rows>;
  else return &micro_kernel_out<Ac, HasBeta, HasBias, T, Rows>;
}

// The register-epilogue kernel for this call's epilogue, or nullptr (sigmoid, tanh).
template <class T, int Rows = Blocking<T>::MR, bool Direct = false>
auto pick_out_kernel(Act act, bool has_beta, bool has_bias) -> std::conditional_t<Direct, DirectOutKernel<T>, OutKernel<T>> {
  if (act != Act::identity && act != Act::relu) return nullptr;
  const bool relu = act == Act::relu;
  auto pick = [relu](auto beta, auto bias) {
    constexpr bool B = decltype(beta)::value, Bi = decltype(bias)::value;
    return relu ? out_kernel<Direct, Act::relu, B, Bi, T, Rows>() : out_kernel<Direct, Act::identity, B, Bi, T, Rows>();
  };
  const std::true_type yes;
  const std::false_type no;
  if (has_beta) return has_bias ? pick(yes, yes) : pick(yes, no);
  return has_bias ? pick(no, yes) : pick(no, no);
}

#if defined(__AVX2__)
// r[i] = row i of an 8x8 float block on entry, column i on exit.
inline void transpose8x8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// The first `count` (4, 6 or 8) lanes of v to p.
inline void store_lanes(float* p, __m256 v, int count) {
  if (count == 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  _mm_storeu_ps(p, _mm256_castps256_ps128(v));
  if (count == 6) _mm_storel_pi(reinterpret_cast<__m64*>(p + 4), _mm256_extractf128_ps(v, 1));
}

// Transposing packs of float panels, one 8x8 block: line i < n_lines (n_lines <= 8) is
// contiguous along k at lines + i * stride when i < n_real, and zeros when i >= n_real (a partial
// panel's missing rows; n_real may be <= 0 or above n_lines); k-column k + j of the block goes to
// dst + (k + j) * ld (n_lines lanes). The callers loop k outer, block columns inner, so
// consecutive blocks fill whole rows of the panel. No pointer is formed for a missing line.
inline void pack_transposed_block_8(const float* lines, int64_t stride, int n_lines, int64_t k, float* dst, int64_t ld,
                                    int n_real) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i)
    r[i] = i < n_lines && i < n_real ? _mm256_loadu_ps(lines + i * stride + k) : _mm256_setzero_ps();
  transpose8x8(r);
  for (int j = 0; j < 8; ++j) store_lanes(dst + (k + j) * ld, r[j], n_lines);
}
#endif

#if defined(__AVX512F__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports its own _mm512_undefined_ps inside the unpack and shuffle intrinsics as
// uninitialized (a known false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// r[i] = row i of a 16x16 float block on entry, column i on exit: 64 shuffles for 256 floats
// (the 8x8 form takes 96 for as many).
inline void transpose16x16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // r[4 q + c] now holds, in 128-bit lane l, elements c of rows 4 q .. 4 q + 3 at k 4 l + c.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// pack_transposed_block_8's 16x16 form for 16 whole lines: k-column k + j of the block goes to
// dst + (k + j) * ld.
inline void pack_transposed_block_16(const float* lines, int64_t stride, int64_t k, float* dst, int64_t ld) {
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(lines + i * stride + k);
  transpose16x16(r);
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + (k + j) * ld, r[j]);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Rows [i0, i0+rows) x cols [k0, k0+kc) of op(a), as MR-row micro-panels (zero-padded rows).
template <class T>
void pack_a(const GemmArgs<T>& g, int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* __restrict dst) {
  constexpr int MR = Blocking<T>::MR;
  for (int64_t p = 0; p < rows; p += MR) {
    const int64_t mr = min_i64(MR, rows - p);
    T* d = dst + p * kc;
    if (!g.trans_a) {
      // k outer, rows inner: the writes are contiguous, the reads are MR sequential streams.
      const T* rows[MR];
      for (int r = 0; r < MR; ++r) rows[r] = g.a + (i0 + p + (r < mr ? r : 0)) * g.K + k0;
      int64_t k_done = 0;
#if defined(__AVX2__)
      if constexpr (std::is_same_v<T, float> && (MR == 6 || MR == 12)) {
        // MR rows in groups of 8 (6 = 6; 12 = 8 + 4): 8 k at a time, transposed in registers; the
        // missing rows of a partial panel as zeros (scalar, that panel cost as much as the rest of
        // a 32x64x64 GEMM's packing).
        for (; k_done + 8 <= kc; k_done += 8)
          for (int q = 0; q < MR; q += 8)
            pack_transposed_block_8(rows[0] + q * g.K, g.K, MR - q < 8 ? MR - q : 8, k_done, d + q, MR,
                                    static_cast<int>(mr) - q);
      }
#endif
      if (mr == MR) {
        for (int64_t k = k_done; k < kc; ++k) {
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) d[k * MR + r] = rows[r][k];
        }
      } else {
        for (int64_t k = k_done; k < kc; ++k)
          for (int r = 0; r < MR; ++r) d[k * MR + r] = r < mr ? rows[r][k] : T(0);
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = g.a + (k0 + k) * g.M + i0 + p;
        for (int r = 0; r < MR; ++r) d[k * MR + r] = r < mr ? src[r] : T(0);
      }
    }
  }
}

// NR-column panel jp of op(b) for k in [k0, k0+kc), zero-padded columns. blocks16: a transposed
// op(b) goes by 16x16 blocks where the ISA has them (AVX-512), else by 8x8 ones.
template <class T>
void pack_b_panel(const GemmArgs<T>& g, int64_t jp, int64_t k0, int64_t kc, T* __restrict dst, [[maybe_unused]] bool blocks16) {
  constexpr int NR = Blocking<T>::NR;
  const int64_t j0 = jp * NR;
  const int64_t nr = min_i64(NR, g.N - j0);
  if (!g.trans_b) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = g.b + (k0 + k) * g.N + j0;
      T* d = dst + k * NR;
      if (nr == NR) {
        std::memcpy(d, src, NR * sizeof(T));
      } else {
        for (int c = 0; c < NR; ++c) d[c] = c < nr ? src[c] : T(0);
      }
    }
  } else {
    int64_t k_done = 0;
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float> && NR % 8 == 0) {
      if (nr == NR) {  // a full panel: 8 columns x 8 k at a time, transposed in registers
        // k outer: each step writes 8 whole rows of the panel (lines in turn). Column groups outer
        // made NR / 8 passes over a panel larger than L1, each writing part of every line, and
        // the pack ran at ~11 GB/s (10% of a 256x512x784 A.Bt on one AVX-512 core).
        // (Lines as base + i * K: an array of NR pointers was kept in vector registers and
        // extracted one by one.)
        const T* lines = g.b + j0 * g.K + k0;
#if defined(__AVX512F__)
        // 16x16 blocks for a one-thread GEMM, whose op(b) is in L1 or L2 and whose pack is a
        // fifth of the call (32x64x64 A.B^T, and A^T.B^T before gemm_tt_swapped took it, 0.05-0.15
        // us faster of ~2.8, 5 runs of 5 in alternating processes on a Xeon); threaded GEMMs,
        // which stream op(b) from L3, showed no gain and more spread (256x512x784 A.B^T).
        if constexpr (NR % 16 == 0) {
          if (blocks16)
            for (; k_done + 16 <= kc; k_done += 16)
              for (int c0 = 0; c0 < NR; c0 += 16) pack_transposed_block_16(lines + c0 * g.K, g.K, k_done, dst + c0, NR);
        }
#endif
        for (; k_done + 8 <= kc; k_done += 8)
          for (int c0 = 0; c0 < NR; c0 += 8) pack_transposed_block_8(lines + c0 * g.K, g.K, 8, k_done, dst + c0, NR, 8);
      } else {
        // A partial panel (an output layer of a few classes) by the same 8x8 blocks, its missing
        // columns as zeros (no pointer formed past the last line): element by element it was a
        // strided scalar load each, packed by one task while the others waited. Toggled in one
        // process on the Xeon (2 threads): 256x10x512 A.B^T 1.02-1.04x, 64x10x512 1.18x.
        const T* lines = g.b + j0 * g.K + k0;
        for (; k_done + 8 <= kc; k_done += 8)
          for (int c0 = 0; c0 < NR; c0 += 8) {
            if (c0 < nr) {
              pack_transposed_block_8(lines + c0 * g.K, g.K, 8, k_done, dst + c0, NR, static_cast<int>(nr) - c0);
            } else {
              for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (k_done + j) * NR + c0, _mm256_setzero_ps());
            }
          }
      }
    }
#endif
    // The rest (a partial panel, or the last k of a full one) k outer, so the writes run along the
    // panel's rows: column by column, a panel of 512+ k (64 KiB and more) left L1 between columns
    // (256x10x512 A.Bt 1.3x slower than with 256 k).
    const T* src = g.b + j0 * g.K + k0;
    for (int64_t k = k_done; k < kc; ++k) {
      T* d = dst + k * NR;
      for (int c = 0; c < nr; ++c) d[c] = src[c * g.K + k];
      for (int c = static_cast<int>(nr); c < NR; ++c) d[c] = T(0);
    }
  }
}

// Full panels [first, end) of Unit columns each, from a source whose row k (width elements) holds
// the panels side by side: k outer, so each source row is read as one contiguous run.
template <int Unit, class T>
void pack_rows_along_width(const T* __restrict src, int64_t width, int64_t k0, int64_t kc, int64_t first,
                           int64_t end, T* __restrict dst) {
  // The strip [first, end) of a row is a few cache lines and the next row is a page or more away:
  // fetch the strip kAhead rows ahead, or each row's first touch waits on L3.
  constexpr int64_t kAhead = 6;
  const int64_t strip_bytes = (end - first) * Unit * static_cast<int64_t>(sizeof(T));
  for (int64_t k = 0; k < kc; ++k) {
    const T* row = src + (k0 + k) * width;
    if (k + kAhead < kc) {
      const char* ahead = reinterpret_cast<const char*>(row + kAhead * width + first * Unit);
      for (int64_t off = 0; off < strip_bytes; off += 64) __builtin_prefetch(ahead + off);
    }
    for (int64_t panel = first; panel < end; ++panel)
      std::memcpy(dst + panel * kc * Unit + k * Unit, row + panel * Unit, sizeof(T) * Unit);
  }
}

template <Act A, bool HasBeta, bool HasBias, class T>
void store_rows(const T* __restrict tile, int64_t ld_tile, int64_t rows, int64_t cols, T* __restrict out,
                int64_t ld_out, const T* __restrict bias, T alpha, T beta) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* t = tile + r * ld_tile;
    T* o = out + r * ld_out;
    for (int64_t c = 0; c < cols; ++c) {
      T v = alpha * t[c];
      if constexpr (HasBeta) v = v + beta * o[c];
      if constexpr (HasBias) v = v + bias[c];
      o[c] = ops::activate<A>(v);
    }
  }
}

template <Act A, class T>
void store_tile_act(const T* tile, int64_t ld_tile, int64_t rows, int64_t cols, T* out, int64_t ld_out,
                    const T* bias, T alpha, T beta) {
  if (beta != T(0)) {
    if (bias) store_rows<A, true, true>(tile, ld_tile, rows, cols, out, ld_out, bias, alpha, beta);
    else store_rows<A, true, false>(tile, ld_tile, rows, cols, out, ld_out, bias, alpha, beta);
  } else {
    if (bias) store_rows<A, false, true>(tile, ld_tile, rows, cols, out, ld_out, bias, alpha, beta);
    else store_rows<A, false, false>(tile, ld_tile, rows, cols, out, ld_out, bias, alpha, beta);
  }
}

// The epilogue: out[i0.., j0..] = act(alpha * tile + beta * out + bias).
template <class T>
void store_tile(const GemmArgs<T>& g, const T* tile, int64_t ld_tile, int64_t i0, int64_t j0, int64_t rows,
                int64_t cols) {
  T* out = g.out + i0 * g.N + j0;
  const T* bias = g.bias ? g.bias + j0 : nullptr;
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  switch (g.act) {
    case Act::relu: store_tile_act<Act::relu>(tile, ld_tile, rows, cols, out, g.N, bias, alpha, beta); break;
    case Act::sigmoid: store_tile_act<Act::sigmoid>(tile, ld_tile, rows, cols, out, g.N, bias, alpha, beta); break;
    case Act::tanh: store_tile_act<Act::tanh>(tile, ld_tile, rows, cols, out, g.N, bias, alpha, beta); break;
    default: store_tile_act<Act::identity>(tile, ld_tile, rows, cols, out, g.N, bias, alpha, beta); break;
  }
  if (g.relu_mask) {  // relu_dropout_backward's arithmetic on the stored values
    const T scale = ops::dropout_scale<T>(g.mask_p);
    for (int64_t r = 0; r < rows; ++r) {
      T* __restrict o = out + r * g.N;
      const T* __restrict m = g.relu_mask + (i0 + r) * g.N + j0;
      for (int64_t c = 0; c < cols; ++c) o[c] = ops::relu_dropout_grad(o[c], m[c], scale);
    }
  }
}

// Splits `total` into `parts` near-equal blocks, each a multiple of `unit` (the last may be short).
int64_t balanced_block(int64_t total, int64_t max_block, int64_t unit) {
  const int64_t parts = ceil_div(total, max_block);
  return ceil_div(ceil_div(total, parts), unit) * unit;
}

// One row (M = 1, a batch of one): out = act(alpha * a op(b) + ...) without the 6-row tile's padding
// or a packed copy of op(b), which made it 4-6x slower than NumPy (1x4096x4096: 9.4 vs 1.5 ms).
// Output j is still one chain c = fma(a[k], op(b)[k][j], c) over k = 0..K-1 in order from +0, the
// micro-kernel's arithmetic (Simd::fma, one lane of it in fma1), so the row is bitwise the same
// as in any batch. Tasks over column chunks; each chunk's sums go through store_tile's epilogue.
template <class T>
void gemm_one_row(const GemmArgs<T>& g) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  const int64_t N = g.N, K = g.K;
  const T* a = g.a;  // (1, K) or (K, 1): contiguous either way
  const bool parallel = static_cast<double>(N) * static_cast<double>(K) >= 65536.0;
  const int threads = parallel ? get_num_threads() : 1;
  // Columns per task. Row-major op(b) is read a piece of each row at a time, so the pieces are as
  // long as the thread count allows (up to 4096 columns, 16 KiB of float sums in L1): short pieces
  // 16 KiB apart streamed at 11 GB/s. Rows of w (op(b) transposed) stream whole, 64-512 per task
  // (at least two tasks per thread).
  const int64_t chunk = g.trans_b ? min_i64(512, max_i64(64, ceil_div(ceil_div(N, 2 * threads), 8) * 8))
                                  : min_i64(4096, max_i64(512, ceil_div(ceil_div(N, threads), W) * W));
  parallel_for_if(parallel, ceil_div(N, chunk), [&](int64_t task) {
    const int64_t j0 = task * chunk, cols = min_i64(chunk, N - j0);
    T* c = static_cast<T*>(thread_scratch(kScratchAcc, sizeof(T) * static_cast<size_t>(chunk)));
    for (int64_t j = 0; j < cols; ++j) c[j] = T(0);
    if (!g.trans_b) {
      // op(b) row-major (K x N): k outer, the chunk's sums in L1, rows of op(b) streamed in order.
      // Each row's piece is a few lines and the next row's is N elements on: fetch the piece kAhead
      // rows ahead, or the hardware prefetchers restart at every row.
      constexpr int64_t kAhead = 8;
      const int64_t vec_end = cols / W * W;
      auto fetch_ahead = [&](int64_t k) {
        if (k + kAhead < K)
          for (int64_t j = 0; j < cols; j += 64 / static_cast<int64_t>(sizeof(T)))
            __builtin_prefetch(g.b + (k + kAhead) * N + j0 + j);
      };
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {  // four rows per pass over the sums: each chain still in k order
        for (int q = 0; q < 4; ++q) fetch_ahead(k + q);
        const T* r0 = g.b + k * N + j0;
        const T* r1 = r0 + N;
        const T* r2 = r1 + N;
        const T* r3 = r2 + N;
        const V a0 = S::set1(a[k]), a1 = S::set1(a[k + 1]), a2 = S::set1(a[k + 2]), a3 = S::set1(a[k + 3]);
        for (int64_t j = 0; j < vec_end; j += W) {
          V v = S::fma(a0, S::load(r0 + j), S::load(c + j));
          v = S::fma(a1, S::load(r1 + j), v);
          v = S::fma(a2, S::load(r2 + j), v);
          S::store(c + j, S::fma(a3, S::load(r3 + j), v));
        }
        for (int64_t j = vec_end; j < cols; ++j)
          c[j] = S::fma1(a[k + 3], r3[j], S::fma1(a[k + 2], r2[j], S::fma1(a[k + 1], r1[j], S::fma1(a[k], r0[j], c[j]))));
      }
      for (; k < K; ++k) {
        fetch_ahead(k);
        const T* row = g.b + k * N + j0;
        const T ak = a[k];
        const V av = S::set1(ak);
        for (int64_t j = 0; j < vec_end; j += W) S::store(c + j, S::fma(av, S::load(row + j), S::load(c + j)));
        for (int64_t j = vec_end; j < cols; ++j) c[j] = S::fma1(ak, row[j], c[j]);
      }
    } else {
      // op(b) = w^T with w (N x K) row-major: eight rows of w at a time, eight independent chains.
      constexpr int kRows = 8;
      int64_t j = 0;
      for (; j + kRows <= cols; j += kRows) {
        const T* w = g.b + (j0 + j) * K;
        T s[kRows] = {};
        int64_t k = 0;
#if defined(__AVX2__)
        if constexpr (std::is_same_v<T, float>) {
          // Eight k at a time: the 8x8 block of w transposed in registers, so lane r of t[q] is
          // w[r][k + q] and one vector FMA advances all eight chains by one k, in order.
          __m256 acc = _mm256_setzero_ps();
          for (; k + 8 <= K; k += 8) {
            __m256 t[8];
            for (int r = 0; r < 8; ++r) t[r] = _mm256_loadu_ps(w + r * K + k);
            transpose8x8(t);
            for (int q = 0; q < 8; ++q) acc = _mm256_fmadd_ps(_mm256_set1_ps(a[k + q]), t[q], acc);
          }
          _mm256_storeu_ps(s, acc);
        }
#endif
        for (; k < K; ++k) {
          const T ak = a[k];
#pragma GCC unroll 8
          for (int r = 0; r < kRows; ++r) s[r] = S::fma1(ak, w[r * K + k], s[r]);
        }
        for (int r = 0; r < kRows; ++r) c[j + r] = s[r];
      }
      for (; j < cols; ++j) {
        const T* w = g.b + (j0 + j) * K;
        T s = T(0);
        for (int64_t k = 0; k < K; ++k) s = S::fma1(a[k], w[k], s);
        c[j] = s;
      }
    }
    store_tile(g, c, cols, 0, j0, 1, cols);
  });
}

#if defined(__AVX512F__)
// One 16x16 tile of a small A^T.B^T computed as its transpose B.A (see gemm_tt_swapped): Rows
// columns j0.. of the output as the broadcast side (rows of b at bj, kTTStride apart in a copy,
// or K apart in place when InPlace; the first `cols` exist) and 16 rows i0.. as the vector (row k of a's part at ai + k * lda). The
// Rows x 16 block of the transposed product is turned 16x16 in registers and stored an output row
// at a time (its first `rows` rows, `cols` lanes each) with store_tile's arithmetic in its order:
// in registers for the identity and ReLU, else through store_tile itself (which also applies a
// relu_mask).
// The copy's constant row stride lets each broadcast address one base register plus a constant:
// with b's rows in place (stride K, a variable) the 16 row pointers spilled to the stack and the
// path lost to the packing one (32x64x64 3.2 against 3.0 us).
constexpr int64_t kTTStride = 256;

template <int Rows, bool InPlace = false>
void tt_swapped_tile(const GemmArgs<float>& g, const float* bj, const float* ai, int64_t lda, int64_t i0,
                     int64_t j0, int rows, int cols, bool registers) {
  using V = __m512;
  micro_tile<float, true, Rows, 1>(
      g.K, bj, ai, lda, nullptr, false,
      [&](const V (&c)[Rows][1]) __attribute__((always_inline)) {
        const __mmask16 lanes = static_cast<__mmask16>((1u << cols) - 1u);
        const V zero = _mm512_setzero_ps();
        const float beta = static_cast<float>(g.beta);
        const V va = _mm512_set1_ps(static_cast<float>(g.alpha)), vb = _mm512_set1_ps(beta);
        const V bias = g.bias ? _mm512_maskz_loadu_ps(lanes, g.bias + j0) : zero;
        alignas(64) float tile[16 * 16];
        V r[16];
#pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) r[t] = t < Rows ? c[t < Rows ? t : 0][0] : zero;
        transpose16x16(r);
        if (registers) {
          for (int q = 0; q < rows; ++q) {
            float* o = g.out + (i0 + q) * g.N + j0;
            V x = va * r[q];
            if (beta != 0.0f) x = x + vb * _mm512_maskz_loadu_ps(lanes, o);
            if (g.bias) x = x + bias;
            if (g.act == Act::relu) x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), x, zero);  // as ops::relu
            _mm512_mask_storeu_ps(o, lanes, x);
          }
        } else {
          for (int q = 0; q < rows; ++q) _mm512_store_ps(tile + 16 * q, r[q]);
          store_tile(g, tile, 16, i0, j0, rows, cols);
        }
      },
      InPlace ? g.K : kTTStride, 1);
}

// A one-thread A^T.B^T as 16x16 tiles of its transpose B.A, with no transposing pack of op(b):
// rows of b (contiguous in k) are broadcast, rows of a (contiguous in i) are the vectors, and each
// tile is transposed on its way out. That costs 64 shuffles per 256 outputs where the pack costs
// 64 per 256 elements of op(b) and a pass over memory, so it pays while M is not much above K.
// Toggled in separate processes on an AVX-512 Xeon (median of 7, us; NumPy beside):
// 32x64x64 2.9-3.0 -> 2.7 (NumPy 2.8-3.0), 16x48x32 1.8 -> 1.2 (1.5), 32x128x100 8.5 -> 6.6 (6.1),
// 28x100x64 5.6 -> 4.4 (5.1), 48x64x64 3.8 -> 3.6 (4.0), 64x32x64 2.9 -> 2.5, 80x48x64 6.2 -> 4.4;
// 64x64x64, 96x32x64 and 64x96x48 unchanged; 128x64x48 (M = 2.7 K) lost, 6.7 -> 6.8-7.3.
// Every output is the chain fma(op(a)[i][k], op(b)[k][j], c) over k in order from +0 that the other
// paths form (fma is symmetric in its factors), then the same epilogue: bitwise the same results.
// The last M % 16 rows of the output (columns of a) go through a zero-padded copy, and the last
// columns through zero rows of b's copy.
void gemm_tt_swapped(const GemmArgs<float>& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const bool registers = (g.act == Act::identity || g.act == Act::relu) && !g.relu_mask;
  const int64_t m_full = M / 16 * 16;
  const int m_tail = static_cast<int>(M - m_full);
  float* a_tail = static_cast<float*>(
      thread_scratch(kScratchPackB, sizeof(float) * static_cast<size_t>(16 * K + 16 * kTTStride)));
  float* b_rows = a_tail + 16 * K;  // 16 x kTTStride: the tile's rows of b, zeros past N
  if (m_tail)  // K x 16: the last m_tail columns of a, zeros past them
    for (int64_t k = 0; k < K; ++k)
      for (int t = 0; t < 16; ++t) a_tail[k * 16 + t] = t < m_tail ? g.a[k * M + m_full + t] : 0.0f;
  auto columns = [&](auto rows_c, const float* bj, int64_t j0, int cols) {
    constexpr int R = decltype(rows_c)::value;
    for (int64_t i0 = 0; i0 < m_full; i0 += 16) tt_swapped_tile<R>(g, bj, g.a + i0, M, i0, j0, 16, cols, registers);
    if (m_tail) tt_swapped_tile<R>(g, bj, a_tail, 16, m_full, j0, m_tail, cols, registers);
  };
  for (int64_t j0 = 0; j0 < N; j0 += 16) {
    const int cols = static_cast<int>(min_i64(16, N - j0));
    // A whole group of 16 columns meeting at most three 16-row tiles reads its rows of b in place,
    // at their own stride K (the in-place tile loop keeps that stride in registers), instead of
    // copying them: toggled in one process on the Xeon, 32x64x64 1.07-1.09x, 32x128x100 1.08-1.11x,
    // 16x48x32 1.05-1.07x, 48x64x64 1.02x; with four or more tiles per group (M = 64, 80) the copy,
    // read at a constant stride, won by 1-2%.
    if (cols == 16 && M <= 48) {
      const float* bj = g.b + j0 * K;
      for (int64_t i0 = 0; i0 < m_full; i0 += 16)
        tt_swapped_tile<16, true>(g, bj, g.a + i0, M, i0, j0, 16, 16, registers);
      if (m_tail) tt_swapped_tile<16, true>(g, bj, a_tail, 16, m_full, j0, m_tail, 16, registers);
      continue;
    }
    const int rows_class = (cols + 3) / 4 * 4;  // 4, 8, 12 or 16 rows of b
    // Inline 16-float moves: a libc memcpy per row of b cost more than the move itself.
    const __mmask16 k_tail = static_cast<__mmask16>((1u << (K % 16)) - 1u);
    for (int r = 0; r < rows_class; ++r) {
      float* dst = b_rows + r * kTTStride;
      int64_t k = 0;
      if (r < cols) {
        const float* src = g.b + (j0 + r) * K;
        for (; k + 16 <= K; k += 16) _mm512_storeu_ps(dst + k, _mm512_loadu_ps(src + k));
        if (k_tail) _mm512_mask_storeu_ps(dst + k, k_tail, _mm512_maskz_loadu_ps(k_tail, src + k));
      } else {
        for (; k < K; k += 16) _mm512_storeu_ps(dst + k, _mm512_setzero_ps());  // within the 256-float row
      }
    }
    const float* bj = b_rows;
    switch (rows_class) {
      case 4: columns(std::integral_constant<int, 4>{}, bj, j0, cols); break;
      case 8: columns(std::integral_constant<int, 8>{}, bj, j0, cols); break;
      case 12: columns(std::integral_constant<int, 12>{}, bj, j0, cols); break;
      default: columns(std::integral_constant<int, 16>{}, bj, j0, cols); break;
    }
  }
}
#endif

}  // namespace

template <class T>
void gemm(const GemmArgs<T>& g) {
  using B = Blocking<T>;
  constexpr int MR = B::MR, NR = B::NR;
  const int64_t M = g.M, N = g.N, K = g.K;
  if (g.a_sums && !(M > 1 && N > NR)) {
    // op(a) is not packed on these paths (nothing is computed, one row, or read in place): its
    // sums come from bias_grad, the order column_sums reproduces where op(a) is packed.
    bias_grad<T>(g.a, g.a_sums, K, M);
    GemmArgs<T> rest = g;
    rest.a_sums = nullptr;
    gemm(rest);
    return;
  }
  if (M == 0 || N == 0) return;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    // A small A^T.B^T whose M is at most 2K, in whole or mostly whole vectors, on one thread up
    // to 2^21 flops: see gemm_tt_swapped (against the threaded path, separate processes: 32x256x64
    // 11.1-11.6 -> 9.2-9.4 us, 48x128x128 13.5-14.0 -> 12.4-12.7; 64x128x128, 2^21, lost 15.5 -> 16.6).
    if (g.trans_a && g.trans_b && !g.a_sums && M >= 16 && (M % 16 == 0 || M % 16 > 8) && N >= 2 &&
        M <= 2 * K && K <= kTTStride &&
        2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) < 2097152.0) {
      gemm_tt_swapped(g);
      return;
    }
  }
#endif
  if (M == 1 && N > NR) {  // one column panel: the direct-A path below already reads a in place
    gemm_one_row(g);
    return;
  }

  const int64_t n_panels = ceil_div(N, NR);
  const int64_t n_pad = n_panels * NR;
  // Equal KC blocks (784 = 4 x 196, not 3 x 256 + 16). Where the partial sums are parked does not
  // change any element's FMA chain, so this is free to depend on K.
  const int64_t k_blocks = K == 0 ? 1 : ceil_div(K, B::KC);
  const int64_t kc_size = K == 0 ? 1 : ceil_div(K, k_blocks);

  // All of op(a) and op(b) is packed once: block kb (k0, kc) of op(b) starts at k0 * n_pad and its
  // panel jp at jp * kc * NR; likewise op(a) with m_pad and MR (no task repacks a panel another
  // task already packed).
  // One column panel (N <= NR: an output layer): each element of op(a) meets a single B panel, so
  // packing op(a) would copy it only to read it once. The micro-kernel reads it in place instead
  // (bitwise the same sums), and each task touches only its own rows.
  const bool direct_a = n_panels == 1;
  const int64_t a_si = g.trans_a ? 1 : K, a_sk = g.trans_a ? M : 1;
  const int64_t m_panels_all = ceil_div(M, MR);
  const int64_t m_pad = m_panels_all * MR;
  // One or two row panels (an output layer's dW; M <= 2 * MR): each B panel meets at most two A
  // panels, and packing op(b) - a pass over all of it, then a barrier - costs more than the
  // micro-kernel loses reading a row-major op(b) in place (rows of NR floats, ldb apart): 10x512x256
  // TN 117 -> 42-50 us. Not when a row of op(b) is a multiple of 4 KiB: the panel's rows then share
  // one L1 set (and few L2 sets), the second A panel finds nothing cached, and it measured up to 1.6x
  // slower (12x1024x1024); nor with more panels (2x slower at 96x4096x1024). Bitwise the same sums.
  // Likewise up to kDirectBSmallPanels row panels (M <= 144) when op(b) is at most
  // kDirectBSmallBytes: it stays in L1/L2 while it is read, and packing it is a large part of a
  // small GEMM (toggled in one process: 32x64x64 NN 1.05-1.22x, 64x128x64 1.18-1.29x, 64x256x128
  // 1.06-1.21x, 128x192x64 1.06-1.10x; at M = 256 it lost 4-7%, as packing pays off over more panels).
  // The partial last panel, if any, is still packed (its rows would run past N).
  constexpr int64_t kDirectBMaxPanels = 2, kDirectBSmallPanels = 24, kDirectBSmallBytes = int64_t{128} << 10;
  const bool small_b = m_panels_all <= kDirectBSmallPanels && K * N * static_cast<int64_t>(sizeof(T)) <= kDirectBSmallBytes;
  const bool direct_b = !direct_a && !g.trans_b && (m_panels_all <= kDirectBMaxPanels || small_b) &&
                        (N * static_cast<int64_t>(sizeof(T))) % 4096 != 0;
  const int64_t b_first_packed = direct_b ? N / NR : 0;  // panels before it are read in place
  // Below ~2^20 flops (a few microseconds) waking the pool costs more than it saves. On AVX-512 a
  // float A.B^T stays on one thread up to 2^21, where its transposing pack goes by 16x16 blocks
  // (pack_b_panel) and no task waits on another's pack groups: in one process, the two settings
  // alternating 30 times per shape, 64x128x64 11.7 -> 8.9 us (one thread faster in 30 of 30),
  // 96^3 16.2 -> 13.5 (30/30), 80x80x100 14.3 -> 12.9 (30/30), 128x96x64 12.1 -> 11.7 (23/30),
  // 64x64x128 9.6 -> 8.3 (19/30), 48x128x128 even; from 2^21 two threads won again (128x128x96
  // 22.9 -> 15.3 us). The other pairs, and the AVX2 path (64x128x64 A.B^T 14.4 -> 10.9 us on two
  // threads), gain from the second thread from 2^20.
  constexpr bool kOneThreadNT = std::is_same_v<T, float> && Simd<T>::W * sizeof(T) >= 64;
  const bool parallel = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) >=
                        (kOneThreadNT && g.trans_b && !g.trans_a ? 2097152.0 : 1048576.0);
  // A small GEMM (one thread, one k block) packs no op(a): its register-epilogue kernels read op(a)
  // in place, the same sums in the same order (toggled in one process on an AVX-512 Xeon, against
  // packing: 32x64x64 1.13-1.19x for every transpose pair, NN 0.94x -> 1.06x NumPy; 64x64x64
  // 1.16-1.25x; 32x128x100 1.05-1.15x). A panel whose rows are not a whole row class (33 = 2 x 12
  // + 9) still packs its A panel; a partial column panel reads whole MR-row panels in place too.
  // So does a threaded GEMM with one k block whose op(a) is row-major (each A panel row a run of
  // K elements: a cache line serves 64 bytes of k) and meets at most kDirectAMaxCols columns of op(b), where packing
  // it costs more than its strided reads (toggled in one process on the Xeon, AVX-512 / AVX2 path:
  // 256x512x784 A.Bt, the MLP's first layer, 1.05-1.09x / 1.05x; 256x512x512 1.04-1.05x /
  // 1.05-1.07x; 256x784x512 1.01-1.03x / 1.01-1.02x; 4096x64x256 1.30-1.34x / 1.20-1.22x; the
  // 784-512-512-10 training step 1.3%). Wider outputs reuse each packed panel more and lost
  // (256x1024x1024 A.Bt 0.94x, 33x4000x128 0.88x), as did a large transposed op(a), whose A
  // panel row is a cache line per k (1024^3 At.B 0.63x). A transposed op(a) of at most
  // kDirectATransMaxBytes is read in place too: there the pack cost more than the whole product,
  // as tasks sat waiting for each other's A groups (2 threads, separate processes, Xeon AVX-512:
  // 64x128x64 At.B 15.1-17.2 -> 6.5-7.6 us, NumPy 7.6; 96^3 25.5-26.9 -> 8.5-8.7 us, NumPy 11.9;
  // 128x256x128 54-59 -> 32 us; At.Bt 96^3 28-29 -> 15.4-15.9, 128x128x512 97 -> 66; 256^3 and
  // the MLP shapes unchanged; training steps 784-512-512-10/256, 784-128-64-10/64 and
  // 256-256-256-10/128 unchanged to 1% faster; the AVX2 path on the same Xeon: 64x128x64 At.B
  // 18.4-18.7 -> 9.2-9.9 us, 96^3 32-34 -> 14, 128x256x128 77-79 -> 59-62, the MLP shapes
  // unchanged). A backward dX GEMM with a relu_mask reads op(a) in
  // place too, through its masked epilogue (256x512x512 A.B 1.02-1.05x, the step +0-0.6%).
  // A relu_mask has its own register epilogue for the plain product (a backward dX GEMM's case);
  // with anything else the masked tiles go through store_tile.
  const bool masked_out = g.relu_mask && g.act == Act::identity && g.beta == 0.0 && !g.bias;
  constexpr int64_t kDirectAMaxCols = 800, kDirectATransMaxBytes = int64_t{256} << 10;
  // On AVX-512 a transposed op(a) is read in place on those terms too while its rows (M elements,
  // one cache line of a panel per k) are at most 2 KiB apart and it is at most 1 MiB: toggled in
  // one process on the Xeon (2 threads, 12-16 alternations), 256x512x784 At.B 1.04-1.06x,
  // 512x784x256 1.02-1.04x, 512x512x256 1.05-1.06x, 512^3 1.05x, 256x64x1024 1.17x; At.Bt
  // 256x512x512 1.06-1.08x, 256x784x512 1.04x. Rows 4 KiB or more apart (M = 1024-4096) lost
  // 9-47%, 512x784x1024 (2 MiB) 23%, and the AVX2 path (6-row tiles) 2-7%. The training step's
  // dW GEMMs (a_sums) keep packing: their sums then cost a pass of their own, and the step lost
  // 1.4-2.7%.
  const bool trans_a_narrow = Simd<T>::W * sizeof(T) >= 64 && M * static_cast<int64_t>(sizeof(T)) <= 2048 &&
                              M * K * static_cast<int64_t>(sizeof(T)) <= (int64_t{1} << 20);
  const bool a_in_place = k_blocks == 1 && !direct_a && (!g.relu_mask || masked_out) && !g.a_sums &&
                          (g.act == Act::identity || g.act == Act::relu) &&
                          (!parallel || ((!g.trans_a || trans_a_narrow) && N <= kDirectAMaxCols) ||
                           (g.trans_a && M * K * static_cast<int64_t>(sizeof(T)) <= kDirectATransMaxBytes));
  // Task grid over (row block, column block); block sizes only change how work is split.
  const int threads = parallel ? get_num_threads() : 1;
  int64_t mc = balanced_block(M, B::MC_MAX, MR);
  int64_t nc = balanced_block(N, B::NC_MAX, NR);
  // Enough tasks that a worker joining late still finds work: four per thread on AVX2, two on
  // AVX-512, where larger tasks reuse each packed panel over more tiles (toggled in one process on
  // a Xeon: 2 against 4 per thread +3-7% at the MLP shapes, 1024^3 unchanged; on AVX2 +0-1%).
  constexpr int64_t kTasksPerThread = Simd<T>::W * sizeof(T) >= 64 ? 2 : 4;
  while (parallel && ceil_div(M, mc) * ceil_div(N, nc) < kTasksPerThread * threads && (mc > MR || nc > NR)) {
    if (nc > NR && (nc >= mc || mc <= MR)) nc = ceil_div(ceil_div(nc, 2), NR) * NR;
    else mc = ceil_div(ceil_div(mc, 2), MR) * MR;
  }
  const int64_t m_blocks = ceil_div(M, mc), n_blocks = ceil_div(N, nc);
  // Pack units: groups of b_group_panels consecutive panels of op(b) (from b_first_packed on) and
  // of a_group_panels of op(a), per k block. No separate packing pass: a compute task packs the
  // groups it needs that no task has claimed yet, then waits for the ones other tasks are packing
  // (a flag per group: 0 free, 1 being packed, 2 packed). The packed bytes do not depend on which
  // task packs them.
  // Against a packing pass then a barrier: one pool wake-up and barrier less per call, and a panel
  // is often still in cache when its packer uses it (784-512-512-10 step ~1% faster, paired runs).
  // A group is at most a task's width in panels (groups may still straddle two tasks whose width
  // is above 8 and not a multiple of it): when tasks are narrower than 8 panels (M = 32, 64), a
  // group spanning two tasks made the second wait while the first packed all of it
  // (32x512x784 A.Bt 1.55x faster on AVX-512 and 1.22x on AVX2 with groups this size; 256-row
  // shapes unchanged).
  const int64_t a_group_panels = min_i64(8, mc / MR), b_group_panels = min_i64(8, nc / NR);
  const int64_t b_groups = ceil_div(n_panels - b_first_packed, b_group_panels);
  const int64_t a_groups = direct_a || a_in_place ? 0 : ceil_div(m_panels_all, a_group_panels);
  const int64_t groups_per_kb = b_groups + a_groups;
  const int64_t a_pad = a_groups > 0 ? m_pad : 0;  // op(a)'s packed copy, if it has one
  const size_t packed_bytes = (sizeof(T) * static_cast<size_t>(K * (n_pad + a_pad) + 64) + 63) / 64 * 64;
  char* packed = static_cast<char*>(
      thread_scratch(kScratchPackB, packed_bytes + sizeof(int32_t) * static_cast<size_t>(k_blocks * groups_per_kb)));
  T* packed_b = reinterpret_cast<T*>(packed);
  T* packed_a = packed_b + K * n_pad;
  int32_t* group_state = reinterpret_cast<int32_t*>(packed + packed_bytes);
  std::memset(group_state, 0, sizeof(int32_t) * static_cast<size_t>(k_blocks * groups_per_kb));

  auto pack_group = [&](bool is_b, int64_t group, int64_t kb) {
    const int64_t k0 = kb * kc_size, kc = min_i64(kc_size, K - k0);
    const int64_t panels = is_b ? b_group_panels : a_group_panels;
    const int64_t first = is_b ? b_first_packed + group * panels : group * panels;
    const int64_t end = min_i64(is_b ? n_panels : m_panels_all, first + panels);
    // Panels whose source rows run along the panel's width (op(b) not transposed, op(a)
    // transposed) are packed k-outer over all full panels of the group, so each source row is
    // read as one contiguous run instead of a 64-byte piece per panel.
    const bool rows_along_width = is_b ? !g.trans_b : g.trans_a;
    int64_t full_end = first;
    if (rows_along_width) {
      const int64_t width = is_b ? N : M;
      const int64_t unit = is_b ? NR : MR;
      full_end = min_i64(end, width / unit);
      if (full_end > first) {
        if (is_b) pack_rows_along_width<NR>(g.b, width, k0, kc, first, full_end, packed_b + k0 * n_pad);
        else pack_rows_along_width<MR>(g.a, width, k0, kc, first, full_end, packed_a + k0 * m_pad);
      } else {
        full_end = first;
      }
    }
    for (int64_t panel = full_end; panel < end; ++panel) {
      if (is_b) {
        pack_b_panel(g, panel, k0, kc, packed_b + k0 * n_pad + panel * kc * NR, !parallel);
      } else {
        const int64_t i0 = panel * MR;
        pack_a(g, i0, min_i64(MR, M - i0), k0, kc, packed_a + k0 * m_pad + panel * kc * MR);
      }
    }
    // The group's sums of op(a) (trans_a: columns of a), over all k, by whoever packs its first k
    // block: a has just been read, so its lines are in cache, and no pass over it is added.
    if (!is_b && g.a_sums && kb == 0)
      column_sums(g.a, K, M, first * MR, min_i64(M, end * MR), g.a_sums + first * MR);
  };
  // Groups [b0, b1) of op(b) and [a0, a1) of op(a) packed for k block kb: claim and pack the free
  // ones, then wait for those other tasks claimed. A task waits only on a task that is packing
  // (packing never waits), so this cannot deadlock, and one thread alone packs everything itself.
  auto ensure_packed = [&](int64_t kb, int64_t b0, int64_t b1, int64_t a0, int64_t a1) {
    int32_t* state = group_state + kb * groups_per_kb;
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = b0; i < b1 + (a1 - a0); ++i) {
        const bool is_b = i < b1;
        const int64_t group = is_b ? i : a0 + (i - b1);
        int32_t* s = state + (is_b ? group : b_groups + group);
        if (pass == 0) {
          int32_t expected = 0;
          if (__atomic_load_n(s, __ATOMIC_RELAXED) == 0 &&
              __atomic_compare_exchange_n(s, &expected, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            pack_group(is_b, group, kb);
            __atomic_store_n(s, 2, __ATOMIC_RELEASE);
          }
        } else {
          for (int spins = 0; __atomic_load_n(s, __ATOMIC_ACQUIRE) != 2; ++spins) {
            if (spins < 4096) cpu_relax();
            else std::this_thread::yield();
          }
        }
      }
    }
  };

  const T mask_scale = ops::dropout_scale<T>(g.mask_p);
  // A partial row panel (M not a multiple of MR: 256 = 21 x 12 + 4 on AVX-512) computes only the
  // first MR / 3 or 2 MR / 3 rows of its register tile when its rows fit (the packed rows past M
  // are zeros no output needs), and with exactly that many rows it stores through the register
  // epilogue as a full panel does. Rows are kRowsSmall, kRowsMid or MR.
  constexpr int kRowsSmall = MR / 3, kRowsMid = 2 * MR / 3;
  static_assert(kRowsSmall * 3 == MR, "partial-panel row counts are thirds of MR");
  // By row class (0: kRowsSmall, 1: kRowsMid, 2: MR): the kernels that park a tile's sums, and
  // the register-epilogue ones, null where store_tile applies. The masked epilogue takes the
  // relu_mask in the bias argument and the dropout scale in beta's.
  using TileKernel = void (*)(int64_t, const T*, const T*, int64_t, T*, bool);
  const TileKernel tile_kernels[3] = {micro_kernel<T, kRowsSmall>, micro_kernel<T, kRowsMid>, micro_kernel<T>};
  // The same for a last column panel of at most W columns (N = 784 = 24 x 32 + 16 on AVX-512):
  // one vector per row, half the FMAs, the same chains. On one thread that panel took 4.6% of
  // 512x784x256 A.B (perf) for 2% of its columns. Toggled in one process on the Xeon (Emerald
  // Rapids, AVX-512, 2 threads, 20 alternations): N = 784 shapes 0.98-1.02x (noise), 1000x784x1000
  // 1.016x, 256x528x784 A.Bt 1.04x.
  constexpr int W = Simd<T>::W;
  const TileKernel narrow_kernels[3] = {micro_kernel<T, kRowsSmall, 1>, micro_kernel<T, kRowsMid, 1>,
                                        micro_kernel<T, MR, 1>};
  // beta as T, as store_tile tests it: a double beta that rounds to zero in float must not read out
  // (0 * Inf is NaN) in one tile and skip it in another.
  const bool has_beta = static_cast<T>(g.beta) != T(0), has_bias = g.bias != nullptr;
  const OutKernel<T> out_kernels[3] = {
      masked_out ? micro_kernel_out_masked<T, kRowsSmall>
                 : g.relu_mask ? nullptr : pick_out_kernel<T, kRowsSmall>(g.act, has_beta, has_bias),
      masked_out ? micro_kernel_out_masked<T, kRowsMid>
                 : g.relu_mask ? nullptr : pick_out_kernel<T, kRowsMid>(g.act, has_beta, has_bias),
      masked_out ? micro_kernel_out_masked<T>
                 : g.relu_mask ? nullptr : pick_out_kernel<T>(g.act, has_beta, has_bias)};
  const DirectOutKernel<T> direct_out_kernels[3] = {
      !a_in_place ? nullptr
      : masked_out ? micro_kernel_out_masked_direct<T, kRowsSmall>
                   : pick_out_kernel<T, kRowsSmall, true>(g.act, has_beta, has_bias),
      !a_in_place ? nullptr
      : masked_out ? micro_kernel_out_masked_direct<T, kRowsMid>
                   : pick_out_kernel<T, kRowsMid, true>(g.act, has_beta, has_bias),
      !a_in_place ? nullptr
      : masked_out ? micro_kernel_out_masked_direct<T>
                   : pick_out_kernel<T, MR, true>(g.act, has_beta, has_bias)};
  const T alpha = static_cast<T>(g.alpha);
  const T beta_or_scale = masked_out ? mask_scale : static_cast<T>(g.beta);  // the out kernels' last argument
  auto rows_class = [](int64_t tile_rows) { return tile_rows <= kRowsSmall ? 0 : tile_rows <= kRowsMid ? 1 : 2; };

  parallel_for_if(parallel, m_blocks * n_blocks, [&](int64_t task) {
    const int64_t i0 = (task / n_blocks) * mc, j0 = (task % n_blocks) * nc;
    const int64_t rows = min_i64(mc, M - i0), cols = min_i64(nc, N - j0);
    const int64_t m_panels = ceil_div(rows, MR), c_panels = ceil_div(cols, NR);
    T* acc = static_cast<T*>(thread_scratch(kScratchAcc, sizeof(T) * static_cast<size_t>(m_panels * c_panels * MR * NR)));
    // The groups holding this task's panels: op(b) panels [j0 / NR, last_b], op(a) [i0 / MR, last_a].
    const int64_t last_b = (j0 + cols - 1) / NR, last_a = (i0 + rows - 1) / MR;
    const int64_t b0 = last_b < b_first_packed ? 0 : (max_i64(j0 / NR, b_first_packed) - b_first_packed) / b_group_panels;
    const int64_t b1 = last_b < b_first_packed ? 0 : (last_b - b_first_packed) / b_group_panels + 1;
    const bool no_a_pack = direct_a || a_in_place;
    const int64_t a0 = no_a_pack ? 0 : (i0 / MR) / a_group_panels, a1 = no_a_pack ? 0 : last_a / a_group_panels + 1;
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const int64_t k0 = kb * kc_size;
      const int64_t kc = min_i64(kc_size, K - k0);
      const bool first = kb == 0, last = kb == k_blocks - 1;
      ensure_packed(kb, b0, b1, a0, a1);
      const T* ap = no_a_pack ? nullptr : packed_a + k0 * m_pad + (i0 / MR) * kc * MR;
      for (int64_t jp = 0; jp < c_panels; ++jp) {
        const int64_t panel = j0 / NR + jp;
        const bool b_in_place = panel < b_first_packed;
        const T* bp = b_in_place ? g.b + k0 * N + panel * NR : packed_b + k0 * n_pad + panel * kc * NR;
        const int64_t ldb = b_in_place ? N : NR;
        const int64_t tile_cols = min_i64(NR, cols - jp * NR);
        const bool narrow = tile_cols <= W;
        for (int64_t ip = 0; ip < m_panels; ++ip) {
          T* tile = acc + (ip * c_panels + jp) * MR * NR;
          const int64_t tile_rows = min_i64(MR, rows - ip * MR);
          const int cls = rows_class(tile_rows);
          const int64_t cls_rows = cls == 2 ? MR : cls == 1 ? kRowsMid : kRowsSmall;
          const TileKernel tile_kernel = narrow ? narrow_kernels[cls] : tile_kernels[cls];
          if (a_in_place) {
            const int64_t r0 = i0 + ip * MR, c0 = j0 + jp * NR;
            if (tile_rows == cls_rows && tile_cols == NR) {
              const T* extra = masked_out ? g.relu_mask + r0 * N + c0 : g.bias ? g.bias + c0 : nullptr;
              direct_out_kernels[cls](kc, g.a + r0 * a_si + k0 * a_sk, a_si, a_sk, bp, ldb, g.out + r0 * N + c0, N,
                                      extra, alpha, beta_or_scale);
            } else if (tile_rows == MR) {  // the partial last column panel (packed, zero-padded): no A pack
              if (narrow) micro_kernel_direct<T, 1>(kc, g.a + r0 * a_si + k0 * a_sk, a_si, a_sk, bp, tile, false);
              else micro_kernel_direct(kc, g.a + r0 * a_si + k0 * a_sk, a_si, a_sk, bp, tile, false);
              store_tile(g, tile, NR, r0, c0, tile_rows, tile_cols);
            } else {
              T* a_panel = static_cast<T*>(thread_scratch(kScratchPackA, sizeof(T) * static_cast<size_t>(MR * kc)));
              pack_a(g, r0, tile_rows, k0, kc, a_panel);
              tile_kernel(kc, a_panel, bp, ldb, tile, false);
              store_tile(g, tile, NR, r0, c0, tile_rows, tile_cols);
            }
            continue;
          }
          if (direct_a) {
            const int64_t r0 = i0 + ip * MR;
            // At most W columns (an output layer of few classes, or one): a one-vector tile, the same
            // chains for the columns that exist (toggled in one process on the Xeon: 256x10x512
            // A.Bt 1.41x, 256x1x512 1.66x (1.36x on the AVX2 path, W = 8), 1024x10x784 1.67x).
            if (tile_rows == MR && narrow) {
              micro_kernel_direct<T, 1>(kc, g.a + r0 * a_si + k0 * a_sk, a_si, a_sk, bp, tile, !first);
            } else if (tile_rows == MR) {
              micro_kernel_direct(kc, g.a + r0 * a_si + k0 * a_sk, a_si, a_sk, bp, tile, !first);
            } else {  // rows past M do not exist: pack the short panel (zero rows) and use it
              T* a_panel = static_cast<T*>(thread_scratch(kScratchPackA, sizeof(T) * static_cast<size_t>(MR * kc)));
              pack_a(g, r0, tile_rows, k0, kc, a_panel);
              tile_kernel(kc, a_panel, bp, ldb, tile, !first);
            }
            if (last) store_tile(g, tile, NR, r0, j0 + jp * NR, tile_rows, tile_cols);
            continue;
          }
          const T* a_panel = ap + ip * kc * MR;
          if (last && out_kernels[cls] && tile_rows == cls_rows && tile_cols == NR) {
            const int64_t r0 = i0 + ip * MR, c0 = j0 + jp * NR;
            const T* extra = masked_out ? g.relu_mask + r0 * N + c0 : g.bias ? g.bias + c0 : nullptr;
            out_kernels[cls](kc, a_panel, bp, ldb, tile, !first, g.out + r0 * N + c0, N, extra, alpha, beta_or_scale);
            continue;
          }
          tile_kernel(kc, a_panel, bp, ldb, tile, !first);
          if (last) store_tile(g, tile, NR, i0 + ip * MR, j0 + jp * NR, tile_rows, tile_cols);
        }
      }
    }
  });
}

template void gemm<float>(const GemmArgs<float>&);
template void gemm<double>(const GemmArgs<double>&);

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
