// fastmlp's own float32 math (exp, log, tanh, sigmoid, sincos of 2*pi*u), branch-free so the
// compiler vectorises it, and identical on CPU and GPU. Polynomials after Cephes (S. Moshier);
// max error about 2 ulp over the float range. float64 callers use the C library instead.
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

// 2^n for integer n in [-126, 127], exactly.
FASTMLP_HD float pow2i(int32_t n) { return bits_to_float(static_cast<uint32_t>(n + 127) << 23); }

FASTMLP_HD float exp_f32(float x) {
  // e^x = 2^n * e^r, |r| <= ln2/2; 2^n applied as two factors so results reach the subnormals.
  float xc = x > 88.8f ? 88.8f : x;
  xc = xc < -104.0f ? -104.0f : xc;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni / 2;
  const float result = e * pow2i(n1) * pow2i(ni - n1);
  return x != x ? x : result;  // NaN in, NaN out
}

FASTMLP_HD float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

FASTMLP_HD float tanh_f32(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float t = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
  const float large = x < 0.0f ? -t : t;
  return ax < 0.625f ? small : (x != x ? x : large);
}

// Natural log for finite x > 0.
FASTMLP_HD float log_f32(float x) {
  uint32_t u = float_to_bits(x);
  int32_t e = static_cast<int32_t>((u >> 23) & 0xff) - 126;
  float m = bits_to_float((u & 0x807fffffu) | 0x3f000000u);  // mantissa in [0.5, 1)
  const bool below = m < 0.707106781186547524f;
  e = below ? e - 1 : e;
  m = below ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + fe * 0.693359375f;
}

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
