// Elementwise kernels (activations, dropout, noise, random fills) and the bias gradient. Work is
// cut into fixed chunks of kElementwiseChunk elements (a multiple of 4, so a chunk starts on a
// Philox block): what an element gets depends only on its index, never on the thread count.
#include <cmath>
#include <type_traits>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports its own _mm512_undefined_* intrinsics as maybe-uninitialized (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "core/parallel.h"
#include "core/scratch.h"
#include "cpu/colsum.h"
#include "cpu/isa.h"
#include "cpu/lanes.h"
#include "cpu/stream.h"
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
  const bool stream = stream_output(n, out, x);
  for_chunks(n, [&](int64_t b, int64_t e) {
    write_out(out, b, e, stream, [&](int64_t s, int64_t len, T* __restrict dst) {
      const T* __restrict xs = x + s;
      if constexpr (std::is_same_v<T, float> && (A == Act::sigmoid || A == Act::tanh)) {
        // exp and a divide per element: explicit SIMD bundles (cpu/lanes.h), same math and bits
        // as ops::activate.
        // x's lines 2 KiB ahead, a piece of 128 elements at a time: the arithmetic keeps the core
        // too busy for the hardware prefetchers to stay ahead (8192 x 4096 on two Emerald Rapids
        // cores: sigmoid 10.2-10.7 -> 7.4-7.5 ms, tanh 9.6-10.1 -> 6.7-7.0; 1 KiB ahead a little
        // less, 4 KiB about the same).
        constexpr int64_t kPiece = 128, kAhead = 512;
        for (int64_t q = 0; q < len; q += kPiece) {
          for (int64_t l = 0; l < kPiece; l += 64 / static_cast<int64_t>(sizeof(float)))
            if (s + q + kAhead + l < n) __builtin_prefetch(xs + q + kAhead + l);
          map_lanes(xs + q, dst + q, min_i64(kPiece, len - q), [](auto v) __attribute__((always_inline)) {
            if constexpr (A == Act::sigmoid) return ops::sigmoid_t(v);
            else return ops::tanh_t(v);
          });
        }
      } else {
        for (int64_t i = 0; i < len; ++i) dst[i] = ops::activate<A>(xs[i]);
      }
    });
  });
}

template <Act A, class T>
void activation_backward_act(const T* __restrict g, const T* __restrict y, T* __restrict out, int64_t n) {
  const bool stream = stream_output(n, out, g, y);
  for_chunks(n, [&](int64_t b, int64_t e) {
    write_out(out, b, e, stream, [&](int64_t s, int64_t len, T* __restrict dst) {
      const T* __restrict gs = g + s;
      const T* __restrict ys = y + s;
      for (int64_t i = 0; i < len; ++i) dst[i] = ops::activate_backward<A>(gs[i], ys[i]);
    });
  });
}

// Philox4x32-10 for `count` consecutive blocks starting at `first_block`, written as words
// [4*k .. 4*k+3] of block k: the arithmetic of core/philox.h, with one block per 64-bit vector lane
// on AVX2/AVX-512 (vpmuludq gives the 32x32->64-bit products), scalar elsewhere. Only the low
// 32 bits of a lane are meaningful: vpmuludq reads nothing else, so the rounds never clear the
// high halves, and the output keeps just the low words.
#if defined(__AVX512F__)
struct PhiloxVec {
  using V = __m512i;
  static constexpr int kBlocks = 8;
  static V set1(uint64_t x) { return _mm512_set1_epi64(static_cast<long long>(x)); }
  static V mul(V a, V b) { return _mm512_mul_epu32(a, b); }
  // The high word of each lane to its low half by a dword shuffle (port 5) rather than a shift
  // (port 0, with the multiplies): the high half it leaves is never read.
  static V hi(V p) { return _mm512_shuffle_epi32(p, _MM_PERM_CDAB); }
  static V x3(V a, V b, V c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
  static V blocks(uint64_t first) { return _mm512_add_epi64(set1(first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)); }
  // Lane l of the result: low word of a's lane l, then low word of b's lane l.
  static V pair(V a, V b) { return _mm512_mask_blend_epi32(0xAAAA, a, _mm512_slli_epi64(b, 32)); }
  // Block l's four words are lane l of p01 then lane l of p23; words(...)[h] holds words 16h..16h+15.
  static void words(V p01, V p23, V (&w)[2]) {
    const V lo = _mm512_unpacklo_epi64(p01, p23), hi = _mm512_unpackhi_epi64(p01, p23);  // blocks 0,2,4,6 / 1,3,5,7
    w[0] = _mm512_permutex2var_epi64(lo, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), hi);
    w[1] = _mm512_permutex2var_epi64(lo, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), hi);
  }
  static void store_words(uint32_t* w, V p01, V p23) {
    V v[2];
    words(p01, p23, v);
    _mm512_storeu_si512(reinterpret_cast<void*>(w), v[0]);
    _mm512_storeu_si512(reinterpret_cast<void*>(w + 16), v[1]);
  }
};
#elif defined(__AVX2__)
struct PhiloxVec {
  using V = __m256i;
  static constexpr int kBlocks = 4;
  static V set1(uint64_t x) { return _mm256_set1_epi64x(static_cast<long long>(x)); }
  static V mul(V a, V b) { return _mm256_mul_epu32(a, b); }
  static V hi(V p) { return _mm256_srli_epi64(p, 32); }
  // a ^ (b ^ c): a (the fresh product) is last on the round's critical path, one xor after the
  // shift. The empty asm hides b ^ c from GCC, which otherwise reassociates to (a ^ b) ^ c and puts
  // two xors on that path (6 cycles a round instead of 5): dropout on AMD EPYC (Zen 4) through this
  // path, toggled in one process, 1.12-1.14x in cache and on 8192x4096, one thread or two.
  static V x3(V a, V b, V c) {
    V bc = _mm256_xor_si256(b, c);
    __asm__("" : "+x"(bc));
    return _mm256_xor_si256(a, bc);
  }
  static V blocks(uint64_t first) { return _mm256_add_epi64(set1(first), _mm256_set_epi64x(3, 2, 1, 0)); }
  static V pair(V a, V b) { return _mm256_blend_epi32(a, _mm256_slli_epi64(b, 32), 0xAA); }
  static void store_words(uint32_t* w, V p01, V p23) {
    const V lo = _mm256_unpacklo_epi64(p01, p23), hi = _mm256_unpackhi_epi64(p01, p23);  // blocks 0,2 / 1,3
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
  }
};
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
// Independent vectors in flight, enough to cover a round's latency (multiply, shift, xor: about 5
// cycles) with the vector pipes busy. AVX-512 (32 registers): 4, against 2 toggled in one process
// on AMD EPYC (Zen 4), dropout 1.17-1.18x on 256x512 (one thread or two), 8192x4096 1.11x on one
// thread and the same on two (bandwidth-bound there); 3 in between. AVX2 (16 registers): 2; 3 and
// 4 spill, 0.97x and 0.85x.
#if defined(__AVX512F__)
constexpr int kPhiloxGroups = 4;
#else
constexpr int kPhiloxGroups = 2;
#endif
constexpr int64_t kPhiloxStep = kPhiloxGroups * PhiloxVec::kBlocks;

// G vectors of P::kBlocks blocks from block `first`, through the ten rounds; emit as philox_vec.
template <int G, class Emit>
inline __attribute__((always_inline)) void philox_rounds(const PhiloxVec::V (&key0)[10], const PhiloxVec::V (&key1)[10],
                                                         PhiloxVec::V s0, PhiloxVec::V s1, uint64_t first,
                                                         int64_t done, const Emit& emit) {
  using P = PhiloxVec;
  using V = P::V;
  const V m0 = P::set1(0xD2511F53u), m1 = P::set1(0xCD9E8D57u);
  V c0[G], c1[G], c2[G], c3[G];
  for (int g = 0; g < G; ++g) {
    const V blk = P::blocks(first + static_cast<uint64_t>(g * P::kBlocks));
    c0[g] = blk;  // high half ignored
    c1[g] = P::hi(blk);
    c2[g] = s0;
    c3[g] = s1;
  }
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const V p0 = P::mul(m0, c0[g]), p1 = P::mul(m1, c2[g]);
      const V n0 = P::x3(P::hi(p1), c1[g], key0[round]), n2 = P::x3(P::hi(p0), c3[g], key1[round]);
      c1[g] = p1;  // lo(p1)
      c3[g] = p0;  // lo(p0)
      c0[g] = n0;
      c2[g] = n2;
    }
  }
  for (int g = 0; g < G; ++g) emit(done + g * P::kBlocks, P::pair(c0[g], c1[g]), P::pair(c2[g], c3[g]));
}

// The vector Philox: blocks [first_block, first_block + count) in groups of kPhiloxStep, then
// single vectors of P::kBlocks blocks, calling emit(done, p01, p23) for each vector (done: the
// index of its first block from first_block; p01, p23 as P::store_words takes them). Returns the
// blocks done, a multiple of P::kBlocks; the caller does the rest (fewer than P::kBlocks).
template <class Emit>
inline __attribute__((always_inline)) int64_t philox_vec(uint64_t seed, uint64_t stream, uint64_t first_block,
                                                         int64_t count, const Emit& emit) {
  using P = PhiloxVec;
  using V = P::V;
  const V s0 = P::set1(static_cast<uint32_t>(stream)), s1 = P::set1(static_cast<uint32_t>(stream >> 32));
  // The round keys, broadcast once per call: the rounds read them as memory operands.
  V key0[10], key1[10];
  {
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
      key0[round] = P::set1(k0);
      key1[round] = P::set1(k1);
    }
  }
  int64_t done = 0;
  for (; done + kPhiloxStep <= count; done += kPhiloxStep)
    philox_rounds<kPhiloxGroups>(key0, key1, s0, s1, first_block + static_cast<uint64_t>(done), done, emit);
  if constexpr (kPhiloxGroups > 1)
    for (; done + P::kBlocks <= count; done += P::kBlocks)
      philox_rounds<1>(key0, key1, s0, s1, first_block + static_cast<uint64_t>(done), done, emit);
  return done;
}
#endif

void philox_blocks(uint64_t seed, uint64_t stream, uint64_t first_block, int64_t count, uint32_t* __restrict words) {
  int64_t done = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
  done = philox_vec(seed, stream, first_block, count, [words](int64_t d, PhiloxVec::V p01, PhiloxVec::V p23)
                    __attribute__((always_inline)) { PhiloxVec::store_words(words + d * 4, p01, p23); });
#endif
  for (; done < count; ++done) {
    const Philox4 r = philox4x32_10(seed, stream, first_block + static_cast<uint64_t>(done));
    uint32_t* w = words + done * 4;
    w[0] = r.w[0];
    w[1] = r.w[1];
    w[2] = r.w[2];
    w[3] = r.w[3];
  }
}

#if defined(__AVX512F__)
// Dropout-style masking with the Philox words kept in registers, as the AVX2 version below
// describes: 32 elements per pair of vectors of blocks, the unsigned comparison into a mask
// register and a zero-masked store of f(x). Same words and comparison, so bitwise the same as the
// buffered path. With PhiloxVec's shuffle for the high words, dropout on 8192x4096 float32 went
// from 16-17 to 23-30 GB/s counted on two Xeon (Emerald Rapids) cores (two builds alternating).
template <class F>
int64_t masked_select_fused(const float* __restrict x, float* __restrict out, int64_t b, int64_t n, uint64_t seed,
                            uint64_t stream, int32_t threshold_s, const F& f) {
  const __m512i th = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(threshold_s) ^ 0x80000000u));
  constexpr int64_t kAhead = 512;
  return 4 * philox_vec(seed, stream, static_cast<uint64_t>(b / 4), n / 4,
                        [&](int64_t d, __m512i p01, __m512i p23) __attribute__((always_inline)) {
    const int64_t j = d * 4;  // 32 elements
    if (j + kAhead < n) {
      __builtin_prefetch(x + j + kAhead);
      __builtin_prefetch(x + j + kAhead + 16);
      __builtin_prefetch(out + j + kAhead, 1);
      __builtin_prefetch(out + j + kAhead + 16, 1);
    }
    __m512i w[2];
    PhiloxVec::words(p01, p23, w);
    for (int h = 0; h < 2; ++h) {
      const __mmask16 keep = _mm512_cmpge_epu32_mask(w[h], th);  // word >= threshold
      _mm512_storeu_ps(out + j + 16 * h, _mm512_maskz_mov_ps(keep, f(_mm512_loadu_ps(x + j + 16 * h))));
    }
  });
}
#elif defined(__AVX2__)
// Dropout-style masking with the Philox words kept in registers (no word buffer): out[j] =
// keep(word of element b + j) ? f(x[j]) : 0 for the whole vectors of blocks of [b, b + n),
// b a multiple of 4. Returns the elements done; the caller finishes the rest with for_word_runs.
// keep is word >= threshold (threshold_s sign-flipped, as keep_signed), f(xv) is a vector op.
// The same words and comparison as the buffered path, so bitwise the same; ~15% faster on one
// core in cache (Zen 3), where the word stores and reloads and the separate select loop go.
template <class F>
int64_t masked_select_fused(const float* __restrict x, float* __restrict out, int64_t b, int64_t n, uint64_t seed,
                            uint64_t stream, int32_t threshold_s, const F& f) {
  const __m256i th = _mm256_set1_epi32(threshold_s), sign = _mm256_set1_epi32(INT32_MIN);
  constexpr int64_t kAhead = 512;  // elements: as for_word_runs, fetch a run ahead of the words
  return 4 * philox_vec(seed, stream, static_cast<uint64_t>(b / 4), n / 4,
                        [&](int64_t d, __m256i p01, __m256i p23) __attribute__((always_inline)) {
    const int64_t j = d * 4;  // 16 elements: words as PhiloxVec::store_words orders them
    if (j + kAhead < n) {  // within this chunk's elements
      __builtin_prefetch(x + j + kAhead);
      __builtin_prefetch(out + j + kAhead, 1);
    }
    const __m256i lo = _mm256_unpacklo_epi64(p01, p23), hi = _mm256_unpackhi_epi64(p01, p23);
    const __m256i w[2] = {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
    for (int h = 0; h < 2; ++h) {
      // dropped iff flip(word) < threshold_s, i.e. word < threshold
      const __m256 drop = _mm256_castsi256_ps(_mm256_cmpgt_epi32(th, _mm256_xor_si256(w[h], sign)));
      _mm256_storeu_ps(out + j + 8 * h, _mm256_andnot_ps(drop, f(_mm256_loadu_ps(x + j + 8 * h))));
    }
  });
}
#endif

// Calls f(start, n, words) for consecutive runs of at most kWordBatch elements of [b, e), where
// words[j] is the Philox word of element start + j (word i%4 of block i/4; b is a multiple of 4).
// The callers' loops over a run see plain arrays, so they vectorise.
// With `in` / `out` (arrays indexed like the elements), the next run's lines of each are
// prefetched (out for writing) before this run's words are generated: the Philox arithmetic
// issues no loads, so without this the hardware prefetchers sit idle during it and the run's
// first loads and stores then wait on memory.
constexpr int64_t kWordBatch = 512;

template <class F, class In = float, class Out = float>
void for_word_runs(int64_t b, int64_t e, uint64_t seed, uint64_t offset, const F& f, const In* in = nullptr,
                   Out* out = nullptr) {
  alignas(64) uint32_t words[kWordBatch];
  for (int64_t start = b; start < e; start += kWordBatch) {
    const int64_t n = min_i64(e - start, kWordBatch);
    const int64_t next = start + kWordBatch, next_n = min_i64(e - next, kWordBatch);
    if (next_n > 0) {
      if (in)
        for (int64_t j = 0; j < next_n; j += 64 / static_cast<int64_t>(sizeof(In))) __builtin_prefetch(in + next + j, 0);
      if (out)
        for (int64_t j = 0; j < next_n; j += 64 / static_cast<int64_t>(sizeof(Out))) __builtin_prefetch(out + next + j, 1);
    }
    philox_blocks(seed, offset, static_cast<uint64_t>(start / 4), ceil_div(n, 4), words);
    f(start, n, static_cast<const uint32_t*>(words));
  }
}

// Like for_word_runs, with normals: z[j] is the normal of element start + j.
template <class F>
void for_normal_runs(int64_t b, int64_t e, uint64_t seed, uint64_t offset, const F& f) {
  alignas(64) uint32_t words[kWordBatch];
  alignas(64) float z[kWordBatch];
  for (int64_t start = b; start < e; start += kWordBatch) {
    const int64_t n = min_i64(e - start, kWordBatch);
    const int64_t blocks = ceil_div(n, 4);
    philox_blocks(seed, offset, static_cast<uint64_t>(start / 4), blocks, words);
    for (int64_t k = 0; k < 2 * blocks; ++k) ops::normal_pair(words[2 * k], words[2 * k + 1], z[2 * k], z[2 * k + 1]);
    f(start, n, static_cast<const float*>(z));
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

// Column sums in cpu/colsum.h's order: runs of 16 rows summed in T, runs added in double within
// fixed blocks of kReduceRowBlock rows, and the block partials added in double in block order.
// Tasks split row blocks and column chunks; a column's order never changes. Chunks are as wide as
// the task count allows (up to kMaxColChunk): a row's run of a chunk is read contiguously, and
// hardware prefetchers restart at every 4 KiB page, so long runs stream better (1024-column chunks
// reached ~20 GB/s here, 4096-column ones ~26).
template <class T>
void bias_grad(const T* grad, T* out, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  constexpr int64_t kMaxColChunk = 4096, kMinColChunk = 256;
  const int64_t row_blocks = ceil_div(rows, kReduceRowBlock);
  int64_t kColChunk = kMaxColChunk;  // only the split of work depends on the thread count
  while (kColChunk > kMinColChunk && row_blocks * ceil_div(cols, kColChunk) < 4 * static_cast<int64_t>(get_num_threads()))
    kColChunk /= 2;
  const int64_t col_chunks = ceil_div(cols, kColChunk);
  if (row_blocks == 0) {
    for (int64_t c = 0; c < cols; ++c) out[c] = T(0);
    return;
  }
  double* partial = static_cast<double*>(thread_scratch(kScratchReduce, sizeof(double) * static_cast<size_t>(row_blocks * cols)));
  parallel_for(row_blocks * col_chunks, [&](int64_t task) {
    const int64_t rb = task / col_chunks, cc = task % col_chunks;
    const int64_t r0 = rb * kReduceRowBlock, r1 = min_i64(rows, r0 + kReduceRowBlock);
    const int64_t c0 = cc * kColChunk, c1 = min_i64(cols, c0 + kColChunk);
    // Runs of kColumnSumRun rows are summed in T (vector-wide, no conversions) and each run is
    // added to the block's double partial: float32 error stays within 16 * eps * sum|g|.
    T acc[kMaxColChunk];
    column_block_sums(grad + c0, cols, r0, r1, c1 - c0, acc, partial + rb * cols + c0);
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

// The unsigned test word >= threshold as a signed compare of sign-flipped values, which AVX2 has.
inline int32_t flip_sign(uint32_t u) { return static_cast<int32_t>(u ^ 0x80000000u); }
inline bool keep_signed(uint32_t word, int32_t threshold_s) { return flip_sign(word) >= threshold_s; }

template <class T>
void dropout(const T* x, T* out, int64_t n, double p, uint64_t seed, uint64_t offset) {
  const int32_t threshold_s = flip_sign(ops::drop_threshold(p));
  const T scale = ops::dropout_scale<T>(p);
  for_chunks(n, [&](int64_t b, int64_t e) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      const __m512 sc = _mm512_set1_ps(scale);
      b += masked_select_fused(x + b, out + b, b, e - b, seed, offset, threshold_s,
                               [sc](__m512 v) __attribute__((always_inline)) { return _mm512_mul_ps(v, sc); });
    }
#elif defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>) {
      const __m256 sc = _mm256_set1_ps(scale);
      b += masked_select_fused(x + b, out + b, b, e - b, seed, offset, threshold_s,
                               [sc](__m256 v) __attribute__((always_inline)) { return _mm256_mul_ps(v, sc); });
    }
#endif
    for_word_runs(b, e, seed, offset, [&](int64_t s, int64_t len, const uint32_t* __restrict w) {
      const T* __restrict xs = x + s;
      T* __restrict os = out + s;
      const int32_t th = threshold_s;  // locals, not captured references: the loop vectorises
      const T sc = scale;
      for (int64_t j = 0; j < len; ++j) {
        const T v = xs[j] * sc;  // read unconditionally: a plain load, not a masked one
        os[j] = keep_signed(w[j], th) ? v : T(0);
      }
    }, x, out);
  });
}

// Where y = dropout(relu(z)) > 0 the element was kept and z > 0: the gradient is grad * scale (the
// product dropout's backward forms). Elsewhere it is 0: dropped, or relu's derivative is 0 (z <= 0,
// or NaN, where relu's backward gives 0 too). No mask to regenerate.
template <class T>
void relu_dropout_backward(const T* grad_out, const T* y, T* out, int64_t n, double p) {
  const T scale = ops::dropout_scale<T>(p);
  const bool stream = stream_output(n, out, grad_out, y);
  for_chunks(n, [&](int64_t b, int64_t e) {
    write_out(out, b, e, stream, [&](int64_t s, int64_t len, T* dst) {
      const T* g = grad_out + s;  // out may be grad_out: each element is read before it is written
      const T* yy = y + s;
      const T sc = scale;
      for (int64_t i = 0; i < len; ++i) dst[i] = ops::relu_dropout_grad(g[i], yy[i], sc);
    });
  });
}

void dropout_mask(uint8_t* out, int64_t n, double p, uint64_t seed, uint64_t offset) {
  const uint32_t threshold = ops::drop_threshold(p);
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_word_runs(b, e, seed, offset, [&](int64_t s, int64_t len, const uint32_t* __restrict w) {
      uint8_t* __restrict os = out + s;
      for (int64_t j = 0; j < len; ++j) os[j] = w[j] >= threshold ? 1 : 0;
    });
  });
}

template <class T>
void random_uniform(T* out, int64_t n, double low, double high, uint64_t seed, uint64_t offset) {
  const T lo = static_cast<T>(low), width = static_cast<T>(high - low);
  // lo + width * u can round up to high; the largest value below high keeps [low, high).
  const T hi = static_cast<T>(high);
  const T below_hi = low < high ? std::nextafter(hi, lo) : lo;
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_word_runs(b, e, seed, offset, [&](int64_t s, int64_t len, const uint32_t* __restrict w) {
      T* __restrict os = out + s;
      const T l = lo, wd = width, h = hi, bh = below_hi;  // locals, not captured references: the loop vectorises
      for (int64_t j = 0; j < len; ++j) {
        const T v = l + wd * static_cast<T>(ops::uniform01(w[j]));
        os[j] = v < h ? v : bh;
      }
    });
  });
}

template <class T>
void random_normal(T* out, int64_t n, double mean, double std, uint64_t seed, uint64_t offset) {
  const T mu = static_cast<T>(mean), sigma = static_cast<T>(std);
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_normal_runs(b, e, seed, offset, [&](int64_t s, int64_t len, const float* __restrict z) {
      T* __restrict os = out + s;
      const T m = mu, sd = sigma;
      for (int64_t j = 0; j < len; ++j) os[j] = m + sd * static_cast<T>(z[j]);
    });
  });
}

template <class T>
void add_noise(const T* x, T* out, int64_t n, NoiseKind kind, double level, uint64_t seed, uint64_t offset) {
  if (kind == NoiseKind::mask) {
    const int32_t threshold_s = flip_sign(ops::drop_threshold(level));
    for_chunks(n, [&](int64_t b, int64_t e) {
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>)
        b += masked_select_fused(x + b, out + b, b, e - b, seed, offset, threshold_s,
                                 [](__m512 v) __attribute__((always_inline)) { return v; });
#elif defined(__AVX2__)
      if constexpr (std::is_same_v<T, float>)
        b += masked_select_fused(x + b, out + b, b, e - b, seed, offset, threshold_s,
                                 [](__m256 v) __attribute__((always_inline)) { return v; });
#endif
      for_word_runs(b, e, seed, offset, [&](int64_t s, int64_t len, const uint32_t* __restrict w) {
        const T* __restrict xs = x + s;
        T* __restrict os = out + s;
        const int32_t th = threshold_s;
        for (int64_t j = 0; j < len; ++j) {
          const T v = xs[j];
          os[j] = keep_signed(w[j], th) ? v : T(0);
        }
      }, x, out);
    });
  } else {
    const T sigma = static_cast<T>(level);
    for_chunks(n, [&](int64_t b, int64_t e) {
      for_normal_runs(b, e, seed, offset, [&](int64_t s, int64_t len, const float* __restrict z) {
        const T* __restrict xs = x + s;
        T* __restrict os = out + s;
        const T sd = sigma;
        for (int64_t j = 0; j < len; ++j) os[j] = xs[j] + sd * static_cast<T>(z[j]);
      });
    });
  }
}

#define FASTMLP_INSTANTIATE(T)                                                                              \
  template void activation<T>(const T*, T*, int64_t, Act);                                                   \
  template void activation_backward<T>(const T*, const T*, T*, int64_t, Act);                                \
  template void bias_grad<T>(const T*, T*, int64_t, int64_t);                                                \
  template void dropout<T>(const T*, T*, int64_t, double, uint64_t, uint64_t);                               \
  template void relu_dropout_backward<T>(const T*, const T*, T*, int64_t, double);                           \
  template void add_noise<T>(const T*, T*, int64_t, NoiseKind, double, uint64_t, uint64_t);                  \
  template void random_uniform<T>(T*, int64_t, double, double, uint64_t, uint64_t);                          \
  template void random_normal<T>(T*, int64_t, double, double, uint64_t, uint64_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
