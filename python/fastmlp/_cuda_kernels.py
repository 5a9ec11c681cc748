"""The CUDA half of fastmlp.kernels: argument checks and launches for device arrays.

kernels.py calls the CPU bindings directly when its first array is a NumPy array and comes here
otherwise. The checks repeat the CPU bindings' rules and messages (csrc/bindings/*.cpp) on
``__cuda_array_interface__`` descriptions, then the launch goes to ``_core.cuda`` with raw
pointers on the stream fastmlp.cuda picks. Results are allocated as the first device argument's
library (CuPy in, CuPy out; torch in, torch out), on its device.
"""

from __future__ import annotations

import collections
import math
import numbers
import threading
from typing import Optional, Sequence, Tuple

import numpy as np

from . import _core
from .cuda import (
    DeviceArray,
    _DevArg,
    _empty_like,
    _keep_for_capture,
    _mark_written,
    _native,
    _on_device,
    _parse,
    _pick_stream,
    _refuse_during_capture,
    current_device,
    is_device_array,
)

_F32 = np.dtype(np.float32)
_F32_MAX = float(np.finfo(np.float32).max)
_ACTIVATIONS = {"identity": "identity", "linear": "identity", "relu": "relu", "sigmoid": "sigmoid",
                "logistic": "sigmoid", "tanh": "tanh"}
_U64_LIMIT = 1 << 64

# -- which side a call belongs to -----------------------------------------------------------------


def _host_kind(obj) -> str:
    return "a NumPy array" if isinstance(obj, np.ndarray) else f"a {type(obj).__name__}"


def _classify(fn: str, arrays: Sequence[Tuple[str, object]], scalars: Sequence[Tuple[str, object]] = ()) -> bool:
    """True when the call has device arrays (and then no host ones), False when it has none.
    ``scalars`` are arguments that may be numbers or device scalars (step, lr): only a device one
    counts. A mix of host and device arrays raises TypeError naming both."""
    device_name, host = None, None
    for name, obj in arrays:
        if obj is None:
            continue
        if is_device_array(obj):
            device_name = device_name or name
        elif host is None:
            host = (name, obj)
    for name, obj in scalars:
        if obj is not None and is_device_array(obj):
            device_name = device_name or name
    if device_name is None:
        return False
    if host is not None:
        raise TypeError(f"{fn}: {device_name} is a CUDA array but {host[0]} is {_host_kind(host[1])}; move both to "
                        "the same device (fastmlp.cuda.asarray / .to_numpy())")
    return True


def reject_mixed(fn: str, **arrays) -> None:
    """Called when a CPU binding raised TypeError: re-explain it when device arrays were mixed in."""
    _classify(fn, tuple(arrays.items()))


def _host_only(fn: str, stream, **device_only) -> None:
    """The CPU path takes no stream and none of the device-only keywords."""
    if stream is not None:
        raise ValueError(f"{fn}: stream= applies to CUDA arrays only; these arguments are host arrays, on which "
                         "the CPU kernels run synchronously (pass stream=None)")
    for name, value in device_only.items():
        if value is not None:
            raise ValueError(f"{fn}: {name}= applies to CUDA arrays only; these arguments are host arrays")


# -- scalar checks (the CPU bindings' rules) ------------------------------------------------------


def _real(v, fn: str, name: str) -> float:
    """A real number as a float (TypeError for other types, ValueError beyond float's range)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"{fn}: {name} = {v} is out of float64's range") from None


def _finite(v, fn: str, name: str) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be finite, got {v}")
    return v


def _nonneg(v, fn: str, name: str) -> float:
    v = float(v)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {v}")
    return v


def _prob(v, fn: str, name: str) -> float:
    v = float(v)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{fn}: {name} must satisfy 0 <= {name} < 1, got {v}")
    return v


def _unit_closed(v, fn: str, name: str) -> float:
    v = float(v)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{fn}: {name} must satisfy 0 <= {name} <= 1, got {v}")
    return v


def _index(v, fn: str, name: str, what: str = "an integer") -> int:
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise TypeError(f"{fn}: {name} must be {what}, got {type(v).__name__}")
    return int(v.__index__())


def _u64(v, fn: str, name: str) -> int:
    i = _index(v, fn, name)
    if not 0 <= i < _U64_LIMIT:
        raise ValueError(f"{fn}: {name} must be in [0, 2**64), got {i}")
    return i


def _activation(kind, fn: str, name: str) -> str:
    canonical = _ACTIVATIONS.get(kind) if isinstance(kind, str) else None
    if canonical is None:
        raise ValueError(f"{fn}: {name} must be one of 'identity', 'relu', 'sigmoid' (or 'logistic'), 'tanh'; "
                         f"got {kind!r}")
    return canonical


def _shape_arg(shape, fn: str) -> Tuple[int, ...]:
    if hasattr(shape, "__index__") and not isinstance(shape, bool):
        dims = (int(shape.__index__()),)
    elif isinstance(shape, (tuple, list)):
        dims = tuple(_index(d, fn, "shape", "an int or a sequence of ints") for d in shape)
    else:
        raise TypeError(f"{fn}: shape must be an int or a sequence of ints")
    if any(d < 0 for d in dims):
        raise ValueError(f"{fn}: shape {dims} has a negative dimension")
    return dims


# -- one device call ------------------------------------------------------------------------------


class _Call:
    """The parsed device arguments of one kernel call, their device and the launch stream."""

    def __init__(self, fn: str, stream, arrays: Sequence[Tuple[str, object]]):
        self.fn = fn
        self.native = _native()  # RuntimeError: no CUDA backend / no device
        self.args = {name: _parse(obj, fn, name) for name, obj in arrays if obj is not None}
        first: Optional[_DevArg] = None
        for a in self.args.values():
            if a.device < 0:
                continue
            if first is None:
                first = a
            elif a.device != first.device:
                raise ValueError(f"{fn}: {first.name} is on cuda:{first.device} but {a.name} is on cuda:{a.device}; "
                                 "move them to one device")
        self.device = first.device if first is not None else current_device()
        for a in self.args.values():
            if a.device < 0:
                a.device = self.device
        self.stream = _pick_stream(stream, tuple(self.args.values()), fn)
        self.written = []

    def get(self, name: str) -> Optional[_DevArg]:
        return self.args.get(name)

    def add(self, name: str, obj) -> _DevArg:
        """Parse a further device argument (a step counter, labels) on the call's device."""
        a = _parse(obj, self.fn, name)
        if a.device < 0:
            a.device = self.device
        if a.device != self.device:
            raise ValueError(f"{self.fn}: {name} is on cuda:{a.device} but the arrays are on cuda:{self.device}; "
                             "move them to one device")
        self.args[name] = a
        return a

    def f32(self, name: str, *, writeable: bool = False) -> _DevArg:
        a = self.args[name]
        if a.dtype != _F32:
            raise TypeError(f"{self.fn}: {name} has dtype {a.dtype.name}; CUDA kernels take float32")
        if writeable and a.readonly:
            raise ValueError(f"{self.fn}: {name} is read-only; it is written in place")
        return a

    def ndim(self, a: _DevArg, n: int) -> None:
        if len(a.shape) != n:
            raise ValueError(f"{self.fn}: {a.name} must be {n}-D, got shape {a.shape}")

    def shape(self, a: _DevArg, expected: Tuple[int, ...], why: str) -> None:
        if a.shape != tuple(expected):
            raise ValueError(f"{self.fn}: {a.name} has shape {a.shape} but {tuple(expected)} is required"
                             + (f" ({why})" if why else ""))

    def no_overlap(self, a: _DevArg, b: _DevArg, allow_identical: bool) -> None:
        if a.nbytes == 0 or b.nbytes == 0:
            return
        if a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes:
            if allow_identical and a.ptr == b.ptr and a.nbytes == b.nbytes:
                return
            rule = (f"must be either the same array as {b.name} or not overlap it" if allow_identical
                    else f"must not overlap {b.name}")
            raise ValueError(f"{self.fn}: {a.name} and {b.name} share memory; {a.name} {rule}")

    def out(self, name: str, shape: Tuple[int, ...], ref: _DevArg, dtype=_F32) -> _DevArg:
        """The result array ``name``: the given one (float32, writeable, of ``shape``) or a new one
        of ``ref``'s library and device."""
        a = self.args.get(name)
        if a is None:
            obj, a = _empty_like(ref, tuple(shape), dtype, self.stream, self.fn)
            a.name = name
            self.args[name] = a
        else:
            if a.dtype != np.dtype(dtype):
                raise TypeError(f"{self.fn}: {name} has dtype {a.dtype.name} but the result has dtype "
                                f"{np.dtype(dtype).name}; CUDA kernels take float32")
            if a.readonly:
                raise ValueError(f"{self.fn}: {name} is read-only; it is written in place")
            self.shape(a, tuple(shape), "the shape of the result")
        self.written.append(a)
        return a

    def writes(self, *args: Optional[_DevArg]) -> None:
        self.written.extend(a for a in args if a is not None)

    def launch(self, kernel, *args) -> None:
        with _on_device(self.device):
            kernel(*args, self.stream.handle)
        for a in self.written:
            _mark_written(a, self.stream)


def _ptr(a: Optional[_DevArg]) -> int:
    return 0 if a is None else a.ptr


# -- device scalars: step counter, learning rate, random streams ----------------------------------


def _step_arg(c: _Call, step, *, allow_none: bool = False) -> Tuple[int, int]:
    """(step, step_ptr): a host int >= 1 (the 1-based step), or a one-element device int64 counter
    of the steps already taken, which the kernel reads and advances (capturable)."""
    fn = c.fn
    if step is None and allow_none:
        return 1, 0
    if is_device_array(step):
        s = c.add("step", step)
        if s.dtype != np.int64 or s.size != 1:
            raise TypeError(f"{fn}: a device step must be a one-element int64 array (the steps already taken), got "
                            f"shape {s.shape} and dtype {s.dtype.name}")
        if s.readonly:
            raise ValueError(f"{fn}: step is read-only; the kernel advances it")
        c.writes(s)
        return 1, s.ptr
    if step is None or isinstance(step, bool) or not hasattr(step, "__index__"):
        raise TypeError(f"{fn}: step must be an int >= 1 (the 1-based step count) or a device int64 counter, "
                        f"got {type(step).__name__}")
    v = int(step.__index__())
    if v < 1:
        raise ValueError(f"{fn}: step must be >= 1 (the 1-based step count), got {v}")
    if v >= 1 << 63:
        raise ValueError(f"{fn}: step = {v} does not fit in int64")
    return v, 0


def _lr_arg(c: _Call, lr) -> Tuple[float, int]:
    """(lr, lr_ptr): a host number >= 0, or a one-element device float32 the kernel reads."""
    if is_device_array(lr):
        a = c.add("lr", lr)
        if a.dtype != _F32 or a.size != 1:
            raise TypeError(f"{c.fn}: a device lr must be a one-element float32 array, got shape {a.shape} and dtype "
                            f"{a.dtype.name}")
        return 0.0, a.ptr
    return _nonneg(lr, c.fn, "lr"), 0


def _host_rng(fn: str, offset, step, n_streams) -> int:
    """The Philox stream on the CPU: ``offset``, or ``step * n_streams + offset`` with an int step."""
    offset = _u64(offset, fn, "offset")
    if step is None:  # n_streams only matters with a step
        return offset
    if is_device_array(step):
        raise TypeError(f"{fn}: step is a CUDA array but the data is on the host; move both to the same device "
                        "(fastmlp.cuda.asarray / .to_numpy())")
    n = _n_streams(fn, n_streams, offset)
    stream = _index(step, fn, "step") * n + offset
    if not 0 <= stream < _U64_LIMIT:
        raise ValueError(f"{fn}: step * n_streams + offset = {stream} is not in [0, 2**64)")
    return stream


def _n_streams(fn: str, n_streams, offset: int) -> int:
    if n_streams is None:
        raise ValueError(f"{fn}: step= needs n_streams= (the stream is step * n_streams + offset)")
    n = _index(n_streams, fn, "n_streams")
    if n < 1:
        raise ValueError(f"{fn}: n_streams must be >= 1, got {n}")
    if offset >= n:
        raise ValueError(f"{fn}: with step= the offset is the stream index and must be < n_streams ({n}), "
                         f"got {offset}")
    return n


def _device_rng(c: _Call, seed, offset, step, n_streams) -> Tuple[int, int, int, int]:
    """(seed, offset, step_ptr, n_streams) for a device random kernel. A device step counter makes
    the kernel use ``step[0] * n_streams + offset``, read on the device (capturable); an int step is
    folded into the offset here."""
    fn = c.fn
    seed = _u64(seed, fn, "seed")
    if step is not None and is_device_array(step):
        offset = _u64(offset, fn, "offset")
        n = _n_streams(fn, n_streams, offset)
        s = c.add("step", step)
        if s.dtype != np.int64 or s.size != 1:
            raise TypeError(f"{fn}: a device step must be a one-element int64 array, got shape {s.shape} and dtype "
                            f"{s.dtype.name}")
        return seed, offset, s.ptr, n
    return seed, _host_rng(fn, offset, step, n_streams), 0, 0


# -- segment tables: validated on the host, cached on the device ----------------------------------

_SEGMENT_CACHE_SIZE = 64
_segment_cache: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_segment_lock = threading.Lock()


def _segments(c: _Call, segments, n: int) -> Tuple[int, int, int]:
    """(bounds_ptr, values_ptr, count) of the device copy of ``segments=(bounds, values)``.

    Validated with the CPU binding's rules, then uploaded once per content and device (an LRU of
    64 tables): repeated optimizer steps do not upload, and a captured step finds its table (a graph
    being captured keeps it alive)."""
    if segments is None:
        return 0, 0, 0
    bounds, values = _validate_segments(c.fn, segments, n)
    rows = bounds.shape[0]
    if rows == 0:
        return 0, 0, 0
    key = (c.device, bounds.tobytes(), values.tobytes())
    with _segment_lock:
        entry = _segment_cache.get(key)
        if entry is not None:
            _segment_cache.move_to_end(key)
    if entry is None:
        _refuse_during_capture(c.fn, "a new segment table cannot be uploaded", c.stream)
        native = c.native
        b_buf = native.Buffer(bounds.nbytes, c.device)
        v_buf = native.Buffer(values.nbytes, c.device)
        with _on_device(c.device):
            native.memcpy(b_buf.ptr, bounds.ctypes.data, bounds.nbytes, c.stream.handle)
            native.memcpy(v_buf.ptr, values.ctypes.data, values.nbytes, c.stream.handle)
        entry = (b_buf, v_buf, rows)
        with _segment_lock:
            _segment_cache[key] = entry
            while len(_segment_cache) > _SEGMENT_CACHE_SIZE:
                _segment_cache.popitem(last=False)
    _keep_for_capture(entry)
    return int(entry[0].ptr), int(entry[1].ptr), entry[2]


def _validate_segments(fn: str, segments, n: int) -> Tuple[np.ndarray, np.ndarray]:
    pre = f"{fn}: segments"
    if not isinstance(segments, (tuple, list)) or len(segments) != 2:
        raise TypeError(f"{pre} must be None or a pair (bounds, values), got {type(segments).__name__}")
    arrays = []
    for part, obj in zip(("bounds", "values"), segments):
        if is_device_array(obj):
            raise TypeError(f"{pre} {part} must be a host numpy.ndarray (the table is validated on the host and "
                            "cached on the device), got a CUDA array")
        if not isinstance(obj, np.ndarray):
            raise TypeError(f"{fn}: segments {part} must be a numpy.ndarray, got {type(obj).__name__}")
        arrays.append(obj)
    bounds, values = arrays
    if bounds.dtype != np.int64:
        raise TypeError(f"{pre} bounds has dtype {bounds.dtype}; expected int64 rows of (start, length)")
    if values.dtype != np.float64:
        raise TypeError(f"{pre} values has dtype {values.dtype}; expected float64 rows of (lr_scale, weight_decay, l1)")
    if bounds.ndim != 2 or bounds.shape[1] != 2:
        raise ValueError(f"{pre} bounds has shape {bounds.shape} and dtype int64; expected shape (n, 2) of "
                         "(start, length)")
    if values.ndim != 2 or values.shape[1] != 3:
        raise ValueError(f"{pre} values has shape {values.shape} and dtype float64; expected shape (n, 3) of "
                         "(lr_scale, weight_decay, l1)")
    if bounds.shape[0] != values.shape[0]:
        raise ValueError(f"{pre} bounds has {bounds.shape[0]} rows but values has {values.shape[0]}; one row of "
                         "values per row of bounds")
    bounds = np.ascontiguousarray(bounds, dtype="=i8")
    values = np.ascontiguousarray(values, dtype="=f8")
    prev_end = 0
    names = ("lr_scale", "weight_decay", "l1")
    for r in range(bounds.shape[0]):
        start, length = int(bounds[r, 0]), int(bounds[r, 1])
        row = f"{pre} row {r} (start={start}, length={length})"
        if start < 0 or length < 0:
            raise ValueError(f"{row} has a negative start or length")
        if start > n or length > n - start:
            raise ValueError(f"{row} ends at {start + length}, past the end of param (size {n})")
        if start < prev_end:
            raise ValueError(f"{row} overlaps or precedes row {r - 1}, which ends at {prev_end}; rows must be sorted "
                             "and non-overlapping")
        prev_end = start + length
        for j, name in enumerate(names):
            x = float(values[r, j])
            if not (math.isfinite(x) and x >= 0.0):
                raise ValueError(f"{pre} values row {r}: {name} must be a finite number >= 0, got {x}")
    return bounds, values


# -- GEMM and elementwise -------------------------------------------------------------------------


def gemm(a, b, *, trans_a, trans_b, alpha, beta, out, bias, activation, stream, a_sums=None, relu_mask=None,
         mask_p=0.0, dropout=None):
    """``a_sums``, ``relu_mask``/``mask_p`` and ``dropout`` are private to fastmlp.nn. The first two
    are ``_core._gemm``'s: the column sums of ``a`` (trans_a only) written beside the product, and
    the product turned into the gradient through the dropout and ReLU whose output is
    ``relu_mask``. ``dropout`` = ``(p, seed, offset, step, n_streams)``, device arrays only: the
    result goes through ``fastmlp.kernels.dropout`` with that stream, bitwise, in the epilogue."""
    fn = "gemm"
    arrays = (("a", a), ("b", b), ("out", out), ("bias", bias), ("a_sums", a_sums), ("relu_mask", relu_mask))
    if not _classify(fn, arrays):
        if dropout is not None:
            raise TypeError("gemm: the dropout epilogue is for device arrays")
        _host_only(fn, stream)
        return _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out, bias=bias,
                          activation=activation, a_sums=a_sums, relu_mask=relu_mask, mask_p=mask_p)
    c = _Call(fn, stream, arrays)
    A, B = c.f32("a"), c.f32("b")
    c.ndim(A, 2)
    c.ndim(B, 2)
    M, K = (A.shape[1], A.shape[0]) if trans_a else A.shape
    Kb, N = (B.shape[1], B.shape[0]) if trans_b else B.shape
    if K != Kb:
        raise ValueError(f"gemm: a has shape {A.shape} but b has shape {B.shape}; with trans_a={bool(trans_a)} and "
                         f"trans_b={bool(trans_b)} the inner dimensions must match ({K} != {Kb})")
    alpha = _finite(alpha, fn, "alpha")
    beta = _finite(beta, fn, "beta")
    for name, v in (("alpha", alpha), ("beta", beta)):  # the epilogue scales in float32
        if abs(v) > _F32_MAX:
            raise ValueError(f"gemm: {name}={v} is beyond float32's range (|{name}| <= 3.4028235e38) for float32 "
                             "arrays")
    act = _activation(activation, fn, "activation")
    if beta != 0.0 and out is None:
        raise ValueError(f"gemm: beta={beta} reads out, but out was not given")
    O = c.out("out", (M, N), A)
    c.no_overlap(O, A, False)
    c.no_overlap(O, B, False)
    bias_arg = None
    if bias is not None:
        bias_arg = c.f32("bias")
        c.shape(bias_arg, (N,), "one value per output column")
        c.no_overlap(O, bias_arg, False)
    mask_arg = None
    if relu_mask is not None:
        mask_arg = c.f32("relu_mask")
        c.shape(mask_arg, (M, N), "the shape of the result")
        c.no_overlap(O, mask_arg, False)
    mask_p = _prob(mask_p, fn, "mask_p")
    sums_arg = None
    if a_sums is not None:
        if not trans_a:
            raise ValueError("gemm: a_sums (the column sums of a) needs trans_a=True")
        sums_arg = c.f32("a_sums", writeable=True)
        c.shape(sums_arg, (M,), "one value per column of a")
        for other in (A, B, O, bias_arg, mask_arg):
            if other is not None:
                c.no_overlap(sums_arg, other, False)
        c.writes(sums_arg)
    drop = (False, 0.0, 0, 0, 0, 0)
    if dropout is not None:
        p, seed, offset, step, n_streams = dropout
        drop = (True, _prob(p, fn, "p")) + _device_rng(c, seed, offset, step, n_streams)
        step_arg = c.get("step")
        if step_arg is not None:  # read by every block while the results are written
            for written in (O, sums_arg):
                if written is not None:
                    c.no_overlap(written, step_arg, False)
    c.launch(c.native.gemm, A.ptr, B.ptr, O.ptr, _ptr(bias_arg), M, N, K, bool(trans_a), bool(trans_b), alpha, beta,
             act, _ptr(sums_arg), _ptr(mask_arg), mask_p, *drop)
    return O.obj


def _elementwise_out(c: _Call, x: _DevArg) -> _DevArg:
    out = c.out("out", x.shape, x)
    c.no_overlap(out, x, True)
    return out


def activation(x, kind, *, out, stream):
    fn = "activation"
    arrays = (("x", x), ("out", out))
    if not _classify(fn, arrays):
        _host_only(fn, stream)
        return _core.activation(x, kind, out=out)
    c = _Call(fn, stream, arrays)
    X = c.f32("x")
    act = _activation(kind, fn, "kind")
    O = _elementwise_out(c, X)
    c.launch(c.native.activation, X.ptr, O.ptr, X.size, act)
    return O.obj


def _grad_and_output(fn, grad_out, y, out, stream, host, param):
    """activation_backward and relu_dropout_backward: ``host()`` for host arrays, else the checks
    (float32, y shaped like grad_out, out either y itself or not overlapping it), ``param()`` (the
    checked scalar argument) and the launch of the native ``fn``."""
    arrays = (("grad_out", grad_out), ("y", y), ("out", out))
    if not _classify(fn, arrays):
        _host_only(fn, stream)
        return host()
    c = _Call(fn, stream, arrays)
    G, Y = c.f32("grad_out"), c.f32("y")
    c.shape(Y, G.shape, "the shape of grad_out")
    arg = param()
    O = _elementwise_out(c, G)
    c.no_overlap(O, Y, True)
    c.launch(getattr(c.native, fn), G.ptr, Y.ptr, O.ptr, G.size, arg)
    return O.obj


def activation_backward(grad_out, y, kind, *, out, stream):
    fn = "activation_backward"
    return _grad_and_output(fn, grad_out, y, out, stream, lambda: _core.activation_backward(grad_out, y, kind, out=out),
                            lambda: _activation(kind, fn, "kind"))


def relu_dropout_backward(grad_out, y, p, *, out, stream):
    """Private to fastmlp.nn: the backward of Dense+ReLU -> Dropout from the dropout's output ``y``
    (no mask drawn): ``y > 0 ? grad_out / (1 - p) : 0``, as ``_core._relu_dropout_backward``."""
    fn = "relu_dropout_backward"
    return _grad_and_output(fn, grad_out, y, out, stream, lambda: _core._relu_dropout_backward(grad_out, y, p, out),
                            lambda: _prob(p, fn, "p"))


def bias_grad(grad, *, out, stream):
    fn = "bias_grad"
    arrays = (("grad", grad), ("out", out))
    if not _classify(fn, arrays):
        _host_only(fn, stream)
        return _core.bias_grad(grad, out=out)
    c = _Call(fn, stream, arrays)
    G = c.f32("grad")
    c.ndim(G, 2)
    O = c.out("out", (G.shape[1],), G)
    c.no_overlap(O, G, False)
    c.launch(c.native.bias_grad, G.ptr, O.ptr, G.shape[0], G.shape[1])
    return O.obj


# -- random streams -------------------------------------------------------------------------------


def dropout(fn, x, p, *, seed, offset, out, step, n_streams, stream):
    """dropout and dropout_backward (``fn`` names which; the same mask and scale)."""
    x_name = "x" if fn == "dropout" else "grad_out"
    arrays = ((x_name, x), ("out", out))
    if not _classify(fn, arrays, (("step", step),)):
        _host_only(fn, stream)
        cpu = _core.dropout if fn == "dropout" else _core.dropout_backward
        return cpu(x, p, seed=seed, offset=_host_rng(fn, offset, step, n_streams), out=out)
    c = _Call(fn, stream, arrays)
    X = c.f32(x_name)
    p = _prob(p, fn, "p")
    seed, offset, step_ptr, n = _device_rng(c, seed, offset, step, n_streams)
    O = _elementwise_out(c, X)
    c.launch(c.native.dropout, X.ptr, O.ptr, X.size, p, seed, offset, step_ptr, n)
    return O.obj


def _target_device(fn: str, device) -> Optional[int]:
    """None for the CPU (device None or "cpu"), else the CUDA device index."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "cpu"):
        return None
    from .cuda import _device_index

    _native()
    return _device_index(device, fn)


class _NoRef:
    """Stands in for a reference argument when a fill has none: results are DeviceArrays."""

    kind = "fastmlp"

    def __init__(self, device: int):
        self.device = device


def dropout_mask(shape, p, *, seed, offset, step, n_streams, device, stream):
    fn = "dropout_mask"
    target = _target_device(fn, device)
    on_device = target is not None or (step is not None and is_device_array(step))
    if not on_device:
        _host_only(fn, stream)
        return _core.dropout_mask(shape, p, seed=seed, offset=_host_rng(fn, offset, step, n_streams))
    dims = _shape_arg(shape, fn)
    c = _Call(fn, stream, (("step", step),) if step is not None and is_device_array(step) else ())
    if target is not None:
        c.device = target
    p = _prob(p, fn, "p")
    seed, offset, step_ptr, n = _device_rng(c, seed, offset, step, n_streams)
    ref = c.args.get("step") or _NoRef(c.device)
    if target is not None and ref.device != target:
        raise ValueError(f"{fn}: step is on cuda:{ref.device} but device={device!r}")
    O = c.out("out", dims, ref, np.bool_)
    c.launch(c.native.dropout_mask, O.ptr, O.size, p, seed, offset, step_ptr, n)
    return O.obj


def add_noise(x, kind, level, *, seed, offset, out, step, n_streams, stream):
    fn = "add_noise"
    arrays = (("x", x), ("out", out))
    if not _classify(fn, arrays, (("step", step),)):
        _host_only(fn, stream)
        return _core.add_noise(x, kind, level, seed=seed, offset=_host_rng(fn, offset, step, n_streams), out=out)
    c = _Call(fn, stream, arrays)
    X = c.f32("x")
    if kind == "gaussian":
        level = _nonneg(level, fn, "level")
    elif kind == "mask":
        level = _prob(level, fn, "level")
    else:
        raise ValueError(f"add_noise: kind must be 'gaussian' or 'mask', got {kind!r}")
    seed, offset, step_ptr, n = _device_rng(c, seed, offset, step, n_streams)
    O = _elementwise_out(c, X)
    c.launch(c.native.add_noise, X.ptr, O.ptr, X.size, kind, level, seed, offset, step_ptr, n)
    return O.obj


def _fill_target(c: _Call, fn: str, shape, dtype, out) -> _DevArg:
    dims = _shape_arg(shape, fn)
    if dtype is not None and np.dtype(dtype) != _F32:
        raise TypeError(f"{fn}: dtype is {np.dtype(dtype).name}; CUDA kernels take float32")
    ref = c.args.get("out") or _NoRef(c.device)
    return c.out("out", dims, ref)


def random_fill(fn, shape, *, seed, offset, a, b, dtype, out, device, stream):
    """random_uniform (a=low, b=high) and random_normal (a=mean, b=std)."""
    target = _target_device(fn, device)
    arrays = (("out", out),)
    if target is None and not _classify(fn, arrays):
        _host_only(fn, stream)
        if fn == "random_uniform":
            return _core.random_uniform(shape, seed=seed, offset=offset, low=a, high=b, dtype=dtype, out=out)
        return _core.random_normal(shape, seed=seed, offset=offset, mean=a, std=b, dtype=dtype, out=out)
    c = _Call(fn, stream, arrays)
    if target is not None and out is None:
        c.device = target
    elif target is not None and c.device != target:
        raise ValueError(f"{fn}: out is on cuda:{c.device} but device={device!r}")
    if fn == "random_uniform":
        low, high = _finite(a, fn, "low"), _finite(b, fn, "high")
        if not low <= high:
            raise ValueError(f"random_uniform: low must be <= high, got low={low}, high={high}")
        if abs(low) > _F32_MAX or abs(high) > _F32_MAX or high - low > _F32_MAX:
            raise ValueError(f"random_uniform: low={low}, high={high} span more than float32 can represent; "
                             "use a narrower range")
        a, b = low, high
    else:
        a, b = _finite(a, fn, "mean"), _nonneg(b, fn, "std")
    seed, offset = _u64(seed, fn, "seed"), _u64(offset, fn, "offset")
    O = _fill_target(c, fn, shape, dtype, out)
    kernel = c.native.random_uniform if fn == "random_uniform" else c.native.random_normal
    c.launch(kernel, O.ptr, O.size, a, b, seed, offset)
    return O.obj


# -- losses ---------------------------------------------------------------------------------------


def _loss_scalar(c: _Call, loss_out, ref: _DevArg, name: str = "loss") -> _DevArg:
    """The kernel's scalar result: ``<name>_out`` (a one-element float32 device array, written in
    place; it overlaps no other argument) or a new 0-d array like ``ref``."""
    if loss_out is None:
        return c.out(name, (), ref)
    L = c.add(f"{name}_out", loss_out)
    if L.dtype != _F32 or L.size != 1:
        raise TypeError(f"{c.fn}: {name}_out must be a one-element float32 device array, got shape {L.shape} and "
                        f"dtype {L.dtype.name}")
    if L.readonly:
        raise ValueError(f"{c.fn}: {name}_out is read-only")
    for a in list(c.args.values()):  # the kernel writes the loss while it reads and writes these
        if a is not L:
            c.no_overlap(L, a, False)
    c.writes(L)
    return L


def _logits_and_grad(c: _Call, name: str) -> Tuple[_DevArg, _DevArg]:
    logits = c.f32(name)
    c.ndim(logits, 2)
    grad = c.out("out", logits.shape, logits)
    c.no_overlap(grad, logits, True)
    return logits, grad


def _float_target(c: _Call, name: str, logits: _DevArg, grad: _DevArg) -> _DevArg:
    t = c.f32(name)
    c.shape(t, logits.shape, f"the shape of {logits.name}")
    c.no_overlap(grad, t, False)
    return t


def squared_error(pred, target, *, out, loss_out, stream):
    fn = "squared_error"
    arrays = (("pred", pred), ("target", target), ("out", out))
    if not _classify(fn, arrays):
        _host_only(fn, stream, loss_out=loss_out)
        return _core.squared_error(pred, target, out=out)
    c = _Call(fn, stream, arrays)
    P, G = _logits_and_grad(c, "pred")
    T = _float_target(c, "target", P, G)
    L = _loss_scalar(c, loss_out, P)
    c.launch(c.native.squared_error, P.ptr, T.ptr, G.ptr, L.ptr, P.shape[0], P.shape[1])
    return L.obj, G.obj


def sigmoid_cross_entropy(logits, targets, *, out, loss_out, stream):
    fn = "sigmoid_cross_entropy"
    arrays = (("logits", logits), ("targets", targets), ("out", out))
    if not _classify(fn, arrays):
        _host_only(fn, stream, loss_out=loss_out)
        return _core.sigmoid_cross_entropy(logits, targets, out=out)
    c = _Call(fn, stream, arrays)
    X, G = _logits_and_grad(c, "logits")
    T = _float_target(c, "targets", X, G)
    L = _loss_scalar(c, loss_out, X)
    c.launch(c.native.sigmoid_cross_entropy, X.ptr, T.ptr, G.ptr, L.ptr, X.shape[0], X.shape[1])
    return L.obj, G.obj


def _labels(c: _Call, labels, rows: int, cols: int) -> Tuple[_DevArg, int]:
    """(labels on the device, itemsize). Device labels are used as they are (an out-of-range label
    makes its row NaN, checked on the device); host labels are checked here, then uploaded (which
    waits for the upload)."""
    fn = c.fn
    if is_device_array(labels):
        lab = c.add("labels", labels)
        if lab.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise TypeError(f"{fn}: labels has dtype {lab.dtype.name}; expected int32 or int64 class indices")
        if len(lab.shape) != 1 or lab.shape[0] != rows:
            raise ValueError(f"{fn}: labels has shape {lab.shape} but logits have {rows} rows; expected shape "
                             f"({rows},)")
        return lab, lab.dtype.itemsize
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{fn}: labels must be a numpy.ndarray or a device array, got {type(labels).__name__}")
    if labels.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"{fn}: labels has dtype {labels.dtype}; expected int32 or int64 class indices")
    if not labels.dtype.isnative:
        raise TypeError(f"{fn}: labels has non-native byte order ({labels.dtype})")
    if not labels.flags.c_contiguous:
        raise ValueError(f"{fn}: labels is not C-contiguous")
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ValueError(f"{fn}: labels has shape {labels.shape} but logits have {rows} rows; expected shape "
                         f"({rows},)")
    bad = np.flatnonzero((labels < 0) | (labels >= cols))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{fn}: labels[{i}] = {int(labels[i])} is out of range for {cols} classes "
                         f"(expected 0 <= label < {cols})")
    _refuse_during_capture(fn, "host labels cannot be uploaded (pass device labels)", c.stream)
    uploaded = DeviceArray(labels.shape, labels.dtype, c.device)
    with _on_device(c.device):
        c.native.memcpy(uploaded.ptr, labels.ctypes.data, labels.nbytes, c.stream.handle)
    lab = c.add("labels", uploaded)
    return lab, lab.dtype.itemsize


def softmax_cross_entropy(logits, labels, *, out, loss_out, stream):
    fn = "softmax_cross_entropy"
    arrays = (("logits", logits), ("out", out))
    if not _classify(fn, arrays, (("labels", labels),)):
        _host_only(fn, stream, loss_out=loss_out)
        return _core.softmax_cross_entropy(logits, labels, out=out)
    c = _Call(fn, stream, arrays)
    X, G = _logits_and_grad(c, "logits")
    from_host = not is_device_array(labels)
    lab, itemsize = _labels(c, labels, X.shape[0], X.shape[1])
    c.no_overlap(G, lab, False)  # device labels are read while the gradient is written
    L = _loss_scalar(c, loss_out, X)
    c.launch(c.native.softmax_cross_entropy, X.ptr, lab.ptr, itemsize, G.ptr, L.ptr, X.shape[0], X.shape[1])
    if from_host:  # the uploaded labels are freed on return: let the kernel finish with them first
        c.native.stream_synchronize(c.stream.handle)
    return L.obj, G.obj


# -- batch norm -----------------------------------------------------------------------------------


def _feature(c: _Call, name: str, x: _DevArg, *, writeable: bool = False) -> _DevArg:
    a = c.f32(name, writeable=writeable)
    c.shape(a, (x.shape[1],), f"one value per feature of {x.name} with shape {x.shape}")
    return a


def _feature_out(c: _Call, name: str, x: _DevArg) -> _DevArg:
    return c.out(name, (x.shape[1],), x)


def batch_norm(x, gamma, beta, running_mean, running_var, *, training, momentum, eps, activation, out, save_mean,
               save_invstd, stream):
    fn = "batch_norm"
    arrays = (("x", x), ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
              ("running_var", running_var), ("out", out), ("save_mean", save_mean), ("save_invstd", save_invstd))
    if not _classify(fn, arrays):
        _host_only(fn, stream, save_mean=save_mean, save_invstd=save_invstd)
        return _core.batch_norm(x, gamma, beta, running_mean, running_var, training=training, momentum=momentum,
                                eps=eps, activation=activation, out=out)
    c = _Call(fn, stream, arrays)
    X = c.f32("x")
    c.ndim(X, 2)
    g, b = _feature(c, "gamma", X), _feature(c, "beta", X)
    rm = _feature(c, "running_mean", X, writeable=bool(training))
    rv = _feature(c, "running_var", X, writeable=bool(training))
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must satisfy 0 <= momentum <= 1, got {momentum}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0.0):
        raise ValueError(f"batch_norm: eps must be a finite number > 0, got {eps}")
    act = _activation(activation, fn, "activation")
    rows, cols = X.shape
    if training and rows < 2:
        raise ValueError("batch_norm: training needs at least 2 rows to estimate the batch variance, as in torch; "
                         f"x has shape {X.shape} (use training=False for single samples)")
    O = c.out("out", X.shape, X)
    c.no_overlap(O, X, True)
    for a in (g, b, rm, rv):
        c.no_overlap(O, a, False)
    if training:
        c.no_overlap(rm, rv, False)
        for a in (X, g, b):
            c.no_overlap(rm, a, False)
            c.no_overlap(rv, a, False)
        c.writes(rm, rv)
    sm, si = _feature_out(c, "save_mean", X), _feature_out(c, "save_invstd", X)
    for s_arg in (sm, si):
        for a in (X, g, b, rm, rv, O):
            c.no_overlap(s_arg, a, False)
    c.no_overlap(sm, si, False)
    c.launch(c.native.batch_norm, X.ptr, g.ptr, b.ptr, rm.ptr, rv.ptr, O.ptr, sm.ptr, si.ptr, rows, cols,
             bool(training), momentum, eps, act)
    return O.obj, sm.obj, si.obj


def batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, *, activation, y, dx, dgamma, dbeta, stream):
    fn = "batch_norm_backward"
    arrays = (("grad_out", grad_out), ("x", x), ("gamma", gamma), ("save_mean", save_mean),
              ("save_invstd", save_invstd), ("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta))
    if not _classify(fn, arrays):
        _host_only(fn, stream, dx=dx, dgamma=dgamma, dbeta=dbeta)
        return _core.batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, activation=activation, y=y)
    c = _Call(fn, stream, arrays)
    G = c.f32("grad_out")
    c.ndim(G, 2)
    X = c.f32("x")
    c.shape(X, G.shape, "the shape of grad_out")
    g, sm, si = _feature(c, "gamma", X), _feature(c, "save_mean", X), _feature(c, "save_invstd", X)
    act = _activation(activation, fn, "activation")
    if act != "identity" and y is None:
        raise ValueError(f"batch_norm_backward: activation={activation!r} needs y, the forward output of batch_norm, "
                         "to differentiate the activation")
    Y = None
    if y is not None:
        Y = c.f32("y")
        c.shape(Y, G.shape, "the shape of grad_out")
    DX = c.out("dx", X.shape, G)
    DG, DB = _feature_out(c, "dgamma", X), _feature_out(c, "dbeta", X)
    inputs = [a for a in (G, X, g, sm, si, Y) if a is not None]
    for o in (DX, DG, DB):
        for a in inputs:
            c.no_overlap(o, a, False)
    c.no_overlap(DG, DB, False)
    c.no_overlap(DX, DG, False)
    c.no_overlap(DX, DB, False)
    c.launch(c.native.batch_norm_backward, G.ptr, X.ptr, g.ptr, sm.ptr, si.ptr, _ptr(Y) if act != "identity" else 0,
             DX.ptr, DG.ptr, DB.ptr, X.shape[0], X.shape[1], act)
    return DX.obj, DG.obj, DB.obj


# -- optimizers -----------------------------------------------------------------------------------


class _OptimArrays:
    """param plus the arrays that travel with it: float32, param's shape, state writeable, no two
    sharing memory (the CPU binding's OptimArrays)."""

    def __init__(self, c: _Call):
        self.c = c
        self.param = c.f32("param", writeable=True)
        c.writes(self.param)
        self.others = []

    def add(self, name: str, writeable: bool) -> Optional[_DevArg]:
        c = self.c
        if c.get(name) is None:
            return None
        a = c.f32(name, writeable=writeable)
        c.shape(a, self.param.shape, "the shape of param")
        c.no_overlap(a, self.param, False)
        for o in self.others:
            c.no_overlap(a, o, False)
        self.others.append(a)
        if writeable:
            c.writes(a)
        return a


def _optim_call(fn: str, stream, arrays, scalars):
    """The _Call of a device optimizer step, or None when the arrays are host arrays."""
    if not _classify(fn, arrays, scalars):
        return None
    return _Call(fn, stream, arrays)


def sgd_step(param, grad, momentum_buffer, *, step, lr, momentum, dampening, nesterov, weight_decay, l1, segments,
             stream):
    fn = "sgd_step"
    arrays = (("param", param), ("grad", grad), ("momentum_buffer", momentum_buffer))
    c = _optim_call(fn, stream, arrays, (("step", step), ("lr", lr)))
    if c is None:
        _host_only(fn, stream)
        return _core.sgd_step(param, grad, momentum_buffer, step=step, lr=lr, momentum=momentum, dampening=dampening,
                              nesterov=nesterov, weight_decay=weight_decay, l1=l1, segments=segments)
    arr = _OptimArrays(c)
    G = arr.add("grad", False)
    step_v, step_ptr = _step_arg(c, step)
    lr_v, lr_ptr = _lr_arg(c, lr)
    momentum = _nonneg(momentum, fn, "momentum")
    dampening = _unit_closed(dampening, fn, "dampening")
    weight_decay, l1 = _nonneg(weight_decay, fn, "weight_decay"), _nonneg(l1, fn, "l1")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(f"sgd_step: nesterov=True requires momentum > 0 and dampening == 0, got momentum={momentum} "
                         f"and dampening={dampening}")
    buf = arr.add("momentum_buffer", True)
    if buf is None and momentum != 0.0:
        raise ValueError(f"sgd_step: momentum_buffer is None but momentum={momentum}; pass an array of param's shape "
                         "(its contents are ignored on step 1)")
    n = arr.param.size
    seg = _segments(c, segments, n)
    c.launch(c.native.sgd_step, arr.param.ptr, G.ptr, _ptr(buf), n, step_v, lr_v, momentum, dampening, weight_decay,
             l1, bool(nesterov), *seg, step_ptr, lr_ptr)
    return param


def adagrad_step(param, grad, state_sum, *, step, lr, lr_decay, weight_decay, eps, l1, segments, stream):
    fn = "adagrad_step"
    arrays = (("param", param), ("grad", grad), ("state_sum", state_sum))
    c = _optim_call(fn, stream, arrays, (("step", step), ("lr", lr)))
    if c is None:
        _host_only(fn, stream)
        return _core.adagrad_step(param, grad, state_sum, step=step, lr=lr, lr_decay=lr_decay,
                                  weight_decay=weight_decay, eps=eps, l1=l1, segments=segments)
    arr = _OptimArrays(c)
    G = arr.add("grad", False)
    S = arr.add("state_sum", True)
    step_v, step_ptr = _step_arg(c, step)
    lr_v, lr_ptr = _lr_arg(c, lr)
    lr_decay = _nonneg(lr_decay, fn, "lr_decay")
    weight_decay, eps, l1 = (_nonneg(weight_decay, fn, "weight_decay"), _nonneg(eps, fn, "eps"),
                             _nonneg(l1, fn, "l1"))
    n = arr.param.size
    seg = _segments(c, segments, n)
    c.launch(c.native.adagrad_step, arr.param.ptr, G.ptr, S.ptr, n, step_v, lr_v, lr_decay, weight_decay, l1, eps,
             *seg, step_ptr, lr_ptr)
    return param


def rmsprop_step(param, grad, square_avg, *, step, lr, alpha, eps, weight_decay, momentum, centered, momentum_buffer,
                 grad_avg, l1, segments, stream):
    fn = "rmsprop_step"
    arrays = (("param", param), ("grad", grad), ("square_avg", square_avg), ("momentum_buffer", momentum_buffer),
              ("grad_avg", grad_avg))
    c = _optim_call(fn, stream, arrays, (("step", step), ("lr", lr)))
    if c is None:
        _host_only(fn, stream)
        if step is not None:
            _index(step, fn, "step", "an int or a device int64 counter")  # RMSprop has no bias correction
        return _core.rmsprop_step(param, grad, square_avg, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                  momentum=momentum, centered=centered, momentum_buffer=momentum_buffer,
                                  grad_avg=grad_avg, l1=l1, segments=segments)
    arr = _OptimArrays(c)
    G = arr.add("grad", False)
    S = arr.add("square_avg", True)
    _, step_ptr = _step_arg(c, step, allow_none=True) if step is None or is_device_array(step) else (1, 0)
    lr_v, lr_ptr = _lr_arg(c, lr)
    alpha = _unit_closed(alpha, fn, "alpha")
    eps, weight_decay = _nonneg(eps, fn, "eps"), _nonneg(weight_decay, fn, "weight_decay")
    momentum, l1 = _nonneg(momentum, fn, "momentum"), _nonneg(l1, fn, "l1")
    buf = arr.add("momentum_buffer", True)
    if buf is None and momentum > 0.0:
        raise ValueError(f"rmsprop_step: momentum_buffer is None but momentum={momentum}; pass a zero-initialised "
                         "array of param's shape")
    avg = arr.add("grad_avg", True)
    if avg is None and centered:
        raise ValueError("rmsprop_step: grad_avg is None but centered=True; pass a zero-initialised array of param's "
                         "shape")
    n = arr.param.size
    seg = _segments(c, segments, n)
    c.launch(c.native.rmsprop_step, arr.param.ptr, G.ptr, S.ptr, _ptr(buf) if momentum > 0.0 else 0,
             _ptr(avg) if centered else 0, n, lr_v, alpha, eps, weight_decay, momentum, l1, bool(centered), *seg,
             step_ptr, lr_ptr)
    return param


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, l1, segments,
              stream):
    fn = "adam_step"
    arrays = (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq))
    c = _optim_call(fn, stream, arrays, (("step", step), ("lr", lr)))
    if c is None:
        _host_only(fn, stream)
        return _core.adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=weight_decay, decoupled=decoupled, l1=l1, segments=segments)
    arr = _OptimArrays(c)
    G = arr.add("grad", False)
    M = arr.add("exp_avg", True)
    V = arr.add("exp_avg_sq", True)
    step_v, step_ptr = _step_arg(c, step)
    lr_v, lr_ptr = _lr_arg(c, lr)
    beta1, beta2 = _prob(beta1, fn, "beta1"), _prob(beta2, fn, "beta2")
    eps, weight_decay, l1 = _nonneg(eps, fn, "eps"), _nonneg(weight_decay, fn, "weight_decay"), _nonneg(l1, fn, "l1")
    n = arr.param.size
    seg = _segments(c, segments, n)
    c.launch(c.native.adam_step, arr.param.ptr, G.ptr, M.ptr, V.ptr, n, step_v, lr_v, beta1, beta2, eps, weight_decay,
             l1, bool(decoupled), *seg, step_ptr, lr_ptr)
    return param


def clip_grad_norm(grad, max_norm, *, eps, norm_out, stream):
    fn = "clip_grad_norm"
    arrays = (("grad", grad), ("norm_out", norm_out))
    if not _classify(fn, arrays):
        _host_only(fn, stream, norm_out=norm_out)
        return _core.clip_grad_norm(grad, max_norm, eps=eps)
    max_norm, eps = _real(max_norm, fn, "max_norm"), _real(eps, fn, "eps")
    if not (0.0 < max_norm < math.inf):
        raise ValueError(f"{fn}: max_norm must be a finite number > 0, got {max_norm}")
    eps = _nonneg(eps, fn, "eps")
    c = _Call(fn, stream, (("grad", grad),))
    G = c.f32("grad", writeable=True)
    N = _loss_scalar(c, norm_out, G, "norm")
    c.writes(G)
    c.launch(c.native.clip_grad_norm, G.ptr, G.size, max_norm, eps, N.ptr)
    return N.obj


def scale_(x, s, *, stream=None):
    """``x *= float32(s)`` in place on the device (private: the Trainer's ``loss_scale``)."""
    fn = "scale"
    c = _Call(fn, stream, (("x", x),))
    X = c.f32("x", writeable=True)
    c.writes(X)
    c.launch(c.native.scale, X.ptr, float(s), X.size)
    return x


def weighted_loss(kind: str, logits, target, weights, *, out, loss_out, total, stream):
    """The Trainer's sample-weighted loss on device arrays (private: ``Trainer.fit`` with
    ``sample_weight`` on a CUDA model): ``kind`` is the Trainer's loss name; ``target`` the float
    targets or the device class labels; ``weights`` one float64 per row; ``total`` a one-element
    float64 device array that receives their sum. The loss is ``sum(w_r l_r) / W`` and row r's
    gradient ``grad_r * float32(w_r * rows / W)``, as ``Trainer._forward_backward`` forms them on
    the CPU. Returns ``(loss, grad)``."""
    fn = "weighted_loss"
    for name, a in (("weights", weights), ("total", total)):
        if not is_device_array(a):
            raise TypeError(f"{fn}: {name} must be a device array, got {type(a).__name__}")
    c = _Call(fn, stream, (("logits", logits), ("out", out), ("weights", weights), ("total", total)))
    X, G = _logits_and_grad(c, "logits")
    rows, cols = X.shape
    if kind == "cross_entropy":
        T, itemsize = _labels(c, target, rows, cols)
    else:
        c.add("target", target)
        T, itemsize = _float_target(c, "target", X, G), 0
    c.no_overlap(G, T, False)
    W, S = c.args["weights"], c.args["total"]
    if W.dtype != np.float64 or W.shape != (rows,):
        raise ValueError(f"{fn}: weights must be float64 of shape ({rows},), got {W.dtype.name} {W.shape}")
    if S.dtype != np.float64 or S.size != 1:
        raise ValueError(f"{fn}: total must be a one-element float64 device array")
    for a in (X, G, T, W):
        c.no_overlap(S, a, False)
    c.no_overlap(W, G, False)
    L = _loss_scalar(c, loss_out, X)
    c.writes(S)
    c.launch(c.native.weighted_loss, kind, X.ptr, T.ptr, itemsize, W.ptr, S.ptr, G.ptr, L.ptr, rows, cols)
    return L.obj, G.obj
