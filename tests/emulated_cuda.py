"""A host-memory emulator of the `_core.cuda` interface (csrc/cuda/INTERFACE.md): "device"
buffers are host memory, kernels run the CPU kernels on them, launches on a capturing stream are
recorded and a graph replays them. With FASTMLP_EMULATE_CUDA=1 the conftest installs it, so the
Python half of the CUDA backend (fastmlp.cuda, the kernel dispatch, device-resident training,
graph capture and replay) runs on a machine without a GPU. It proves the Python logic only: the
CUDA kernels themselves never run here."""
import ctypes
import numpy as np

from fastmlp import _core

_live = {}  # ptr -> (nbytes, array)
_capture = {}  # stream -> list of thunks


def _view(ptr, shape, dtype):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) if len(shape) else 1
    if n == 0 or ptr == 0:
        return np.empty(shape, dtype)
    buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _find(ptr):
    for p, (nb, _) in _live.items():
        if p <= ptr < p + max(nb, 1):
            return True
    return False


class Buffer:
    def __init__(self, nbytes, device):
        for s in _capture:
            raise RuntimeError("fastmlp.cuda: cudaMalloc: operation not permitted when stream is capturing")
        self.nbytes, self.device = nbytes, device
        if nbytes == 0:
            self.ptr = 0
            self._a = None
            return
        self._a = np.empty(nbytes + 64, np.uint8)
        self.ptr = (self._a.ctypes.data + 63) // 64 * 64
        self._a[:] = 0xCD
        _live[self.ptr] = (nbytes, self._a)

    def __del__(self):
        _live.pop(getattr(self, "ptr", 0), None)
        if _capture and getattr(self, "_a", None) is not None:  # as runtime.cu: the graph being captured owns it
            _deferred.append(self._a)


_deferred = []  # host memory of buffers freed during a capture


class PinnedBuffer:
    def __init__(self, nbytes):
        self.nbytes = nbytes
        self._a = np.empty(nbytes + 64, np.uint8)
        self.ptr = (self._a.ctypes.data + 63) // 64 * 64


class _Graph:
    def __init__(self, thunks, owned=()):
        self.thunks = thunks
        self.owned = list(owned)  # freed during the capture: kept while the graph may replay

    def replay(self, stream):
        for t in self.thunks:
            t()


_launches = {}  # stream -> work queued on it so far (for fork/join bookkeeping)
_events = {}  # event -> (stream, launches on it when recorded)
_forked = {}  # stream forked into a capture -> launches on it when last joined back


def _launch(stream, thunk):
    stream = int(stream)
    _launches[stream] = _launches.get(stream, 0) + 1
    if stream in _capture:
        _capture[stream].append(thunk)
    else:
        thunk()


class Fake:
    device_count = staticmethod(lambda: 1)
    runtime_version = staticmethod(lambda: 12000)
    driver_version = staticmethod(lambda: 12000)
    _dev = 0
    Buffer = Buffer
    PinnedBuffer = PinnedBuffer

    def get_device(self):
        return 0

    def set_device(self, d):
        assert d == 0

    def device_name(self, d):
        return "Fake GPU"

    def device_properties(self, d):
        return {"name": "Fake GPU", "major": 9, "minor": 0, "multiprocessors": 132, "total_memory": 80 << 30,
                "memory_clock_khz": 0, "memory_bus_width": 0}

    def synchronize(self, d):
        pass

    def pointer_device(self, ptr):
        return 0 if _find(ptr) else -1

    def memcpy(self, dst, src, nbytes, stream):
        if int(stream) in _capture:
            raise RuntimeError("fastmlp.cuda: cudaStreamSynchronize: not permitted when capturing")
        ctypes.memmove(dst, src, nbytes)

    def memcpy_async(self, dst, src, nbytes, stream):
        _launch(stream, lambda: ctypes.memmove(dst, src, nbytes))

    def memset(self, ptr, byte, nbytes, stream):
        _launch(stream, lambda: ctypes.memset(ptr, byte, nbytes))

    _next_stream = 1000

    def stream_create(self):
        Fake._next_stream += 8
        return Fake._next_stream

    def stream_destroy(self, s):
        pass

    def stream_synchronize(self, s):
        if int(s) in _capture:
            raise RuntimeError("sync while capturing")

    def stream_is_capturing(self, s):
        return int(s) in _capture

    def capture_begin(self, s):
        assert int(s) != 1
        _capture[int(s)] = []

    def event_create(self):
        Fake._next_event += 8
        return Fake._next_event

    _next_event = 50000

    def event_destroy(self, e):
        _events.pop(e, None)

    def event_record(self, e, s):
        _events[e] = (int(s), _launches.get(int(s), 0))

    def stream_wait_event(self, s, e):
        # Work runs in host order here, so waiting only matters to a capture: a stream that waits on
        # an event recorded on a capturing stream joins its capture (a fork); the capture stream
        # waiting on an event of a forked stream joins that branch back, as CUDA requires before
        # the capture ends.
        s = int(s)
        src, count = _events.get(e, (None, 0))
        if src in _capture and s not in _capture:
            _capture[s] = _capture[src]
            _forked[s] = _launches.get(s, 0)
        elif s in _capture and src in _forked and _capture.get(src) is _capture[s] \
                and count == _launches.get(src, 0):
            _forked[src] = count

    def capture_end(self, s):
        thunks = _capture.pop(int(s))
        branches = [k for k, v in _capture.items() if v is thunks]
        unjoined = False
        for k in branches:  # the capture ends on every stream, joined or not
            del _capture[k]
            unjoined = unjoined or _forked.pop(k) != _launches.get(k, 0)
        if unjoined:
            raise RuntimeError("fastmlp.cuda: cudaStreamEndCapture: capturing stream has unjoined work (a forked "
                               "stream was not joined back)")
        graph = _Graph(thunks, _deferred if not _capture else ())
        if not _capture:
            _deferred.clear()
        return graph

    def to_dlpack(self, owner, ptr, shape, device, dtype):
        raise NotImplementedError

    # -- kernels --
    def gemm(self, a, b, out, bias, M, N, K, ta, tb, alpha, beta, act, a_sums, relu_mask, mask_p, dropout, drop_p,
             seed, offset, step_ptr, n_streams, stream):
        def run():
            A = _view(a, (K, M) if ta else (M, K), np.float32)
            B = _view(b, (N, K) if tb else (K, N), np.float32)
            O = _view(out, (M, N), np.float32)
            bb = _view(bias, (N,), np.float32) if bias else None
            sums = _view(a_sums, (M,), np.float32) if a_sums else None
            mask = _view(relu_mask, (M, N), np.float32) if relu_mask else None
            _core.gemm(A, B, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, out=O, bias=bb, activation=act,
                       a_sums=sums, relu_mask=None if dropout else mask, mask_p=mask_p)
            if dropout:  # the kernel's order: activation, dropout, then the mask
                _core.dropout(O, drop_p, seed=seed, offset=self._off(offset, step_ptr, n_streams), out=O)
                if mask is not None:
                    _core._relu_dropout_backward(O, mask, mask_p, O)
        _launch(stream, run)

    def activation(self, x, out, n, act, stream):
        _launch(stream, lambda: _core.activation(_view(x, (n,), np.float32), act, out=_view(out, (n,), np.float32)))

    def activation_backward(self, g, y, out, n, act, stream):
        _launch(stream, lambda: _core.activation_backward(_view(g, (n,), np.float32), _view(y, (n,), np.float32), act,
                                                          out=_view(out, (n,), np.float32)))

    def relu_dropout_backward(self, g, y, out, n, p, stream):
        _launch(stream, lambda: _core._relu_dropout_backward(_view(g, (n,), np.float32), _view(y, (n,), np.float32), p,
                                                             _view(out, (n,), np.float32)))

    def bias_grad(self, g, out, rows, cols, stream):
        _launch(stream, lambda: _core.bias_grad(_view(g, (rows, cols), np.float32), out=_view(out, (cols,), np.float32)))

    @staticmethod
    def _off(offset, step_ptr, n_streams):
        if step_ptr:
            return int(_view(step_ptr, (1,), np.int64)[0]) * n_streams + offset
        return offset

    def dropout(self, x, out, n, p, seed, offset, step_ptr, n_streams, stream):
        _launch(stream, lambda: _core.dropout(_view(x, (n,), np.float32), p, seed=seed,
                                              offset=self._off(offset, step_ptr, n_streams),
                                              out=_view(out, (n,), np.float32)))

    def dropout_mask(self, out, n, p, seed, offset, step_ptr, n_streams, stream):
        def run():
            _view(out, (n,), np.uint8)[:] = _core.dropout_mask(n, p, seed=seed, offset=self._off(offset, step_ptr, n_streams))
        _launch(stream, run)

    def add_noise(self, x, out, n, kind, level, seed, offset, step_ptr, n_streams, stream):
        _launch(stream, lambda: _core.add_noise(_view(x, (n,), np.float32), kind, level, seed=seed,
                                                offset=self._off(offset, step_ptr, n_streams),
                                                out=_view(out, (n,), np.float32)))

    def random_uniform(self, out, n, low, high, seed, offset, stream):
        _launch(stream, lambda: _core.random_uniform(n, seed=seed, offset=offset, low=low, high=high,
                                                     out=_view(out, (n,), np.float32)))

    def random_normal(self, out, n, mean, std, seed, offset, stream):
        _launch(stream, lambda: _core.random_normal(n, seed=seed, offset=offset, mean=mean, std=std,
                                                    out=_view(out, (n,), np.float32)))

    def _loss(self, f, pred, second, grad, loss, rows, cols, stream, second_dtype=np.float32, second_shape=None):
        def run():
            P = _view(pred, (rows, cols), np.float32)
            S = _view(second, second_shape or (rows, cols), second_dtype)
            if second_dtype != np.float32:
                S = S.copy()
                bad = (S < 0) | (S >= cols)
                S[bad] = 0
            else:
                bad = None
            l, g = f(P, S, out=_view(grad, (rows, cols), np.float32))
            if bad is not None and bad.any():
                l = float("nan")
                _view(grad, (rows, cols), np.float32)[bad] = np.nan
            _view(loss, (1,), np.float32)[0] = l
        _launch(stream, run)

    def squared_error(self, pred, target, grad, loss, rows, cols, stream):
        self._loss(_core.squared_error, pred, target, grad, loss, rows, cols, stream)

    def sigmoid_cross_entropy(self, logits, targets, grad, loss, rows, cols, stream):
        self._loss(_core.sigmoid_cross_entropy, logits, targets, grad, loss, rows, cols, stream)

    def softmax_cross_entropy(self, logits, labels, itemsize, grad, loss, rows, cols, stream):
        self._loss(_core.softmax_cross_entropy, logits, labels, grad, loss, rows, cols, stream,
                   np.int32 if itemsize == 4 else np.int64, (rows,))

    def batch_norm(self, x, g, b, rm, rv, out, sm, si, rows, cols, training, momentum, eps, act, stream):
        def run():
            v = lambda p: _view(p, (cols,), np.float32)
            o, m, s = _core.batch_norm(_view(x, (rows, cols), np.float32), v(g), v(b), v(rm), v(rv), training=training,
                                       momentum=momentum, eps=eps, activation=act)
            _view(out, (rows, cols), np.float32)[:] = o
            v(sm)[:] = m
            v(si)[:] = s
        _launch(stream, run)

    def batch_norm_backward(self, go, x, g, sm, si, y, dx, dg, db, rows, cols, act, stream):
        def run():
            v = lambda p: _view(p, (cols,), np.float32)
            m = lambda p: _view(p, (rows, cols), np.float32)
            a, bb, c = _core.batch_norm_backward(m(go), m(x), v(g), v(sm), v(si), activation=act, y=m(y) if y else None)
            m(dx)[:] = a
            v(dg)[:] = bb
            v(db)[:] = c
        _launch(stream, run)

    @staticmethod
    def _sched(step, lr, sb, sv, sc, step_ptr, lr_ptr):
        seg = None
        if sc:
            seg = (_view(sb, (sc, 2), np.int64).copy(), _view(sv, (sc, 3), np.float64).copy())
        if step_ptr:
            step = int(_view(step_ptr, (1,), np.int64)[0]) + 1
        if lr_ptr:
            lr = float(_view(lr_ptr, (1,), np.float32)[0])
        return step, lr, seg

    @staticmethod
    def _store(step_ptr, step):
        if step_ptr:
            _view(step_ptr, (1,), np.int64)[0] = step

    def sgd_step(self, p, g, buf, n, step, lr, mom, damp, wd, l1, nest, sb, sv, sc, step_ptr, lr_ptr, stream):
        def run():
            t, r, seg = self._sched(step, lr, sb, sv, sc, step_ptr, lr_ptr)
            v = lambda q: _view(q, (n,), np.float32) if q else None
            _core.sgd_step(v(p), v(g), v(buf), step=t, lr=r, momentum=mom, dampening=damp, nesterov=nest,
                           weight_decay=wd, l1=l1, segments=seg)
            self._store(step_ptr, t)
        _launch(stream, run)

    def adagrad_step(self, p, g, ss, n, step, lr, lr_decay, wd, l1, eps, sb, sv, sc, step_ptr, lr_ptr, stream):
        def run():
            t, r, seg = self._sched(step, lr, sb, sv, sc, step_ptr, lr_ptr)
            v = lambda q: _view(q, (n,), np.float32)
            _core.adagrad_step(v(p), v(g), v(ss), step=t, lr=r, lr_decay=lr_decay, weight_decay=wd, eps=eps, l1=l1,
                               segments=seg)
            self._store(step_ptr, t)
        _launch(stream, run)

    def rmsprop_step(self, p, g, sq, buf, avg, n, lr, alpha, eps, wd, mom, l1, centered, sb, sv, sc, step_ptr, lr_ptr,
                     stream):
        def run():
            t, r, seg = self._sched(1, lr, sb, sv, sc, step_ptr, lr_ptr)
            v = lambda q: _view(q, (n,), np.float32) if q else None
            _core.rmsprop_step(v(p), v(g), v(sq), lr=r, alpha=alpha, eps=eps, weight_decay=wd, momentum=mom,
                               centered=centered, momentum_buffer=v(buf), grad_avg=v(avg), l1=l1, segments=seg)
            self._store(step_ptr, t)
        _launch(stream, run)

    def adam_step(self, p, g, m, vv, n, step, lr, b1, b2, eps, wd, l1, dec, sb, sv, sc, step_ptr, lr_ptr, stream):
        def run():
            t, r, seg = self._sched(step, lr, sb, sv, sc, step_ptr, lr_ptr)
            v = lambda q: _view(q, (n,), np.float32)
            _core.adam_step(v(p), v(g), v(m), v(vv), step=t, lr=r, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
                            decoupled=dec, l1=l1, segments=seg)
            self._store(step_ptr, t)
        _launch(stream, run)

    def clip_grad_norm(self, g, n, max_norm, eps, norm_out, stream):
        if not (max_norm > 0 and np.isfinite(max_norm)):
            raise ValueError(f"clip_grad_norm: max_norm must be a finite number > 0, got {max_norm}")
        def run():
            norm = _core.clip_grad_norm(_view(g, (n,), np.float32), max_norm, eps=eps)
            if norm_out:
                _view(norm_out, (1,), np.float32)[0] = norm
        _launch(stream, run)


    # -- helpers of device training and the probes --
    def gather_rows(self, src, idx, out, rows, row_bytes, stream):
        def run():
            index = _view(idx, (rows,), np.int64)
            dst = _view(out, (rows, row_bytes), np.uint8)
            n_src = int(index.max()) + 1 if rows else 0
            dst[:] = _view(src, (n_src, row_bytes), np.uint8)[index]
        _launch(stream, run)

    def copy(self, dst, src, n, stream):
        _launch(stream, lambda: ctypes.memmove(dst, src, 4 * n))

    def triad(self, a, b, c, s, n, stream):
        def run():
            _view(a, (n,), np.float32)[:] = _view(b, (n,), np.float32) + np.float32(s) * _view(c, (n,), np.float32)
        _launch(stream, run)

    def weighted_loss(self, kind, logits, target, itemsize, weights, total, grad, loss, rows, cols, stream):
        from fastmlp import losses

        def run():
            z = _view(logits, (rows, cols), np.float32)
            if kind == "cross_entropy":
                t = _view(target, (rows,), np.int64 if itemsize == 8 else np.int32).astype(np.int64)
            else:
                t = _view(target, (rows, cols), np.float32)
            w = _view(weights, (rows,), np.float64)
            per_row = losses.per_row(kind, z, t) if rows else np.zeros(0)  # before the gradient is written
            g = _view(grad, (rows, cols), np.float32)
            if rows:
                losses.compute(kind, z, t, out=g)
            w_total = float(w.sum())
            _view(total, (1,), np.float64)[0] = w_total
            g *= (w * (rows / w_total if w_total > 0 else 0.0)).astype(np.float32)[:, None]
            _view(loss, (1,), np.float32)[0] = float(per_row @ w) / w_total if w_total > 0 else 0.0
        _launch(stream, run)

    def scale(self, x, s, n, stream):
        def run():
            v = _view(x, (n,), np.float32)
            v *= np.float32(s)
        _launch(stream, run)

    def is_finite(self, x, n, flag, stream):
        def run():
            if not np.all(np.isfinite(_view(x, (n,), np.float32))):
                _view(flag, (1,), np.int32)[0] = 1
        _launch(stream, run)


def install():
    """Make fastmlp.cuda use the emulator (one emulated device)."""
    import fastmlp.cuda

    fastmlp.cuda._native_module = Fake()
