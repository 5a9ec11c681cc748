// Checks that exp_t's NonPositive form (the exponent added to e's bits) gives bitwise what the
// general form (e multiplied by pow2i(n)) gives, for every float x <= 0 and for NaN, on the scalar
// path and on the SIMD lanes of the ISA it is built for. Takes 20-50 s per build:
//   g++ -O2 -std=c++17 -Icsrc tools/check_exp_nonpositive.cpp && ./a.out                (portable)
//   g++ -O2 -std=c++17 -mavx2 -mfma -Icsrc tools/check_exp_nonpositive.cpp && ./a.out
//   g++ -O2 -std=c++17 -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma -Icsrc tools/check_exp_nonpositive.cpp && ./a.out
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "cpu/lanes.h"

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// Bitwise equal, or both NaN (the payload of a NaN may differ between forms).
bool same(float a, float b) { return bits(a) == bits(b) || (a != a && b != b); }

}  // namespace

int main() {
  using fastmlp::cpu::VecF;
  constexpr int W = VecF::kWidth;
  alignas(64) float xs[W], general[W], nonpositive[W];
  uint64_t checked = 0, mismatches = 0;
  auto check = [&](int count) {
    fastmlp::ops::exp_t<VecF, false>(VecF::load(xs)).store(general);
    fastmlp::ops::exp_t<VecF, true>(VecF::load(xs)).store(nonpositive);
    for (int k = 0; k < count; ++k, ++checked) {
      const float sg = fastmlp::ops::exp_t<float, false>(xs[k]), sn = fastmlp::ops::exp_t<float, true>(xs[k]);
      if (same(general[k], nonpositive[k]) && same(sg, sn) && same(sn, nonpositive[k])) continue;
      if (++mismatches <= 10)
        std::printf("x = %a: lanes %a / %a, scalar %a / %a\n", xs[k], general[k], nonpositive[k], sg, sn);
    }
  };
  int fill = 0;
  auto add = [&](uint32_t u) {
    std::memcpy(&xs[fill++], &u, 4);
    if (fill == W) {
      check(W);
      fill = 0;
    }
  };
  for (uint64_t u = 0x80000000u; u <= 0xffffffffu; ++u) add(static_cast<uint32_t>(u));  // -0 to -NaN
  for (uint32_t u : {0u, 0x7f800001u, 0x7fc00000u, 0x7fffffffu}) add(u);              // +0, +NaN
  if (fill > 0) check(fill);
  std::printf("%llu inputs, %llu mismatches\n", static_cast<unsigned long long>(checked),
              static_cast<unsigned long long>(mismatches));
  return mismatches != 0;
}
