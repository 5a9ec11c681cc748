// A bundle of kParts native SIMD vectors (AVX-512, AVX2, or 16-byte GCC vectors on the portable
// path) with the operators and lane helpers that the generic float32 math of ops/fastmath.h is
// written in. Every operation is applied to the parts one after the other, so the parts form
// independent dependency chains: a long polynomial-and-divide chain such as exp or tanh keeps the
// core busy instead of waiting on its own latency. The scalar overloads in fastmath.h and these
// give bitwise the same lanes, so vector loops and their scalar tails agree.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "ops/fastmath.h"

namespace fastmlp {
namespace cpu {
namespace {

#if defined(__AVX512F__)
constexpr int kNativeBytes = 64;
#elif defined(__AVX2__)
constexpr int kNativeBytes = 32;
#else
constexpr int kNativeBytes = 16;
#endif
constexpr int kParts = 2;

typedef float NativeF __attribute__((vector_size(kNativeBytes)));
typedef int32_t NativeI __attribute__((vector_size(kNativeBytes)));
typedef uint32_t NativeU __attribute__((vector_size(kNativeBytes)));

struct VecI {
  NativeI p[kParts];
  VecI() = default;
  VecI(int32_t s) {  // broadcast NOLINT(google-explicit-constructor): lets constants mix in
    for (auto& q : p) q = NativeI{} + s;
  }
};

struct VecF {
  static constexpr int kWidth = kParts * kNativeBytes / 4;
  NativeF p[kParts];
  VecF() = default;
  VecF(float s) {  // broadcast NOLINT(google-explicit-constructor)
    for (auto& q : p) q = NativeF{} + s;
  }
  FASTMLP_HD static VecF load(const float* x) {
    VecF r;
    for (int k = 0; k < kParts; ++k) std::memcpy(&r.p[k], x + k * (kNativeBytes / 4), kNativeBytes);
    return r;
  }
  FASTMLP_HD void store(float* x) const {
    for (int k = 0; k < kParts; ++k) std::memcpy(x + k * (kNativeBytes / 4), &p[k], kNativeBytes);
  }
};

#define FASTMLP_LANEWISE(R, name, expr) \
  FASTMLP_HD R name {                   \
    R r;                                \
    for (int k = 0; k < kParts; ++k) r.p[k] = expr; \
    return r;                           \
  }
FASTMLP_LANEWISE(VecF, operator+(const VecF& a, const VecF& b), a.p[k] + b.p[k])
FASTMLP_LANEWISE(VecF, operator-(const VecF& a, const VecF& b), a.p[k] - b.p[k])
FASTMLP_LANEWISE(VecF, operator*(const VecF& a, const VecF& b), a.p[k] * b.p[k])
FASTMLP_LANEWISE(VecF, operator/(const VecF& a, const VecF& b), a.p[k] / b.p[k])
FASTMLP_LANEWISE(VecF, operator-(const VecF& a), -a.p[k])
FASTMLP_LANEWISE(VecI, operator<(const VecF& a, const VecF& b), a.p[k] < b.p[k])
FASTMLP_LANEWISE(VecI, operator>(const VecF& a, const VecF& b), a.p[k] > b.p[k])
FASTMLP_LANEWISE(VecI, operator>=(const VecF& a, const VecF& b), a.p[k] >= b.p[k])
FASTMLP_LANEWISE(VecI, operator!=(const VecF& a, const VecF& b), a.p[k] != b.p[k])
FASTMLP_LANEWISE(VecI, operator+(const VecI& a, const VecI& b), a.p[k] + b.p[k])
FASTMLP_LANEWISE(VecI, operator-(const VecI& a, const VecI& b), a.p[k] - b.p[k])
FASTMLP_LANEWISE(VecI, operator&(const VecI& a, const VecI& b), a.p[k] & b.p[k])
FASTMLP_LANEWISE(VecI, operator|(const VecI& a, const VecI& b), a.p[k] | b.p[k])
FASTMLP_LANEWISE(VecI, operator>>(const VecI& a, int s), a.p[k] >> s)
FASTMLP_LANEWISE(VecI, operator==(const VecF& a, const VecF& b), a.p[k] == b.p[k])
FASTMLP_LANEWISE(VecI, lane_select(const VecI& m, const VecI& a, const VecI& b), m.p[k] ? a.p[k] : b.p[k])
FASTMLP_LANEWISE(VecI, lane_bits(const VecF& a), reinterpret_cast<NativeI>(a.p[k]))
FASTMLP_LANEWISE(VecF, lane_from_bits(const VecI& a), reinterpret_cast<NativeF>(a.p[k]))
FASTMLP_LANEWISE(VecF, lane_to_float(const VecI& a), __builtin_convertvector(a.p[k], NativeF))
FASTMLP_LANEWISE(VecF, lane_select(const VecI& m, const VecF& a, const VecF& b), m.p[k] ? a.p[k] : b.p[k])
FASTMLP_LANEWISE(VecF, lane_abs(const VecF& a), reinterpret_cast<NativeF>(reinterpret_cast<NativeU>(a.p[k]) & 0x7fffffffu))
// Truncation toward zero, exact for |a| < 2^31.
FASTMLP_LANEWISE(VecI, lane_to_int(const VecF& a), __builtin_convertvector(a.p[k], NativeI))
// n / 2 rounded toward zero, as C++ integer division.
FASTMLP_LANEWISE(VecF, pow2i(const VecI& n), reinterpret_cast<NativeF>((n.p[k] + 127) << 23))
FASTMLP_LANEWISE(VecF, scale_pow2_normal(const VecF& e, const VecI& n),
                 reinterpret_cast<NativeF>(reinterpret_cast<NativeU>(e.p[k]) + (reinterpret_cast<NativeU>(n.p[k]) << 23)))
// vminps/vmaxps return their second operand unless the first is strictly smaller/larger: exactly
// the scalar a < b ? a : b (NaN and signed zeros included).
#if defined(__AVX512F__)
FASTMLP_LANEWISE(VecF, lane_min(const VecF& a, const VecF& b), _mm512_mask_min_ps(a.p[k], 0xFFFF, a.p[k], b.p[k]))
FASTMLP_LANEWISE(VecF, lane_max(const VecF& a, const VecF& b), _mm512_mask_max_ps(a.p[k], 0xFFFF, a.p[k], b.p[k]))
#elif defined(__AVX2__)
FASTMLP_LANEWISE(VecF, lane_min(const VecF& a, const VecF& b), _mm256_min_ps(a.p[k], b.p[k]))
FASTMLP_LANEWISE(VecF, lane_max(const VecF& a, const VecF& b), _mm256_max_ps(a.p[k], b.p[k]))
#else
FASTMLP_LANEWISE(VecF, lane_min(const VecF& a, const VecF& b), a.p[k] < b.p[k] ? a.p[k] : b.p[k])
FASTMLP_LANEWISE(VecF, lane_max(const VecF& a, const VecF& b), a.p[k] > b.p[k] ? a.p[k] : b.p[k])
#endif
#if defined(__AVX512F__)
FASTMLP_LANEWISE(VecF, fmadd(const VecF& a, const VecF& b, const VecF& c), _mm512_fmadd_ps(a.p[k], b.p[k], c.p[k]))
FASTMLP_LANEWISE(VecF, lane_floor(const VecF& a), _mm512_mask_roundscale_ps(a.p[k], 0xFFFF, a.p[k], _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC))
#elif defined(__AVX2__) && defined(__FMA__)
FASTMLP_LANEWISE(VecF, fmadd(const VecF& a, const VecF& b, const VecF& c), _mm256_fmadd_ps(a.p[k], b.p[k], c.p[k]))
FASTMLP_LANEWISE(VecF, lane_floor(const VecF& a), _mm256_floor_ps(a.p[k]))
#else
FASTMLP_LANEWISE(VecF, fmadd(const VecF& a, const VecF& b, const VecF& c), a.p[k] * b.p[k] + c.p[k])
// floor as truncation corrected downwards: exact for |a| < 2^31, which is all exp_t asks of it.
FASTMLP_HD VecF lane_floor(const VecF& a) {
  VecF r;
  for (int k = 0; k < kParts; ++k) {
    const NativeF t = __builtin_convertvector(__builtin_convertvector(a.p[k], NativeI), NativeF);
    r.p[k] = t > a.p[k] ? t - 1.0f : t;
  }
  return r;
}
#endif
#undef FASTMLP_LANEWISE

// Whether any lane of a comparison mask is set.
inline bool lane_any(const VecI& m) {
  NativeI acc = m.p[0];
  for (int k = 1; k < kParts; ++k) acc |= m.p[k];
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask(reinterpret_cast<__m512i>(acc), reinterpret_cast<__m512i>(acc)) != 0;
#elif defined(__AVX2__)
  return !_mm256_testz_si256(reinterpret_cast<__m256i>(acc), reinterpret_cast<__m256i>(acc));
#else
  for (int i = 0; i < kNativeBytes / 4; ++i)
    if (acc[i]) return true;
  return false;
#endif
}

// f(VecF) over whole bundles of [0, n), then f(float) over the tail: out[i] = f(x[i]). out may be x.
template <class F>
void map_lanes(const float* x, float* out, int64_t n, const F& f) {
  int64_t i = 0;
  for (; i + VecF::kWidth <= n; i += VecF::kWidth) f(VecF::load(x + i)).store(out + i);
  for (; i < n; ++i) out[i] = f(x[i]);
}

}  // namespace
}  // namespace cpu
}  // namespace fastmlp
