// Turning Philox words into what the kernels need (DESIGN.md, "Randomness"): the integer drop
// test, uniforms in [0, 1) and Box-Muller normals, identical on CPU and GPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/hd.h"
#include "core/philox.h"
#include "ops/fastmath.h"

namespace fastmlp {
namespace ops {
namespace {

// Elements whose word is below this threshold are dropped: floor(p * 2^32), p in [0, 1).
FASTMLP_HD uint32_t drop_threshold(double p) {
  const double t = std::floor(p * 4294967296.0);
  return t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}

FASTMLP_HD bool keep(uint32_t word, uint32_t threshold) { return word >= threshold; }

// A kept element's factor 1 / (1 - p), in double then rounded once to T (CPU and GPU alike).
template <class T>
FASTMLP_HD T dropout_scale(double p) {
  return static_cast<T>(1.0 / (1.0 - p));
}

// The gradient through y = dropout(relu(z)) from its output: y > 0 means kept and z > 0, so g times
// the scale; elsewhere (dropped, z <= 0, NaN) 0. Bitwise dropout's backward then relu's.
template <class T>
FASTMLP_HD T relu_dropout_grad(T g, T y, T scale) {
  const T v = g * scale;
  return y > T(0) ? v : T(0);
}

// word >> 8 < 2^24 converts exactly; through int32 so that x86 vectorises it (cvtdq2ps has no
// unsigned form).
FASTMLP_HD float top24(uint32_t word) { return static_cast<float>(static_cast<int32_t>(word >> 8)); }

FASTMLP_HD float uniform01(uint32_t word) { return top24(word) * 5.9604644775390625e-08f; }

// Box-Muller on a pair of words: returns (r cos, r sin).
FASTMLP_HD void normal_pair(uint32_t w0, uint32_t w1, float& z0, float& z1) {
  const float u1 = (top24(w0) + 0.5f) * 5.9604644775390625e-08f;
  const float u2 = (top24(w1) + 0.5f) * 5.9604644775390625e-08f;
  const float r = std::sqrt(-2.0f * log_f32(u1));
  float s, c;
  sincos_2pi_f32(u2, s, c);
  z0 = r * c;
  z1 = r * s;
}

// The four normals of one Philox block, element order: (w0,w1)->cos,sin; (w2,w3)->cos,sin.
FASTMLP_HD void normal4(const Philox4& b, float out[4]) {
  normal_pair(b.w[0], b.w[1], out[0], out[1]);
  normal_pair(b.w[2], b.w[3], out[2], out[3]);
}

}  // namespace
}  // namespace ops
}  // namespace fastmlp
