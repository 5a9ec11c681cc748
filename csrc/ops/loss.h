// Per-element loss math, written once for the CPU and CUDA kernels. float32 uses fastmlp's own
// exp/log (ops/fastmath.h, vectorisable, same on CPU and GPU), float64 the C library; each loss
// term comes back in double so the row and batch sums lose nothing to float32 accumulation.
#pragma once
#include <cmath>
#include <type_traits>

#include "core/hd.h"
#include "ops/fastmath.h"

namespace fastmlp {
namespace ops {
namespace {

FASTMLP_HD float loss_exp(float x) { return exp_f32(x); }
FASTMLP_HD double loss_exp(double x) { return std::exp(x); }

FASTMLP_HD double loss_log(double x) { return std::log(x); }

// log(1 + e) for e in [0, 1]. For float32, Goldberg's trick: the rounding of u = 1 + e is undone
// by the factor e / (u - 1), so the result keeps full relative accuracy for tiny e.
template <class F>
FASTMLP_HD F log1p_unit_t(F e) {
  const F u = F(1.0f) + e;
  const F d = u - F(1.0f);
  return lane_select(d == F(0.0f), e, log_t(u) * (e / d));
}
FASTMLP_HD float log1p_unit(float e) { return log1p_unit_t(e); }
FASTMLP_HD double log1p_unit(double e) { return std::log1p(e); }

// The float32 parts of the binary cross-entropy on logit x with target t: dlogit = sigmoid(x) - t
// and log1p(exp(-|x|)), from one exp. Generic over lanes (cpu/lanes.h) like ops/fastmath.h.
template <class F>
FASTMLP_HD void sigmoid_cross_entropy_parts(F x, F t, F& dlogit, F& log1p_e) {
  const F e = exp_t(-lane_abs(x));  // in [0, 1]
  const F inv = F(1.0f) / (F(1.0f) + e);
  dlogit = lane_select(x >= F(0.0f), inv, e * inv) - t;
  log1p_e = log1p_unit_t(e);
}

// The same dlogit, with log1p(e) in factored form for a caller that sums it: u = 1 + e (rounded)
// and corr = (e - (u - 1)) / u, the first-order correction for that rounding (u - 1 is exact, and
// 1/u is the sigmoid's own reciprocal), so log1p(e) = log(u) + corr within about an ulp, and tiny
// e (where u = 1) is kept in full. A sum of such terms is log(product of u) + sum of corr: one log
// for many elements. The exp comes separately (sigmoid_cross_entropy_exp) for a caller that takes
// a run's exps first: a loop of exps alone keeps more of them in flight than one doing everything.
template <class F>
FASTMLP_HD F sigmoid_cross_entropy_exp(F x) {
  return exp_t<F, true>(-lane_abs(x));  // in [0, 1]
}
template <class F>
FASTMLP_HD void sigmoid_cross_entropy_factors_from_exp(F e, F x, F t, F& dlogit, F& u, F& corr) {
  u = F(1.0f) + e;
  const F inv = F(1.0f) / u;
  dlogit = lane_select(x >= F(0.0f), inv, e * inv) - t;
  corr = (e - (u - F(1.0f))) * inv;
}
template <class F>
FASTMLP_HD void sigmoid_cross_entropy_factors(F x, F t, F& dlogit, F& u, F& corr) {
  sigmoid_cross_entropy_factors_from_exp(sigmoid_cross_entropy_exp(x), x, t, dlogit, u, corr);
}

// Squared error term: d = pred - target (exact in double for float32 inputs); the loss adds d².
template <class T>
FASTMLP_HD double squared_error_diff(T pred, T target) {
  return static_cast<double>(pred) - static_cast<double>(target);
}

// Binary cross-entropy on a logit x with target t: softplus(x) - t·x, written stably as
// max(x, 0) - t·x + log1p(exp(-|x|)); dlogit = sigmoid(x) - t from the same exp, so neither
// overflows for |x| up to the float range. NaN in x or t propagates to both.
// The loss term from the parts, in double.
template <class T>
FASTMLP_HD double sigmoid_cross_entropy_loss(T x, T t, T log1p_e) {
  const double xd = static_cast<double>(x);
  const double relu = x > T(0) ? xd : 0.0;
  return relu - static_cast<double>(t) * xd + static_cast<double>(log1p_e);
}

// relu(x) - t·x in double: the loss term without its log1p part.
template <class T>
FASTMLP_HD double sigmoid_cross_entropy_linear(T x, T t) {
  const double xd = static_cast<double>(x);
  const double relu = x > T(0) ? xd : 0.0;
  return relu - static_cast<double>(t) * xd;
}

template <class T>
FASTMLP_HD double sigmoid_cross_entropy_term(T x, T t, T& dlogit) {
  T log1p_e;
  if constexpr (std::is_same_v<T, float>) {
    sigmoid_cross_entropy_parts(x, t, dlogit, log1p_e);
  } else {
    const T e = loss_exp(-std::fabs(x));
    const T inv = T(1) / (T(1) + e);
    dlogit = (x >= T(0) ? inv : e * inv) - t;
    log1p_e = log1p_unit(e);
  }
  return sigmoid_cross_entropy_loss(x, t, log1p_e);
}

}  // namespace
}  // namespace ops
}  // namespace fastmlp
