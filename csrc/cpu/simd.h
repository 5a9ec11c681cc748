// The few vector operations the GEMM micro-kernel needs, for the ISA this translation unit is
// compiled for: AVX-512 (16 floats), AVX2+FMA (8 floats) or a portable 16-byte GCC vector (SSE2
// on x86-64, NEON elsewhere; multiply then add, no FMA). Internal linkage, see core/hd.h.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastmlp {
namespace cpu {
namespace {

template <class T>
struct Simd;

#if defined(__AVX512F__)
template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int W = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }  // one lane of fma
};
template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int W = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V zero() { return _mm512_setzero_pd(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static double fma1(double a, double b, double c) { return __builtin_fma(a, b, c); }
};
constexpr int kMicroRows = 12;  // 12 x 2 accumulators of 32 ZMM registers
#elif defined(__AVX2__) && defined(__FMA__)
template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int W = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }  // one lane of fma
};
template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int W = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V zero() { return _mm256_setzero_pd(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static double fma1(double a, double b, double c) { return __builtin_fma(a, b, c); }
};
constexpr int kMicroRows = 6;  // 6 x 2 accumulators of 16 YMM registers
#else
template <class T>
struct GenericSimd {
  typedef T V __attribute__((vector_size(16)));
  static constexpr int W = 16 / sizeof(T);
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V set1(T x) { return V{} + x; }
  static V zero() { return V{}; }
  static V fma(V a, V b, V c) { return a * b + c; }  // two roundings: fp-contract is off
  static T fma1(T a, T b, T c) { return a * b + c; }  // one lane of fma
};
template <>
struct Simd<float> : GenericSimd<float> {};
template <>
struct Simd<double> : GenericSimd<double> {};
constexpr int kMicroRows = 6;
#endif

}  // namespace
}  // namespace cpu
}  // namespace fastmlp
