// One optimizer update of a single element, written once for CPU and GPU kernels. The formulas
// and the order of every rounding follow torch.optim's implementations; the scalar coefficients
// (step size, bias corrections, decay factors) arrive precomputed in double and cast to T, so a
// kernel's inner loop is only T arithmetic on one element and its state. The `use_*` flags say
// which terms exist: a CPU kernel fixes them at compile time (the branches fold and the loop
// vectorises), a GPU kernel reads them as uniform branches.
#pragma once
#include <cmath>

#include "core/hd.h"

namespace fastmlp {
namespace ops {
namespace {

// sign(x) with sign(0) = 0, as torch.sign; NaN propagates. Branch-free.
template <class T>
FASTMLP_HD T sign_of(T x) {
  const T s = static_cast<T>(x > T(0)) - static_cast<T>(x < T(0));
  return x == x ? s : x;
}

// Coupled L2 (weight_decay) and L1 added to the gradient: g + wd*p + l1*sign(p). A term whose
// flag is off is not added at all, so an Inf parameter does not become NaN through 0*Inf (as torch).
template <class T>
struct Regularisation {
  T weight_decay, l1;
  bool use_weight_decay, use_l1;
};

template <class T>
FASTMLP_HD T regularised_grad(T grad, T p, const Regularisation<T>& r) {
  T g = grad;
  if (r.use_weight_decay) g = g + r.weight_decay * p;
  if (r.use_l1) g = g + r.l1 * sign_of(p);
  return g;
}

// Global-norm clipping (torch.nn.utils.clip_grad_norm_ with error_if_nonfinite=False, except
// that a norm at or below max_norm leaves the gradient untouched): from the sum of squares of
// every element (in double), norm = sqrt(sum); when norm > max_norm each element is multiplied by
// T(max_norm / (norm + eps)). A NaN norm scales nothing (the NaN is already in the gradient); an
// infinite one gives factor 0. clip_factor is 1 when nothing is to be scaled.
FASTMLP_HD double clip_factor(double norm, double max_norm, double eps) {
  return norm > max_norm ? max_norm / (norm + eps) : 1.0;
}

// SGD (torch.optim.SGD). On the first step (`first`) the momentum buffer starts as g; its old
// contents are read but not used, so it may hold anything.
template <class T>
struct SgdCoef {
  T lr, momentum, one_minus_dampening;
  Regularisation<T> reg;
  bool use_momentum, nesterov, first;
};

template <class T>
FASTMLP_HD void sgd_update(T& p, T grad, T* buf, const SgdCoef<T>& c) {
  T g = regularised_grad(grad, p, c.reg);
  if (c.use_momentum) {
    // Both candidates are computed and one selected: no branch inside a CPU loop.
    const T accumulated = c.momentum * *buf + c.one_minus_dampening * g;
    const T b = c.first ? g : accumulated;
    *buf = b;
    const T look_ahead = g + c.momentum * b;
    g = c.nesterov ? look_ahead : b;
  }
  p = p - c.lr * g;
}

// AdaGrad (torch.optim.Adagrad); clr = lr / (1 + (step - 1) * lr_decay).
template <class T>
struct AdagradCoef {
  T clr, eps;
  Regularisation<T> reg;
};

template <class T>
FASTMLP_HD void adagrad_update(T& p, T grad, T& state_sum, const AdagradCoef<T>& c) {
  const T g = regularised_grad(grad, p, c.reg);
  const T s = state_sum + g * g;
  state_sum = s;
  p = p - c.clr * (g / (std::sqrt(s) + c.eps));
}

// RMSprop (torch.optim.RMSprop). buf is used only with momentum, grad_avg only when centered.
template <class T>
struct RmspropCoef {
  T lr, alpha, one_minus_alpha, eps, momentum;
  Regularisation<T> reg;
  bool use_momentum, centered;
};

template <class T>
FASTMLP_HD void rmsprop_update(T& p, T grad, T& square_avg, T* buf, T* grad_avg, const RmspropCoef<T>& c) {
  const T g = regularised_grad(grad, p, c.reg);
  const T sq = c.alpha * square_avg + c.one_minus_alpha * (g * g);
  square_avg = sq;
  T avg;
  if (c.centered) {
    const T ga = c.alpha * *grad_avg + c.one_minus_alpha * g;
    *grad_avg = ga;
    avg = std::sqrt(sq - ga * ga) + c.eps;
  } else {
    avg = std::sqrt(sq) + c.eps;
  }
  if (c.use_momentum) {
    const T b = c.momentum * *buf + g / avg;
    *buf = b;
    p = p - c.lr * b;
  } else {
    p = p - c.lr * (g / avg);
  }
}

// Adam / AdamW (torch.optim.Adam, AdamW). step_size = lr / (1 - beta1^step),
// sqrt_bc2 = sqrt(1 - beta2^step). AdamW (`decoupled`) multiplies p by decay = 1 - lr * weight_decay
// first and leaves weight_decay out of reg; L1 stays in the gradient either way.
template <class T>
struct AdamCoef {
  T step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2, eps, decay;
  Regularisation<T> reg;
  bool decoupled;
};

template <class T>
FASTMLP_HD void adam_update(T& p, T grad, T& exp_avg, T& exp_avg_sq, const AdamCoef<T>& c) {
  const T g = regularised_grad(grad, p, c.reg);
  const T q = c.decoupled ? p * c.decay : p;
  const T m = c.beta1 * exp_avg + c.one_minus_beta1 * g;
  const T v = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g);
  exp_avg = m;
  exp_avg_sq = v;
  const T denom = std::sqrt(v) / c.sqrt_bc2 + c.eps;
  p = q - c.step_size * (m / denom);
}

}  // namespace
}  // namespace ops
}  // namespace fastmlp
