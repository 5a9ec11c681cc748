"""fastmlp.cuda: devices, streams, CUDA graphs and :class:`DeviceArray`, the device array the CUDA
kernels work on, plus the interop layer that lets CuPy arrays and torch CUDA tensors be used as they are.

The GPU is optional at run time (DESIGN.md): every function here imports and answers on a build
without CUDA or a machine without a GPU; :func:`is_available` says whether the device can be used,
and anything that needs it raises ``RuntimeError`` saying why not. Device arrays are recognised by
``__cuda_array_interface__`` (CuPy, torch, numba and ours), so a kernel given CuPy arrays answers
with CuPy arrays, torch in gives torch out, zero-copy.

Streams. fastmlp launches on ``cudaStreamPerThread`` (handle 2) unless told otherwise, never on the
legacy default stream behind the caller's back. A kernel picks its stream in this order:

1. its ``stream=`` argument;
2. the stream of an enclosing ``with fastmlp.cuda.stream(s):`` or :func:`graph_capture` block;
3. the stream of its first device argument: the stream a :class:`DeviceArray` was last written on,
   the ``stream`` entry of a version-3 ``__cuda_array_interface__`` (CuPy), or torch's current
   stream for a torch tensor (torch's own default stream maps to 2, which the legacy stream it
   stands for synchronises with);
4. fastmlp's current stream, 2 by default.

Arrays on different streams are not synchronised for you (as in torch and CuPy): results written
on one stream and read on another need a :meth:`Stream.synchronize` between them.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import threading
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np

from . import _core

__all__ = [
    "DTYPES",
    "DeviceArray",
    "Event",
    "Graph",
    "LEGACY_DEFAULT_STREAM",
    "PER_THREAD_DEFAULT_STREAM",
    "Stream",
    "asarray",
    "copy_",
    "current_device",
    "current_stream",
    "device_count",
    "empty",
    "from_numpy",
    "get_device_name",
    "get_device_properties",
    "graph_capture",
    "is_available",
    "set_device",
    "stream",
    "synchronize",
    "unavailable_reason",
    "zeros",
]

#: The stream handle of CUDA's legacy default stream (``cudaStreamLegacy``).
LEGACY_DEFAULT_STREAM = 1
#: The stream handle of the calling thread's default stream (``cudaStreamPerThread``), fastmlp's default.
PER_THREAD_DEFAULT_STREAM = 2

#: The dtypes a DeviceArray holds. The CUDA kernels compute in float32; the integer types carry
#: labels, row indices and step counters, bool the dropout masks, float64 the Trainer's sample
#: weights (asarray uploads float64 host data only when ``dtype=numpy.float64`` is asked for).
DTYPES = tuple(np.dtype(t) for t in ("float32", "int32", "int64", "uint8", "bool", "float64"))
_DLPACK_DTYPES = {np.dtype(t): t for t in ("float32", "int32", "int64", "uint8")}
_KDLCUDA = 2  # DLPack's device type for CUDA memory

_native_module = _core.cuda if getattr(_core, "cuda_compiled", False) else None
_tls = threading.local()


# -- availability and devices ---------------------------------------------------------------------


def unavailable_reason() -> Optional[str]:
    """Why the CUDA device cannot be used (a sentence), or None when it can."""
    if _native_module is None:
        return "this fastmlp build has no CUDA backend (it was built with FASTMLP_CUDA=OFF or without a CUDA compiler)"
    try:
        if _native_module.device_count() > 0:
            return None
    except Exception as e:  # noqa: BLE001 - device_count never raises by contract; be safe anyway
        return f"no CUDA device is usable ({e})"
    return "no CUDA device was found (no NVIDIA driver, or no GPU visible to this process)"


def is_available() -> bool:
    """True when this build has the CUDA backend and at least one device is visible. Never raises."""
    return unavailable_reason() is None


def _native():
    """The compiled ``_core.cuda`` module; RuntimeError naming the reason when it cannot be used."""
    why = unavailable_reason()
    if why is not None:
        raise RuntimeError(f"fastmlp.cuda: {why}")
    return _native_module


def device_count() -> int:
    """The number of visible CUDA devices (0 without a CUDA build, driver or GPU). Never raises."""
    if _native_module is None:
        return 0
    try:
        return int(_native_module.device_count())
    except Exception:  # noqa: BLE001
        return 0


def current_device() -> int:
    """The calling thread's current CUDA device."""
    return int(_native().get_device())


def _device_index(device, fn: str = "fastmlp.cuda") -> int:
    """A device index from None (the current device), an int, "cuda", "cuda:N", a torch.device or
    a CuPy Device; range-checked."""
    if device is None:
        return current_device()
    if isinstance(device, bool):
        raise TypeError(f"{fn}: device must be an int, 'cuda' or 'cuda:N', got a bool")
    if isinstance(device, str):
        name = device.strip().lower()
        if name == "cuda":
            return current_device()
        if not name.startswith("cuda:") or not name[5:].isdigit():
            raise ValueError(f"{fn}: device must be 'cuda' or 'cuda:N', got {device!r}")
        index = int(name[5:])
    elif hasattr(device, "__index__"):
        index = int(device.__index__())
    elif getattr(device, "type", None) == "cuda" and hasattr(device, "index"):  # torch.device
        return current_device() if device.index is None else _device_index(int(device.index), fn)
    elif hasattr(device, "id"):  # cupy.cuda.Device
        index = int(device.id)
    else:
        raise TypeError(f"{fn}: device must be an int, 'cuda' or 'cuda:N', got {type(device).__name__}")
    count = _native().device_count()
    if not 0 <= index < count:
        raise ValueError(f"{fn}: device {index} does not exist; this machine has {count} CUDA device(s)")
    return index


def set_device(device) -> None:
    """Make ``device`` the calling thread's current CUDA device."""
    _native().set_device(_device_index(device, "set_device"))


def get_device_name(device=None) -> str:
    """The device's name, e.g. "NVIDIA H100 80GB HBM3"."""
    return _native().device_name(_device_index(device, "get_device_name"))


def get_device_properties(device=None) -> dict:
    """name, major, minor, multiprocessors, total_memory, memory_clock_khz, memory_bus_width."""
    return dict(_native().device_properties(_device_index(device, "get_device_properties")))


def synchronize(device=None) -> None:
    """Wait until all work on ``device`` (default: the current one) has finished."""
    _native().synchronize(_device_index(device, "synchronize"))


@contextlib.contextmanager
def _on_device(device: int) -> Iterator[None]:
    """Make ``device`` current for the block (the kernels launch on the current device)."""
    native = _native_module
    previous = native.get_device()
    if previous == device:
        yield
        return
    native.set_device(device)
    try:
        yield
    finally:
        native.set_device(previous)


# -- streams and graphs ---------------------------------------------------------------------------


class Stream:
    """A CUDA stream. ``Stream()`` creates a new non-blocking stream on ``device`` (default: the
    current one), destroyed when the object is collected or :meth:`close` d; ``Stream.from_handle(h)``
    wraps an existing ``cudaStream_t`` (given as an int) without owning it.

    A Stream converts to its handle with ``int(s)`` (it has ``__index__``), so it can be passed
    wherever the low-level interface takes a stream.
    """

    __slots__ = ("handle", "device", "_owned", "__weakref__")

    def __init__(self, device=None):
        native = _native()
        index = _device_index(device, "Stream")
        with _on_device(index):
            self.handle = int(native.stream_create())
        self.device: Optional[int] = index
        self._owned = True

    @classmethod
    def from_handle(cls, handle: int, device: Optional[int] = None) -> "Stream":
        """Wrap a ``cudaStream_t`` given as an int (1 = legacy default, 2 = per-thread default);
        the caller keeps it alive. 0 is refused as ambiguous (use 1 or 2)."""
        if isinstance(handle, bool) or not hasattr(handle, "__index__"):
            raise TypeError(f"Stream.from_handle: handle must be an int, got {type(handle).__name__}")
        handle = int(handle.__index__())
        if handle <= 0:
            raise ValueError(f"Stream.from_handle: handle must be a positive cudaStream_t value, got {handle} "
                             "(0 is ambiguous: pass 1 for the legacy default stream or 2 for the per-thread one)")
        s = cls.__new__(cls)
        s.handle, s.device, s._owned = handle, device, False
        return s

    def __index__(self) -> int:
        return self.handle

    __int__ = __index__

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and other.handle == self.handle

    def __hash__(self) -> int:
        return hash(self.handle)

    def __repr__(self) -> str:
        names = {LEGACY_DEFAULT_STREAM: "legacy default", PER_THREAD_DEFAULT_STREAM: "per-thread default"}
        what = names.get(self.handle, hex(self.handle))
        return f"<fastmlp.cuda.Stream {what}{'' if self.device is None else f' on cuda:{self.device}'}>"

    def synchronize(self) -> None:
        """Wait until all work queued on this stream has finished."""
        _native().stream_synchronize(self.handle)

    def is_capturing(self) -> bool:
        """Whether this stream is being captured into a CUDA graph."""
        return bool(_native().stream_is_capturing(self.handle))

    def wait_event(self, event: "Event") -> None:
        """Make work queued on this stream from now on wait for ``event`` (recorded on any stream
        of the device), without blocking the host. In a capture this joins the graph's branches."""
        if not isinstance(event, Event):
            raise TypeError(f"Stream.wait_event: event must be a fastmlp.cuda.Event, got {type(event).__name__}")
        with _on_device(event.device):
            _native().stream_wait_event(self.handle, event._handle)

    def record_event(self, event: Optional["Event"] = None) -> "Event":
        """Record ``event`` (default: a new one) at this point of the stream and return it."""
        event = Event(self.device) if event is None else event
        event.record(self)
        return event

    def close(self) -> None:
        """Destroy an owned stream now (after its queued work finishes; while this thread captures a
        graph, when that capture ends). Idempotent."""
        if self._owned and _native_module is not None:
            self._owned = False
            with _on_device(self.device):
                _native_module.stream_destroy(self.handle)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a destructor cannot report (e.g. at interpreter exit)
            pass


_PER_THREAD = Stream.from_handle(PER_THREAD_DEFAULT_STREAM)


class Event:
    """A CUDA event (no timing) for ordering work across streams, as torch.cuda.Event:
    ``e = s1.record_event(); s2.wait_event(e)`` makes s2's later work wait for s1's work so far.
    Recorded on a stream being captured, it forks the capture into the waiting stream, which must
    be joined back (the capture stream waits on an event recorded on it) before the capture ends.
    Destroyed when collected."""

    __slots__ = ("_handle", "device", "__weakref__")

    def __init__(self, device=None):
        native = _native()
        self.device = _device_index(device, "Event")
        self._handle = 0
        with _on_device(self.device):
            self._handle = int(native.event_create())

    def record(self, stream=None) -> "Event":
        """Record this event on ``stream`` (default: fastmlp's current stream); returns self."""
        s = current_stream() if stream is None else _as_stream(stream, "Event.record")
        with _on_device(self.device):
            _native().event_record(self._handle, s.handle)
        return self

    def __repr__(self) -> str:
        return f"<fastmlp.cuda.Event on cuda:{self.device}>"

    def __del__(self):
        try:
            if self._handle and _native_module is not None:
                with _on_device(self.device):
                    _native_module.event_destroy(self._handle)
                self._handle = 0
        except Exception:  # noqa: BLE001 - a destructor cannot report (e.g. at interpreter exit)
            pass


def _as_stream(s, fn: str) -> Stream:
    """A Stream from a Stream, an int handle, a torch.cuda.Stream or a CuPy stream."""
    if isinstance(s, Stream):
        return s
    module = type(s).__module__ or ""
    attr = "cuda_stream" if module.startswith("torch") else "ptr" if module.startswith("cupy") else None
    if attr is not None and hasattr(s, attr):  # torch.cuda.Stream, cupy.cuda.Stream
        # Their default stream is the legacy one, reported as 0.
        return Stream.from_handle(int(getattr(s, attr)) or LEGACY_DEFAULT_STREAM)
    if isinstance(s, bool) or not hasattr(s, "__index__"):
        raise TypeError(f"{fn}: stream must be a fastmlp.cuda.Stream, an int handle, a torch or CuPy stream, "
                        f"got {type(s).__name__}")
    try:
        return Stream.from_handle(s)
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).split(': ', 1)[1]}") from None


def _context_stream() -> Optional[Stream]:
    """The stream of an enclosing ``stream()`` / ``graph_capture()`` block on this thread, or None."""
    return getattr(_tls, "stream", None)


def current_stream() -> Stream:
    """The stream fastmlp launches on in this thread: that of an enclosing :func:`stream` block,
    else the per-thread default stream (handle 2)."""
    return getattr(_tls, "stream", None) or _PER_THREAD


@contextlib.contextmanager
def stream(s) -> Iterator[Optional[Stream]]:
    """``with fastmlp.cuda.stream(s):`` makes fastmlp launch on ``s`` (a Stream, an int handle, a
    torch or CuPy stream) in this thread, ahead of the streams its array arguments name; ``None``
    changes nothing."""
    if s is None:
        yield current_stream()
        return
    chosen = _as_stream(s, "stream")
    previous = getattr(_tls, "stream", None)
    _tls.stream = chosen
    try:
        yield chosen
    finally:
        _tls.stream = previous


def _capturing() -> bool:
    """Whether this thread is inside :func:`graph_capture`."""
    return getattr(_tls, "capture", None) is not None


class Graph:
    """A captured CUDA graph (see :func:`graph_capture`); :meth:`replay` launches it again."""

    __slots__ = ("_exec", "stream", "keepalive")

    def __init__(self):
        self._exec = None
        self.stream: Optional[Stream] = None
        #: Device memory the graph reads that fastmlp allocated for it (segment tables).
        self.keepalive: list = []

    def replay(self, stream=None) -> None:
        """Launch the graph on ``stream`` (default: fastmlp's current stream), asynchronously.
        Replays on the stream the eager work uses are ordered with it. The graph reuses the scratch
        memory and split-K counters of the stream it was captured on, so do not replay it on
        another stream while work runs on that one, nor twice at once on two streams."""
        if self._exec is None:
            raise RuntimeError("Graph.replay: the graph has not been captured (its graph_capture block "
                               "has not finished, or it failed)")
        s = current_stream() if stream is None else _as_stream(stream, "Graph.replay")
        self._exec.replay(int(s))

    def __repr__(self) -> str:
        return f"<fastmlp.cuda.Graph {'captured' if self._exec is not None else 'empty'}>"


@contextlib.contextmanager
def graph_capture(stream=None) -> Iterator[Graph]:
    """Capture the fastmlp work launched in the block into a CUDA graph::

        step()                      # once eagerly: scratch memory and segment tables get allocated
        with fastmlp.cuda.graph_capture() as g:
            step()                  # recorded, not run
        for _ in range(3):
            g.replay()              # runs the recorded work

    The capture runs on ``stream`` (default: fastmlp's current stream, the per-thread default
    one), which is made current for the block. Nothing may allocate device memory or copy from the
    host while capturing: pass ``out=`` to every kernel, keep labels on the device, and run the
    step once eagerly first on the same stream. Capturable kernels read the step counter and the
    learning rate from device scalars (``step=``/``lr=``), so a replay is a correct new step.
    Arrays, streams, events and graphs that Python drops inside the block are destroyed when it
    ends (destroying them there would break the capture); device memory freed inside it goes with
    the graph. Recent cyclic garbage is collected before it begins; older cycles only by a full
    ``gc.collect()``, which takes 100 ms or more with torch or JAX loaded: call it yourself first
    if you have just dropped large structures in reference cycles.
    """
    native = _native()
    s = current_stream() if stream is None else _as_stream(stream, "graph_capture")
    if s.handle == LEGACY_DEFAULT_STREAM:
        raise ValueError("graph_capture: the legacy default stream (1) cannot be captured; use the per-thread "
                         "default stream (2) or a fastmlp.cuda.Stream()")
    if _capturing():
        raise RuntimeError("graph_capture: a capture is already in progress on this thread")
    g = Graph()
    g.stream = s
    # Recent cyclic garbage (the young generations: an eager warm-up step's, say) is collected now
    # rather than inside the capture, where what dies is only destroyed when it ends (device memory
    # with the graph). Not a full collection as torch.cuda.graph runs: with torch or JAX loaded that
    # takes 100-200 ms, which Trainer.fit paid for every capture (2.8x its time per step at 400
    # steps, H200), and the native deferral keeps a capture correct whatever dies inside it.
    gc.collect(1)
    previous = getattr(_tls, "stream", None)
    _tls.stream, _tls.capture = s, g
    try:
        native.capture_begin(s.handle)
        try:
            yield g
        except BaseException:
            with contextlib.suppress(Exception):
                native.capture_end(s.handle)  # ends the capture; the partial graph is dropped
            raise
        g._exec = native.capture_end(s.handle)
    finally:
        _tls.stream, _tls.capture = previous, None


def _keep_for_capture(obj) -> None:
    """Keep ``obj`` (device memory a captured kernel reads) alive as long as the graph being captured."""
    g = getattr(_tls, "capture", None)
    if g is not None:
        g.keepalive.append(obj)


def _refuse_during_capture(fn: str, what: str, s: Stream) -> None:
    """RuntimeError when ``s`` is being captured: ``what`` (an allocation, a host copy) cannot be."""
    if _capturing() or _native_module.stream_is_capturing(s.handle):
        raise RuntimeError(f"{fn}: {what} while a CUDA graph is being captured; allocate outside the capture "
                           "(pass out=), keep inputs on the device, and run the step once eagerly first")


# -- DeviceArray ----------------------------------------------------------------------------------


def _shape_tuple(shape, fn: str) -> Tuple[int, ...]:
    if hasattr(shape, "__index__") and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(int(d.__index__()) for d in shape)
    except (TypeError, AttributeError):
        raise TypeError(f"{fn}: shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"{fn}: shape {dims} has a negative dimension")
    return dims


def _dtype(dtype, fn: str) -> np.dtype:
    d = np.dtype(dtype)
    if d not in DTYPES or not d.isnative:
        raise TypeError(f"{fn}: dtype {d} is not supported on the device; use one of "
                        f"{', '.join(t.name for t in DTYPES)}")
    return d


def _prod(shape: Sequence[int]) -> int:
    return math.prod(shape)


class DeviceArray:
    """A C-contiguous array in CUDA device memory: float32, int32, int64, uint8 or bool.

    It owns a ``_core.cuda.Buffer`` or views memory another object owns (a DeviceArray, a CuPy
    array, a torch tensor), keeping that owner alive. Views: :meth:`reshape`, :meth:`view`, and
    ``a[i]`` / ``a[start:stop]`` on the first axis. Data moves only when asked: :meth:`to_numpy`
    copies to the host (``np.asarray(a)`` raises ``TypeError`` instead of copying behind your
    back), :func:`asarray` uploads. Exports ``__cuda_array_interface__`` (version 3) and
    ``__dlpack__``, so ``torch.from_dlpack(a)`` and ``cupy.asarray(a)`` view it without a copy.
    """

    __slots__ = ("_owner", "_ptr", "_shape", "_dtype", "_device", "_stream", "__weakref__")
    __array_ufunc__ = None  # `numpy_array + device_array` raises instead of iterating elements

    def __init__(self, shape, dtype=np.float32, device=None):
        native = _native()
        dims = _shape_tuple(shape, "DeviceArray")
        dt = _dtype(dtype, "DeviceArray")
        index = _device_index(device, "DeviceArray")
        buf = native.Buffer(_prod(dims) * dt.itemsize, index)
        self._owner, self._ptr, self._shape, self._dtype = buf, int(buf.ptr), dims, dt
        self._device, self._stream = index, None

    @classmethod
    def _view(cls, owner, ptr: int, shape: Tuple[int, ...], dtype: np.dtype, device: int,
              stream: Optional[Stream] = None) -> "DeviceArray":
        a = cls.__new__(cls)
        a._owner, a._ptr, a._shape, a._dtype, a._device, a._stream = owner, ptr, shape, dtype, device, stream
        return a

    # -- attributes --
    @property
    def shape(self) -> Tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def size(self) -> int:
        return _prod(self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def itemsize(self) -> int:
        return self._dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    @property
    def strides(self) -> Tuple[int, ...]:
        """C-contiguous strides in bytes."""
        strides, step = [], self._dtype.itemsize
        for d in reversed(self._shape):
            strides.append(step)
            step *= max(d, 1)
        return tuple(reversed(strides))

    @property
    def device(self) -> int:
        """The CUDA device index."""
        return self._device

    @property
    def ptr(self) -> int:
        """The device address of the first element (0 for an empty array)."""
        return self._ptr

    @property
    def stream(self) -> Optional[Stream]:
        """The stream this array was last written on by fastmlp, or None when nothing is pending."""
        return self._stream

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self._shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self._shape}, dtype={self._dtype.name}, device='cuda:{self._device}')"

    # -- host transfers --
    def _read_stream(self, stream) -> Stream:
        if stream is not None:
            return _as_stream(stream, "DeviceArray.to_numpy")
        return _context_stream() or self._stream or _PER_THREAD

    def to_numpy(self, stream=None) -> np.ndarray:
        """A NumPy copy. Copies on ``stream`` (default: the current stream block's, else the stream
        this array was last written on, else the per-thread default) and waits for it."""
        out = np.empty(self._shape, self._dtype)
        if out.nbytes:
            native = _native()
            s = self._read_stream(stream)
            _refuse_during_capture("DeviceArray.to_numpy", "cannot copy to the host", s)
            with _on_device(self._device):
                native.memcpy(out.ctypes.data, self._ptr, out.nbytes, s.handle)
        return out

    def __array__(self, dtype=None, copy=None):
        raise TypeError("DeviceArray: implicit conversion to a NumPy array is refused, because it would copy "
                        "from the GPU and wait for it; call .to_numpy()")

    def _scalar(self, what: str):
        if self.size != 1:
            raise TypeError(f"only a DeviceArray with one element converts to {what}, this one has shape {self._shape}")
        return self.to_numpy().reshape(())[()]

    def __float__(self) -> float:
        return float(self._scalar("float"))

    def __int__(self) -> int:
        if self._dtype.kind == "f":
            raise TypeError("int() of a float DeviceArray; use int(float(a))")
        return int(self._scalar("int"))

    def copy_(self, src, stream=None) -> "DeviceArray":
        """Copy ``src`` (host data, or a device array of the same shape and dtype) into this array
        in place; returns self."""
        copy_(self, src, stream=stream)
        return self

    def copy(self, stream=None) -> "DeviceArray":
        """A new array on the same device with the same contents."""
        out = empty(self._shape, self._dtype, self._device)
        copy_(out, self, stream=stream)
        return out

    def fill(self, value, stream=None) -> "DeviceArray":
        """Set every element to ``value``, in place; returns self. Zero is a device memset (and may be
        captured); other values are uploaded from a host array of the same shape."""
        v = np.array(value, self._dtype)
        if v == 0 and not (self._dtype.kind == "f" and np.signbit(v)):
            native = _native()
            s = _as_stream(stream, "DeviceArray.fill") if stream is not None else \
                (_context_stream() or self._stream or _PER_THREAD)
            with _on_device(self._device):
                native.memset(self._ptr, 0, self.nbytes, s.handle)
            if not _capturing():
                self._stream = s
            return self
        host = np.full(self._shape, v, self._dtype)
        return self.copy_(host, stream=stream)

    # -- views --
    def reshape(self, *shape) -> "DeviceArray":
        """A view with another shape of the same size (one dimension may be -1)."""
        if len(shape) == 1 and not hasattr(shape[0], "__index__"):
            shape = tuple(shape[0])
        dims = [int(d) for d in shape]
        if dims.count(-1) > 1:
            raise ValueError("DeviceArray.reshape: only one dimension may be -1")
        if -1 in dims:
            known = _prod(d for d in dims if d != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"DeviceArray.reshape: cannot reshape {self._shape} into {tuple(shape)}")
            dims[dims.index(-1)] = self.size // known
        dims_t = _shape_tuple(dims, "DeviceArray.reshape")
        if _prod(dims_t) != self.size:
            raise ValueError(f"DeviceArray.reshape: cannot reshape an array of size {self.size} "
                             f"(shape {self._shape}) into shape {dims_t}")
        return DeviceArray._view(self._owner, self._ptr, dims_t, self._dtype, self._device, self._stream)

    def view(self, dtype) -> "DeviceArray":
        """The same memory as another dtype of the same item size (bool <-> uint8, float32 <-> int32)."""
        dt = _dtype(dtype, "DeviceArray.view")
        if dt.itemsize != self._dtype.itemsize:
            raise ValueError(f"DeviceArray.view: {self._dtype.name} -> {dt.name} changes the item size")
        return DeviceArray._view(self._owner, self._ptr, self._shape, dt, self._device, self._stream)

    def __getitem__(self, key) -> "DeviceArray":
        """``a[i]`` and ``a[start:stop]`` on the first axis (contiguous views)."""
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        if not self._shape:
            raise IndexError("a 0-d DeviceArray cannot be indexed")
        rows = self._shape[0]
        row_bytes = _prod(self._shape[1:]) * self._dtype.itemsize
        if isinstance(key, slice):
            start, stop, step = key.indices(rows)
            if step != 1:
                raise IndexError("DeviceArray supports slices with step 1 only (views stay contiguous)")
            stop = max(stop, start)
            ptr = self._ptr + start * row_bytes if stop > start and row_bytes else 0
            return DeviceArray._view(self._owner, ptr if stop > start else 0, (stop - start,) + self._shape[1:],
                                     self._dtype, self._device, self._stream)
        if hasattr(key, "__index__") and not isinstance(key, bool):
            i = int(key.__index__())
            if not -rows <= i < rows:
                raise IndexError(f"index {i} is out of bounds for axis 0 with size {rows}")
            i %= rows
            return DeviceArray._view(self._owner, self._ptr + i * row_bytes if row_bytes else 0, self._shape[1:],
                                     self._dtype, self._device, self._stream)
        raise IndexError("DeviceArray supports a[i] and a[start:stop] on the first axis only; "
                         "use .to_numpy() for other indexing")

    # -- interop protocols --
    @property
    def __cuda_array_interface__(self) -> dict:
        """Version 3: C-contiguous (strides None); ``stream`` is the stream this array was last
        written on (the consumer synchronises with it), None when nothing is pending."""
        return {"shape": self._shape, "typestr": self._dtype.str, "data": (self._ptr, False), "version": 3,
                "strides": None, "stream": None if self._stream is None else self._stream.handle}

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (_KDLCUDA, self._device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule (``"dltensor"``, DLPack 0.8, kDLCUDA) viewing this array.

        ``stream`` is the consumer's stream (None or 1: legacy default, 2: per-thread default, -1:
        no synchronisation); when this array has pending work on another stream that the consumer's
        does not already wait for, the producer stream is synchronised first. ``copy=True`` exports
        a fresh copy. bool arrays export as uint8 only through ``a.view(np.uint8)``.
        """
        if self._dtype not in _DLPACK_DTYPES:
            raise BufferError(f"DeviceArray.__dlpack__: dtype {self._dtype.name} has no DLPack export here; "
                              "use a.view(numpy.uint8)")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"DeviceArray.__dlpack__: the array lives on {self.__dlpack_device__()}, "
                              f"not {tuple(dl_device)}; copy it there first")
        if stream == 0:
            raise ValueError("DeviceArray.__dlpack__: stream=0 is ambiguous (DLPack); pass 1 or 2")
        native = _native()
        src = self.copy() if copy else self
        pending = src._stream.handle if src._stream is not None else None
        consumer = LEGACY_DEFAULT_STREAM if stream is None else int(stream)
        if pending is not None and consumer != -1 and consumer != pending \
                and {consumer, pending} != {LEGACY_DEFAULT_STREAM, PER_THREAD_DEFAULT_STREAM}:
            native.stream_synchronize(pending)
        return native.to_dlpack(src, src._ptr, src._shape, src._device, _DLPACK_DTYPES[src._dtype])


# -- creation and copies --------------------------------------------------------------------------


def empty(shape, dtype=np.float32, device=None) -> DeviceArray:
    """A new uninitialised DeviceArray on ``device`` (default: the current one)."""
    if _capturing():
        _refuse_during_capture("empty", "cannot allocate device memory", current_stream())
    return DeviceArray(shape, dtype, device)


def zeros(shape, dtype=np.float32, device=None) -> DeviceArray:
    """A new DeviceArray of zeros (a memset on the current stream)."""
    return empty(shape, dtype, device).fill(0)


def from_numpy(array: np.ndarray, device=None) -> DeviceArray:
    """Upload a host array (copied; made C-contiguous). Its dtype must be one of :data:`DTYPES`."""
    host = np.asarray(array, order="C")
    out = empty(host.shape, _dtype(host.dtype, "from_numpy"), device)
    return out.copy_(host)


def asarray(obj, device=None, dtype=None) -> DeviceArray:
    """``obj`` as a DeviceArray.

    A DeviceArray is returned as it is; a CuPy array, a torch CUDA tensor or anything else with
    ``__cuda_array_interface__`` is viewed without a copy (it must be C-contiguous); host data
    (NumPy arrays, lists, scalars) is uploaded. ``device`` moves the data there (a copy) when it
    lives elsewhere. ``dtype`` converts host data; device data must already have it. float64 host
    data is refused rather than silently rounded: pass ``dtype=numpy.float32``.
    """
    _native()
    target = None if device is None else _device_index(device, "asarray")
    if is_device_array(obj):
        arg = _parse(obj, "asarray", "obj")
        if dtype is not None and np.dtype(dtype) != arg.dtype:
            raise TypeError(f"asarray: obj has dtype {arg.dtype.name} on the device; converting device data "
                            f"to {np.dtype(dtype).name} is not supported")
        _dtype(arg.dtype, "asarray")
        a = obj if type(obj) is DeviceArray else \
            DeviceArray._view(obj, arg.ptr, arg.shape, arg.dtype, arg.device, arg.stream)
        if target is not None and target != a.device:
            out = empty(a.shape, a.dtype, target)
            copy_(out, a)
            return out
        return a
    host = np.asarray(obj) if dtype is None else np.asarray(obj, dtype=dtype)
    if host.dtype == np.float64 and dtype is None:
        raise TypeError("asarray: float64 data is not supported on the device (the CUDA kernels compute in "
                        "float32); pass dtype=numpy.float32")
    return from_numpy(host, target)


def copy_(dst, src, *, stream=None) -> Any:
    """Copy ``src`` into the device array ``dst`` in place and return ``dst``.

    ``src`` is a device array of ``dst``'s shape and dtype (copied device to device, asynchronously
    on the chosen stream; across devices too) or host data (converted to ``dst``'s dtype when that
    is a same-kind cast, then uploaded; the call waits for the upload).
    """
    native = _native()
    if not is_device_array(dst):
        raise TypeError(f"copy_: dst must be a device array, got {type(dst).__name__}; use .to_numpy() to copy "
                        "to the host")
    d = _parse(dst, "copy_", "dst")
    if d.readonly:
        raise ValueError("copy_: dst is read-only")
    if is_device_array(src):
        s_arg = _parse(src, "copy_", "src")
        if s_arg.shape != d.shape or s_arg.dtype != d.dtype:
            raise ValueError(f"copy_: src has shape {s_arg.shape} and dtype {s_arg.dtype.name} but dst has shape "
                             f"{d.shape} and dtype {d.dtype.name}")
        s = _pick_stream(stream, (d, s_arg), "copy_")
        with _on_device(d.device):
            native.memcpy_async(d.ptr, s_arg.ptr, d.nbytes, s.handle)
    else:
        host = np.asarray(src)
        if host.dtype != d.dtype:
            if not np.can_cast(host.dtype, d.dtype, "same_kind"):
                raise TypeError(f"copy_: src has dtype {host.dtype.name}, which does not cast to dst's "
                                f"{d.dtype.name}")
            host = host.astype(d.dtype)
        if host.shape != d.shape:
            if host.size != 1 and host.shape != d.shape:
                raise ValueError(f"copy_: src has shape {host.shape} but dst has shape {d.shape}")
            host = np.broadcast_to(host.reshape(()), d.shape)
        host = np.asarray(host, order="C")
        s = _pick_stream(stream, (d,), "copy_")
        _refuse_during_capture("copy_", "cannot copy from the host", s)
        with _on_device(d.device):
            native.memcpy(d.ptr, host.ctypes.data, d.nbytes, s.handle)
    _mark_written(d, s)
    return dst


# -- interop: device arrays of any library --------------------------------------------------------


def is_device_array(obj) -> bool:
    """Whether ``obj`` is a CUDA device array (exposes ``__cuda_array_interface__``): ours, CuPy,
    torch CUDA tensors, numba. torch CPU tensors are not (their attribute raises AttributeError)."""
    if type(obj) is DeviceArray:
        return True
    if type(obj) is np.ndarray or obj is None:
        return False
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - e.g. torch refuses tensors that require grad: still a device array
        return True


def _kind_of(obj) -> str:
    if type(obj) is DeviceArray:
        return "fastmlp"
    module = type(obj).__module__ or ""
    if module.startswith("torch"):
        return "torch"
    if module.startswith("cupy"):
        return "cupy"
    return "cai"


class _DevArg:
    """A parsed device argument: where its memory is and what it holds."""

    __slots__ = ("obj", "name", "kind", "ptr", "shape", "dtype", "size", "nbytes", "device", "stream", "readonly")

    def __repr__(self) -> str:
        return f"<{self.name}: {self.kind} shape {self.shape} {self.dtype} on cuda:{self.device}>"


def _c_contiguous(shape, strides, itemsize) -> bool:
    if strides is None or _prod(shape) == 0:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _describe(shape, dtype) -> str:
    return f"shape {tuple(shape)} and dtype {np.dtype(dtype).name}"


def _torch_stream(tensor) -> Optional[Stream]:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    handle = int(torch.cuda.current_stream(tensor.device).cuda_stream)
    return None if handle == 0 else Stream.from_handle(handle, tensor.device.index)


def _parse(obj, fn: str, name: str) -> _DevArg:
    """Read a device array's interface. ValueError when it is not C-contiguous or not device memory;
    TypeError for a dtype the device does not hold."""
    a = _DevArg()
    a.obj, a.name = obj, name
    if type(obj) is DeviceArray:
        a.kind, a.ptr, a.shape, a.dtype = "fastmlp", obj._ptr, obj._shape, obj._dtype
        a.size = _prod(a.shape)
        a.nbytes = a.size * a.dtype.itemsize
        a.device, a.stream, a.readonly = obj._device, obj._stream, False
        return a
    a.kind = _kind_of(obj)
    cai = obj.__cuda_array_interface__
    try:
        a.shape = tuple(int(d) for d in cai["shape"])
        a.dtype = np.dtype(cai["typestr"])
        ptr, readonly = cai["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{fn}: {name} has a malformed __cuda_array_interface__ ({e!r})") from None
    a.ptr, a.readonly = int(ptr), bool(readonly)
    if not a.dtype.isnative:
        raise TypeError(f"{fn}: {name} has non-native byte order ({a.dtype.str})")
    a.size = _prod(a.shape)
    a.nbytes = a.size * a.dtype.itemsize
    if cai.get("mask") is not None:
        raise ValueError(f"{fn}: {name} is a masked device array; masks are not supported")
    strides = cai.get("strides")
    if not _c_contiguous(a.shape, strides, a.dtype.itemsize):
        raise ValueError(f"{fn}: {name} with {_describe(a.shape, a.dtype)} is not C-contiguous (strides "
                         f"{tuple(strides)} bytes); pass a contiguous copy (torch: .contiguous(), "
                         "CuPy: cupy.ascontiguousarray)")
    stream_handle = cai.get("stream") if int(cai.get("version", 0)) >= 3 else None
    if stream_handle == 0:
        raise ValueError(f"{fn}: {name}'s __cuda_array_interface__ names stream 0, which version 3 disallows")
    a.stream = None if stream_handle is None else Stream.from_handle(int(stream_handle))
    native = _native()
    if a.kind == "torch":
        a.device = obj.device.index if obj.device.index is not None else current_device()
        if a.stream is None:
            a.stream = _torch_stream(obj)
    elif a.kind == "cupy" and hasattr(obj, "device"):
        a.device = int(obj.device.id)
    elif a.ptr == 0:
        a.device = -1  # empty: any device; the call's other arguments (or the current device) decide
    else:
        a.device = int(native.pointer_device(a.ptr))
        if a.device < 0:
            raise ValueError(f"{fn}: {name} exposes __cuda_array_interface__ but its pointer {a.ptr:#x} is not "
                             "CUDA device memory")
    return a


def _pick_stream(stream, args: Sequence[_DevArg], fn: str) -> Stream:
    """The launch stream: ``stream=``, else an enclosing stream()/graph_capture() block, else the
    first device argument's stream, else the per-thread default (module docstring)."""
    if stream is not None:
        return _as_stream(stream, fn)
    context = getattr(_tls, "stream", None)
    if context is not None:
        return context
    for a in args:
        if a is not None:
            return a.stream or _PER_THREAD
    return _PER_THREAD


def _mark_written(arg: _DevArg, s: Stream) -> None:
    """Remember the stream a DeviceArray was written on (not during capture: nothing runs then)."""
    if arg.kind == "fastmlp" and not _capturing():
        arg.obj._stream = s


def _empty_like(ref: _DevArg, shape: Tuple[int, ...], dtype, s: Stream, fn: str):
    """A new array of ``ref``'s library (CuPy, torch or DeviceArray) on ``ref``'s device, and its
    parsed form."""
    _refuse_during_capture(fn, "cannot allocate a result", s)
    dtype = np.dtype(dtype)
    if ref.kind == "torch":
        torch = sys.modules["torch"]
        torch_dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64,
                       np.dtype(np.int32): torch.int32, np.dtype(np.uint8): torch.uint8,
                       np.dtype(np.bool_): torch.bool}[dtype]
        obj = torch.empty(shape, dtype=torch_dtype, device=ref.obj.device)
    elif ref.kind == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(ref.device):
            obj = cupy.empty(shape, dtype=dtype)
    else:
        obj = DeviceArray(shape, dtype, ref.device)
    out = _parse(obj, fn, "out")
    out.device = ref.device if out.device < 0 else out.device
    return obj, out
