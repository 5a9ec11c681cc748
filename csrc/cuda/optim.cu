// Fused optimizer steps (SGD, AdaGrad, RMSprop, Adam/AdamW): one grid-stride pass over the flat
// parameter arena with the element math of ops/optim.h. Each thread finds its element's segment
// by binary search over the device segment table and keeps the range's coefficients until it
// leaves that range. Coefficients are formed in double and cast exactly as csrc/cpu/optim.cpp does,
// and --fmad=false keeps the float math unfused, so a step matches the CPU's bit for bit (when the
// step number and bias corrections come from the host; computed on the device from step_ptr,
// Adam's pow may differ from glibc's in the last bit of a double).
//
// Capturable schedule: with step_ptr every block reads t = step_ptr[0] + 1 before its updates, and
// the block that finishes last (an arrival counter) stores t back, after every block has read it,
// so no block sees a half-advanced step and no second kernel is launched. An empty update, or one
// captured on a stream whose counters do not exist yet, advances it with a one-thread kernel.
#include <cmath>

#include "cuda/check.cuh"
#include "ops/optim.h"

namespace fastmlp {
namespace cuda {
namespace {

// Hyper-parameters of one range: a segment's row, or the scalar arguments in a gap.
struct RangeParams {
  double lr_scale, weight_decay, l1;
};

// The range [begin, end) of the segment table (or of a gap between segments) holding element i.
struct RangeCursor {
  int64_t begin = 0, end = 0;
  RangeParams params{1.0, 0.0, 0.0};

  __device__ bool contains(int64_t i) const { return i >= begin && i < end; }

  __device__ void seek(int64_t i, int64_t n, const DeviceSegments& seg, double weight_decay, double l1) {
    const int64_t* bounds = seg.bounds;
    // First segment ending after i; ends are non-decreasing (rows sorted and disjoint).
    int64_t lo = 0, hi = seg.count;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (bounds[2 * mid] + bounds[2 * mid + 1] <= i) lo = mid + 1;
      else hi = mid;
    }
    if (lo < seg.count && bounds[2 * lo] <= i) {
      begin = bounds[2 * lo];
      end = begin + bounds[2 * lo + 1];
      const double* v = seg.values + 3 * lo;
      params = RangeParams{v[0], v[1], v[2]};
    } else {
      begin = lo > 0 ? bounds[2 * (lo - 1)] + bounds[2 * (lo - 1) + 1] : 0;
      end = lo < seg.count ? bounds[2 * lo] : n;
      params = RangeParams{1.0, weight_decay, l1};
    }
  }
};

__device__ __forceinline__ ops::Regularisation<float> regularisation(double weight_decay, double l1) {
  ops::Regularisation<float> r;
  r.weight_decay = static_cast<float>(weight_decay);
  r.l1 = static_cast<float>(l1);
  r.use_weight_decay = weight_decay != 0.0;
  r.use_l1 = l1 != 0.0;
  return r;
}

// The step number of this launch: step_ptr[0] + 1 when the schedule lives on the device.
__device__ __forceinline__ int64_t current_step(const DeviceSchedule& sched, int64_t host_step) {
  return sched.step_ptr ? *sched.step_ptr + 1 : host_step;
}
__device__ __forceinline__ double current_lr(const DeviceSchedule& sched, double host_lr) {
  return sched.lr_ptr ? static_cast<double>(*sched.lr_ptr) : host_lr;
}

__global__ void advance_step_kernel(int64_t* step_ptr) { *step_ptr += 1; }

constexpr int kStepTicket = kTickets - 1;  // the optimizers' arrival counter (the GEMM's start at 0)

// The end of every optimizer kernel: with a device step, the last block to arrive advances it.
// Each block's threads have read the step (current_step) before the barrier; the fence orders
// those reads and the block's updates before its arrival.
__device__ __forceinline__ void advance_step_when_last(const DeviceSchedule& sched, unsigned* ticket) {
  if (!ticket) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    // atomicInc wraps the counter back to zero on the last arrival, ready for the next launch.
    if (atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1) {
      __threadfence();
      *sched.step_ptr += 1;
    }
  }
}

// ---- SGD --------------------------------------------------------------------------------------

struct SgdLaunch {
  float* param;
  const float* grad;
  float* momentum_buffer;
  int64_t n;
  cpu::SgdArgs args;
  DeviceSegments seg;
  DeviceSchedule sched;
  unsigned* ticket = nullptr;  // run_step: the arrival counter when the kernel advances sched.step_ptr
};

__global__ void sgd_kernel(SgdLaunch k) {
  const cpu::SgdArgs& a = k.args;
  const double lr = current_lr(k.sched, a.lr);
  const bool first = current_step(k.sched, a.step) == 1;
  const bool use_momentum = a.momentum != 0.0;
  RangeCursor range;
  ops::SgdCoef<float> c{};
  for (int64_t i = grid_start(); i < k.n; i += grid_stride()) {
    if (!range.contains(i)) {
      range.seek(i, k.n, k.seg, a.weight_decay, a.l1);
      c.lr = static_cast<float>(lr * range.params.lr_scale);
      c.momentum = static_cast<float>(a.momentum);
      c.one_minus_dampening = static_cast<float>(1.0 - a.dampening);
      c.reg = regularisation(range.params.weight_decay, range.params.l1);
      c.use_momentum = use_momentum;
      c.nesterov = a.nesterov;
      c.first = first;
    }
    float p = k.param[i];
    ops::sgd_update(p, k.grad[i], use_momentum ? k.momentum_buffer + i : nullptr, c);
    k.param[i] = p;
  }
  advance_step_when_last(k.sched, k.ticket);
}

// ---- AdaGrad ----------------------------------------------------------------------------------

struct AdagradLaunch {
  float* param;
  const float* grad;
  float* state_sum;
  int64_t n;
  cpu::AdagradArgs args;
  DeviceSegments seg;
  DeviceSchedule sched;
  unsigned* ticket = nullptr;  // run_step: the arrival counter when the kernel advances sched.step_ptr
};

__global__ void adagrad_kernel(AdagradLaunch k) {
  const cpu::AdagradArgs& a = k.args;
  const double lr = current_lr(k.sched, a.lr);
  const double lr_divisor = 1.0 + static_cast<double>(current_step(k.sched, a.step) - 1) * a.lr_decay;
  RangeCursor range;
  ops::AdagradCoef<float> c{};
  for (int64_t i = grid_start(); i < k.n; i += grid_stride()) {
    if (!range.contains(i)) {
      range.seek(i, k.n, k.seg, a.weight_decay, a.l1);
      c.clr = static_cast<float>(lr * range.params.lr_scale / lr_divisor);
      c.eps = static_cast<float>(a.eps);
      c.reg = regularisation(range.params.weight_decay, range.params.l1);
    }
    float p = k.param[i], s = k.state_sum[i];
    ops::adagrad_update(p, k.grad[i], s, c);
    k.param[i] = p;
    k.state_sum[i] = s;
  }
  advance_step_when_last(k.sched, k.ticket);
}

// ---- RMSprop ----------------------------------------------------------------------------------

struct RmspropLaunch {
  float* param;
  const float* grad;
  float* square_avg;
  float* momentum_buffer;
  float* grad_avg;
  int64_t n;
  cpu::RmspropArgs args;
  DeviceSegments seg;
  DeviceSchedule sched;
  unsigned* ticket = nullptr;  // run_step: the arrival counter when the kernel advances sched.step_ptr
};

__global__ void rmsprop_kernel(RmspropLaunch k) {
  const cpu::RmspropArgs& a = k.args;
  const double lr = current_lr(k.sched, a.lr);
  const bool use_momentum = a.momentum > 0.0;
  RangeCursor range;
  ops::RmspropCoef<float> c{};
  for (int64_t i = grid_start(); i < k.n; i += grid_stride()) {
    if (!range.contains(i)) {
      range.seek(i, k.n, k.seg, a.weight_decay, a.l1);
      c.lr = static_cast<float>(lr * range.params.lr_scale);
      c.alpha = static_cast<float>(a.alpha);
      c.one_minus_alpha = static_cast<float>(1.0 - a.alpha);
      c.eps = static_cast<float>(a.eps);
      c.momentum = static_cast<float>(a.momentum);
      c.reg = regularisation(range.params.weight_decay, range.params.l1);
      c.use_momentum = use_momentum;
      c.centered = a.centered;
    }
    float p = k.param[i], sq = k.square_avg[i];
    ops::rmsprop_update(p, k.grad[i], sq, use_momentum ? k.momentum_buffer + i : nullptr,
                        a.centered ? k.grad_avg + i : nullptr, c);
    k.param[i] = p;
    k.square_avg[i] = sq;
  }
  advance_step_when_last(k.sched, k.ticket);
}

// ---- Adam / AdamW -----------------------------------------------------------------------------

struct AdamLaunch {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t n;
  cpu::AdamArgs args;
  double bias_correction1, bias_correction2;  // for args.step, from the host's pow
  DeviceSegments seg;
  DeviceSchedule sched;
  unsigned* ticket = nullptr;  // run_step: the arrival counter when the kernel advances sched.step_ptr
};

// Vec: the four arrays are 16-byte aligned, so groups of four elements move as float4 (fewer
// instructions and more bytes in flight per thread); the last n % 4 elements go one by one. The
// element math and the per-range coefficients are the scalar path's, so results are identical.
template <bool Vec>
__global__ void adam_kernel(AdamLaunch k) {
  const cpu::AdamArgs& a = k.args;
  // The schedule's values, formed once per block by one thread (pow in double is hundreds of
  // instructions) and read by every thread after the barrier.
  __shared__ double schedule[3];
  if (threadIdx.x == 0) {
    schedule[0] = current_lr(k.sched, a.lr);
    schedule[1] = k.bias_correction1;
    schedule[2] = k.bias_correction2;
    if (k.sched.step_ptr) {
      const double t = static_cast<double>(current_step(k.sched, a.step));
      schedule[1] = 1.0 - pow(a.beta1, t);
      schedule[2] = 1.0 - pow(a.beta2, t);
    }
  }
  __syncthreads();
  const double lr = schedule[0], bias_correction1 = schedule[1], bias_correction2 = schedule[2];
  RangeCursor range;
  ops::AdamCoef<float> c{};
  auto coefficients_for = [&](int64_t i) {
    if (range.contains(i)) return;
    range.seek(i, k.n, k.seg, a.weight_decay, a.l1);
    const double range_lr = lr * range.params.lr_scale;
    const double coupled_decay = a.decoupled ? 0.0 : range.params.weight_decay;  // AdamW: a factor on p
    c.step_size = static_cast<float>(range_lr / bias_correction1);
    c.beta1 = static_cast<float>(a.beta1);
    c.one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
    c.beta2 = static_cast<float>(a.beta2);
    c.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
    c.sqrt_bc2 = static_cast<float>(sqrt(bias_correction2));
    c.eps = static_cast<float>(a.eps);
    c.decay = static_cast<float>(1.0 - range_lr * range.params.weight_decay);
    c.reg = regularisation(coupled_decay, range.params.l1);
    c.decoupled = a.decoupled;
  };
  int64_t first_scalar = 0;
  if constexpr (Vec) {
    const int64_t groups = k.n / 4;
    for (int64_t q = grid_start(); q < groups; q += grid_stride()) {
      const int64_t i = 4 * q;
      float4 p = reinterpret_cast<const float4*>(k.param)[q];
      const float4 g = __ldg(reinterpret_cast<const float4*>(k.grad) + q);
      float4 m = reinterpret_cast<const float4*>(k.exp_avg)[q];
      float4 v = reinterpret_cast<const float4*>(k.exp_avg_sq)[q];
      coefficients_for(i);
      ops::adam_update(p.x, g.x, m.x, v.x, c);
      coefficients_for(i + 1);
      ops::adam_update(p.y, g.y, m.y, v.y, c);
      coefficients_for(i + 2);
      ops::adam_update(p.z, g.z, m.z, v.z, c);
      coefficients_for(i + 3);
      ops::adam_update(p.w, g.w, m.w, v.w, c);
      reinterpret_cast<float4*>(k.param)[q] = p;
      reinterpret_cast<float4*>(k.exp_avg)[q] = m;
      reinterpret_cast<float4*>(k.exp_avg_sq)[q] = v;
    }
    first_scalar = 4 * groups;
  }
  for (int64_t i = first_scalar + grid_start(); i < k.n; i += grid_stride()) {
    coefficients_for(i);
    float p = k.param[i], m = k.exp_avg[i], v = k.exp_avg_sq[i];
    ops::adam_update(p, k.grad[i], m, v, c);
    k.param[i] = p;
    k.exp_avg[i] = m;
    k.exp_avg_sq[i] = v;
  }
  advance_step_when_last(k.sched, k.ticket);
}

// The update (when there are elements), then the step counter's advance (always: it also feeds
// the random streams of the next step).
template <class Launch>
void run_step(void (*kernel)(Launch), Launch launch, const char* name, cudaStream_t stream,
              int64_t work_items = -1) {  // threads' worth of work (default: one per element)
  unsigned* counters = launch.sched.step_ptr && launch.n > 0 ? tickets(stream, name, /*optional=*/true) : nullptr;
  if (counters) launch.ticket = counters + kStepTicket;
  if (launch.n > 0) {
    kernel<<<resident_blocks(kernel, work_items < 0 ? launch.n : work_items), kBlockThreads, 0, stream>>>(launch);
    check_launch(name);
  }
  if (launch.sched.step_ptr && !counters) {  // no update, or a capture before the counters exist
    advance_step_kernel<<<1, 1, 0, stream>>>(launch.sched.step_ptr);
    check_launch(name);
  }
}

// ---- global-norm clipping ----
// The sum of squares over a partition that depends on n alone: at most kClipMaxPartials blocks of
// at least kClipMinPerBlock consecutive elements each; a block's threads sum their elements (in
// double, in order) and a shared-memory tree adds the threads' sums in a fixed order. The scaling
// kernel's blocks each add the partials the same way (so every block has the same norm, bitwise),
// block 0 stores it, and when it exceeds max_norm they scale the gradient by ops::clip_factor.
// No atomics: the norm is bitwise the same run to run.
constexpr int64_t kClipMaxPartials = 1024;
constexpr int64_t kClipMinPerBlock = 16 * kBlockThreads;

// The sum of v over the block's threads in a fixed order (every thread gets it). Once per kernel:
// there is no barrier after the read of sums[0], so a second call could overwrite it early.
__device__ double block_sum(double v) {
  __shared__ double sums[kBlockThreads];
  sums[threadIdx.x] = v;
  __syncthreads();
  for (int half = kBlockThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  return sums[0];
}

__global__ void __launch_bounds__(kBlockThreads)
    sum_squares_kernel(const float* grad, int64_t n, int64_t per_block, double* partial) {
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * per_block;
  const int64_t b1 = n < b0 + per_block ? n : b0 + per_block;
  double acc = 0.0;
#pragma unroll 4
  for (int64_t i = b0 + threadIdx.x; i < b1; i += kBlockThreads) {
    const double v = static_cast<double>(grad[i]);
    acc += v * v;
  }
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kBlockThreads)
    clip_scale_kernel(float* grad, int64_t n, const double* partial, int64_t count, double max_norm, double eps,
                      float* norm_out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kBlockThreads) s += partial[i];
  const double norm = sqrt(block_sum(s));
  if (norm_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *norm_out = static_cast<float>(norm);
  const double factor = ops::clip_factor(norm, max_norm, eps);
  if (factor == 1.0) return;  // the same in every thread
  const float f = static_cast<float>(factor);
  for (int64_t i = grid_start(); i < n; i += grid_stride()) grad[i] *= f;
}

}  // namespace

void sgd_step(float* param, const float* grad, float* momentum_buffer, int64_t n, const cpu::SgdArgs& args,
              const DeviceSegments& seg, const DeviceSchedule& sched, Stream stream) {
  run_step(sgd_kernel, SgdLaunch{param, grad, momentum_buffer, n, args, seg, sched}, "sgd_step", stream);
}

void adagrad_step(float* param, const float* grad, float* state_sum, int64_t n, const cpu::AdagradArgs& args,
                  const DeviceSegments& seg, const DeviceSchedule& sched, Stream stream) {
  run_step(adagrad_kernel, AdagradLaunch{param, grad, state_sum, n, args, seg, sched}, "adagrad_step", stream);
}

void rmsprop_step(float* param, const float* grad, float* square_avg, float* momentum_buffer, float* grad_avg,
                  int64_t n, const cpu::RmspropArgs& args, const DeviceSegments& seg, const DeviceSchedule& sched,
                  Stream stream) {
  run_step(rmsprop_kernel, RmspropLaunch{param, grad, square_avg, momentum_buffer, grad_avg, n, args, seg, sched},
           "rmsprop_step", stream);
}

void adam_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
               const cpu::AdamArgs& args, const DeviceSegments& seg, const DeviceSchedule& sched, Stream stream) {
  const double step = static_cast<double>(args.step);
  const AdamLaunch launch{param, grad, exp_avg, exp_avg_sq, n, args, 1.0 - std::pow(args.beta1, step),
                          1.0 - std::pow(args.beta2, step), seg, sched};
  if (aligned16(param) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq))
    run_step(adam_kernel<true>, launch, "adam_step", stream, (n + 3) / 4);
  else
    run_step(adam_kernel<false>, launch, "adam_step", stream, n);
}

void clip_grad_norm(float* grad, int64_t n, double max_norm, double eps, float* norm_out, Stream stream) {
  const char* name = "clip_grad_norm";
  if (n == 0) {
    if (norm_out != nullptr) check(cudaMemsetAsync(norm_out, 0, sizeof(float), stream), "cudaMemsetAsync");
    return;
  }
  int64_t blocks = ceil_div(n, kClipMinPerBlock);
  blocks = blocks < kClipMaxPartials ? blocks : kClipMaxPartials;
  const int64_t per_block = ceil_div(n, blocks);
  blocks = ceil_div(n, per_block);
  double* partial = static_cast<double*>(scratch(sizeof(double) * static_cast<size_t>(blocks), stream, name));
  sum_squares_kernel<<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(grad, n, per_block, partial);
  check_launch(name);
  // One resident wave: each block adds up the partials again, so no more blocks than run at once.
  clip_scale_kernel<<<resident_blocks(clip_scale_kernel, n), kBlockThreads, 0, stream>>>(grad, n, partial, blocks,
                                                                                           max_norm, eps, norm_out);
  check_launch(name);
}

}  // namespace cuda
}  // namespace fastmlp
