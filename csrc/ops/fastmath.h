// fastmlp's own float32 math (exp, log, tanh, sigmoid, sincos of 2*pi*u), branch-free and
// identical on the GPU and the CPU's FMA paths (the portable path rounds a*b+c twice). exp, log
// and sincos are polynomials after Cephes (S. Moshier), max error about 2 ulp over the float range;
// tanh is a rational fit of our own, about 5 ulp (see tanh_t). float64 callers use the C library.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/hd.h"

namespace fastmlp {
namespace ops {
namespace {

FASTMLP_HD float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
FASTMLP_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The lane helpers the generic math below is written in. For F = float they are scalar; the CPU
// kernels add overloads for their SIMD bundle (cpu/lanes.h), so one template body serves the GPU,
// the scalar tails and the vector loops, and all three round alike.

// a * b + c with one rounding where the hardware has FMA (CUDA, AVX2, AVX-512); the portable path
// rounds twice. Explicit, since -ffp-contract=off (and nvcc --fmad=false) keeps a*b+c unfused.
FASTMLP_HD float fmadd(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#elif defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
FASTMLP_HD float lane_min(float a, float b) { return a < b ? a : b; }
FASTMLP_HD float lane_max(float a, float b) { return a > b ? a : b; }
FASTMLP_HD float lane_abs(float a) { return std::fabs(a); }
FASTMLP_HD float lane_floor(float a) { return std::floor(a); }
// a integral with |a| < 2^31; NaN gives 0 here (an unspecified value in vectors): callers' results are NaN then anyway.
FASTMLP_HD int32_t lane_to_int(float a) { return a == a ? static_cast<int32_t>(a) : 0; }
FASTMLP_HD float lane_select(bool m, float a, float b) { return m ? a : b; }

// 2^n for integer n in [-126, 127], exactly; n = 128 gives inf.
FASTMLP_HD float pow2i(int32_t n) { return bits_to_float(static_cast<uint32_t>(n + 127) << 23); }
// e * 2^n where that product is a normal float (or e is NaN, with n = 0 or INT32_MIN as
// lane_to_int gives it): n added to e's exponent field, bitwise what e * pow2i(n) gives, with an
// integer add instead of a multiply (which competes with the FMAs around it for two pipes).
FASTMLP_HD float scale_pow2_normal(float e, int32_t n) {
  return bits_to_float(float_to_bits(e) + (static_cast<uint32_t>(n) << 23));
}

// e^x for the activations and losses, which add it to 1 or divide by a sum holding a 1, so they
// need no subnormal results: x is clamped to [-87.3, 88.8], n lies in [-126, 128], and 2^n is one
// exact factor (2^128 = inf: e^x overflows to inf from x = 88.38, a little before the true
// 88.72). The clamps keep x second so that a NaN passes through them, and on to the result.
// NonPositive: for callers whose x is never above 0 (or NaN): the upper clamp, which leaves such x
// as they are, is skipped; the result is bitwise the same.
template <class F, bool NonPositive = false>
FASTMLP_HD F exp_t(F x) {
  // e^x = 2^n * e^r, |r| <= ln2/2.
  const F xc = NonPositive ? lane_max(F(-87.3f), x) : lane_max(F(-87.3f), lane_min(F(88.8f), x));
  const F n = lane_floor(fmadd(xc, F(1.44269504088896341f), F(0.5f)));
  F r = fmadd(n, F(-0.693359375f), xc);
  r = fmadd(n, F(2.12194440e-4f), r);
  F p = F(1.9875691500e-4f);
  p = fmadd(p, r, F(1.3981999507e-3f));
  p = fmadd(p, r, F(8.3334519073e-3f));
  p = fmadd(p, r, F(4.1665795894e-2f));
  p = fmadd(p, r, F(1.6666665459e-1f));
  p = fmadd(p, r, F(5.0000001201e-1f));
  const F e = fmadd(p, r * r, r) + F(1.0f);
  // x <= 0: n <= 0, and at the clamp (n = -126) r > 0.036, so e > 1 and e * 2^n is normal: the
  // exponent add gives the multiply's bits (tools/check_exp_nonpositive.cpp compares the two over
  // every non-positive float and NaN, scalar and each ISA's lanes). The softmax and the sigmoid
  // cross-entropy, whose exp loops are bound by the FMA pipes: old and new builds loaded in one
  // process on AMD EPYC (Zen 4), one thread from cache, 32 x 4096: softmax 1.06x on the AVX2 path
  // and 1.03x on AVX-512, the sigmoid cross-entropy 1.02x on both.
  if constexpr (NonPositive) return scale_pow2_normal(e, lane_to_int(n));
  else return e * pow2i(lane_to_int(n));
}

template <class F>
FASTMLP_HD F sigmoid_t(F x) {
  return F(1.0f) / (F(1.0f) + exp_t(-x));
}

// tanh(x) = x P(x^2) / Q(x^2) on [-9, 9], P of degree 5 and Q of degree 4 with P(0) = Q(0) = 1:
// a rational fit to tanh's relative error (ours: tools/fit_tanh.py, iterated weighted least
// squares; 1.4e-8 with these float32 coefficients). Evaluated in float32 it is within about 5 ulp
// (3 below |x| = 1; 6 on the portable path, which rounds a*b+c twice), against 1.3 for the
// exp-based form it replaced at a third of the cost: one divide and no exp, so the activation
// streams at memory speed. Beyond |x| = 9 (tanh rounds to +-1 from 9.01) the result is +-1. NaN
// passes the clamps and propagates.
template <class F>
FASTMLP_HD F tanh_t(F x) {
  const F xc = lane_max(F(-9.0f), lane_min(F(9.0f), x));
  const F s = xc * xc;
  F p = F(-0x1.b0fa6ep-37f);
  p = fmadd(p, s, F(0x1.07f902p-25f));
  p = fmadd(p, s, F(0x1.d6f182p-16f));
  p = fmadd(p, s, F(0x1.fb72b4p-9f));
  p = fmadd(p, s, F(0x1.18379ep-3f));
  p = fmadd(p, s, F(1.0f));
  F q = F(0x1.5abbfap-20f);
  q = fmadd(q, s, F(0x1.9d948ep-12f));
  q = fmadd(q, s, F(0x1.be969ep-6f));
  q = fmadd(q, s, F(0x1.e17124p-2f));
  q = fmadd(q, s, F(1.0f));
  // Beyond +-9 the clamped x leaves x - xc behind: adding it pushes y past +-1 (from |x| = 9 plus an
  // ulp) and the clamp to [-1, 1] gives +-1. Written y - (xc - x) so that -0 stays -0.
  return lane_max(F(-1.0f), lane_min(F(1.0f), xc * p / q - (xc - x)));
}

FASTMLP_HD float exp_f32(float x) { return exp_t(x); }
FASTMLP_HD float sigmoid_f32(float x) { return sigmoid_t(x); }
FASTMLP_HD float tanh_f32(float x) { return tanh_t(x); }

// Natural log for finite x > 0. Plain multiplies and adds (no fmadd): Box-Muller normals use it
// and are bitwise the same on every ISA path, the portable one included.
FASTMLP_HD int32_t lane_bits(float a) { return static_cast<int32_t>(float_to_bits(a)); }
FASTMLP_HD float lane_from_bits(int32_t a) { return bits_to_float(static_cast<uint32_t>(a)); }
FASTMLP_HD float lane_to_float(int32_t a) { return static_cast<float>(a); }
FASTMLP_HD int32_t lane_select(bool m, int32_t a, int32_t b) { return m ? a : b; }

template <class F>
FASTMLP_HD F log_t(F x) {
  const auto u = lane_bits(x);
  auto e = ((u >> 23) & 0xff) - 126;
  F m = lane_from_bits((u & static_cast<int32_t>(0x807fffffu)) | 0x3f000000);  // mantissa in [0.5, 1)
  const auto below = m < F(0.707106781186547524f);
  e = lane_select(below, e - 1, e);
  m = lane_select(below, m + m - F(1.0f), m - F(1.0f));
  const F z = m * m;
  // The degree-8 polynomial by Estrin's scheme: 5 dependent steps instead of Horner's 9.
  const F z2 = z * z;
  const F p01 = F(7.0376836292e-2f) * m - F(1.1514610310e-1f);
  const F p23 = F(1.1676998740e-1f) * m - F(1.2420140846e-1f);
  const F p45 = F(1.4249322787e-1f) * m - F(1.6668057665e-1f);
  const F p67 = F(2.0000714765e-1f) * m - F(2.4999993993e-1f);
  const F q0 = p01 * z + p23, q1 = p45 * z + p67;
  F y = (q0 * z2 + q1) * m + F(3.3333331174e-1f);
  y = y * m * z;
  const F fe = lane_to_float(e);
  y = y + fe * F(-2.12194440e-4f);
  y = y - F(0.5f) * z;
  return m + y + fe * F(0.693359375f);
}

FASTMLP_HD float log_f32(float x) { return log_t(x); }

// sin(2*pi*u) and cos(2*pi*u) for u in [0, 1].
FASTMLP_HD void sincos_2pi_f32(float u, float& s, float& c) {
  const float q = std::floor(u * 4.0f + 0.5f);        // nearest quarter turn
  const float t = u - q * 0.25f;                       // exact, |t| <= 1/8
  const float x = t * 6.28318530717958648f;            // |x| <= pi/4
  const float z = x * x;
  float ps = -1.9515295891e-4f;
  ps = ps * z + 8.3321608736e-3f;
  ps = ps * z - 1.6666654611e-1f;
  const float sx = ps * z * x + x;
  float pc = 2.443315711809948e-5f;
  pc = pc * z - 1.388731625493765e-3f;
  pc = pc * z + 4.166664568298827e-2f;
  const float cx = pc * z * z - 0.5f * z + 1.0f;
  const int32_t quadrant = static_cast<int32_t>(q) & 3;
  s = quadrant == 0 ? sx : quadrant == 1 ? cx : quadrant == 2 ? -sx : -cx;
  c = quadrant == 0 ? cx : quadrant == 1 ? -sx : quadrant == 2 ? -cx : sx;
}

}  // namespace
}  // namespace ops
}  // namespace fastmlp
