// Fused losses: a warp per row writes d loss / d logits (with the 1/rows factor) and the row's loss
// in double; each block sums its fixed set of rows in a fixed order into one partial, and a
// one-block kernel adds the partials in order and writes the mean into a device scalar (no host
// sync). Element math from ops/loss.h; --fmad=false keeps it rounding like the CPU.
#include <cmath>
#include <type_traits>

#include "cuda/check.cuh"
#include "ops/loss.h"

namespace fastmlp {
namespace cuda {
namespace {

constexpr int kWarps = kBlockThreads / 32;               // rows in flight per block, one per warp
// Rows each warp handles, in order: one (a batch of 256: 256 warps instead of 32, each with one
// row's latency chain, not eight: the loss kernel took 12.6 us of a training step on the H200, then
// 4.2; and at 65536 x 1024 softmax cross-entropy on the H100, 227 us with eight rows per warp, 214
// with four, 209-211 with one or two: many short blocks leave no partly filled last wave), eight
// from 2^20 rows, where the one-block finish would otherwise add up 2^17 partials and more. It
// depends on rows alone, so the partial sums are fixed for a shape and the result is deterministic.
inline int64_t rows_per_warp(int64_t rows) { return rows >= (int64_t{1} << 20) ? 8 : 1; }

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;  // the same value in every lane: each step adds the same two operands, commutatively
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, m);
    v = o > v ? o : v;
  }
  return v;
}

// Visits a lane's columns c = lane, lane + 32, ... in order, four at a time: load(c) for the four,
// then use(c, value) for each in order. Four loads are in flight per lane instead of one (the loops
// were latency-bound: 37% of the copy bandwidth), the order of every sum is unchanged, and each
// batch reads before it writes, so an output aliasing its input (grad == logits) stays correct.
template <class T, class Load, class Use>
__device__ __forceinline__ void for_lane_columns(int lane, int64_t cols, const Load& load, const Use& use) {
  int64_t c = lane;
  for (; c + 96 < cols; c += 128) {
    T v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = load(c + 32 * j);
#pragma unroll
    for (int j = 0; j < 4; ++j) use(c + 32 * j, v[j]);
  }
  for (; c < cols; c += 32) use(c, load(c));
}

// Runs row_loss(r, lane) (a warp-wide call returning the row's loss in every lane) over this
// block's rows, and writes their sum, in row order, to partial[blockIdx.x].
template <class RowLoss>
__device__ void block_rows(const RowLoss& row_loss, int64_t rows, int64_t per_warp, double* partial) {
  __shared__ double warp_totals[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * per_warp;
  double total = 0.0;
  for (int64_t k = 0; k < per_warp; ++k) {
    const int64_t r = first + k;
    if (r < rows) total += row_loss(r, lane);
  }
  if (lane == 0) warp_totals[warp] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = warp_totals[0];
    for (int w = 1; w < kWarps; ++w) s += warp_totals[w];
    partial[blockIdx.x] = s;
  }
}

struct SquaredErrorRow {
  const float* pred;
  const float* target;
  float* grad;
  int64_t cols;
  double inv_rows;
  __device__ double operator()(int64_t r, int lane) const {
    const int64_t base = r * cols;
    double acc = 0.0;
    for_lane_columns<float2>(
        lane, cols, [&](int64_t c) { return make_float2(pred[base + c], target[base + c]); },
        [&](int64_t c, float2 v) {
          const double d = ops::squared_error_diff(v.x, v.y);
          grad[base + c] = static_cast<float>(d * inv_rows);
          acc += d * d;
        });
    return warp_sum(acc);
  }
};

struct SigmoidCrossEntropyRow {
  const float* logits;
  const float* targets;
  float* grad;
  int64_t cols;
  double inv_rows;
  __device__ double operator()(int64_t r, int lane) const {
    const int64_t base = r * cols;
    double acc = 0.0;
    for_lane_columns<float2>(
        lane, cols, [&](int64_t c) { return make_float2(logits[base + c], targets[base + c]); },
        [&](int64_t c, float2 v) {
          float d;
          acc += ops::sigmoid_cross_entropy_term(v.x, v.y, d);
          grad[base + c] = static_cast<float>(static_cast<double>(d) * inv_rows);
        });
    return warp_sum(acc);
  }
};

// m = max(x), e = exp(x - m) (parked in grad), loss = log(sum e) + m - x[label],
// grad = e / (sum e * rows) - onehot / rows. A label outside [0, cols) gives a NaN row.
// grad may be the logits: each lane reads its own elements before writing them, and x[label] is
// read by every lane before the first write (the shuffles of warp_max order it).
template <class Label>
struct SoftmaxArgs {
  const float* logits;
  const Label* labels;
  float* grad;
  int64_t cols;
  double inv_rows;
  float onehot;

  // Row r's logits, gradient and label; false (the row's gradient set to NaN) for a label
  // outside [0, cols).
  __device__ bool row(int64_t r, int lane, const float*& x, float*& g, int64_t& label) const {
    x = logits + r * cols;
    g = grad + r * cols;
    label = static_cast<int64_t>(labels[r]);
    if (label >= 0 && label < cols) return true;
    for (int64_t c = lane; c < cols; c += 32) g[c] = NAN;
    return false;
  }
};

template <class Label>
struct SoftmaxCrossEntropyRow : SoftmaxArgs<Label> {
  __device__ double operator()(int64_t r, int lane) const {
    const double inv_rows = this->inv_rows;
    const float onehot = this->onehot;
    const int64_t cols = this->cols;
    const float* x;
    float* g;
    int64_t label;
    if (!this->row(r, lane, x, g, label)) return NAN;
    const float x_label = x[label];
    __syncwarp();  // every lane has read x[label] before any writes g (grad may alias logits)
    float m = -INFINITY;
    const auto load_x = [&](int64_t c) { return x[c]; };
    for_lane_columns<float>(lane, cols, load_x, [&](int64_t, float v) { m = v > m ? v : m; });
    m = warp_max(m);
    double acc = 0.0;
    for_lane_columns<float>(lane, cols, load_x, [&](int64_t c, float v) {
      const float e = ops::loss_exp(v - m);
      g[c] = e;
      acc += static_cast<double>(e);
    });
    const double s = warp_sum(acc);
    const float scale = static_cast<float>(inv_rows / s);
    for_lane_columns<float>(lane, cols, [&](int64_t c) { return g[c]; }, [&](int64_t c, float e) {
      float v = e * scale;
      if (c == label) v = v - onehot;
      g[c] = v;
    });
    return ops::loss_log(s) + (static_cast<double>(m) - static_cast<double>(x_label));
  }
};

// The same loss for rows of at most kChunks * 128 columns, cols % 4 == 0 and 16-byte aligned rows:
// the row is read once into registers (lane l holds columns 4 (32 j + l) .. + 3 of chunk j, float4
// loads all in flight together) and the gradient written once, instead of three passes over memory
// (max, exp, scale). Sums run over the lane's columns in chunk order, then across lanes, so the
// result is fixed for a shape.
template <class Label, int kChunks>
struct SoftmaxCrossEntropyRowRegs : SoftmaxArgs<Label> {
  __device__ double operator()(int64_t r, int lane) const {
    const double inv_rows = this->inv_rows;
    const float onehot = this->onehot;
    const int64_t cols = this->cols;
    const float* x;
    float* g;
    int64_t label;
    if (!this->row(r, lane, x, g, label)) return NAN;
    const float x_label = x[label];
    float4 v[kChunks];
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t c = 4 * (32 * j + lane);
      v[j] = c < cols ? *reinterpret_cast<const float4*>(x + c) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    }
    __syncwarp();  // every lane has read its row and x[label] before any writes g (grad may alias logits)
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) m = fmaxf(fmaxf(fmaxf(m, v[j].x), fmaxf(v[j].y, v[j].z)), v[j].w);
    m = warp_max(m);
    double acc = 0.0;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      if (4 * (32 * j + lane) < cols) {
        v[j].x = ops::loss_exp(v[j].x - m);
        v[j].y = ops::loss_exp(v[j].y - m);
        v[j].z = ops::loss_exp(v[j].z - m);
        v[j].w = ops::loss_exp(v[j].w - m);
        acc += static_cast<double>(v[j].x);
        acc += static_cast<double>(v[j].y);
        acc += static_cast<double>(v[j].z);
        acc += static_cast<double>(v[j].w);
      }
    }
    const double s = warp_sum(acc);
    const float scale = static_cast<float>(inv_rows / s);
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t c = 4 * (32 * j + lane);
      if (c < cols) {
        float4 o = make_float4(v[j].x * scale, v[j].y * scale, v[j].z * scale, v[j].w * scale);
        if (label == c) o.x -= onehot;
        if (label == c + 1) o.y -= onehot;
        if (label == c + 2) o.z -= onehot;
        if (label == c + 3) o.w -= onehot;
        *reinterpret_cast<float4*>(g + c) = o;
      }
    }
    return ops::loss_log(s) + (static_cast<double>(m) - static_cast<double>(x_label));
  }
};

// loss = float(scale * sum of partial[0..count)), added in a fixed order by one block.
__device__ void finish_loss(const double* partial, int64_t count, double scale, float* loss) {
  __shared__ double sums[kBlockThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kBlockThreads) s += __ldcg(partial + i);  // other blocks wrote them
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int half = kBlockThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(sums[0] * scale);
}

// The row losses into partial[block]; with `ticket` the block that finishes last also adds them up
// (finish_loss: the same order, so the same loss as the separate kernel) and puts the ticket
// back to zero, so one kernel does both.
template <class RowLoss>
__global__ void __launch_bounds__(kBlockThreads)
    row_loss_kernel(RowLoss row_loss, int64_t rows, int64_t per_warp, double* partial, unsigned* ticket,
                    double scale, float* loss) {
  block_rows(row_loss, rows, per_warp, partial);
  if (!ticket) return;
  __shared__ bool last;
  if (threadIdx.x == 0) {
    __threadfence();  // this block's partial is visible device-wide before its arrival
    last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  finish_loss(partial, gridDim.x, scale, loss);
}

__global__ void __launch_bounds__(kBlockThreads)
    finish_loss_kernel(const double* partial, int64_t count, double scale, float* loss) {
  finish_loss(partial, count, scale, loss);
}

constexpr int kLossTicket = kTickets - 2;  // the losses' arrival counter (the GEMM's start at 0)

template <class RowLoss>
void launch_loss(const RowLoss& row_loss, int64_t rows, double scale, float* loss, cudaStream_t stream,
                 const char* name) {
  const int64_t per_warp = rows_per_warp(rows);
  const int64_t blocks = ceil_div(rows, kWarps * per_warp);
  double* partial = static_cast<double*>(scratch(sizeof(double) * static_cast<size_t>(blocks), stream, name));
  // One kernel with the arrival counter; two (a finishing block of its own) when a capture comes
  // before the stream's counters exist.
  unsigned* counters = tickets(stream, name, /*optional=*/true);
  unsigned* ticket = counters ? counters + kLossTicket : nullptr;
  row_loss_kernel<<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(row_loss, rows, per_warp, partial,
                                                                               ticket, scale, loss);
  check_launch(name);
  if (!ticket) {
    finish_loss_kernel<<<1, kBlockThreads, 0, stream>>>(partial, blocks, scale, loss);
    check_launch(name);
  }
}

void zero_loss(float* loss, cudaStream_t stream) {
  check(cudaMemsetAsync(loss, 0, sizeof(float), stream), "cudaMemsetAsync");
}

// Rows held in registers where they fit (at most 1024 columns, cols % 4 == 0, aligned), else the
// three-pass row loss.
// wrap(row) is the row loss launched: the row itself, or a WeightedRow around it.
template <class Label, class Wrap>
void softmax_ce_typed(const float* logits, const Label* labels, float* grad, float* loss, int64_t rows, int64_t cols,
                      double inv_rows, float onehot, cudaStream_t stream, const Wrap& wrap) {
  const char* name = "softmax_cross_entropy";
  const SoftmaxArgs<Label> args{logits, labels, grad, cols, inv_rows, onehot};
  if (cols % 4 == 0 && cols <= 1024 && aligned16(logits) && aligned16(grad)) {
    const auto go = [&](auto chunks) {
      constexpr int kChunks = decltype(chunks)::value;
      const SoftmaxCrossEntropyRowRegs<Label, kChunks> row{{args}};
      launch_loss(wrap(row), rows, inv_rows, loss, stream, name);
    };
    if (cols <= 128) go(std::integral_constant<int, 1>{});
    else if (cols <= 256) go(std::integral_constant<int, 2>{});
    else if (cols <= 512) go(std::integral_constant<int, 4>{});
    else go(std::integral_constant<int, 8>{});
    return;
  }
  launch_loss(wrap(SoftmaxCrossEntropyRow<Label>{{args}}), rows, inv_rows, loss, stream, name);
}

struct Unweighted {
  template <class RowLoss>
  const RowLoss& operator()(const RowLoss& row) const { return row; }
};

// Sample weights (the Trainer's, as Trainer._forward_backward applies them on the CPU): with W the
// sum of the batch's weights, row r's gradient (already divided by rows) is multiplied by
// float(w_r * (rows / W)) and its loss counts w_r * l_r * (rows / W), so the mean the finish forms
// is sum(w_r * l_r) / W. W == 0 gives a zero loss and multiplies every gradient by 0.
__global__ void __launch_bounds__(kBlockThreads) weight_sum_kernel(const double* w, int64_t rows, double* total) {
  __shared__ double sums[kBlockThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < rows; i += kBlockThreads) s += w[i];
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int half = kBlockThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = sums[0];
}

template <class RowLoss>
struct WeightedRow {
  RowLoss inner;
  const double* weights;
  const double* total;  // weight_sum_kernel's W, written before this kernel starts
  float* grad;
  int64_t cols;
  double rows;
  __device__ double operator()(int64_t r, int lane) const {
    const double l = inner(r, lane);
    __syncwarp();  // the row's gradient, written by every lane, is complete before it is rescaled
    const double w_total = *total;
    const double k = w_total > 0.0 ? weights[r] * (rows / w_total) : 0.0;
    const float f = static_cast<float>(k);
    float* g = grad + r * cols;
    for (int64_t c = lane; c < cols; c += 32) g[c] = g[c] * f;
    return w_total > 0.0 ? l * k : 0.0;
  }
};

struct Weighted {
  const double* weights;
  const double* total;
  float* grad;
  int64_t cols, rows;
  template <class RowLoss>
  WeightedRow<RowLoss> operator()(const RowLoss& row) const {
    return WeightedRow<RowLoss>{row, weights, total, grad, cols, static_cast<double>(rows)};
  }
};

}  // namespace

void squared_error(const float* pred, const float* target, float* grad, float* loss, int64_t rows, int64_t cols,
                   Stream stream) {
  if (rows == 0) return zero_loss(loss, stream);
  const double inv_rows = 1.0 / static_cast<double>(rows);
  launch_loss(SquaredErrorRow{pred, target, grad, cols, inv_rows}, rows, 0.5 * inv_rows, loss, stream,
              "squared_error");
}

void softmax_cross_entropy(const float* logits, const void* labels, int labels_itemsize, float* grad, float* loss,
                           int64_t rows, int64_t cols, Stream stream) {
  if (rows == 0) return zero_loss(loss, stream);
  const double inv_rows = 1.0 / static_cast<double>(rows);
  const float onehot = static_cast<float>(inv_rows);
  if (labels_itemsize == 8)
    softmax_ce_typed(logits, static_cast<const int64_t*>(labels), grad, loss, rows, cols, inv_rows, onehot, stream,
                     Unweighted{});
  else
    softmax_ce_typed(logits, static_cast<const int32_t*>(labels), grad, loss, rows, cols, inv_rows, onehot, stream,
                     Unweighted{});
}

void sigmoid_cross_entropy(const float* logits, const float* targets, float* grad, float* loss, int64_t rows,
                           int64_t cols, Stream stream) {
  if (rows == 0) return zero_loss(loss, stream);
  const double inv_rows = 1.0 / static_cast<double>(rows);
  launch_loss(SigmoidCrossEntropyRow{logits, targets, grad, cols, inv_rows}, rows, inv_rows, loss, stream,
              "sigmoid_cross_entropy");
}

void weighted_loss(LossKind kind, const float* logits, const void* target, int labels_itemsize,
                   const double* weights, double* total, float* grad, float* loss, int64_t rows, int64_t cols,
                   Stream stream) {
  const char* name = "weighted_loss";
  if (rows == 0) return zero_loss(loss, stream);
  weight_sum_kernel<<<1, kBlockThreads, 0, stream>>>(weights, rows, total);
  check_launch(name);
  const double inv_rows = 1.0 / static_cast<double>(rows);
  const Weighted wrap{weights, total, grad, cols, rows};
  switch (kind) {
    case LossKind::squared:
      launch_loss(wrap(SquaredErrorRow{logits, static_cast<const float*>(target), grad, cols, inv_rows}), rows,
                  0.5 * inv_rows, loss, stream, name);
      break;
    case LossKind::sigmoid_cross_entropy:
      launch_loss(wrap(SigmoidCrossEntropyRow{logits, static_cast<const float*>(target), grad, cols, inv_rows}), rows,
                  inv_rows, loss, stream, name);
      break;
    case LossKind::softmax_cross_entropy: {
      const float onehot = static_cast<float>(inv_rows);
      if (labels_itemsize == 8)
        softmax_ce_typed(logits, static_cast<const int64_t*>(target), grad, loss, rows, cols, inv_rows, onehot, stream,
                         wrap);
      else
        softmax_ce_typed(logits, static_cast<const int32_t*>(target), grad, loss, rows, cols, inv_rows, onehot, stream,
                         wrap);
      break;
    }
  }
}

}  // namespace cuda
}  // namespace fastmlp
