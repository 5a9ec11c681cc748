// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), the one source of
// randomness in fastmlp. Counter = (block lo, block hi, stream lo, stream hi), key = seed (lo, hi):
// element i of a tensor uses word i % 4 of block i / 4 (DESIGN.md, "Randomness").
#pragma once
#include <cstdint>
#include "core/hd.h"

namespace fastmlp {
namespace {

struct Philox4 {
  uint32_t w[4];
};

FASTMLP_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The four 32-bit words of block `block` of stream `stream` under key `seed`.
FASTMLP_HD Philox4 philox4x32_10(uint64_t seed, uint64_t stream, uint64_t block) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

}  // namespace
}  // namespace fastmlp
