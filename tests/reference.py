"""NumPy float64 references shared by the tests: Philox4x32-10 and the random conventions of
DESIGN.md ("Randomness"), written independently of the C++ code."""

from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(seed: int, stream: int, blocks: np.ndarray) -> np.ndarray:
    """Words (len(blocks), 4) of Philox4x32-10 with counter (block lo, block hi, stream lo, stream hi)
    and key (seed lo, seed hi)."""
    blocks = np.asarray(blocks, dtype=np.uint64)
    c0 = blocks & _MASK
    c1 = blocks >> np.uint64(32)
    c2 = np.full_like(blocks, np.uint64(stream & 0xFFFFFFFF))
    c3 = np.full_like(blocks, np.uint64(stream >> 32))
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64(seed >> 32)
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def philox_words(n: int, seed: int, stream: int) -> np.ndarray:
    """The word of each of n elements: word i % 4 of block i // 4."""
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    return philox4x32_10(seed, stream, blocks).reshape(-1)[:n]


def keep_mask(n: int, p: float, seed: int, stream: int) -> np.ndarray:
    threshold = min(int(np.floor(p * 2.0**32)), 2**32 - 1)
    return philox_words(n, seed, stream) >= np.uint32(threshold)


def uniform01(n: int, seed: int, stream: int) -> np.ndarray:
    return (philox_words(n, seed, stream) >> np.uint32(8)).astype(np.float64) * 2.0**-24


def normals(n: int, seed: int, stream: int) -> np.ndarray:
    """Box-Muller in float64 on word pairs (0, 1) and (2, 3) of each block."""
    w = philox4x32_10(seed, stream, np.arange((n + 3) // 4, dtype=np.uint64))
    u = ((w >> np.uint32(8)).astype(np.float64) + 0.5) * 2.0**-24
    r01 = np.sqrt(-2.0 * np.log(u[:, 0]))
    r23 = np.sqrt(-2.0 * np.log(u[:, 2]))
    z = np.stack([r01 * np.cos(2 * np.pi * u[:, 1]), r01 * np.sin(2 * np.pi * u[:, 1]),
                  r23 * np.cos(2 * np.pi * u[:, 3]), r23 * np.sin(2 * np.pi * u[:, 3])], axis=1)
    return z.reshape(-1)[:n]
