"""The fused optimizer kernels (sgd_step, adagrad_step, rmsprop_step, adam_step) against float64
NumPy references of torch.optim's formulas, written here independently of the C++ code.

Golden trajectories run 100 steps. float64 kernels must match the reference to 1e-12 relative.
float32 kernels are held to a bound derived from float32 rounding: each step rounds the
parameter (at most eps·|p_t|) and computes the update with at most K_ROUNDINGS roundings, whose
relative error can compound through the optimizer state over t steps (at most K_ROUNDINGS·t·eps).
Summed over the trajectory:
    |p32 - p64| <= eps32 · Σ_t (|p_t| + K_ROUNDINGS · t · |Δp_t|),
with p_t and Δp_t taken from the float64 reference run on the same float32 inputs. Parameters
start away from zero so that sign(p) (the L1 term) is the same in both precisions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K

STEPS = 100
EPS32 = float(np.finfo(np.float32).eps)
K_ROUNDINGS = 8  # roundings in one element update (regularised gradient, state, denominator, step)
CHUNK = 1 << 15  # kElementwiseChunk (csrc/cpu/kernels.h): threads split work at these boundaries
BIG = 5 * CHUNK + 77  # several chunks and a ragged tail

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam")
STATE_NAMES = {
    "sgd": ("momentum_buffer",),
    "adagrad": ("state_sum",),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
    "adam": ("exp_avg", "exp_avg_sq"),
}
HAS_STEP = {"sgd": True, "adagrad": True, "rmsprop": False, "adam": True}


# ----------------------------------------------------------------------------------------------
# float64 references (torch.optim's documented algorithms, with L1 and the segment table)

def per_element(n, segments, lr, weight_decay, l1):
    """The step size, weight decay and L1 of every element: the segment's row inside a segment
    (step size lr·lr_scale), the scalar arguments in the gaps."""
    lr_e = np.full(n, float(lr))
    wd_e = np.full(n, float(weight_decay))
    l1_e = np.full(n, float(l1))
    if segments is not None:
        for (start, length), (scale, wd, l1_row) in zip(*segments):
            sl = slice(int(start), int(start) + int(length))
            lr_e[sl] = lr * scale
            wd_e[sl] = wd
            l1_e[sl] = l1_row
    return lr_e, wd_e, l1_e


def ref_sgd(p, grad, state, *, step, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, l1=0.0,
            segments=None):
    lr_e, wd_e, l1_e = per_element(p.size, segments, lr, weight_decay, l1)
    g = grad + wd_e * p + l1_e * np.sign(p)
    if momentum != 0:
        buf = state["momentum_buffer"]
        buf[:] = g if step == 1 else momentum * buf + (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf.copy()
    p -= lr_e * g


def ref_adagrad(p, grad, state, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, l1=0.0, segments=None):
    lr_e, wd_e, l1_e = per_element(p.size, segments, lr, weight_decay, l1)
    g = grad + wd_e * p + l1_e * np.sign(p)
    clr = lr_e / (1.0 + (step - 1) * lr_decay)
    s = state["state_sum"]
    s += g * g
    p -= clr * (g / (np.sqrt(s) + eps))


def ref_rmsprop(p, grad, state, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, l1=0.0,
                segments=None):
    lr_e, wd_e, l1_e = per_element(p.size, segments, lr, weight_decay, l1)
    g = grad + wd_e * p + l1_e * np.sign(p)
    sq = state["square_avg"]
    sq[:] = alpha * sq + (1.0 - alpha) * (g * g)
    if centered:
        ga = state["grad_avg"]
        ga[:] = alpha * ga + (1.0 - alpha) * g
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps
    if momentum > 0:
        buf = state["momentum_buffer"]
        buf[:] = momentum * buf + g / avg
        p -= lr_e * buf
    else:
        p -= lr_e * (g / avg)


def ref_adam(p, grad, state, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, l1=0.0,
             segments=None):
    lr_e, wd_e, l1_e = per_element(p.size, segments, lr, weight_decay, l1)
    if decoupled:
        g = grad + l1_e * np.sign(p)
        p *= 1.0 - lr_e * wd_e
    else:
        g = grad + wd_e * p + l1_e * np.sign(p)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m[:] = beta1 * m + (1.0 - beta1) * g
    v[:] = beta2 * v + (1.0 - beta2) * (g * g)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = np.sqrt(v) / np.sqrt(bias_correction2) + eps
    p -= (lr_e / bias_correction1) * (m / denom)


REFERENCES = {"sgd": ref_sgd, "adagrad": ref_adagrad, "rmsprop": ref_rmsprop, "adam": ref_adam}


# ----------------------------------------------------------------------------------------------
# helpers

def new_state(opt, n, dtype, shape=None):
    shape = (n,) if shape is None else shape
    return {name: np.zeros(shape, dtype) for name in STATE_NAMES[opt]}


def run_kernel(opt, p, grad, state, step, hp):
    """One kernel step; state holds every state array of the optimizer."""
    kw = dict(hp)
    if HAS_STEP[opt]:
        kw["step"] = step
    if opt == "sgd":
        return K.sgd_step(p, grad, state["momentum_buffer"], **kw)
    if opt == "adagrad":
        return K.adagrad_step(p, grad, state["state_sum"], **kw)
    if opt == "rmsprop":
        return K.rmsprop_step(p, grad, state["square_avg"], momentum_buffer=state["momentum_buffer"],
                              grad_avg=state["grad_avg"], **kw)
    return K.adam_step(p, grad, state["exp_avg"], state["exp_avg_sq"], **kw)


def run_reference(opt, p, grad, state, step, hp):
    kw = dict(hp)
    if HAS_STEP[opt]:
        kw["step"] = step
    REFERENCES[opt](p, grad, state, **kw)


def initial_params(rng, n):
    """Magnitudes in [0.5, 1.5] with random signs, exactly representable in float32."""
    p = rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)
    return p.astype(np.float32).astype(np.float64)


def gradients(rng, n, steps=STEPS):
    return rng.normal(0.0, 1.0, (steps, n)).astype(np.float32).astype(np.float64)


def golden(opt, hp, dtype, n, seed, segments=None, backend=None):
    """Runs STEPS kernel steps in `dtype` (on `backend`'s kernels: the CPU when None) and the float64
    reference on the same inputs; returns (kernel param, kernel state, reference param, reference
    state, float32 error bound), the kernel's arrays on the host."""
    rng = np.random.default_rng(seed)
    p_ref = initial_params(rng, n)
    grads = gradients(rng, n)
    put = backend.put if backend is not None else (lambda x: x)
    p = put(p_ref.astype(dtype))
    state = {k: put(v) for k, v in new_state(opt, n, dtype).items()}
    state_ref = new_state(opt, n, np.float64)
    hp = dict(hp, segments=segments)
    bound = np.zeros(n)
    min_abs_p = np.abs(p_ref).copy()
    for t in range(1, STEPS + 1):
        before = p_ref.copy()
        run_reference(opt, p_ref, grads[t - 1], state_ref, t, hp)
        bound += np.abs(before) + K_ROUNDINGS * t * np.abs(p_ref - before)
        min_abs_p = np.minimum(min_abs_p, np.abs(p_ref))
        out = run_kernel(opt, p, put(grads[t - 1].astype(dtype)), state, t, hp)
        assert out is p
    if backend is not None:
        p, state = backend.get(p), {k: backend.get(v) for k, v in state.items()}
    bound *= EPS32
    uses_l1 = hp.get("l1", 0.0) > 0 or (segments is not None and np.any(segments[1][:, 2] > 0))
    if uses_l1:  # the test's design: sign(p) must not hinge on a rounding error
        assert np.all(min_abs_p > bound), "trajectory came too close to 0 for the L1 term to be compared"
    return p, state, p_ref, state_ref, bound


def assert_float64_close(actual, expected, what):
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12 * scale, err_msg=what)


SGD_CASES = [
    dict(lr=0.01),
    dict(lr=0.005, momentum=0.9),
    dict(lr=0.005, momentum=0.9, dampening=0.5),
    dict(lr=0.002, momentum=0.9, nesterov=True),
    dict(lr=0.005, momentum=0.5, weight_decay=1e-2, l1=1e-3),
    dict(lr=0.002, momentum=0.9, nesterov=True, weight_decay=5e-2, l1=2e-3),
    dict(lr=0.01, weight_decay=1e-2, l1=1e-3),
]
ADAGRAD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, lr_decay=0.01, weight_decay=1e-2),
    dict(lr=0.05, lr_decay=0.1, l1=1e-3, eps=1e-6),
]
RMSPROP_CASES = [
    dict(lr=1e-3),
    dict(lr=1e-3, centered=True),
    dict(lr=1e-4, momentum=0.9),
    dict(lr=1e-4, momentum=0.9, centered=True, weight_decay=1e-2, l1=1e-3),
    dict(lr=1e-3, alpha=0.9, eps=1e-6, weight_decay=1e-2),
]
ADAM_CASES = [
    dict(lr=1e-3),
    dict(lr=1e-3, weight_decay=1e-2),
    dict(lr=1e-3, weight_decay=1e-1, decoupled=True),
    dict(lr=1e-3, weight_decay=1e-1, decoupled=True, l1=1e-3),
    dict(lr=2e-3, beta1=0.5, beta2=0.9, eps=1e-6, weight_decay=1e-2, l1=1e-3),
]
CASES = ([("sgd", c) for c in SGD_CASES] + [("adagrad", c) for c in ADAGRAD_CASES]
         + [("rmsprop", c) for c in RMSPROP_CASES] + [("adam", c) for c in ADAM_CASES])


def case_id(opt, hp):
    return f"{opt}-" + ",".join(f"{k}={v}" for k, v in hp.items())


CASE_IDS = [case_id(opt, hp) for opt, hp in CASES]
# One case per optimizer with every option on, for the tests that are not about the formulas.
RICH_CASES = [("sgd", SGD_CASES[5]), ("adagrad", ADAGRAD_CASES[2]), ("rmsprop", RMSPROP_CASES[3]),
              ("adam", ADAM_CASES[3]), ("adam", ADAM_CASES[4])]
RICH_IDS = [case_id(opt, hp) for opt, hp in RICH_CASES]


def two_layer_segments():
    """A 13-8-3 network's arena: W1 (8·13), b1 (8), a gap, W2 (3·8), a gap, b2 (3), a gap.
    Weights get L2/L1, biases a step-size multiplier; the gaps use the scalar arguments."""
    bounds = np.array([[0, 104], [104, 8], [120, 24], [150, 3]], dtype=np.int64)
    values = np.array([[1.0, 2e-2, 1e-3], [2.0, 0.0, 0.0], [0.5, 5e-2, 2e-3], [3.0, 0.0, 0.0]])
    return (bounds, values), 160


def random_segments(rng, n, rows, lo=0):
    """Sorted, disjoint rows with random gaps, zero-length rows included, inside (lo, n)."""
    cuts = np.sort(rng.choice(np.arange(lo + 1, n), size=2 * rows, replace=False))
    starts, ends = cuts[0::2], cuts[1::2]
    ends[::7] = starts[::7]  # some empty rows
    bounds = np.stack([starts, ends - starts], axis=1).astype(np.int64)
    values = np.stack([rng.uniform(0.0, 3.0, rows), rng.uniform(0.0, 0.05, rows),
                       rng.uniform(0.0, 1e-3, rows)], axis=1)
    return bounds, values


# ----------------------------------------------------------------------------------------------
# golden trajectories

@pytest.mark.parametrize("opt,hp", CASES, ids=CASE_IDS)
def test_float64_trajectory_matches_reference_over_100_steps(isa, opt, hp):
    p, state, p_ref, state_ref, _ = golden(opt, hp, np.float64, 257, seed=1)
    assert_float64_close(p, p_ref, "param")
    for name in STATE_NAMES[opt]:
        assert_float64_close(state[name], state_ref[name], name)


@pytest.mark.parametrize("opt,hp", CASES, ids=CASE_IDS)
def test_float32_trajectory_stays_within_rounding_bound_of_float64_reference(backend, opt, hp):
    p, _, p_ref, _, bound = golden(opt, hp, np.float32, 257, seed=2, backend=backend)
    err = np.abs(p.astype(np.float64) - p_ref)
    assert np.all(err <= bound), f"max error {err.max():.3g}, worst error/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("opt,hp", CASES, ids=CASE_IDS)
def test_segment_table_trajectory_matches_reference(backend, opt, hp):
    segments, n = two_layer_segments()
    if backend == "cpu":  # the CUDA kernels take float32 only
        p, state, p_ref, state_ref, _ = golden(opt, hp, np.float64, n, seed=3, segments=segments)
        assert_float64_close(p, p_ref, "param")
        for name in STATE_NAMES[opt]:
            assert_float64_close(state[name], state_ref[name], name)
    p32, _, p32_ref, _, bound = golden(opt, hp, np.float32, n, seed=3, segments=segments, backend=backend)
    assert np.all(np.abs(p32.astype(np.float64) - p32_ref) <= bound)


def test_segment_values_reach_the_right_elements(isa):
    """Plain SGD with zero gradient: only the decay of each range moves its elements, by exactly
    lr·lr_scale·wd·p (segment) or lr·wd·p (gap), and L1 by lr·lr_scale·l1·sign(p)."""
    segments, n = two_layer_segments()
    p = np.ones(n)
    K.sgd_step(p, np.zeros(n), None, step=1, lr=0.1, weight_decay=0.5, l1=0.25, segments=segments)
    lr_e, wd_e, l1_e = per_element(n, segments, 0.1, 0.5, 0.25)
    np.testing.assert_array_equal(p, 1.0 - lr_e * (wd_e + l1_e))
    assert p[110] == 1.0 and p[115] == 1.0 - 0.1 * 0.75 and p[159] == 1.0 - 0.1 * 0.75


@pytest.mark.parametrize("opt,hp", RICH_CASES, ids=RICH_IDS)
def test_many_segments_across_chunk_boundaries_match_reference(isa, opt, hp):
    rng = np.random.default_rng(4)
    n = BIG
    # many short rows in the first chunk and a half, one row spanning two whole chunks, more rows after
    head = random_segments(rng, CHUNK + CHUNK // 2, rows=200)
    long_row = (np.array([[CHUNK + CHUNK // 2 + 3, 2 * CHUNK + 11]], np.int64), np.array([[0.25, 0.03, 5e-4]]))
    tail = random_segments(rng, n, rows=100, lo=3 * CHUNK + CHUNK // 2 + 20)
    segments = tuple(np.concatenate(parts) for parts in zip(head, long_row, tail))
    p_ref = initial_params(rng, n)
    p = p_ref.copy()
    state, state_ref = new_state(opt, n, np.float64), new_state(opt, n, np.float64)
    for t in range(1, 4):
        g = rng.normal(size=n)
        run_reference(opt, p_ref, g, state_ref, t, dict(hp, segments=segments))
        run_kernel(opt, p, g, state, t, dict(hp, segments=segments))
    assert_float64_close(p, p_ref, "param")
    for name in STATE_NAMES[opt]:
        assert_float64_close(state[name], state_ref[name], name)


# ----------------------------------------------------------------------------------------------
# threads, shapes, sizes

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt,hp", RICH_CASES, ids=RICH_IDS)
def test_one_and_two_threads_are_bitwise_identical(isa, threads, opt, hp, dtype):
    rng = np.random.default_rng(5)
    n = BIG
    segments = random_segments(rng, n, rows=40)
    p0 = initial_params(rng, n).astype(dtype)
    grads = rng.normal(size=(3, n)).astype(dtype)
    results = []
    for n_threads in (1, 2):
        fastmlp.set_num_threads(n_threads)
        p = p0.copy()
        state = new_state(opt, n, dtype)
        for t in range(1, 4):
            run_kernel(opt, p, grads[t - 1], state, t, dict(hp, segments=segments))
        results.append((p, state))
    (p1, s1), (p2, s2) = results
    assert p1.tobytes() == p2.tobytes()
    for name in STATE_NAMES[opt]:
        assert s1[name].tobytes() == s2[name].tobytes(), name


@pytest.mark.parametrize("opt,hp", RICH_CASES, ids=RICH_IDS)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5)])
def test_zero_size_arrays_are_a_no_op(opt, hp, shape):
    p = np.zeros(shape, np.float32)
    state = new_state(opt, 0, np.float32, shape)
    segments = (np.array([[0, 0]], np.int64), np.array([[2.0, 0.1, 0.1]]))
    assert run_kernel(opt, p, np.zeros(shape, np.float32), state, 1, dict(hp, segments=segments)) is p
    assert run_kernel(opt, p, np.zeros(shape, np.float32), state, 2, hp) is p


@pytest.mark.parametrize("opt,hp", RICH_CASES, ids=RICH_IDS)
def test_any_ndim_is_treated_as_flat(opt, hp):
    rng = np.random.default_rng(6)
    p_flat = initial_params(rng, 120)
    g = rng.normal(size=120)
    p_3d = p_flat.reshape(4, 5, 6).copy()
    s_flat, s_3d = new_state(opt, 120, np.float64), new_state(opt, 0, np.float64, (4, 5, 6))
    run_kernel(opt, p_flat, g, s_flat, 1, hp)
    run_kernel(opt, p_3d, g.reshape(4, 5, 6), s_3d, 1, hp)
    np.testing.assert_array_equal(p_3d.reshape(-1), p_flat)


def test_read_only_grad_is_accepted():
    p = np.ones(4)
    g = np.full(4, 2.0)
    g.setflags(write=False)
    K.sgd_step(p, g, None, step=1, lr=0.25)
    np.testing.assert_array_equal(p, np.full(4, 0.5))


def test_adam_first_step_moves_each_element_by_lr():
    """With zero state and eps = 0, bias correction makes the first Adam step exactly lr·sign(g)
    up to rounding."""
    p = np.zeros(3)
    K.adam_step(p, np.array([2.0, -3.0, 0.5]), np.zeros(3), np.zeros(3), step=1, lr=0.1, eps=0.0)
    np.testing.assert_allclose(p, [-0.1, 0.1, -0.1], rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# bad input: every rule raises, names the function and the argument, and changes nothing

def arrays_for(opt, n=4, dtype=np.float32):
    p = np.ones(n, dtype)
    return p, np.ones(n, dtype), new_state(opt, n, dtype)


DEFAULT_HP = {"sgd": dict(lr=0.1, momentum=0.9), "adagrad": dict(lr=0.1), "rmsprop": dict(lr=0.1),
              "adam": dict(lr=0.1)}


def call(opt, p=None, grad=None, state=None, step=1, **overrides):
    p0, g0, s0 = arrays_for(opt)
    p = p0 if p is None else p
    grad = g0 if grad is None else grad
    state = s0 if state is None else dict(s0, **state)
    return run_kernel(opt, p, grad, state, step, dict(DEFAULT_HP[opt], **overrides))


FN = {"sgd": "sgd_step", "adagrad": "adagrad_step", "rmsprop": "rmsprop_step", "adam": "adam_step"}
MAIN_STATE = {"sgd": "momentum_buffer", "adagrad": "state_sum", "rmsprop": "square_avg", "adam": "exp_avg_sq"}


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_mixed_or_non_float_dtypes_raise_type_error(opt):
    fn, st = FN[opt], MAIN_STATE[opt]
    with pytest.raises(TypeError, match=f"{fn}: param has dtype float16"):
        call(opt, p=np.ones(4, np.float16))
    with pytest.raises(TypeError, match=f"{fn}: param has dtype int64"):
        call(opt, p=np.ones(4, np.int64))
    with pytest.raises(TypeError, match=f"{fn}: grad has dtype float64 but param has dtype float32"):
        call(opt, grad=np.ones(4, np.float64))
    with pytest.raises(TypeError, match=f"{fn}: {st} has dtype float64"):
        call(opt, state={st: np.zeros(4, np.float64)})
    with pytest.raises(TypeError, match=f"{fn}: param must be a numpy.ndarray, got list"):
        call(opt, p=[1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_non_contiguous_read_only_and_misshapen_arrays_raise_value_error(opt):
    fn, st = FN[opt], MAIN_STATE[opt]
    with pytest.raises(ValueError, match=f"{fn}: grad .* is not C-contiguous"):
        call(opt, grad=np.ones(8, np.float32)[::2])
    with pytest.raises(ValueError, match=f"{fn}: param .* is not C-contiguous"):
        call(opt, p=np.ones((4, 3), np.float32, order="F"), grad=np.ones((4, 3), np.float32),
             state={k: np.zeros((4, 3), np.float32) for k in STATE_NAMES[opt]})
    ro = np.zeros(4, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=f"{fn}: {st} is read-only"):
        call(opt, state={st: ro})
    with pytest.raises(ValueError, match=f"{fn}: param is read-only"):
        call(opt, p=ro)
    with pytest.raises(ValueError, match=rf"{fn}: {st} has shape \(3,\) but \(4,\) is required \(the shape of param\)"):
        call(opt, state={st: np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=rf"{fn}: grad has shape \(2, 2\) but \(4,\) is required"):
        call(opt, grad=np.ones((2, 2), np.float32))


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_arrays_sharing_memory_raise(opt):
    fn, st = FN[opt], MAIN_STATE[opt]
    p = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=f"{fn}: grad and param share memory"):
        call(opt, p=p, grad=p)
    base = np.zeros(7, np.float32)
    others = [k for k in STATE_NAMES[opt] if k != st]
    if others:
        with pytest.raises(ValueError, match=f"{fn}: .* share memory"):
            call(opt, state={st: base[:4], others[0]: base[3:]})
    with pytest.raises(ValueError, match=f"{fn}: {st} and grad share memory"):
        g = np.zeros(4, np.float32)
        call(opt, grad=g, state={st: g})


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "adam"])
def test_step_must_be_an_int_of_at_least_one(opt):
    fn = FN[opt]
    for bad in (0, -1, 2**70):
        with pytest.raises(ValueError, match=f"{fn}: step"):
            call(opt, step=bad)
    for bad in (1.0, True, None, "1"):
        with pytest.raises(TypeError, match=f"{fn}: step must be an int"):
            call(opt, step=bad)
    call(opt, step=np.int64(3))


BAD_SCALARS = [
    ("sgd", "lr", [-0.1, np.nan, np.inf]),
    ("sgd", "momentum", [-0.1, np.inf]),
    ("sgd", "dampening", [-0.1, 1.5, np.nan]),
    ("sgd", "weight_decay", [-1e-3, np.nan]),
    ("sgd", "l1", [-1e-3, np.inf]),
    ("adagrad", "lr", [-0.1, np.nan]),
    ("adagrad", "lr_decay", [-0.1, np.inf]),
    ("adagrad", "weight_decay", [-0.1]),
    ("adagrad", "eps", [-1e-10, np.nan]),
    ("adagrad", "l1", [-0.1]),
    ("rmsprop", "lr", [-0.1, np.inf]),
    ("rmsprop", "alpha", [-0.1, 1.01, np.nan]),
    ("rmsprop", "eps", [-1e-8]),
    ("rmsprop", "weight_decay", [-0.1]),
    ("rmsprop", "momentum", [-0.1, np.nan]),
    ("rmsprop", "l1", [-0.1]),
    ("adam", "lr", [-0.1, np.nan]),
    ("adam", "beta1", [-0.1, 1.0, np.nan]),
    ("adam", "beta2", [-0.1, 1.0, 1.5]),
    ("adam", "eps", [-1e-8, np.inf]),
    ("adam", "weight_decay", [-0.1, np.nan]),
    ("adam", "l1", [-0.1]),
]


@pytest.mark.parametrize("opt,name,values", BAD_SCALARS, ids=[f"{o}-{n}" for o, n, _ in BAD_SCALARS])
def test_out_of_range_hyper_parameters_raise_and_leave_param_unchanged(opt, name, values):
    for value in values:
        p, g, state = arrays_for(opt)
        with pytest.raises(ValueError, match=f"{FN[opt]}: {name} must"):
            call(opt, p=p, grad=g, state=state, **{name: value})
        np.testing.assert_array_equal(p, 1.0)


def test_edge_values_of_ranges_are_accepted():
    call("rmsprop", alpha=1.0)
    call("rmsprop", alpha=0.0)
    call("sgd", dampening=1.0)
    call("adam", beta1=0.0, beta2=0.0, eps=0.0, lr=0.0)
    call("adagrad", eps=0.0)


def test_nesterov_needs_momentum_and_no_dampening():
    with pytest.raises(ValueError, match="sgd_step: nesterov=True requires momentum > 0 and dampening == 0"):
        call("sgd", momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="sgd_step: nesterov=True requires momentum > 0 and dampening == 0"):
        call("sgd", momentum=0.9, dampening=0.1, nesterov=True)


def test_missing_state_arrays_raise():
    with pytest.raises(ValueError, match="sgd_step: momentum_buffer is None but momentum=0.9"):
        call("sgd", state={"momentum_buffer": None})
    call("sgd", momentum=0.0, state={"momentum_buffer": None})
    with pytest.raises(ValueError, match="rmsprop_step: momentum_buffer is None but momentum=0.5"):
        call("rmsprop", momentum=0.5, state={"momentum_buffer": None})
    with pytest.raises(ValueError, match="rmsprop_step: grad_avg is None but centered=True"):
        call("rmsprop", centered=True, state={"grad_avg": None})
    call("rmsprop", state={"momentum_buffer": None, "grad_avg": None})


def good_segments():
    return np.array([[0, 2], [3, 1]], np.int64), np.array([[1.0, 0.0, 0.0], [2.0, 0.1, 0.01]])


BAD_SEGMENTS = [
    (TypeError, "segments must be None or a pair", lambda b, v: (b,)),
    (TypeError, "segments must be None or a pair", lambda b, v: "bv"),
    (TypeError, "segments bounds must be a numpy.ndarray", lambda b, v: (b.tolist(), v)),
    (TypeError, "segments bounds has dtype int32", lambda b, v: (b.astype(np.int32), v)),
    (TypeError, "segments values has dtype float32", lambda b, v: (b, v.astype(np.float32))),
    (ValueError, r"segments bounds has shape \(2, 3\)", lambda b, v: (np.zeros((2, 3), np.int64), v)),
    (ValueError, r"segments values has shape \(2,\)", lambda b, v: (b, v[:, 0].copy())),
    (ValueError, "segments bounds has 1 rows but values has 2", lambda b, v: (b[:1].copy(), v)),
    (ValueError, r"segments row 0 \(start=-1, length=2\) has a negative",
     lambda b, v: (np.array([[-1, 2], [3, 1]]), v)),
    (ValueError, r"segments row 1 \(start=3, length=-1\) has a negative",
     lambda b, v: (np.array([[0, 2], [3, -1]]), v)),
    (ValueError, r"segments row 1 \(start=3, length=2\) ends at 5, past the end of param \(size 4\)",
     lambda b, v: (np.array([[0, 2], [3, 2]]), v)),
    (ValueError, r"segments row 1 \(start=9, length=0\) ends at 9, past the end",
     lambda b, v: (np.array([[0, 2], [9, 0]]), v)),
    (ValueError, r"segments row 1 \(start=1, length=1\) overlaps or precedes row 0, which ends at 2",
     lambda b, v: (np.array([[0, 2], [1, 1]]), v)),
    (ValueError, r"segments row 1 \(start=0, length=1\) overlaps or precedes row 0",
     lambda b, v: (np.array([[2, 1], [0, 1]]), v)),
    (ValueError, "segments values row 1: lr_scale must be a finite number >= 0",
     lambda b, v: (b, np.array([[1.0, 0, 0], [np.nan, 0, 0]]))),
    (ValueError, "segments values row 0: lr_scale must be a finite number >= 0",
     lambda b, v: (b, np.array([[-1.0, 0, 0], [1.0, 0, 0]]))),
    (ValueError, "segments values row 0: weight_decay must be a finite number >= 0",
     lambda b, v: (b, np.array([[1.0, -0.1, 0], [1.0, 0, 0]]))),
    (ValueError, "segments values row 1: weight_decay must be a finite number >= 0",
     lambda b, v: (b, np.array([[1.0, 0, 0], [1.0, np.inf, 0]]))),
    (ValueError, "segments values row 1: l1 must be a finite number >= 0",
     lambda b, v: (b, np.array([[1.0, 0, 0], [1.0, 0, -1e-3]]))),
]


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("exc,match,make", BAD_SEGMENTS, ids=[m for _, m, _ in BAD_SEGMENTS])
def test_bad_segment_tables_raise_and_leave_param_unchanged(opt, exc, match, make):
    p, g, state = arrays_for(opt)
    with pytest.raises(exc, match=f"{FN[opt]}: {match}"):
        call(opt, p=p, grad=g, state=state, segments=make(*good_segments()))
    np.testing.assert_array_equal(p, 1.0)
    call(opt, segments=good_segments())
    call(opt, segments=list(good_segments()))


# ----------------------------------------------------------------------------------------------
# optional: the same trajectories as torch.optim

TORCH_CASES = [
    ("sgd", dict(lr=0.005, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("sgd", dict(lr=0.005, momentum=0.9, nesterov=True, weight_decay=1e-2, l1=1e-3)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=1e-2, eps=1e-10)),
    ("rmsprop", dict(lr=1e-4, alpha=0.9, momentum=0.9, centered=True, weight_decay=1e-2)),
    ("rmsprop", dict(lr=1e-3, l1=1e-3)),
    ("adam", dict(lr=1e-3, weight_decay=1e-2)),
    ("adam", dict(lr=1e-3, weight_decay=1e-1, decoupled=True, l1=1e-3)),
]


@pytest.mark.parametrize("opt,hp", TORCH_CASES, ids=[f"{o}-{i}" for i, (o, _) in enumerate(TORCH_CASES)])
def test_trajectory_matches_torch_optim(opt, hp):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    n = 64
    p0 = initial_params(rng, n)
    grads = gradients(rng, n)
    hp = dict(hp)
    l1 = hp.pop("l1", 0.0)
    tp = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    if opt == "sgd":
        topt = torch.optim.SGD([tp], **hp)
    elif opt == "adagrad":
        topt = torch.optim.Adagrad([tp], **hp)
    elif opt == "rmsprop":
        topt = torch.optim.RMSprop([tp], **hp)
    elif hp.pop("decoupled", False):
        topt = torch.optim.AdamW([tp], **hp)
        hp["decoupled"] = True
    else:
        topt = torch.optim.Adam([tp], **hp)
    p = p0.copy()
    state = new_state(opt, n, np.float64)
    for t in range(1, STEPS + 1):
        # torch has no L1 term: add l1·sign(p) to its gradient, which is what the kernels do.
        tp.grad = torch.tensor(grads[t - 1], dtype=torch.float64) + l1 * torch.sign(tp.detach())
        topt.step()
        run_kernel(opt, p, grads[t - 1], state, t, dict(hp, l1=l1))
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# clip_grad_norm (global-norm clipping, torch.nn.utils.clip_grad_norm_ on one flat array)

CLIP_SIZES = (1, 7, 16, 17, 97, CHUNK - 1, CHUNK + 1, BIG)


def _device_norm(backend, norm):
    """The returned norm as a float: a Python float on the CPU, a 0-d device array on CUDA."""
    if backend == "cuda":
        assert not isinstance(norm, float) and tuple(norm.shape) == ()
        return float(norm)
    assert isinstance(norm, float)
    return norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", CLIP_SIZES)
@pytest.mark.parametrize("ratio", [0.25, 0.999, 4.0], ids=["clipped", "just-clipped", "under"])
def test_clip_grad_norm_matches_the_float64_reference(backend, n, dtype, ratio):
    rng = np.random.default_rng(n)
    g0 = (rng.standard_normal(n) * rng.uniform(0.1, 10.0, n)).astype(dtype)
    ref_norm = float(np.sqrt(np.sum(g0.astype(np.float64) ** 2)))
    max_norm = ratio * ref_norm
    g = backend.put(g0.copy())
    norm = _device_norm(backend, K.clip_grad_norm(g, max_norm))
    got = backend.get(g)
    if backend == "cuda":  # the norm comes back as float32; the device's sum order is its own
        assert norm == pytest.approx(ref_norm, rel=2 * EPS32)
        expected = g0 * dtype(max_norm / (ref_norm + 1e-6)) if ratio < 1 else g0
        np.testing.assert_allclose(got, expected, rtol=4 * EPS32, atol=0)
        return
    assert norm == pytest.approx(ref_norm, rel=1e-13)
    if ratio < 1:  # the one rounding of max_norm / (norm + eps) to the dtype, then one product
        np.testing.assert_array_equal(got, g0 * dtype(max_norm / (norm + 1e-6)))
        clipped = float(np.sqrt(np.sum(got.astype(np.float64) ** 2)))  # eps keeps it just under max_norm
        assert clipped == pytest.approx(max_norm * norm / (norm + 1e-6), rel=(1e-12 if dtype == np.float64 else 1e-6))
    else:
        np.testing.assert_array_equal(got, g0)  # at or under the bound: untouched


def test_clip_grad_norm_eps_and_the_bound_itself():
    g = np.array([3.0, 4.0])
    assert K.clip_grad_norm(g, 5.0) == 5.0  # norm == max_norm: not clipped
    np.testing.assert_array_equal(g, [3.0, 4.0])
    assert K.clip_grad_norm(g, 1.0, eps=1.0) == 5.0
    np.testing.assert_array_equal(g, [3.0 / 6.0, 4.0 / 6.0])
    assert K.clip_grad_norm(np.zeros((0, 3), np.float32), 1.0) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_is_bitwise_the_same_on_one_and_two_threads(isa, threads, dtype):
    rng = np.random.default_rng(8)
    g0 = rng.standard_normal(BIG).astype(dtype) * 3
    out = []
    for n_threads in (1, 2):
        fastmlp.set_num_threads(n_threads)
        g = g0.copy()
        out.append((K.clip_grad_norm(g, 10.0), g.tobytes()))
    assert out[0] == out[1]


def test_clip_grad_norm_treats_any_shape_as_flat():
    rng = np.random.default_rng(9)
    g_flat = rng.standard_normal(120)
    g_3d = g_flat.reshape(4, 5, 6).copy()
    assert K.clip_grad_norm(g_flat, 1.0) == K.clip_grad_norm(g_3d, 1.0)
    np.testing.assert_array_equal(g_3d.reshape(-1), g_flat)


def test_clip_grad_norm_non_finite_gradients_behave_as_torch(backend):
    g = backend.put(np.array([1.0, np.nan, 2.0], np.float32))
    assert math.isnan(_device_norm(backend, K.clip_grad_norm(g, 1.0)))  # NaN: nothing scaled
    np.testing.assert_array_equal(backend.get(g), [1.0, np.nan, 2.0])
    g = backend.put(np.array([1.0, np.inf, -2.0], np.float32))
    assert _device_norm(backend, K.clip_grad_norm(g, 1.0)) == np.inf  # factor 0: finite -> 0, inf -> NaN
    np.testing.assert_array_equal(backend.get(g), [0.0, np.nan, -0.0])


def test_clip_grad_norm_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    for scale in (0.1, 10.0):
        g0 = rng.standard_normal(3001).astype(np.float32) * scale
        t = torch.nn.Parameter(torch.zeros(3001))
        t.grad = torch.from_numpy(g0.copy())
        expected_norm = float(torch.nn.utils.clip_grad_norm_([t], 1.0, foreach=False))
        g = g0.copy()
        assert K.clip_grad_norm(g, 1.0) == pytest.approx(expected_norm, rel=1e-6)
        # torch forms the norm and the factor in float32: its factor may differ from ours (formed
        # in float64, rounded once) by an ulp or two
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=3 * EPS32, atol=0)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(max_norm=0.0), ValueError, "max_norm must be a finite number > 0"),
    (dict(max_norm=-1.0), ValueError, "max_norm must be a finite number > 0"),
    (dict(max_norm=float("inf")), ValueError, "max_norm must be a finite number > 0"),
    (dict(max_norm=float("nan")), ValueError, "max_norm must be a finite number > 0"),
    (dict(eps=-1e-6), ValueError, "eps must be a finite number >= 0"),
    (dict(stream=2), ValueError, "stream= applies to CUDA arrays only"),
    (dict(norm_out=np.zeros(1, np.float32)), ValueError, "norm_out= applies to CUDA arrays only"),
])
def test_clip_grad_norm_bad_arguments_raise_and_leave_grad_unchanged(bad, exc, match):
    g = np.arange(1.0, 7.0, dtype=np.float32)
    kw = dict(max_norm=1.0)
    kw.update(bad)
    max_norm = kw.pop("max_norm")
    with pytest.raises(exc, match=match):
        K.clip_grad_norm(g, max_norm, **kw)
    np.testing.assert_array_equal(g, np.arange(1.0, 7.0, dtype=np.float32))


def test_clip_grad_norm_refuses_int_read_only_and_strided_grads():
    with pytest.raises(TypeError, match="clip_grad_norm: grad"):
        K.clip_grad_norm(np.arange(6), 1.0)
    g = np.ones(6, np.float32)
    g.setflags(write=False)
    with pytest.raises(ValueError, match="clip_grad_norm: grad"):
        K.clip_grad_norm(g, 1.0)
    with pytest.raises(ValueError, match="clip_grad_norm: grad"):
        K.clip_grad_norm(np.ones((4, 6), np.float32)[:, ::2], 1.0)
