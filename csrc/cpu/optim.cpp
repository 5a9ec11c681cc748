// Fused in-place optimizer steps (SGD, AdaGrad, RMSprop, Adam/AdamW): one pass over the flat
// parameter arena, reading and writing each element's state once. The array is cut into fixed
// chunks of kElementwiseChunk elements (results never depend on the thread count); inside a chunk
// the segment table is walked range by range, so each range's coefficients are scalars and the
// inner loop is plain element math from ops/optim.h that the compiler vectorises.
#include <cmath>

#include "core/parallel.h"
#include "core/scratch.h"
#include "cpu/isa.h"
#include "ops/optim.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {
namespace {

template <class F>
void for_chunks(int64_t n, const F& f) {
  parallel_for(ceil_div(n, kElementwiseChunk), [&](int64_t task) {
    const int64_t begin = task * kElementwiseChunk;
    f(begin, min_i64(n, begin + kElementwiseChunk));
  });
}

// Hyper-parameters of one range: a segment's row, or the scalar arguments in a gap.
struct RangeParams {
  double lr_scale, weight_decay, l1;
};

// Calls f(begin, end, params) for the consecutive ranges that tile [b, e): the parts of segments
// (with their row's values) and the gaps between them (lr_scale 1 and the scalar arguments).
template <class F>
void for_ranges(int64_t b, int64_t e, const Segments& seg, double weight_decay, double l1, const F& f) {
  const int64_t* bounds = seg.bounds;
  // First segment ending after b; ends are non-decreasing because rows are sorted and disjoint.
  int64_t lo = 0, hi = seg.count;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (bounds[2 * mid] + bounds[2 * mid + 1] <= b) lo = mid + 1;
    else hi = mid;
  }
  const RangeParams gap{1.0, weight_decay, l1};
  int64_t k = lo, pos = b;
  while (pos < e) {
    if (k < seg.count && bounds[2 * k] <= pos) {
      const int64_t end = min_i64(e, bounds[2 * k] + bounds[2 * k + 1]);
      if (end > pos) {
        const double* v = seg.values + 3 * k;
        f(pos, end, RangeParams{v[0], v[1], v[2]});
        pos = end;
      }
      ++k;
    } else {
      const int64_t end = k < seg.count ? min_i64(e, bounds[2 * k]) : e;
      f(pos, end, gap);
      pos = end;
    }
  }
}

// Structural flags of a range, fixed at compile time so the branches in ops/ fold away and every
// variant's loop vectorises: bit 0 coupled weight decay, bit 1 L1, then per optimizer.
constexpr unsigned kDecay = 1, kL1 = 2;
constexpr unsigned kMomentum = 4, kCentered = 8;  // SGD, RMSprop
constexpr unsigned kDecoupled = 4;                // Adam

template <unsigned F>
struct FlagSet {
  static constexpr unsigned value = F;
};

// Calls fn(FlagSet<flags>{}) for a runtime flags < Count.
template <unsigned Count, unsigned F = 0, class Fn>
void with_flags(unsigned flags, const Fn& fn) {
  if constexpr (F + 1 < Count) {
    if (flags != F) return with_flags<Count, F + 1>(flags, fn);
  }
  fn(FlagSet<F>{});
}

template <class T>
ops::Regularisation<T> regularisation(double weight_decay, double l1, unsigned flags) {
  ops::Regularisation<T> r;
  r.weight_decay = static_cast<T>(weight_decay);
  r.l1 = static_cast<T>(l1);
  r.use_weight_decay = (flags & kDecay) != 0;
  r.use_l1 = (flags & kL1) != 0;
  return r;
}

unsigned regularisation_flags(double weight_decay, double l1) {
  return (weight_decay != 0.0 ? kDecay : 0u) | (l1 != 0.0 ? kL1 : 0u);
}

// Calls run(b, h) then run(h, e), h the first index from which `param`'s elements start on a
// 64-byte line (h = b when param + b already does, or when its offset is not whole elements): the
// vector loop of the second range then loads and stores whole lines, not two halves of a line
// each. The arrays of a step are usually misaligned alike (NumPy's large arrays start 16 bytes past
// a line), so this aligns them all: Adam on 16M parameters 1.04-1.10x on 2 threads, 1.14x on one
// (toggled in one process). Elements are independent: the same bits either way.
template <class T, class Run>
void split_at_line(const T* param, int64_t b, int64_t e, const Run& run) {
  const int64_t h = min_i64(e, b + elements_to_line(param + b));
  if (h > b) run(b, h);
  run(h, e);
}

// The range loops take their coefficients by value (stores to the arrays cannot alias them).

template <unsigned F, class T>
void sgd_range(T* __restrict param, const T* __restrict grad, T* __restrict buf, int64_t b, int64_t e,
               ops::SgdCoef<T> c) {
  constexpr bool momentum = (F & kMomentum) != 0;
  c.reg.use_weight_decay = (F & kDecay) != 0;
  c.reg.use_l1 = (F & kL1) != 0;
  c.use_momentum = momentum;
  for (int64_t i = b; i < e; ++i) ops::sgd_update(param[i], grad[i], momentum ? buf + i : nullptr, c);
}

template <unsigned F, class T>
void adagrad_range(T* __restrict param, const T* __restrict grad, T* __restrict state_sum, int64_t b, int64_t e,
                   ops::AdagradCoef<T> c) {
  c.reg.use_weight_decay = (F & kDecay) != 0;
  c.reg.use_l1 = (F & kL1) != 0;
  for (int64_t i = b; i < e; ++i) ops::adagrad_update(param[i], grad[i], state_sum[i], c);
}

template <unsigned F, class T>
void rmsprop_range(T* __restrict param, const T* __restrict grad, T* __restrict square_avg, T* __restrict buf,
                   T* __restrict grad_avg, int64_t b, int64_t e, ops::RmspropCoef<T> c) {
  constexpr bool momentum = (F & kMomentum) != 0, centered = (F & kCentered) != 0;
  c.reg.use_weight_decay = (F & kDecay) != 0;
  c.reg.use_l1 = (F & kL1) != 0;
  c.use_momentum = momentum;
  c.centered = centered;
  for (int64_t i = b; i < e; ++i)
    ops::rmsprop_update(param[i], grad[i], square_avg[i], momentum ? buf + i : nullptr,
                        centered ? grad_avg + i : nullptr, c);
}

template <unsigned F, class T>
void adam_range(T* __restrict param, const T* __restrict grad, T* __restrict exp_avg, T* __restrict exp_avg_sq,
                int64_t b, int64_t e, ops::AdamCoef<T> c) {
  c.reg.use_weight_decay = (F & kDecay) != 0;
  c.reg.use_l1 = (F & kL1) != 0;
  c.decoupled = (F & kDecoupled) != 0;
  for (int64_t i = b; i < e; ++i) ops::adam_update(param[i], grad[i], exp_avg[i], exp_avg_sq[i], c);
}

}  // namespace

template <class T>
void sgd_step(T* param, const T* grad, T* momentum_buffer, int64_t n, const SgdArgs& args, const Segments& seg) {
  const unsigned momentum = args.momentum != 0.0 ? kMomentum : 0u;
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_ranges(b, e, seg, args.weight_decay, args.l1, [&](int64_t rb, int64_t re, const RangeParams& r) {
      const unsigned flags = regularisation_flags(r.weight_decay, r.l1) | momentum;
      ops::SgdCoef<T> c;
      c.lr = static_cast<T>(args.lr * r.lr_scale);
      c.momentum = static_cast<T>(args.momentum);
      c.one_minus_dampening = static_cast<T>(1.0 - args.dampening);
      c.reg = regularisation<T>(r.weight_decay, r.l1, flags);
      c.use_momentum = momentum != 0;
      c.nesterov = args.nesterov;
      c.first = args.step == 1;
      with_flags<8>(flags, [&](auto f) {
        split_at_line(param, rb, re, [&](int64_t lo, int64_t hi) {
          sgd_range<decltype(f)::value>(param, grad, momentum_buffer, lo, hi, c);
        });
      });
    });
  });
}

template <class T>
void adagrad_step(T* param, const T* grad, T* state_sum, int64_t n, const AdagradArgs& args, const Segments& seg) {
  const double lr_divisor = 1.0 + static_cast<double>(args.step - 1) * args.lr_decay;
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_ranges(b, e, seg, args.weight_decay, args.l1, [&](int64_t rb, int64_t re, const RangeParams& r) {
      const unsigned flags = regularisation_flags(r.weight_decay, r.l1);
      ops::AdagradCoef<T> c;
      c.clr = static_cast<T>(args.lr * r.lr_scale / lr_divisor);
      c.eps = static_cast<T>(args.eps);
      c.reg = regularisation<T>(r.weight_decay, r.l1, flags);
      with_flags<4>(flags, [&](auto f) {
        split_at_line(param, rb, re, [&](int64_t lo, int64_t hi) {
          adagrad_range<decltype(f)::value>(param, grad, state_sum, lo, hi, c);
        });
      });
    });
  });
}

template <class T>
void rmsprop_step(T* param, const T* grad, T* square_avg, T* momentum_buffer, T* grad_avg, int64_t n,
                  const RmspropArgs& args, const Segments& seg) {
  const unsigned structure = (args.momentum > 0.0 ? kMomentum : 0u) | (args.centered ? kCentered : 0u);
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_ranges(b, e, seg, args.weight_decay, args.l1, [&](int64_t rb, int64_t re, const RangeParams& r) {
      const unsigned flags = regularisation_flags(r.weight_decay, r.l1) | structure;
      ops::RmspropCoef<T> c;
      c.lr = static_cast<T>(args.lr * r.lr_scale);
      c.alpha = static_cast<T>(args.alpha);
      c.one_minus_alpha = static_cast<T>(1.0 - args.alpha);
      c.eps = static_cast<T>(args.eps);
      c.momentum = static_cast<T>(args.momentum);
      c.reg = regularisation<T>(r.weight_decay, r.l1, flags);
      c.use_momentum = (flags & kMomentum) != 0;
      c.centered = args.centered;
      with_flags<16>(flags, [&](auto f) {
        split_at_line(param, rb, re, [&](int64_t lo, int64_t hi) {
          rmsprop_range<decltype(f)::value>(param, grad, square_avg, momentum_buffer, grad_avg, lo, hi, c);
        });
      });
    });
  });
}

template <class T>
void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamArgs& args,
               const Segments& seg) {
  const double step = static_cast<double>(args.step);
  const double bias_correction1 = 1.0 - std::pow(args.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(args.beta2, step);
  for_chunks(n, [&](int64_t b, int64_t e) {
    for_ranges(b, e, seg, args.weight_decay, args.l1, [&](int64_t rb, int64_t re, const RangeParams& r) {
      const double lr = args.lr * r.lr_scale;
      // AdamW's decay is a factor on p, not a gradient term.
      const double coupled_decay = args.decoupled ? 0.0 : r.weight_decay;
      const unsigned flags = regularisation_flags(coupled_decay, r.l1) | (args.decoupled ? kDecoupled : 0u);
      ops::AdamCoef<T> c;
      c.step_size = static_cast<T>(lr / bias_correction1);
      c.beta1 = static_cast<T>(args.beta1);
      c.one_minus_beta1 = static_cast<T>(1.0 - args.beta1);
      c.beta2 = static_cast<T>(args.beta2);
      c.one_minus_beta2 = static_cast<T>(1.0 - args.beta2);
      c.sqrt_bc2 = static_cast<T>(std::sqrt(bias_correction2));
      c.eps = static_cast<T>(args.eps);
      c.decay = static_cast<T>(1.0 - lr * r.weight_decay);
      c.reg = regularisation<T>(coupled_decay, r.l1, flags);
      c.decoupled = args.decoupled;
      with_flags<8>(flags, [&](auto f) {
        split_at_line(param, rb, re, [&](int64_t lo, int64_t hi) {
          adam_range<decltype(f)::value>(param, grad, exp_avg, exp_avg_sq, lo, hi, c);
        });
      });
    });
  });
}

// The norm: fixed chunks of kElementwiseChunk elements in parallel, each with kNormLanes double
// accumulators taking the elements at each offset mod kNormLanes from the chunk's start (v * v then
// an add: -ffp-contract=off, so every ISA path rounds alike) combined in a fixed tree, the elements
// past the last multiple of kNormLanes added after it; the chunks' partials added in chunk order.
// So the norm is bitwise the same on any thread count (and on every ISA path). The scaling pass
// runs only when the norm exceeds max_norm.
template <class T>
double clip_grad_norm(T* grad, int64_t n, double max_norm, double eps) {
  const int64_t chunks = ceil_div(n, kElementwiseChunk);
  if (chunks == 0) return 0.0;
  constexpr int kNormLanes = 16;
  double* partial = static_cast<double*>(thread_scratch(kScratchReduce, sizeof(double) * static_cast<size_t>(chunks)));
  parallel_for(chunks, [&](int64_t chunk) {
    const int64_t b = chunk * kElementwiseChunk, e = min_i64(n, b + kElementwiseChunk);
    const T* __restrict g = grad;
    double acc[kNormLanes] = {};
    int64_t i = b;
    for (; i + kNormLanes <= e; i += kNormLanes)
#pragma GCC unroll 16
      for (int k = 0; k < kNormLanes; ++k) {
        const double v = static_cast<double>(g[i + k]);
        acc[k] += v * v;
      }
    double tail = 0.0;
    for (; i < e; ++i) {
      const double v = static_cast<double>(g[i]);
      tail += v * v;
    }
#pragma GCC unroll 4
    for (int width = kNormLanes / 2; width >= 1; width /= 2)
#pragma GCC unroll 8
      for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
    partial[chunk] = acc[0] + tail;
  });
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  const double norm = std::sqrt(total);
  const double factor = ops::clip_factor(norm, max_norm, eps);
  if (factor != 1.0) {
    const T f = static_cast<T>(factor);
    for_chunks(n, [&](int64_t b, int64_t e) {
      T* __restrict g = grad;
      for (int64_t i = b; i < e; ++i) g[i] *= f;
    });
  }
  return norm;
}

#define FASTMLP_INSTANTIATE(T)                                                                                   \
  template void sgd_step<T>(T*, const T*, T*, int64_t, const SgdArgs&, const Segments&);                         \
  template void adagrad_step<T>(T*, const T*, T*, int64_t, const AdagradArgs&, const Segments&);                 \
  template void rmsprop_step<T>(T*, const T*, T*, T*, T*, int64_t, const RmspropArgs&, const Segments&);         \
  template void adam_step<T>(T*, const T*, T*, T*, int64_t, const AdamArgs&, const Segments&);                   \
  template double clip_grad_norm<T>(T*, int64_t, double, double);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
