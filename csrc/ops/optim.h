// One optimizer update of a single element, written once for CPU and GPU kernels. The formulas
// and the order of every rounding follow torch.optim's implementations; the scalar coefficients
// (step size, bias corrections, decay factors) arrive precomputed in double and cast to T, so a
// kernel's inner loop is only T arithmetic on one element and its state.
#pragma once
#include <cmath>

#include "core/hd.h"

namespace fastmlp {
namespace ops {
namespace {

// sign(x) with sign(0) = 0, as torch.sign; NaN propagates.
template <class T>
FASTMLP_HD T sign_of(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x * T(0));
}

// The gradient with coupled L2 (weight_decay) and L1 added: g + wd*p + l1*sign(p). A zero
// coefficient adds nothing, so Inf parameters do not turn into NaN through 0*Inf (as torch).
template <class T>
FASTMLP_HD T regularised_grad(T grad, T p, T weight_decay, T l1) {
  T g = grad;
  if (weight_decay != T(0)) g = g + weight_decay * p;
  if (l1 != T(0)) g = g + l1 * sign_of(p);
  return g;
}

// SGD (torch.optim.SGD). `first` is step 1, where the momentum buffer starts as g.
template <class T>
struct SgdCoef {
  T lr, momentum, one_minus_dampening, weight_decay, l1;
  bool use_momentum, nesterov, first;
};

template <class T>
FASTMLP_HD void sgd_update(T& p, T grad, T* buf, const SgdCoef<T>& c) {
  T g = regularised_grad(grad, p, c.weight_decay, c.l1);
  if (c.use_momentum) {
    const T b = c.first ? g : c.momentum * *buf + c.one_minus_dampening * g;
    *buf = b;
    g = c.nesterov ? g + c.momentum * b : b;
  }
  p = p - c.lr * g;
}

// AdaGrad (torch.optim.Adagrad); clr = lr / (1 + (step - 1) * lr_decay).
template <class T>
struct AdagradCoef {
  T clr, eps, weight_decay, l1;
};

template <class T>
FASTMLP_HD void adagrad_update(T& p, T grad, T& state_sum, const AdagradCoef<T>& c) {
  const T g = regularised_grad(grad, p, c.weight_decay, c.l1);
  const T s = state_sum + g * g;
  state_sum = s;
  p = p - c.clr * (g / (std::sqrt(s) + c.eps));
}

// RMSprop (torch.optim.RMSprop). buf is used only with momentum, grad_avg only when centered.
template <class T>
struct RmspropCoef {
  T lr, alpha, one_minus_alpha, eps, momentum, weight_decay, l1;
  bool use_momentum, centered;
};

template <class T>
FASTMLP_HD void rmsprop_update(T& p, T grad, T& square_avg, T* buf, T* grad_avg, const RmspropCoef<T>& c) {
  const T g = regularised_grad(grad, p, c.weight_decay, c.l1);
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
// sqrt_bc2 = sqrt(1 - beta2^step); decay = 1 - lr * weight_decay for AdamW, else 1 and the
// coupled weight_decay goes into the gradient.
template <class T>
struct AdamCoef {
  T step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2, eps, weight_decay, l1, decay;
  bool decoupled;
};

template <class T>
FASTMLP_HD void adam_update(T& p, T grad, T& exp_avg, T& exp_avg_sq, const AdamCoef<T>& c) {
  T q = p;
  const T g = regularised_grad(grad, q, c.decoupled ? T(0) : c.weight_decay, c.l1);
  if (c.decoupled) q = q * c.decay;
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
