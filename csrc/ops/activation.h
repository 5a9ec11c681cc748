// Activations and their derivatives, written once for CPU and GPU. The derivative takes the
// activation's output y (not its input), which is what the forward pass keeps.
#pragma once
#include <cmath>

#include "core/hd.h"
#include "ops/fastmath.h"

namespace fastmlp {
namespace ops {

enum class Act : int { identity = 0, relu = 1, sigmoid = 2, tanh = 3 };

namespace {

// relu(NaN) is NaN, as in PyTorch.
template <class T>
FASTMLP_HD T relu(T x) {
  return x < T(0) ? T(0) : x;
}

FASTMLP_HD float sigmoid(float x) { return sigmoid_f32(x); }
FASTMLP_HD double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
FASTMLP_HD float tanh_act(float x) { return tanh_f32(x); }
FASTMLP_HD double tanh_act(double x) { return std::tanh(x); }

template <Act A, class T>
FASTMLP_HD T activate(T x) {
  if constexpr (A == Act::relu) return relu(x);
  else if constexpr (A == Act::sigmoid) return sigmoid(x);
  else if constexpr (A == Act::tanh) return tanh_act(x);
  else return x;
}

// d act / d x expressed through y = act(x), times grad_out.
template <Act A, class T>
FASTMLP_HD T activate_backward(T grad_out, T y) {
  if constexpr (A == Act::relu) return y > T(0) ? grad_out : T(0);
  else if constexpr (A == Act::sigmoid) return grad_out * (y * (T(1) - y));
  else if constexpr (A == Act::tanh) return grad_out * (T(1) - y * y);
  else return grad_out;
}

}  // namespace
}  // namespace ops
}  // namespace fastmlp
