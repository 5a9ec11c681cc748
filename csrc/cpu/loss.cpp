// Fused losses: one pass over the logits writes d loss / d logits (with the 1/rows factor) and
// yields each row's loss in double. Row losses are summed in fixed blocks of kReduceRowBlock rows
// and the block partials added in block order, so the loss is bitwise the same on any thread
// count (float squared error on AVX2/AVX-512 sums fixed blocks of elements instead, see
// squared_error_f32). The gradient buffer may be the logits themselves: every element is read
// before its slot is written.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/parallel.h"
#include "core/scratch.h"
#include "cpu/isa.h"
#include "cpu/lanes.h"
#include "cpu/stream.h"
#include "ops/loss.h"

#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports its own _mm512_undefined_* intrinsics as maybe-uninitialized (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {
namespace {

// Independent accumulators inside a row: a fixed summation order the compiler can vectorise.
constexpr int64_t kLanes = 8;

double combine_lanes(const double* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Sum of row_loss(r) over all rows: each block of kReduceRowBlock rows in row order, then the
// blocks in block order. Tasks take several blocks when rows are short (about
// kElementwiseChunk elements per task); the partials, and so the result, do not depend on it.
// With a TaskState, each task makes one (on its own stack), passes it to row_loss(r, state) for
// its rows in order and calls state.finish() at its end: e.g. one streamed output for the task's
// consecutive rows, fenced once.
struct NoTaskState {
  void finish() {}
};
template <class TaskState = NoTaskState, class RowLoss>
double sum_row_losses(int64_t rows, int64_t cols, const RowLoss& row_loss) {
  const int64_t blocks = ceil_div(rows, kReduceRowBlock);
  if (blocks == 0) return 0.0;
  double* partial = static_cast<double*>(thread_scratch(kScratchReduce, sizeof(double) * static_cast<size_t>(blocks)));
  const int64_t blocks_per_task = max_i64(1, kElementwiseChunk / (kReduceRowBlock * max_i64(cols, 1)));
  parallel_for(ceil_div(blocks, blocks_per_task), [&](int64_t task) {
    TaskState state;
    const int64_t b1 = min_i64(blocks, (task + 1) * blocks_per_task);
    for (int64_t b = task * blocks_per_task; b < b1; ++b) {
      const int64_t r1 = min_i64(rows, (b + 1) * kReduceRowBlock);
      double s = 0.0;
      for (int64_t r = b * kReduceRowBlock; r < r1; ++r) {
        if constexpr (std::is_same_v<TaskState, NoTaskState>) s += row_loss(r);
        else s += row_loss(r, state);
      }
      partial[b] = s;
    }
    state.finish();
  });
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += partial[b];
  return total;
}

template <class T>
T row_max(const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (n >= VecF::kWidth) {  // lane_max(v, m) is the scalar v > m ? v : m of the loop below
      VecF acc = VecF::load(x);
      int64_t c = VecF::kWidth;
      for (; c + VecF::kWidth <= n; c += VecF::kWidth) acc = lane_max(VecF::load(x + c), acc);
      alignas(64) float lanes[VecF::kWidth];
      acc.store(lanes);
      float r = lanes[0];
      for (int k = 1; k < VecF::kWidth; ++k) r = lanes[k] > r ? lanes[k] : r;
      for (; c < n; ++c) r = x[c] > r ? x[c] : r;
      return r;
    }
  }
  T m[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) m[k] = x[0];
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) m[k] = x[c + k] > m[k] ? x[c + k] : m[k];
  for (; c < n; ++c) m[0] = x[c] > m[0] ? x[c] : m[0];
  T r = m[0];
  for (int64_t k = 1; k < kLanes; ++k) r = m[k] > r ? m[k] : r;
  return r;
}

template <class T>
double row_sum(const T* x, int64_t n) {
  double acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(x[c + k]);
  for (; c < n; ++c) acc[c % kLanes] += static_cast<double>(x[c]);
  return combine_lanes(acc);
}

// One double sum per lane of float bundles, kept as vectors of four (a plain double[W] cost a rep
// stos and a division loop per row: most of the time on rows of ten classes). add() widens a
// bundle's lanes, total() combines the lanes pairwise in a fixed order.
struct LaneSums {
  typedef double D4 __attribute__((vector_size(32)));
  typedef float F4 __attribute__((vector_size(16)));
  static constexpr int NA = VecF::kWidth / 4;
  static_assert(VecF::kWidth % 4 == 0 && NA >= 1, "bundles hold whole groups of four lanes");
  D4 acc[NA];

  LaneSums() {
#pragma GCC unroll 8
    for (int v = 0; v < NA; ++v) acc[v] = D4{0.0, 0.0, 0.0, 0.0};
  }
  // Each group of four lanes widened in registers (GCC lowered a generic float-to-double vector
  // conversion to two-lane ones through the stack): sigmoid_cross_entropy, which adds a bundle
  // every four, 1.03-1.05x; the softmax 1.01-1.06x (old and new code in one binary, both built
  // with -falign-loops=64 so that the copies' loop alignment does not decide).
  void add(const VecF& bundle) {
    constexpr int kQuarters = kNativeBytes / 16;  // groups of four lanes in a native vector
#pragma GCC unroll 8
    for (int k = 0; k < kParts; ++k) {
      D4* a = acc + k * kQuarters;
      add_quarter<0>(a[0], bundle.p[k]);
      if constexpr (kQuarters > 1) add_quarter<1>(a[1], bundle.p[k]);
      if constexpr (kQuarters > 2) {
        add_quarter<2>(a[2], bundle.p[k]);
        add_quarter<3>(a[3], bundle.p[k]);
      }
    }
  }
  template <int Q>
  static void add_quarter(D4& a, const NativeF& v) {
#if defined(__AVX2__) || defined(__AVX512F__)
    const F4 q = __builtin_shufflevector(v, v, 4 * Q, 4 * Q + 1, 4 * Q + 2, 4 * Q + 3);
    a += _mm256_cvtps_pd(q);
#else
    static_assert(Q == 0, "a 16-byte vector is one group of four");
    a += __builtin_convertvector(v, D4);
#endif
  }
  void add_lane(int k, float value) { acc[k / 4][k % 4] += static_cast<double>(value); }
  // Lanes combined pairwise, halving the width: lane k += lane k + width.
  double total() {
#pragma GCC unroll 8
    for (int width = NA / 2; width >= 1; width /= 2)
#pragma GCC unroll 8
      for (int v = 0; v < width; ++v) acc[v] += acc[v + width];
    return (acc[0][0] + acc[0][2]) + (acc[0][1] + acc[0][3]);
  }
};

// g = exp(x - m) in SIMD bundles (lane for lane what the scalar exp_t gives), and its sum: runs of kRunBundles bundles summed lane-wise in
// float (each lane adds at most kRunBundles values in [0, 1]), each run's lanes added to one double
// accumulator per lane, the lanes combined in a fixed order. `prefetch` (n floats: a later row's
// logits) is fetched into cache on the way, and `prefetch_w` (that row's gradient) for writing:
// its lines are not in cache, and the store that first touches each would wait on memory.
double exp_shifted_and_sum(const float* x, float m, float* g, int64_t n, const float* prefetch, float* prefetch_w) {
  constexpr int W = VecF::kWidth;
  constexpr int64_t kRunBundles = 16;
  LaneSums sums;
  auto fetch_ahead = [prefetch, prefetch_w](int64_t c) __attribute__((always_inline)) {
    if (((c * 4) & 63) == 0) {  // once per 64-byte line
      __builtin_prefetch(prefetch + c);
      __builtin_prefetch(prefetch_w + c, 1);
    }
  };
  // x - m is never above 0 (or is NaN): exp_t's NonPositive form, without the upper clamp (1.02-1.06x,
  // toggled in one build with aligned loops; bitwise the same).
  int64_t c = 0;
  while (c + W <= n) {
    VecF run = ops::exp_t<VecF, true>(VecF::load(x + c) - VecF(m));
    run.store(g + c);
    fetch_ahead(c);
    c += W;
    for (int64_t b = 1; b < kRunBundles && c + W <= n; ++b, c += W) {
      fetch_ahead(c);
      const VecF e = ops::exp_t<VecF, true>(VecF::load(x + c) - VecF(m));
      e.store(g + c);
      run = run + e;
    }
    sums.add(run);
  }
  if (c < n) {  // the tail (all of a row narrower than a bundle): one bundle, padded with m
    alignas(64) float tail[W];
    for (int k = 0; k < W; ++k) tail[k] = c + k < n ? x[c + k] : m;
    ops::exp_t<VecF, true>(VecF::load(tail) - VecF(m)).store(tail);
    for (int k = 0; c < n; ++k, ++c) {  // c is a multiple of W plus k
      g[c] = tail[k];
      sums.add_lane(k, tail[k]);
    }
  }
  return sums.total();
}

#if defined(__AVX2__)
// Float squared error on AVX2 and AVX-512: d = pred - target in double, the gradient d / rows
// rounded once to float, d² summed in double. The rows are one flat range of elements, split into
// blocks of kElementwiseChunk elements (so that few wide rows still fill the threads); within a
// block, sixteen accumulators each take the elements at one offset mod 16 from the block's start
// (fused d·d + acc; AVX-512's eight-lane and AVX2's four-lane vectors give the same bits) and
// combine in a fixed tree, and the last elements past a multiple of 16 are summed in order after
// it. The blocks' partials add in block order, so the loss is bitwise the same on any thread count
// and whether or not the gradient is streamed.
double squared_error_f32(const float* pred, const float* target, float* grad, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  if (n == 0) return 0.0;
  const double inv_rows = 1.0 / static_cast<double>(rows);
  constexpr int64_t block = kElementwiseChunk;
  const int64_t blocks = ceil_div(n, block);
  double* partial = static_cast<double*>(thread_scratch(kScratchReduce, sizeof(double) * static_cast<size_t>(blocks)));
  // A large gradient is computed a piece at a time into a staging buffer in L1 and streamed out
  // from there in whole lines (cpu/stream.h: small pieces, so that one piece's loads overlap the
  // last one's streaming); the pieces start at multiples of 16 elements from the block, so the
  // accumulators see the same elements either way.
  const bool stream = stream_output(n, grad, pred, target);
  constexpr int64_t kPiece = kStreamPieceBytes / static_cast<int64_t>(sizeof(float));
  [[maybe_unused]] constexpr int64_t kAhead = 256;
  parallel_for(blocks, [&](int64_t b) {
    WholeLineStream<float, kPiece> out;
    const __m256d inv = _mm256_set1_pd(inv_rows);
#if defined(__AVX512F__)
    const __m512d inv8 = _mm512_set1_pd(inv_rows);
#endif
    const int64_t e0 = b * block, e1 = min_i64(n, e0 + block);
    __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    double tail = 0.0;
#if defined(__AVX512F__)
    __m512d acc8[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
#endif
    for (int64_t s = e0; s < e1; s += kPiece) {
      const int64_t len = min_i64(kPiece, e1 - s);
      const float* p = pred + s;
      const float* t = target + s;
      float* g = stream ? out.slot(grad + s) : grad + s;
      int64_t c = 0;
#if defined(__AVX512F__)
      for (; c + 16 <= len; c += 16) {
        // The inputs' lines 1 KiB ahead (8192 x 4096 on 2 threads: 1.10x against none; 2 and 4
        // KiB ahead about the same): the loop is long enough that the hardware prefetchers fall
        // behind at each 4 KiB page.
        if (s + c + kAhead + 16 <= n) {
          __builtin_prefetch(p + c + kAhead);
          __builtin_prefetch(t + c + kAhead);
        }
        const __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(p + c)), _mm512_cvtps_pd(_mm256_loadu_ps(t + c)));
        const __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(p + c + 8)), _mm512_cvtps_pd(_mm256_loadu_ps(t + c + 8)));
        _mm256_storeu_ps(g + c, _mm512_cvtpd_ps(_mm512_mul_pd(d0, inv8)));
        _mm256_storeu_ps(g + c + 8, _mm512_cvtpd_ps(_mm512_mul_pd(d1, inv8)));
        acc8[0] = _mm512_fmadd_pd(d0, d0, acc8[0]);
        acc8[1] = _mm512_fmadd_pd(d1, d1, acc8[1]);
      }
#endif
      for (; c + 16 <= len; c += 16) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {  // each group read before its gradient is written (in place)
          const __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + c + 4 * j)),
                                          _mm256_cvtps_pd(_mm_loadu_ps(t + c + 4 * j)));
          _mm_storeu_ps(g + c + 4 * j, _mm256_cvtpd_ps(_mm256_mul_pd(d, inv)));
          acc[j] = _mm256_fmadd_pd(d, d, acc[j]);
        }
      }
      for (; c < len; ++c) {  // only in a block's last piece
        const double d = ops::squared_error_diff(p[c], t[c]);
        g[c] = static_cast<float>(d * inv_rows);
        tail += d * d;
      }
      if (stream) out.commit(len);
    }
#if defined(__AVX512F__)
    {
      alignas(64) double u[8];  // offsets k and k + 8
      _mm512_store_pd(u, _mm512_add_pd(acc8[0], acc8[1]));
      acc[0] = _mm256_load_pd(u);
      acc[1] = _mm256_load_pd(u + 4);
    }
#endif
    // offsets k and k + 8, then k and k + 4, then the four lanes pairwise
    const __m256d v = _mm256_add_pd(_mm256_add_pd(acc[0], acc[2]), _mm256_add_pd(acc[1], acc[3]));
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, v);
    partial[b] = ((lanes[0] + lanes[2]) + (lanes[1] + lanes[3])) + tail;
    if (stream) out.finish();
  });
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += partial[b];
  return 0.5 * total * inv_rows;
}
#endif

}  // namespace

template <class T>
double squared_error(const T* pred, const T* target, T* grad, int64_t rows, int64_t cols) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) return squared_error_f32(pred, target, grad, rows, cols);
#endif
  const double inv_rows = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
  const double total = sum_row_losses(rows, cols, [&](int64_t r) {
    const T* p = pred + r * cols;
    const T* t = target + r * cols;
    T* g = grad + r * cols;
    double acc[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes)
      for (int64_t k = 0; k < kLanes; ++k) {
        const double d = ops::squared_error_diff(p[c + k], t[c + k]);
        g[c + k] = static_cast<T>(d * inv_rows);
        acc[k] += d * d;
      }
    for (; c < cols; ++c) {
      const double d = ops::squared_error_diff(p[c], t[c]);
      g[c] = static_cast<T>(d * inv_rows);
      acc[c % kLanes] += d * d;
    }
    return combine_lanes(acc);
  });
  return 0.5 * total * inv_rows;
}

// A task's state for rows whose streamed stores it fences once, at its end.
struct StreamFenceState {
  bool streamed = false;
  void finish() const {
    if (streamed) stream_fence();
  }
};

// Row r: m = max(x), e = exp(x - m) (written into grad, or a scratch row when grad is streamed),
// loss = log(sum e) + m - x[label],
// grad = e / (sum e · rows) - onehot / rows.
template <class T>
double softmax_cross_entropy(const T* logits, const int64_t* labels, T* grad, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return 0.0;  // cols == 0 with rows > 0 has no valid label: refused earlier
  const double inv_rows = 1.0 / static_cast<double>(rows);
  const T onehot = static_cast<T>(inv_rows);
  // The rows whose lines are fetched while a row computes: about 8 KiB on (rows of 1024 floats: two
  // rows on, 1.13-1.19x against the next row, toggled in one process; 4096: the next row, 1.05x
  // against two), at least the next row and at most 8.
  const int64_t ahead = max_i64(1, min_i64(8, 8192 / max_i64(1, cols * static_cast<int64_t>(sizeof(T)))));
  // A large float gradient on AVX2 and AVX-512 is streamed (cpu/stream.h): each row's exp goes to
  // a scratch row in L1/L2, the scaled row is streamed from there, so grad's lines are never read,
  // and each task fences once at its end. Rows of 256-16384 columns: toggled in one process on two
  // AMD EPYC (Zen 4) cores, 8192 x 4096 1.16x through the AVX2 path; AVX-512 1024 columns 1.26-1.28x
  // and 4096 1.05-1.07x for a fence per task against one per row, 512 and 256 columns streamed
  // 1.14-1.19x (0.93x and 0.73x on Emerald Rapids with a fence per row), but 128 0.88-0.91x and 64
  // 0.75-0.84x: there the per-row staging outweighs the traffic saved.
#if defined(__AVX2__)
  const bool stream = std::is_same_v<T, float> && cols >= 256 && cols <= 16384 && stream_output(rows * cols, grad, logits);
#else
  constexpr bool stream = false;
#endif
  const double total = sum_row_losses<StreamFenceState>(rows, cols, [&](int64_t r, [[maybe_unused]] StreamFenceState& fence) {
    const T* x = logits + r * cols;
    T* g = grad + r * cols;
    const int64_t label = labels[r];
    const T x_label = x[label];
    const T m = row_max(x, cols);
    double s;
    if constexpr (std::is_same_v<T, float>) {
      // A later row's logits and gradient lines are fetched while this row computes (its three
      // passes run from cache: without this the max pass waits on memory, then the exp pass on the
      // arithmetic).
      const bool fetch = r + ahead < rows;
      if (stream) {
        // Streamed rows fetch only the next row: rows of 1024 floats two rows on lost on AMD EPYC
        // (Zen 4, 32 KiB 8-way L1), toggled in one process at 16384 and 32768 x 1024: the next row
        // 1.07-1.16x on two threads, 1.11-1.15x on one; and 8 KiB on, as the plain path, 0.78x at
        // 256 and 512 columns, 0.76-0.83x at 1024 (the plain-store path showed no difference).
        float* e = static_cast<float*>(thread_scratch(kScratchAcc, sizeof(float) * static_cast<size_t>(cols)));
        s = exp_shifted_and_sum(x, m, e, cols, r + 1 < rows ? x + cols : x, e);
        const T scale = static_cast<T>(inv_rows / s);
        write_out<false>(g, 0, cols, true, [&](int64_t s0, int64_t len, T* __restrict dst) {  // fenced at the task's end
          const T* __restrict es = e + s0;
          for (int64_t c = 0; c < len; ++c) dst[c] = es[c] * scale;
          if (label >= s0 && label < s0 + len) dst[label - s0] -= onehot;
        });
        fence.streamed = true;
        return ops::loss_log(s) + (static_cast<double>(m) - static_cast<double>(x_label));
      }
      s = exp_shifted_and_sum(x, m, g, cols, fetch ? x + ahead * cols : x, fetch ? g + ahead * cols : g);
    } else {
      for (int64_t c = 0; c < cols; ++c) g[c] = ops::loss_exp(x[c] - m);
      s = row_sum(g, cols);
    }
    const T scale = static_cast<T>(inv_rows / s);
    for (int64_t c = 0; c < cols; ++c) g[c] *= scale;
    g[label] -= onehot;
    return ops::loss_log(s) + (static_cast<double>(m) - static_cast<double>(x_label));
  });
  return total * inv_rows;
}

// sigmoid_cross_entropy's float rows go in runs of this many columns.
constexpr int64_t kSceRun = 256;
// A task's streamed gradient; finish() fences, and does nothing when nothing was streamed.
struct SceTaskState : WholeLineStream<float, kSceRun> {
  void finish() {
    if (dst != nullptr) WholeLineStream<float, kSceRun>::finish();
  }
};

template <class T>
double sigmoid_cross_entropy(const T* logits, const T* targets, T* grad, int64_t rows, int64_t cols) {
  const double inv_rows = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
  // A large float gradient is computed a run at a time into an L1 staging buffer and streamed out
  // in whole lines (cpu/stream.h), one stream per task across its consecutive rows. Toggled in one
  // process on two AMD EPYC (Zen 4) cores, 8192 x 4096 in all: 1.11-1.15x at 64-4096 columns, but
  // 0.91-0.96x at 3 and 17, where the per-row work outweighs the traffic saved.
  const bool stream = std::is_same_v<T, float> && cols >= 64 && stream_output(rows * cols, grad, logits, targets);
  const double total = sum_row_losses<SceTaskState>(rows, cols, [&](int64_t r, SceTaskState& streamed) {
    const T* x = logits + r * cols;
    const T* t = targets + r * cols;
    T* g = grad + r * cols;
    if constexpr (std::is_same_v<T, float>) {
      // Runs of kRun columns in SIMD bundles: the float parts (exp, one divide), the gradient, and
      // the two sums of the loss. The log1p terms come in factored form
      // (ops::sigmoid_cross_entropy_factors): per lane, the u of up to kProduct bundles are
      // multiplied (each in [1, 2], so the product stays below 2^16) and take one log, so the row
      // pays one log per kProduct elements a lane instead of one each. The linear terms
      // relu(x) - t*x are summed per lane in float over kLinear bundles (a few roundings of
      // non-negative terms for t in [0, 1]) and then in double; where such a float sum is not
      // finite (an overflow, or an infinite or NaN input) its kLinear bundles' terms are summed
      // again by the double formula, so the float sums never lose what the double one keeps (a
      // gradient written over the logits tests each bundle's |x| and |t| instead, before its store).
      // Checked once per kLinear bundles instead of testing |x| and |t| in every bundle: toggled
      // in one process on two AMD EPYC (Zen 4) cores, 8192 x 4096 1.02-1.03x on the AVX-512 path
      // and 1.06x on the AVX2 one (1.05x from cache).
      // The gradient is d / rows rounded once from the exact product: when 1/rows is a power of
      // two the float product is that (a power-of-two scale is exact, and a subnormal result
      // rounds once either way), else the product is formed in double in a second loop.
      constexpr int64_t kRun = kSceRun;
      constexpr int kProduct = 16, kLinear = 4;
      constexpr float kFloatSafe = 0x1p60f;
      constexpr int64_t kAhead = 2 * kRun;
      static_assert(kRun % VecF::kWidth == 0, "runs hold whole bundles");
      LaneSums linear_sums;
      const bool in_place = !stream && static_cast<const void*>(grad) == static_cast<const void*>(logits);
      const bool scale_in_float = static_cast<double>(static_cast<float>(inv_rows)) == inv_rows;
      const VecF inv_rows_f(static_cast<float>(inv_rows));
      alignas(64) float dlogit[kRun], exps[kRun];
      double log_total = 0.0, tail_linear = 0.0;
      auto add_lanes = [&log_total](const VecF& v) {
        alignas(64) float lanes[VecF::kWidth];
        v.store(lanes);
        for (int k = 0; k < VecF::kWidth; ++k) log_total += static_cast<double>(lanes[k]);
      };
      for (int64_t c0 = 0; c0 < cols; c0 += kRun) {
        const int64_t len = min_i64(kRun, cols - c0);
        const int64_t full = len - len % VecF::kWidth;
        float* gs = stream ? streamed.slot(g + c0) : g + c0;  // where the run's gradient goes
        // Two short loops instead of one long one (which kept too few of its long dependency
        // chains in flight): the exps of the run, then the divide, the gradient, the linear terms
        // and the log factors (one product and one log a lane per kProduct bundles). Each bundle's
        // x and t are read before its gradient is written (the gradient may be the logits).
        // Elements from x + c0 to the end of the arrays: the prefetch below stays inside them.
        const int64_t left = (rows - r) * cols - c0;
        for (int64_t j = 0; j < full; j += VecF::kWidth) {
          // The lines two runs (2 KiB) ahead, into the next row (rows are contiguous): a row of
          // 4 KiB is a page, which the hardware prefetchers do not cross, and this loop is too busy
          // to wait (32768 x 1024 on 2 threads: 1.06-1.07x against none; 1 KiB ahead the same;
          // 0.96x from cache).
          if (j + kAhead + VecF::kWidth <= left) {
#pragma GCC unroll 4
            for (int64_t l = 0; l < VecF::kWidth; l += 16) {
              __builtin_prefetch(x + c0 + j + kAhead + l);
              __builtin_prefetch(t + c0 + j + kAhead + l);
              if (!stream) __builtin_prefetch(g + c0 + j + kAhead + l, 1);
            }
          }
          ops::sigmoid_cross_entropy_exp(VecF::load(x + c0 + j)).store(exps + j);
        }
        auto factors = [&](auto scaled, auto in_place) {
          VecF linear(0.0f);
          int in_linear = 0;
          int64_t linear_from = 0;  // the first column (from c0) of the bundles in `linear`
          // The float sum of the bundles since linear_from, or where it is not finite (a term or
          // the sum overflowed, or x or t is infinite or NaN) their terms again in double (in
          // place, where x is gone, the bundles were tested as they came: see below).
          auto flush_linear = [&](int64_t j_end) {
            if (decltype(in_place)::value || !lane_any((linear - linear) != VecF(0.0f))) {
              linear_sums.add(linear);
            } else {
              for (int64_t jj = linear_from; jj < j_end; ++jj)
                tail_linear += ops::sigmoid_cross_entropy_linear(x[c0 + jj], t[c0 + jj]);
            }
            linear = VecF(0.0f);
            in_linear = 0;
            linear_from = j_end;
          };
          for (int64_t j0 = 0; j0 < full; j0 += kProduct * VecF::kWidth) {
            const int64_t j1 = min_i64(full, j0 + kProduct * VecF::kWidth);
            VecF product(1.0f), corr_sum(0.0f);
            for (int64_t j = j0; j < j1; j += VecF::kWidth) {
              const VecF xv = VecF::load(x + c0 + j), tv = VecF::load(t + c0 + j);
              VecF d, u, corr;
              ops::sigmoid_cross_entropy_factors_from_exp(VecF::load(exps + j), xv, tv, d, u, corr);
              const VecF term = lane_select(xv > VecF(0.0f), xv, VecF(0.0f)) - tv * xv;
              if constexpr (decltype(in_place)::value) {
                // The gradient overwrites x as it goes, so a flush could not read it again: a
                // bundle with |x| or |t| above kFloatSafe (or infinite, or NaN) takes the double
                // formula at once, and no float term or sum can overflow (|t*x| <= 2^120, kLinear
                // terms of at most 2^121).
                if (!lane_any(lane_max(lane_abs(xv), lane_abs(tv)) > VecF(kFloatSafe))) {
                  linear = linear + term;
                } else {
                  alignas(64) float xs[VecF::kWidth], ts[VecF::kWidth];
                  xv.store(xs);
                  tv.store(ts);
                  for (int k = 0; k < VecF::kWidth; ++k) tail_linear += ops::sigmoid_cross_entropy_linear(xs[k], ts[k]);
                }
              } else {
                linear = linear + term;
              }
              if (++in_linear == kLinear) flush_linear(j + VecF::kWidth);
              if constexpr (decltype(scaled)::value) (d * inv_rows_f).store(gs + j);
              else d.store(dlogit + j);
              product = product * u;
              corr_sum = corr_sum + corr;
            }
            add_lanes(ops::log_t(product) + corr_sum);
          }
          if (in_linear > 0) flush_linear(full);
        };
        if (in_place) {
          if (scale_in_float) factors(std::true_type{}, std::true_type{});
          else factors(std::false_type{}, std::true_type{});
        } else {
          if (scale_in_float) factors(std::true_type{}, std::false_type{});
          else factors(std::false_type{}, std::false_type{});
        }
        if (full < len) {
          // The last len - full (< one bundle) columns as one bundle padded with x = +inf, t = 0
          // (there e = 0, u = 1 and corr = 0: nothing added), so a narrow row (a few labels) costs
          // one vector exp and log, not one scalar exp and log per label (3-17 columns: ~13 ns an
          // element before).
          constexpr int W = VecF::kWidth;
          alignas(64) float xs[W], ts[W], ds[W], us[W];
          const int64_t tail = len - full;
          for (int k = 0; k < W; ++k) {
            xs[k] = k < tail ? x[c0 + full + k] : __builtin_inff();
            ts[k] = k < tail ? t[c0 + full + k] : 0.0f;
          }
          VecF d, u, corr;
          ops::sigmoid_cross_entropy_factors(VecF::load(xs), VecF::load(ts), d, u, corr);
          (ops::log_t(u) + corr).store(us);  // the padding lanes hold 0: not added
          d.store(ds);
          for (int64_t k = 0; k < tail; ++k) {
            log_total += static_cast<double>(us[k]);
            tail_linear += ops::sigmoid_cross_entropy_linear(xs[k], ts[k]);
            if (scale_in_float) gs[full + k] = ds[k] * static_cast<float>(inv_rows);
            else dlogit[full + k] = ds[k];
          }
        }
        if (!scale_in_float)
          for (int64_t k = 0; k < len; ++k) gs[k] = static_cast<float>(static_cast<double>(dlogit[k]) * inv_rows);
        if (stream) streamed.commit(len);
      }
      return (linear_sums.total() + tail_linear) + log_total;
    } else {
      double acc[kLanes] = {};
      int64_t c = 0;
      for (; c + kLanes <= cols; c += kLanes)
        for (int64_t k = 0; k < kLanes; ++k) {
          T d;
          acc[k] += ops::sigmoid_cross_entropy_term(x[c + k], t[c + k], d);
          g[c + k] = static_cast<T>(static_cast<double>(d) * inv_rows);
        }
      for (; c < cols; ++c) {
        T d;
        acc[c % kLanes] += ops::sigmoid_cross_entropy_term(x[c], t[c], d);
        g[c] = static_cast<T>(static_cast<double>(d) * inv_rows);
      }
      return combine_lanes(acc);
    }
  });
  return total * inv_rows;
}

#define FASTMLP_INSTANTIATE(T)                                                                  \
  template double squared_error<T>(const T*, const T*, T*, int64_t, int64_t);                    \
  template double softmax_cross_entropy<T>(const T*, const int64_t*, T*, int64_t, int64_t);      \
  template double sigmoid_cross_entropy<T>(const T*, const T*, T*, int64_t, int64_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
