"""Dropout, noise and random fills against the independent NumPy Philox reference (tests/reference.py)
and DESIGN.md's "Randomness" convention: masks and uniforms are exact; normals are checked at a
tolerance derived below; statistics at 5 sigma of the binomial / normal sampling error."""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels
from reference import keep_mask, normals, philox4x32_10, uniform01

DTYPES = (np.float32, np.float64)
CHUNK = 32768  # elements per parallel task in the C++ kernels; sizes below straddle several
SIGMAS = 5

SEEDS = (0, 1, 12345, 2**32 - 1, 2**32, 2**63 + 7, 2**64 - 1)
OFFSETS = (0, 1, 7, 2**32 - 1, 2**32 + 5, 2**64 - 1)
SIZES = (1, 2, 3, 5, 13, 4099, 3 * CHUNK + 5)


def dtype_id(d):
    return np.dtype(d).name


def binomial_bound(p, n):
    return SIGMAS * np.sqrt(p * (1 - p) / n)


# --- dropout masks --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES)
def test_dropout_mask_equals_reference_for_every_seed_and_size(backend, seed, size):
    for p in (0.1, 0.5, 0.9):
        got = backend.get(kernels.dropout_mask(size, p, seed=seed, offset=3,
                                               device="cuda" if backend == "cuda" else None))
        assert got.dtype == np.bool_ and got.shape == (size,)
        np.testing.assert_array_equal(got, keep_mask(size, p, seed, 3), err_msg=f"p={p}")


@pytest.mark.parametrize("offset", OFFSETS)
def test_dropout_mask_equals_reference_for_every_offset(backend, offset):
    for seed in (0, 2**64 - 1):
        got = backend.get(kernels.dropout_mask(CHUNK + 3, 0.3, seed=seed, offset=offset,
                                               device="cuda" if backend == "cuda" else None))
        np.testing.assert_array_equal(got, keep_mask(CHUNK + 3, 0.3, seed, offset))


def test_dropout_mask_thresholds_at_the_extremes_of_p(isa):
    n = 50_000
    for p in (0.0, 1e-9, 2.0**-32, 0.25, 0.999999, 1 - 2.0**-33):
        np.testing.assert_array_equal(kernels.dropout_mask(n, p, seed=9, offset=2), keep_mask(n, p, 9, 2),
                                      err_msg=f"p={p!r}")
    assert kernels.dropout_mask(n, 0.0, seed=9, offset=2).all()


def test_dropout_mask_of_a_shape_is_the_row_major_flat_mask():
    got = kernels.dropout_mask((7, 13, 3), 0.5, seed=5, offset=6)
    assert got.shape == (7, 13, 3)
    np.testing.assert_array_equal(got, keep_mask(7 * 13 * 3, 0.5, 5, 6).reshape(7, 13, 3))
    np.testing.assert_array_equal(kernels.dropout_mask([4, 5], 0.5, seed=5, offset=6),
                                  keep_mask(20, 0.5, 5, 6).reshape(4, 5))
    assert kernels.dropout_mask((0, 5), 0.5, seed=5, offset=6).shape == (0, 5)


@pytest.mark.parametrize("p", (0.0, 0.1, 0.5, 0.9))
def test_dropout_keep_rate_is_within_binomial_bound(p):
    n = 400_000
    kept = kernels.dropout_mask(n, p, seed=2024, offset=11).mean()
    assert abs(kept - (1 - p)) <= binomial_bound(p, n), f"keep rate {kept} for p={p}"
    if p == 0:
        assert kept == 1.0


def test_different_streams_and_seeds_give_independent_masks():
    n = 100_000
    masks = {(s, o): kernels.dropout_mask(n, 0.5, seed=s, offset=o) for s in (0, 1, 2**64 - 1) for o in (0, 1, 2**32)}
    keys = list(masks)
    for i, ki in enumerate(keys):
        for kj in keys[i + 1:]:
            agree = (masks[ki] == masks[kj]).mean()
            # Two independent p=0.5 masks agree on each element with probability 1/2.
            assert abs(agree - 0.5) <= binomial_bound(0.5, n), f"{ki} vs {kj}: agreement {agree}"


# --- dropout and its backward ---------------------------------------------------------------------

def dropout_tolerance(expected, dtype):
    """x * (1 / (1 - p)): three roundings (1 - p, the division, the product) of at most eps/2 each."""
    eps = np.finfo(dtype).eps
    return 1.5 * eps * (1 + eps) * np.abs(expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("p", (0.1, 0.5, 0.9, 0.37))
def test_dropout_is_x_times_mask_over_keep_probability(isa, rng, p, dtype):
    shape = (97, 1013)  # 98261 elements: several chunks, not a multiple of 4
    x = rng.standard_normal(shape).astype(dtype)
    got = kernels.dropout(x, p, seed=77, offset=5)
    assert got.dtype == x.dtype and got.shape == shape
    mask = keep_mask(x.size, p, 77, 5).reshape(shape)
    ld = np.longdouble
    expected = np.where(mask, x.astype(ld) / (1 - ld(p)), ld(0))
    np.testing.assert_array_equal(got[~mask], 0)
    err = np.abs(got.astype(ld) - expected)
    assert (err <= dropout_tolerance(expected, dtype)).all()


@pytest.mark.parametrize("size", (31, 32, 33, 63, 100, 127, 128, 129, 161, 255, 4099, CHUNK - 1, CHUNK + 37,
                                  3 * CHUNK + 5))
def test_float32_dropout_and_mask_noise_are_bitwise_the_reference_mask(isa, rng, size):
    # Sizes around the vector paths' groups (AVX2 32 elements a group of vectors, 16 a vector;
    # AVX-512 128 and 32) and the parallel chunks: the register-resident masks and the buffered
    # path must give the same bits.
    x = rng.standard_normal(size).astype(np.float32)
    for seed, offset in ((0, 0), (2**64 - 1, 7), (12345, 2**32 + 5)):
        for p in (0.2, 0.5, 0.9):
            mask = keep_mask(size, p, seed, offset)
            scale = np.float32(1.0 / (1.0 - p))
            np.testing.assert_array_equal(kernels.dropout(x, p, seed=seed, offset=offset),
                                          np.where(mask, x * scale, np.float32(0)), err_msg=f"p={p}")
            np.testing.assert_array_equal(kernels.add_noise(x, "mask", p, seed=seed, offset=offset),
                                          np.where(mask, x, np.float32(0)), err_msg=f"p={p}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dropout_backward_uses_the_same_mask_and_scale(rng, dtype):
    g = rng.standard_normal(3 * CHUNK + 1).astype(dtype)
    for p, seed, offset in [(0.5, 0, 0), (0.2, 2**64 - 1, 2**33 + 1), (0.9, 3, 4)]:
        back = kernels.dropout_backward(g, p, seed=seed, offset=offset)
        forward = kernels.dropout(g, p, seed=seed, offset=offset)
        np.testing.assert_array_equal(back, forward)
        np.testing.assert_array_equal(back == 0, ~keep_mask(g.size, p, seed, offset) | (g == 0))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_relu_dropout_backward_is_bitwise_dropout_backward_then_relu_backward(backend, rng, p, dtype):
    # fastmlp.nn's path for Dense+ReLU -> Dropout (CPU and GPU): the gradient from the dropout's
    # output alone. Zeros (+0, -0), NaN and infinities included, on both sides.
    from fastmlp import _cuda_kernels
    n = 3 * CHUNK + 5
    z = rng.standard_normal(n).astype(dtype)
    z[::11] = 0.0
    z[5::11] = -0.0
    z[7::97] = np.nan
    z[9::101] = np.inf
    g = rng.standard_normal(n).astype(dtype)
    g[3::89] = np.nan
    g[4::83] = -np.inf
    relu = kernels.activation(z, "relu")
    y = kernels.dropout(relu, p, seed=3, offset=4)
    expected = kernels.activation_backward(kernels.dropout_backward(g, p, seed=3, offset=4), relu, "relu")
    fused = _cuda_kernels.relu_dropout_backward
    g_b, y_b = backend.put(g), backend.put(y)
    got = backend.get(fused(g_b, y_b, p, out=None, stream=None))
    np.testing.assert_array_equal(result_bits(got, backend), result_bits(expected, backend))
    in_place = backend.put(g.copy())
    assert fused(in_place, y_b, p, out=in_place, stream=None) is in_place
    np.testing.assert_array_equal(result_bits(backend.get(in_place), backend), result_bits(expected, backend))
    with pytest.raises(ValueError, match="y"):
        fused(g_b, backend.put(y[:-1].copy()), p, out=None, stream=None)
    with pytest.raises(ValueError, match="p"):
        fused(g_b, y_b, 1.0, out=None, stream=None)


def result_bits(a, backend):
    """The bits to compare. A GPU's multiply returns its own canonical NaN (0x7fffffff), whatever the
    NaN it was given, where x86 keeps the input's payload, so on CUDA a NaN compares as NaN; every
    other value (±0, ±inf) bit for bit. The CPU paths are compared with the payloads."""
    if backend == "cuda":
        a = a.copy()
        a[np.isnan(a)] = np.nan
    return a.view(np.uint8)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dropout_with_p_zero_is_identity(isa, rng, dtype):
    x = rng.standard_normal(CHUNK + 9).astype(dtype)
    np.testing.assert_array_equal(kernels.dropout(x, 0.0, seed=1, offset=2), x)
    np.testing.assert_array_equal(kernels.dropout_backward(x, 0.0, seed=1, offset=2), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dropout_in_place_and_out(rng, dtype):
    x = rng.standard_normal(1000).astype(dtype)
    expected = kernels.dropout(x, 0.3, seed=4, offset=4)
    out = np.full_like(x, np.nan)
    assert kernels.dropout(x, 0.3, seed=4, offset=4, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert kernels.dropout(x, 0.3, seed=4, offset=4, out=x) is x
    np.testing.assert_array_equal(x, expected)


# --- uniforms ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("seed", (0, 99, 2**64 - 1))
def test_random_uniform_equals_reference_exactly(isa, seed, dtype):
    for n, offset in [(1, 0), (7, 2**64 - 1), (100, 5), (161, 1), (515, 6), (3 * CHUNK + 3, 12)]:
        got = kernels.random_uniform(n, seed=seed, offset=offset, dtype=dtype)
        assert got.dtype == dtype
        # (w >> 8) * 2**-24 is exact in float32, so both dtypes hold exactly the reference values.
        np.testing.assert_array_equal(got, uniform01(n, seed, offset))


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (-3.0, 7.0), (0.25, 0.5), (5.0, 5.0), (-1e3, 2e3)])
def test_random_uniform_scales_to_low_high_in_the_dtype(isa, low, high):
    n = CHUNK + 17
    u = uniform01(n, 8, 9)
    got32 = kernels.random_uniform(n, seed=8, offset=9, low=low, high=high)
    assert got32.dtype == np.float32
    expected32 = np.float32(low) + np.float32(high - low) * u.astype(np.float32)
    np.testing.assert_array_equal(got32, expected32)
    got64 = kernels.random_uniform(n, seed=8, offset=9, low=low, high=high, dtype=np.float64)
    np.testing.assert_array_equal(got64, low + (high - low) * u)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("low, high", [(100.0, 101.0), (-1.0, 1.0), (-7.5, -7.25)])
def test_random_uniform_stays_in_half_open_interval(dtype, low, high):
    # 2**20 draws: about 5 of them have u >= 1 - 2**-18, where 100 + u rounds to 101 in float32.
    got = kernels.random_uniform(1 << 20, seed=1, offset=0, low=low, high=high, dtype=dtype)
    assert got.min() >= low
    assert got.max() < high, f"random_uniform(low={low}, high={high}, {np.dtype(dtype).name}) returned high " \
                             f"{int((got >= high).sum())} times; the documented range is [low, high)"


def test_random_uniform_float64_is_the_float32_values_cast(isa):
    a = kernels.random_uniform((33, 1001), seed=3, offset=2**40)
    b = kernels.random_uniform((33, 1001), seed=3, offset=2**40, dtype=np.float64)
    assert a.shape == b.shape == (33, 1001)
    np.testing.assert_array_equal(b, a.astype(np.float64))


def test_random_uniform_mean_and_variance_are_within_statistical_bounds():
    n = 1 << 20
    u = kernels.random_uniform(n, seed=31337, offset=0, dtype=np.float64)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) <= SIGMAS * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) <= SIGMAS * np.sqrt(1 / 180 / n)  # Var of (u - 1/2)^2 is 1/180


def test_random_uniform_writes_out_and_takes_its_dtype():
    out = np.full((5, 6), np.nan)
    got = kernels.random_uniform((5, 6), seed=1, offset=1, out=out)
    assert got is out
    np.testing.assert_array_equal(out.reshape(-1), uniform01(30, 1, 1))


# --- normals --------------------------------------------------------------------------------------

NORMAL_ULPS = 4


def normal_tolerance(n, seed, stream):
    """Per-element tolerance of float32 Box-Muller against reference.normals (float64 throughout).

    The kernel forms u = ((w >> 8) + 0.5) * 2**-24 in float32 as DESIGN.md says; for w >> 8 >= 2**23
    that rounds u by half an ulp (2**-25), which moves r = sqrt(-2 log u) by up to ~2**-25 / r near
    u = 1. That effect is computed exactly (the reference formula evaluated at the float32 u), and
    the float32 log/sqrt/sincos/product add NORMAL_ULPS * eps32 * r.
    """
    words = philox4x32_10(seed, stream, np.arange((n + 3) // 4, dtype=np.uint64))
    high = words >> np.uint32(8)
    u32 = ((high.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-24)).astype(np.float64)
    r01 = np.sqrt(-2 * np.log(u32[:, 0]))
    r23 = np.sqrt(-2 * np.log(u32[:, 2]))
    z32 = np.stack([r01 * np.cos(2 * np.pi * u32[:, 1]), r01 * np.sin(2 * np.pi * u32[:, 1]),
                    r23 * np.cos(2 * np.pi * u32[:, 3]), r23 * np.sin(2 * np.pi * u32[:, 3])], axis=1).reshape(-1)[:n]
    r = np.stack([r01, r01, r23, r23], axis=1).reshape(-1)[:n]
    return np.abs(z32 - normals(n, seed, stream)) + NORMAL_ULPS * np.finfo(np.float32).eps * r


@pytest.mark.parametrize("seed, offset, n", [(0, 0, 1), (1, 2, 7), (2**64 - 1, 2**64 - 1, 3 * CHUNK + 2),
                                             (424242, 17, 1 << 18)])
def test_random_normal_matches_reference_within_float32_tolerance(isa, seed, offset, n):
    got = kernels.random_normal(n, seed=seed, offset=offset)
    assert got.dtype == np.float32 and got.shape == (n,)
    expected = normals(n, seed, offset)
    err = np.abs(got.astype(np.float64) - expected)
    tol = normal_tolerance(n, seed, offset)
    bad = ~(err <= tol)
    assert not bad.any(), f"{int(bad.sum())} normals off; first at {np.flatnonzero(bad)[0]}"


def test_random_normal_is_bitwise_the_same_on_every_isa(isa, rng):
    def draw():
        return (kernels.random_normal(2 * CHUNK + 3, seed=5, offset=6),
                kernels.add_noise(np.ones(1001, np.float32), "gaussian", 0.5, seed=5, offset=6))

    on_this_isa = draw()
    fastmlp.set_isa("portable")  # the isa fixture restores the previous path afterwards
    for got, portable in zip(on_this_isa, draw()):
        np.testing.assert_array_equal(got, portable)


def test_random_normal_mean_and_std_apply_in_the_dtype():
    z = kernels.random_normal(CHUNK + 1, seed=3, offset=3)
    got = kernels.random_normal(CHUNK + 1, seed=3, offset=3, mean=2.5, std=0.3)
    np.testing.assert_array_equal(got, np.float32(2.5) + np.float32(0.3) * z)
    # float64 normals are computed in float32 and cast, then scaled in float64.
    got64 = kernels.random_normal(CHUNK + 1, seed=3, offset=3, dtype=np.float64)
    np.testing.assert_array_equal(got64, z.astype(np.float64))
    got64 = kernels.random_normal(CHUNK + 1, seed=3, offset=3, mean=2.5, std=0.3, dtype=np.float64)
    np.testing.assert_array_equal(got64, 2.5 + 0.3 * z.astype(np.float64))
    np.testing.assert_array_equal(kernels.random_normal(10, seed=3, offset=3, mean=-1.0, std=0.0), -1.0)


def test_random_normal_moments_are_within_statistical_bounds():
    n = 1 << 20
    z = kernels.random_normal(n, seed=2718, offset=1, dtype=np.float64)
    assert np.isfinite(z).all()
    assert abs(z.mean()) <= SIGMAS / np.sqrt(n)
    assert abs(z.std() - 1) <= SIGMAS / np.sqrt(2 * n)
    within_one = (np.abs(z) < 1).mean()
    p1 = 0.6826894921370859
    assert abs(within_one - p1) <= binomial_bound(p1, n)
    # Pairs from one block (cos, sin of the same radius) are uncorrelated.
    assert abs(np.mean(z[0::4] * z[1::4])) <= SIGMAS / np.sqrt(n / 4)


# --- add_noise ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_add_noise_gaussian_is_x_plus_level_times_normals(isa, rng, dtype):
    n = 2 * CHUNK + 7
    x = rng.standard_normal(n).astype(dtype)
    z32 = kernels.random_normal(n, seed=12, offset=34)
    got = kernels.add_noise(x, "gaussian", 0.25, seed=12, offset=34)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, x + dtype(0.25) * z32.astype(dtype))
    np.testing.assert_array_equal(kernels.add_noise(x, "gaussian", 0.0, seed=12, offset=34), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_add_noise_mask_zeroes_without_rescaling(isa, rng, dtype):
    n = 2 * CHUNK + 7
    x = rng.standard_normal((n,)).astype(dtype)
    for level in (0.0, 0.3, 0.75):
        got = kernels.add_noise(x, "mask", level, seed=56, offset=78)
        np.testing.assert_array_equal(got, np.where(keep_mask(n, level, 56, 78), x, 0))


def test_add_noise_in_place(rng):
    x = rng.standard_normal((40, 50)).astype(np.float32)
    expected = kernels.add_noise(x, "gaussian", 0.1, seed=1, offset=2)
    assert kernels.add_noise(x, "gaussian", 0.1, seed=1, offset=2, out=x) is x
    np.testing.assert_array_equal(x, expected)


# --- thread count ---------------------------------------------------------------------------------

def test_random_kernels_are_bitwise_identical_on_1_and_2_threads(threads, rng):
    n = 5 * CHUNK + 3
    x = rng.standard_normal(n).astype(np.float32)

    def run_all():
        return [kernels.dropout(x, 0.4, seed=7, offset=8),
                kernels.dropout_backward(x, 0.4, seed=7, offset=8),
                kernels.dropout_mask(n, 0.4, seed=7, offset=8),
                kernels.random_uniform(n, seed=7, offset=8, low=-2, high=3),
                kernels.random_normal(n, seed=7, offset=8, dtype=np.float64),
                kernels.add_noise(x, "gaussian", 0.3, seed=7, offset=8),
                kernels.add_noise(x, "mask", 0.3, seed=7, offset=8)]

    fastmlp.set_num_threads(1)
    one = run_all()
    fastmlp.set_num_threads(2)
    two = run_all()
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
