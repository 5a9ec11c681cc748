"""Fuzz target for the argument validation of ``fastmlp.kernels`` (atheris, coverage-guided).

Each input decodes (atheris.FuzzedDataProvider) to one kernel call on one ISA path: shapes that
mostly fit and sometimes do not, float32/float64 and wrong dtypes, non-contiguous, transposed,
broadcast, read-only, byte-swapped and unaligned views, ``out=`` arrays of the wrong shape or
dtype or aliasing an input, hyper-parameters that are NaN, inf, negative or huge, odd Python
types, segment tables with bad rows. Contract (issue 8): the call raises TypeError, ValueError
or MemoryError with a message that names the kernel, or returns a correct result. A correct
result here means: the right shape and dtype, ``out`` returned when given, nothing written
outside the arrays the kernel may write (canaries around every array), inputs left unchanged,
and, for the kernels with a cheap float64 reference and finite moderate inputs, agreement
with it. Precise tolerances live in the test suite; this target hunts crashes and
wrong-memory writes, so run it on a sanitizer build too when one is at hand.

    python fuzz/fuzz_kernels.py fuzz/corpus/kernels -max_total_time=60
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

KERNELS = ("gemm", "activation", "activation_backward", "bias_grad", "dropout", "dropout_backward", "dropout_mask",
           "add_noise", "random_uniform", "random_normal", "squared_error", "softmax_cross_entropy",
           "sigmoid_cross_entropy", "batch_norm", "batch_norm_backward", "sgd_step", "adagrad_step", "rmsprop_step",
           "adam_step", "clip_grad_norm")
DIMS = (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65)
FLOATS = (0.0, -0.0, 1.0, 0.5, 0.1, 0.9, 0.999, 1e-8, 1e-30, 5e-324, -1.0, -1e-8, 2.0, 1e6, 1e30, 1e300,
          math.inf, -math.inf, math.nan, 1 - 2**-53, 1.0 + 2**-52, 3.4e38, 3.5e38)
ODD_SCALARS = (None, "1", True, 1 + 2j, [1.0], 10**400, -(10**400), np.float32(0.5), np.int64(3))
INTS = (0, 1, 2, 3, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 10**30)
BAD_DTYPES = (np.float16, np.int32, np.int64, np.bool_, np.complex64, np.dtype(">f4"), np.dtype(">f8"),
              np.uint8, np.longdouble)
ACTS = ("identity", "relu", "sigmoid", "logistic", "tanh", "linear", "bogus", "", "RELU")
CANARY = 7  # elements of canary before and after each array
CANARY_VALUE = -12345.0


class Finding(AssertionError):
    pass


class Gen:
    """Draws arrays and scalars from the fuzzer's bytes, remembering what it must check afterwards."""

    def __init__(self, fdp):
        self.fdp = fdp
        self.guarded = []  # (buffer, lo, hi): canaries live outside buffer[lo:hi]
        self.inputs = []   # (array, copy): must be unchanged unless also written
        self.written = []  # arrays the kernel may write (out, state)

    def pick(self, seq):
        return self.fdp.PickValueInList(list(seq))

    def chance(self, one_in: int) -> bool:
        return self.fdp.ConsumeIntInRange(0, one_in - 1) == 0

    def dim(self) -> int:
        return self.pick(DIMS)

    def scalar(self, typical):
        """Mostly a typical value; sometimes an interesting float or an odd Python object."""
        r = self.fdp.ConsumeIntInRange(0, 15)
        if r < 9:
            return typical
        if r < 14:
            return self.pick(FLOATS)
        return self.pick(ODD_SCALARS)

    def integer(self, typical):
        r = self.fdp.ConsumeIntInRange(0, 11)
        if r < 8:
            return typical
        if r < 11:
            return self.pick(INTS)
        return self.pick(ODD_SCALARS + (1.5, np.uint64(7)))

    def shape(self, shape):
        shape = list(shape)
        r = self.fdp.ConsumeIntInRange(0, 19)
        if r == 0 and shape:
            i = self.fdp.ConsumeIntInRange(0, len(shape) - 1)
            shape[i] = max(0, shape[i] + self.pick((-1, 1, 2)))
        elif r == 1:
            shape.append(self.pick((1, 2)))
        elif r == 2 and shape:
            shape.pop()
        return tuple(shape)

    def dtype(self, dtype):
        return self.pick(BAD_DTYPES) if self.chance(14) else dtype

    def values(self, n: int, dtype) -> np.ndarray:
        mode = self.fdp.ConsumeIntInRange(0, 9)
        rng = np.random.default_rng(self.fdp.ConsumeIntInRange(0, 2**16))
        if mode <= 5:
            v = rng.standard_normal(n)
        elif mode == 6:
            v = rng.integers(-3, 4, n).astype(np.float64)
        elif mode == 7:
            v = rng.uniform(0, 1, n)
        elif mode == 8:
            v = rng.standard_normal(n) * 1e30
        else:
            v = rng.choice(np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-310, 1e38, -1e300]), n)
        with np.errstate(all="ignore"):
            if np.dtype(dtype).kind == "c":
                return v.astype(dtype)
            if np.dtype(dtype).kind in "iub":
                return np.nan_to_num(v, nan=0, posinf=1, neginf=-1).clip(-100, 100).astype(dtype)
            return v.astype(dtype)

    def array(self, shape, dtype, *, written=False, contiguous_only=False):
        """An array of ``shape`` and ``dtype`` (both possibly perturbed by the caller), usually a
        guarded C-contiguous view, sometimes a layout the kernels must refuse."""
        shape = tuple(shape)
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        layout = 0 if contiguous_only else self.fdp.ConsumeIntInRange(0, 24)
        vals = self.values(n, dtype).reshape(shape)
        if layout == 20 and len(shape) >= 1 and n:  # strided view
            base = np.repeat(vals, 2, axis=-1)
            arr = base[..., ::2]
        elif layout == 21 and len(shape) == 2:  # transposed (F-order) view
            arr = np.ascontiguousarray(vals.T).T
        elif layout == 22 and n:  # broadcast: zero strides, read-only
            arr = np.broadcast_to(vals.reshape(-1)[:1].reshape((1,) * len(shape)), shape)
        elif layout == 23:  # read-only copy
            arr = vals.copy()
            arr.setflags(write=False)
        elif layout == 24 and dtype.kind != "O":  # unaligned but C-contiguous
            raw = np.zeros(vals.nbytes + 1, np.uint8)
            arr = raw[1:].view(dtype).reshape(shape)
            arr[...] = vals
        else:  # a C-contiguous view inside a canary-filled buffer
            buf = np.empty(n + 2 * CANARY, dtype)
            with np.errstate(all="ignore"):
                buf[...] = CANARY_VALUE if dtype.kind in "fc" else 1
            buf[CANARY:CANARY + n] = vals.reshape(-1)
            arr = buf[CANARY:CANARY + n].reshape(shape)
            self.guarded.append((buf, CANARY, CANARY + n))
        if written:
            self.written.append(arr)
        else:
            self.inputs.append((arr, arr.copy()))
        return arr

    def check_memory(self, what: str) -> None:
        for buf, lo, hi in self.guarded:
            outside = np.concatenate([buf[:lo], buf[hi:]])
            expected = CANARY_VALUE if buf.dtype.kind in "fc" else 1
            if not np.all(outside == expected):
                raise Finding(f"{what}: a canary next to an array of {buf.dtype} was overwritten")
        for arr, copy in self.inputs:
            if any(np.shares_memory(arr, w) for w in self.written):
                continue
            if not np.array_equal(arr, copy, equal_nan=arr.dtype.kind in "fc"):
                raise Finding(f"{what}: an input array was modified")


def _finite(*arrays) -> bool:
    return all(a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(np.abs(a) < 1e3) for a in arrays)


def _close(got, expected, dtype, scale, what):
    if not np.all(np.abs(expected) < np.finfo(dtype).max / 4):
        return  # overflows the dtype (e.g. alpha=3.4e38 in float32): inf is the right answer
    eps = np.finfo(dtype).eps
    bound = 64 * eps * (scale + 1.0)
    err = np.max(np.abs(np.asarray(got, np.float64) - expected), initial=0.0)
    if not err <= bound:
        raise Finding(f"{what}: result differs from the float64 reference by {err} (bound {bound})")


def _act_ref(x, kind):
    if kind == "relu":
        return np.maximum(x, 0)
    if kind in ("sigmoid", "logistic"):
        return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    return x


# Each builder returns (call, check): call() runs the kernel; check(result) verifies an accepted one.

def build_gemm(g, K):
    dt = g.pick((np.float32, np.float64))
    M, N, Kd = g.dim(), g.dim(), g.dim()
    ta, tb = g.fdp.ConsumeBool(), g.fdp.ConsumeBool()
    a = g.array(g.shape((Kd, M) if ta else (M, Kd)), g.dtype(dt))
    b = g.array(g.shape((N, Kd) if tb else (Kd, N)), g.dtype(dt))
    bias = g.array(g.shape((N,)), g.dtype(dt)) if g.fdp.ConsumeBool() else None
    beta = g.pick((0.0, 0.0, 1.0, -0.5)) if not g.chance(8) else g.scalar(0.0)
    alpha = g.scalar(g.pick((1.0, 0.5, -2.0)))
    out = None
    if beta != 0 or g.chance(2):
        out = a if g.chance(16) else g.array(g.shape((M, N)), g.dtype(dt), written=True)
    act = g.pick(ACTS) if g.chance(3) else "identity"

    def call():
        return K.gemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, out=out, bias=bias, activation=act)

    def check(r):
        # a, b may carry a perturbed shape that still fits: the result follows them.
        m, n = a.shape[1 if ta else 0], b.shape[0 if tb else 1]
        assert r.shape == (m, n) and r.dtype == dt, (r.shape, r.dtype)
        assert out is None or r is out
        if _finite(a, b) and (bias is None or _finite(bias)) and isinstance(alpha, float) and isinstance(beta, float):
            pa = a.astype(np.float64).T if ta else a.astype(np.float64)
            pb = b.astype(np.float64).T if tb else b.astype(np.float64)
            exp = alpha * pa @ pb + (0 if bias is None else bias.astype(np.float64))
            scale = abs(alpha) * (np.abs(pa) @ np.abs(pb)).max(initial=0) + (0 if bias is None else
                                                                             np.abs(bias).max(initial=0))
            if beta == 0 and act in ("identity", "linear"):
                _close(r, exp, dt, scale, "gemm")
    return call, check


def build_elementwise(g, K, name):
    dt = g.pick((np.float32, np.float64))
    shape = tuple(g.dim() for _ in range(g.fdp.ConsumeIntInRange(0, 3)))
    x = g.array(shape, g.dtype(dt))
    kind = g.pick(ACTS) if g.chance(2) else g.pick(ACTS[:5])
    out_mode = g.fdp.ConsumeIntInRange(0, 3)
    out = None if out_mode == 0 else x if out_mode == 1 else g.array(g.shape(shape), g.dtype(dt), written=True)
    if out is x:
        g.written.append(x)
    p, seed, offset = g.scalar(g.pick((0.0, 0.5, 0.9))), g.integer(g.dim()), g.integer(g.dim())
    if name == "activation":
        def call():
            return K.activation(x, kind, out=out)
    elif name == "activation_backward":
        y = g.array(g.shape(shape), g.dtype(dt))

        def call():
            return K.activation_backward(x, y, kind, out=out)
    elif name in ("dropout", "dropout_backward"):
        fn = getattr(K, name)

        def call():
            return fn(x, p, seed=seed, offset=offset, out=out)
    elif name == "add_noise":
        nk = g.pick(("gaussian", "mask", "bogus"))

        def call():
            return K.add_noise(x, nk, p, seed=seed, offset=offset, out=out)
    else:  # bias_grad
        def call():
            return K.bias_grad(x, out=out)
    x_ref = x.astype(np.float64) if x.dtype.kind == "f" else None

    def check(r):
        assert out is None or r is out
        if name == "bias_grad":
            assert r.shape == shape[1:] and r.dtype == dt
            if _finite(x):
                _close(r, x_ref.sum(axis=0), dt, np.abs(x_ref).sum(axis=0).max(initial=0), "bias_grad")
            return
        assert r.shape == shape and r.dtype == dt, (r.shape, r.dtype)
        if name == "activation" and _finite(x_ref):
            _close(r, _act_ref(x_ref, kind), dt, 1 + np.abs(x_ref).max(initial=0), "activation " + kind)
        if name == "dropout" and _finite(x_ref):
            kept = r != 0
            _close(r[kept], x_ref[kept] / (1 - p), dt, np.abs(x_ref).max(initial=0) / (1 - p), "dropout")
    return call, check


def build_random(g, K, name):
    shape = g.pick((g.dim(), [g.dim(), g.dim()], (g.dim(),), (), [-1], (2**40, 2**40), 10**20, "3", [1.5], None))
    dt = g.pick((None, np.float32, np.float64, "float32", np.int32, "bogus"))
    out = None
    if g.chance(3):
        out_shape = shape if isinstance(shape, tuple) and all(isinstance(d, int) and 0 <= d < 100 for d in shape) \
            else (g.dim(),)
        out = g.array(g.shape(out_shape), g.dtype(g.pick((np.float32, np.float64))), written=True)
    seed, offset = g.integer(1), g.integer(2)
    p = g.scalar(0.5)
    lo, hi = g.scalar(0.0), g.scalar(1.0)

    def call():
        if name == "dropout_mask":
            return K.dropout_mask(shape, p, seed=seed, offset=offset)
        if name == "random_uniform":
            return K.random_uniform(shape, seed=seed, offset=offset, low=lo, high=hi, dtype=dt, out=out)
        return K.random_normal(shape, seed=seed, offset=offset, mean=lo, std=hi, dtype=dt, out=out)

    def check(r):
        if name == "dropout_mask":
            assert r.dtype == np.bool_
            return
        assert out is None or r is out
        if name == "random_uniform":
            with np.errstate(all="ignore"):
                ok = np.all((r >= lo) & (r <= hi)) if r.size else True
            assert ok, "random_uniform: values outside [low, high]"
    return call, check


def build_loss(g, K, name):
    dt = g.pick((np.float32, np.float64))
    rows, cols = g.dim(), g.dim()
    logits = g.array(g.shape((rows, cols)), g.dtype(dt))
    if name == "softmax_cross_entropy":
        ldt = g.pick((np.int32, np.int64, np.int64, np.float32, np.uint8, np.dtype(">i8")))
        labels = np.random.default_rng(rows).integers(0, max(cols, 1), rows).astype(ldt)
        if g.chance(6) and rows:
            bad = g.pick((-1, cols, 127, 2**31 - 1))
            with np.errstate(all="ignore"):
                labels[g.fdp.ConsumeIntInRange(0, rows - 1)] = np.array(bad).astype(labels.dtype)
        if g.chance(8):
            labels = labels[::-1] if rows > 1 else labels.reshape(1, -1)
        target = labels
    else:
        target = g.array(g.shape((rows, cols)), g.dtype(dt))
    out_mode = g.fdp.ConsumeIntInRange(0, 4)
    out = None if out_mode < 2 else logits if out_mode == 2 else target if out_mode == 3 and \
        isinstance(target, np.ndarray) and target.dtype.kind == "f" else g.array(g.shape((rows, cols)), g.dtype(dt),
                                                                                 written=True)
    if out is logits or out is target:
        g.written.append(out)
    fn = getattr(K, name)
    x_ref = logits.astype(np.float64) if logits.dtype.kind == "f" else None

    def call():
        return fn(logits, target, out=out)

    def check(r):
        loss, grad = r
        assert isinstance(loss, float)
        assert grad.shape == logits.shape and grad.dtype == dt
        assert out is None or grad is out
        if name == "squared_error" and _finite(x_ref, target) and out is None:
            diff = x_ref - target.astype(np.float64)
            n_rows = logits.shape[0]  # the drawn shape may have been perturbed
            exp = 0.5 * np.sum(diff ** 2) / n_rows if n_rows else 0.0
            _close(np.array(loss), np.array(exp), dt, np.sum(diff ** 2) + 1, "squared_error loss")
    return call, check


def build_batch_norm(g, K, name):
    dt = g.pick((np.float32, np.float64))
    rows, cols = g.dim(), g.dim()
    x = g.array(g.shape((rows, cols)), g.dtype(dt))
    training = name == "batch_norm" and g.fdp.ConsumeBool()
    # gamma, beta, then running_mean and running_var (written in training) or save_mean, save_invstd.
    vecs = [g.array(g.shape((cols,)), g.dtype(dt), written=training and i >= 2) for i in range(4)]
    act = g.pick(ACTS) if g.chance(3) else "identity"
    if name == "batch_norm":
        momentum, eps = g.scalar(0.1), g.scalar(1e-5)
        out = None if g.fdp.ConsumeBool() else g.array(g.shape((rows, cols)), g.dtype(dt), written=True)
        if training and g.chance(10):
            vecs[2] = vecs[0]  # running_mean aliasing gamma

        def call():
            return K.batch_norm(x, vecs[0], vecs[1], vecs[2], vecs[3], training=training, momentum=momentum,
                                eps=eps, activation=act, out=out)

        def check(r):
            y, m, s = r  # x's drawn shape may have been perturbed: the results follow x
            assert y.shape == x.shape and m.shape == s.shape == (x.shape[1],), (y.shape, m.shape, s.shape)
            assert out is None or y is out
    else:
        grad_out = g.array(g.shape((rows, cols)), g.dtype(dt))
        y = g.array(g.shape((rows, cols)), g.dtype(dt)) if g.fdp.ConsumeBool() else None

        def call():
            return K.batch_norm_backward(grad_out, x, vecs[0], vecs[1], vecs[2], activation=act, y=y)

        def check(r):
            dx, dgamma, dbeta = r
            assert dx.shape == x.shape and dgamma.shape == dbeta.shape == (x.shape[1],), (dx.shape, dgamma.shape)
    return call, check


def build_segments(g, n):
    if not g.chance(3):
        return None
    rows = g.fdp.ConsumeIntInRange(0, 4)
    bounds, start = [], 0
    for _ in range(rows):
        length = g.fdp.ConsumeIntInRange(0, max(n - start, 0)) if not g.chance(10) else g.pick((-1, n + 1, 2**62))
        bounds.append([start if not g.chance(10) else g.pick((-1, 0, n, 2**63 - 1)), length])
        start = min(n, start + max(length, 0))
    values = [[g.scalar(1.0), g.scalar(0.0), g.scalar(0.0)] for _ in range(rows)]
    try:
        b = np.array(bounds, dtype=g.pick((np.int64, np.int64, np.int32, np.float64))).reshape(rows, 2)
        v = np.array(values, dtype=g.pick((np.float64, np.float64, np.float32))).reshape(rows, 3)
    except (TypeError, ValueError, OverflowError):
        return ("bad", None)
    if g.chance(8):
        b = b[:, :1]
    if g.chance(8) and rows:
        v = v[:-1]
    if g.chance(10):
        b = np.asfortranarray(b)
    return (b, v) if not g.chance(16) else [b, v, None]


def build_optim(g, K, name):
    dt = g.pick((np.float32, np.float64))
    shape = tuple(g.dim() for _ in range(g.fdp.ConsumeIntInRange(0, 2)))
    n = int(np.prod(shape)) if shape else 1
    param = g.array(shape, g.dtype(dt), written=True)
    grad = param if g.chance(24) else g.array(g.shape(shape), g.dtype(dt))
    state = [g.array(g.shape(shape), g.dtype(dt), written=True) for _ in range(3)]
    if g.chance(24):
        state[0] = param
    step = g.integer(g.fdp.ConsumeIntInRange(1, 5))
    lr = g.scalar(0.01)
    seg = build_segments(g, n)
    wd, l1 = g.scalar(0.0), g.scalar(0.0)
    p0 = param.astype(np.float64) if param.dtype.kind == "f" else None
    g0 = grad.astype(np.float64) if grad.dtype.kind == "f" else None
    if name == "sgd_step":
        momentum = g.scalar(g.pick((0.0, 0.9)))
        buf = None if g.chance(3) else state[0]
        nesterov = g.chance(4)

        def call():
            return K.sgd_step(param, grad, buf, step=step, lr=lr, momentum=momentum, dampening=g.scalar(0.0),
                              nesterov=nesterov, weight_decay=wd, l1=l1, segments=seg)
    elif name == "adagrad_step":
        def call():
            return K.adagrad_step(param, grad, state[0], step=step, lr=lr, lr_decay=g.scalar(0.0), weight_decay=wd,
                                  eps=g.scalar(1e-10), l1=l1, segments=seg)
    elif name == "rmsprop_step":
        momentum, centered = g.scalar(0.0), g.fdp.ConsumeBool()

        def call():
            return K.rmsprop_step(param, grad, state[0], lr=lr, alpha=g.scalar(0.99), eps=g.scalar(1e-8),
                                  weight_decay=wd, momentum=momentum, centered=centered,
                                  momentum_buffer=state[1] if g.fdp.ConsumeBool() else None,
                                  grad_avg=state[2] if g.fdp.ConsumeBool() else None, l1=l1, segments=seg)
    else:
        def call():
            return K.adam_step(param, grad, state[0], state[1], step=step, lr=lr, beta1=g.scalar(0.9),
                               beta2=g.scalar(0.999), eps=g.scalar(1e-8), weight_decay=wd,
                               decoupled=g.fdp.ConsumeBool(), l1=l1, segments=seg)

    def check(r):
        assert r is param
        if name == "sgd_step" and momentum == 0.0 and seg is None and wd == 0.0 and l1 == 0.0 \
                and isinstance(lr, float) and _finite(p0, g0):
            _close(param, p0 - lr * g0, dt, np.abs(p0).max(initial=0) + lr * np.abs(g0).max(initial=0), "sgd_step")
    return call, check


def build_clip(g, K):
    dt = g.pick((np.float32, np.float64))
    shape = tuple(g.dim() for _ in range(g.fdp.ConsumeIntInRange(0, 2)))
    grad = g.array(shape, g.dtype(dt), written=True)
    max_norm, eps = g.scalar(1.0), g.scalar(1e-6)
    g0 = grad.astype(np.float64) if grad.dtype.kind == "f" else None

    def call():
        return K.clip_grad_norm(grad, max_norm, eps=eps)

    def check(r):
        assert isinstance(r, float)
        if _finite(g0) and np.abs(g0).max(initial=0) < 1e100:
            ref = float(np.sqrt(np.sum(g0 ** 2)))
            assert abs(r - ref) <= 1e-6 * ref, ("clip_grad_norm norm", r, ref)
            factor = max_norm / (ref + eps) if ref > max_norm else 1.0
            _close(grad, g0 * factor, dt, np.abs(g0).max(initial=0), "clip_grad_norm")
    return call, check


def build(g, K, name):
    if name == "clip_grad_norm":
        return build_clip(g, K)
    if name == "gemm":
        return build_gemm(g, K)
    if name in ("activation", "activation_backward", "bias_grad", "dropout", "dropout_backward", "add_noise"):
        return build_elementwise(g, K, name)
    if name in ("dropout_mask", "random_uniform", "random_normal"):
        return build_random(g, K, name)
    if name.endswith(("_error", "_entropy")):
        return build_loss(g, K, name)
    if name.startswith("batch_norm"):
        return build_batch_norm(g, K, name)
    return build_optim(g, K, name)


def run_one(data: bytes) -> None:
    """Decode and run one call, raising Finding (or any unexpected exception) on a contract breach."""
    import atheris

    import fastmlp
    from fastmlp import kernels as K

    fdp = atheris.FuzzedDataProvider(data)
    isas = fastmlp.available_isas()
    fastmlp.set_isa(isas[fdp.ConsumeIntInRange(0, len(isas) - 1)])
    # Every output streamed (threshold 0) or none: the streaming-store path (csrc/cpu/stream.h) gets
    # the same misaligned, aliased and odd-sized outputs as the plain one.
    fastmlp._core._set_stream_min_bytes(0 if fdp.ConsumeBool() else 2**63 - 1)
    name = KERNELS[fdp.ConsumeIntInRange(0, len(KERNELS) - 1)]
    g = Gen(fdp)
    with np.errstate(all="ignore"):
        call, check = build(g, K, name)
    try:
        with np.errstate(all="ignore"):
            result = call()
    except (TypeError, ValueError, MemoryError) as e:
        g.check_memory(name + " (rejected)")
        msg = str(e)
        if not msg.strip():
            raise Finding(f"{name}: {type(e).__name__} without a message") from e
        if not isinstance(e, MemoryError) and name not in msg:
            raise Finding(f"{name}: the {type(e).__name__} does not name the kernel: {msg}") from e
        return
    g.check_memory(name)
    with np.errstate(all="ignore"):
        check(result)


def seed_inputs() -> list:
    """Two inputs per kernel (byte strings that pick each kernel; the rest drives the arguments)."""
    out = []
    for k in range(len(KERNELS)):
        body = bytes((k * 37 + i * 11) % 251 for i in range(96))
        out.append(body + bytes([k, 0]))
        out.append(body[::-1] + bytes([k, 1]))
    return out


def main():
    import atheris

    with atheris.instrument_imports(include=["fastmlp"]):
        import fastmlp
    fastmlp.set_num_threads(int(os.environ.get("FASTMLP_FUZZ_THREADS", "2")))
    atheris.Setup(sys.argv, run_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
