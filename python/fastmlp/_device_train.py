"""Device-resident training: the Trainer's minibatch loop for a model on a CUDA device.

The host never waits for the device inside a step. A training set that fits in a fraction of the
device's memory is uploaded once (or used in place when it is already there); each epoch uploads
its row order, and a step gathers its batch on the device, runs forward, loss, backward and the
fused optimizer, and parks its loss in a device slot. A larger training set stays on the host and
streams: the host gathers each batch into one of two pinned buffers and copies it asynchronously,
waiting only before it reuses a buffer (the device then runs at most one step behind). Every ``check_every`` steps the host reads
those slots (the non-finite guard), snapshots the model and optimizer on the device, runs the
callbacks and honours Ctrl-C; on a non-finite loss it rolls back to the last good snapshot. A step
whose shapes repeat is captured once as a CUDA graph and replayed; the device-side step counter,
advanced only by the optimizer kernel, feeds the dropout streams and Adam's bias correction, so a
replay is a correct new step.
"""

from __future__ import annotations

import ctypes
import math
import time
from typing import List, Optional

import numpy as np

from . import _cuda_kernels
from . import cuda as _cuda
from . import kernels as K
from . import optim as _optim

__all__ = ["DEFAULT_CHECK_EVERY", "DeviceLoop", "host_rows", "scale_loss"]

#: Steps between host checks of the device losses when the Trainer is left at its default.
DEFAULT_CHECK_EVERY = 50
#: A host training set is uploaded whole when it takes at most this fraction of the device memory.
RESIDENT_FRACTION = 0.5

_LOSS_KERNEL = {"squared": K.squared_error, "cross_entropy": K.softmax_cross_entropy,
                "binary_cross_entropy": K.sigmoid_cross_entropy}


def scale_loss(trainer, loss, grad, stream) -> None:
    """The Trainer's ``loss_scale`` on a device step, as ``Trainer._forward_backward`` applies it
    on the CPU: the loss and its gradient multiplied in place (nothing when it is 1)."""
    if trainer.loss_scale != 1.0:
        _cuda_kernels.scale_(grad, trainer.loss_scale, stream=stream)
        _cuda_kernels.scale_(loss, trainer.loss_scale, stream=stream)


class DeviceLoop:
    """Runs the Trainer's epochs for a model whose arena lives on a CUDA device."""

    def __init__(self, trainer, x: np.ndarray, t: np.ndarray, weights: Optional[np.ndarray]):
        self.trainer = trainer
        self.model = trainer.model
        self.stream = _cuda.current_stream()
        self.native = _cuda._native()
        self.n_rows = x.shape[0]
        bs = trainer.batch_size
        on_device = _cuda.is_device_array(x)
        total = int(_cuda.get_device_properties().get("total_memory") or 0)
        self.resident = on_device or total == 0 or x.nbytes + t.nbytes <= RESIDENT_FRACTION * total
        # sample_weight: one float64 per row, gathered with its batch (Trainer._forward_backward's
        # weighted mean, formed on the device by the weighted loss kernel).
        self.weighted = weights is not None
        self.host_weights = weights
        # The scikit-learn estimators' alpha (Trainer._step): the optimizer holds alpha / batch_size,
        # scaled for a batch of fewer rows or of weights summing to another total. Such a step runs
        # eagerly (its penalties differ from the captured step's); the others replay the graph.
        self.penalty_rows = bool(getattr(trainer, "_penalty_per_batch_rows", False))
        self.host_order = None
        if self.resident:  # the whole training set on the device, uploaded once per fit
            self.x = _cuda.asarray(x)
            self.t = _cuda.asarray(t)
            self.w = _cuda.asarray(weights, dtype=np.float64) if self.weighted else None
            self.order = _cuda.empty((self.n_rows,), np.int64)
        else:  # streamed from the host through two pinned buffers
            self.host_x, self.host_t = x, t
            self.pinned = [[_pinned((bs,) + x.shape[1:], x.dtype), _pinned((bs,) + t.shape[1:], t.dtype)]
                           + ([_pinned((bs,), np.float64)] if self.weighted else []) for _ in range(2)]
            self.pinned_used = [False, False]
        self.idx = _cuda.empty((bs,), np.int64)
        self.xb = _cuda.empty((bs,) + x.shape[1:], x.dtype)
        self.tb = _cuda.empty((bs,) + t.shape[1:], t.dtype)
        self.wb = _cuda.empty((bs,), np.float64) if self.weighted else None
        self.w_total = _cuda.empty((1,), np.float64) if self.weighted else None
        self.grad = _cuda.empty((bs, self.model.out_features), self.model.dtype)
        self.loss_now = _cuda.empty((), np.float32)
        self.norm_now = _cuda.empty((), np.float32)  # clip_norm's gradient norm (unread)
        self.every = trainer.check_every if trainer.check_every is not None else DEFAULT_CHECK_EVERY
        self.loss_slots = _cuda.empty((self.every,), np.float32)
        self.pending = 0  # steps whose losses sit in loss_slots, not yet read
        self.graph = None
        self.graph_rows = -1  # the captured graph's batch rows (-1: none yet)
        self.device = self.idx.device
        # Raw pointers for _replay_step (int64 order and indices, float32 losses).
        self.idx_ptr, self.slots_ptr, self.loss_ptr = self.idx.ptr, self.loss_slots.ptr, self.loss_now.ptr
        self.order_ptr = self.order.ptr if self.resident else 0
        self.snapshot = None
        self.snapshot_step = trainer.step

    # -- device state -----------------------------------------------------------------------------

    def _state_arrays(self) -> List:
        model, opt = self.model, self.trainer.optimizer
        arrays = [model.parameters()] + [opt.state[k] for k in sorted(opt.state)]
        arrays += [v for _, v in sorted(model.buffers().items())]
        arrays.append(opt.device_step)
        return arrays

    def take_snapshot(self) -> None:
        """Device-to-device copies of everything a step changes (the rollback point)."""
        arrays = self._state_arrays()
        if self.snapshot is None:
            self.snapshot = [_cuda.empty(a.shape, a.dtype) for a in arrays]
        for dst, src in zip(self.snapshot, arrays):
            _cuda.copy_(dst, src, stream=self.stream)
        self.snapshot_step = self.trainer.step
        self.snapshot_opt_count = self.trainer.optimizer.step_count

    def restore_snapshot(self) -> None:
        for dst, src in zip(self._state_arrays(), self.snapshot):
            _cuda.copy_(dst, src, stream=self.stream)
        opt = self.trainer.optimizer
        self.trainer.step = self.snapshot_step
        opt.step_count = opt._device_step_mirror = self.snapshot_opt_count
        _cuda.synchronize()

    # -- one step ---------------------------------------------------------------------------------

    def _body(self, rows: int, factor: float = 1.0) -> None:
        """gather → forward → loss → backward → optimizer, all launched on self.stream."""
        model, tr = self.model, self.trainer
        s = self.stream
        xb = self.xb if rows == self.xb.shape[0] else self.xb[:rows]
        tb = self.tb if rows == self.tb.shape[0] else self.tb[:rows]
        grad = self.grad if rows == self.grad.shape[0] else self.grad[:rows]
        wb = None if not self.weighted else self.wb if rows == self.wb.shape[0] else self.wb[:rows]
        if self.resident:
            handle = s.handle
            sources = ((self.x, xb), (self.t, tb)) + (((self.w, wb),) if self.weighted else ())
            for src, dst in sources:
                self.native.gather_rows(src.ptr, self.idx.ptr, dst.ptr, rows, src.nbytes // max(self.n_rows, 1), handle)
        logits = model._forward(xb, True, tr.seed, device_step=tr.optimizer.device_step)
        if self.weighted:
            _cuda_kernels.weighted_loss(tr.loss, logits, tb, wb, out=grad, loss_out=self.loss_now, total=self.w_total,
                                        stream=s)
        else:
            _LOSS_KERNEL[tr.loss](logits, tb, out=grad, loss_out=self.loss_now, stream=s)
        scale_loss(tr, self.loss_now, grad, s)
        model._backward(grad)
        opt = tr.optimizer
        if opt.clip_norm is not None:  # as Optimizer.step does before its update
            K.clip_grad_norm(model.gradients(), opt.clip_norm, eps=_optim.CLIP_EPS, norm_out=self.norm_now, stream=s)
        if factor == 1.0:
            opt._update(model.parameters(), model.gradients(), None)
        else:
            with opt.penalties_scaled(factor):
                opt._update(model.parameters(), model.gradients(), None)

    def _penalty_factor(self, lo: int, hi: int) -> float:
        """The factor on the optimizer's penalties for rows order[lo:hi], as Trainer._step forms it
        on the CPU (1 unless the Trainer divides them by each batch's rows)."""
        if not self.penalty_rows:
            return 1.0
        rows = float(self.host_weights[self.host_order[lo:hi]].sum()) if self.weighted else float(hi - lo)
        return self.trainer._penalty_factor(rows)

    def step(self, lo: int, hi: int) -> None:
        """One training step on rows order[lo:hi]; its loss lands in the next loss slot."""
        factor = self._penalty_factor(lo, hi)
        if hi - lo == self.graph_rows and factor == 1.0:  # captured: replayed (on the loop's device)
            if self.native.get_device() == self.device:
                self._replay_step(lo, hi)
            else:
                with _cuda._on_device(self.device):
                    self._replay_step(lo, hi)
            return
        with _cuda.stream(self.stream):  # every launch on self.stream (the model may fork from it)
            self._step(lo, hi, factor)

    def _replay_step(self, lo: int, hi: int) -> None:
        """_step once its graph is captured, by raw launches on known pointers: a step replays in
        about 90 us on an H200, and copy_'s and Graph.replay's argument checks, twice a step, had
        made the host's share about as long, so fit ran at the host's pace (117 us per step)."""
        rows = hi - lo
        opt = self.trainer.optimizer
        opt.step_count += 1
        handle = self.stream.handle
        if self.resident:
            self.native.memcpy_async(self.idx_ptr, self.order_ptr + lo * 8, rows * 8, handle)
        else:
            self._upload_batch(lo, hi)
        if opt._device_step_mirror != opt.step_count - 1:  # a rollback moved the host counter
            with _cuda.stream(self.stream):
                opt._kernel_step_lr(None)
        opt._device_step_mirror = opt.step_count
        self.graph._exec.replay(handle)
        self.native.memcpy_async(self.slots_ptr + 4 * self.pending, self.loss_ptr, 4, handle)
        self.pending += 1
        self.trainer.step += 1

    def _step(self, lo: int, hi: int, factor: float = 1.0) -> None:
        rows = hi - lo
        s = self.stream
        opt = self.trainer.optimizer
        opt.step_count += 1  # as Optimizer.step does before its kernel
        if self.resident:
            _cuda.copy_(self.idx[:rows], self.order[lo:hi], stream=s)
        else:
            self._upload_batch(lo, hi)
        full = rows == self.xb.shape[0]
        if full and factor == 1.0 and self.trainer.use_graphs and self.graph is None and self._warm:
            with _cuda.graph_capture(s) as graph:  # (its replays: _replay_step)
                self._body(rows)
            # Every buffer the graph reads or writes must live as long as the graph.
            graph.keepalive.extend(self.model._workspace_arrays())
            self.graph, self.graph_rows = graph, rows
            self.graph.replay(s)
        else:
            self._body(rows, factor)
            self._warm = full
        _cuda.copy_(self.loss_slots[self.pending], self.loss_now, stream=s)
        self.pending += 1
        self.trainer.step += 1

    _warm = False

    def _upload_batch(self, lo: int, hi: int) -> None:
        """Host gather into a pinned buffer, then an asynchronous copy into the batch buffers."""
        rows = hi - lo
        k = self.trainer.step % 2
        if self.pinned_used[k]:  # its previous copy must be done before the host overwrites it
            self.native.stream_synchronize(self.stream.handle)
        idx = self.host_order[lo:hi]
        handle = self.stream.handle
        sources = (self.host_x, self.host_t) + ((self.host_weights,) if self.weighted else ())
        targets = (self.xb, self.tb) + ((self.wb,) if self.weighted else ())
        for src, (buf, view), dst in zip(sources, self.pinned[k], targets):
            np.take(src, idx, axis=0, out=view[:rows])
            self.native.memcpy_async(dst.ptr, buf.ptr, rows * view[0].nbytes, handle)
        self.pinned_used[k] = True

    # -- checks -----------------------------------------------------------------------------------

    def check(self, epoch: int) -> List[float]:
        """Read the pending losses (one synchronisation), raise on a non-finite one after rolling
        back, otherwise move the snapshot here. Returns the losses read."""
        if self.pending == 0:
            return []
        losses = self.loss_slots[:self.pending].to_numpy().astype(np.float64).tolist()
        first = self.trainer.step - self.pending + 1
        self.pending = 0
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            last_good = self.snapshot_step
            self.restore_snapshot()
            self.trainer.history.stop_reason = "non_finite_loss"
            from .train import NonFiniteLossError

            raise NonFiniteLossError(
                f"non-finite training loss ({losses[bad]}) at epoch {epoch + 1}, in steps {first}..{first + len(losses) - 1} "
                f"(first at step {first + bad}); the device checks every {self.every} steps, so training rolled "
                f"back to step {last_good}, the last check with finite losses. Lower the learning rate, enable "
                f"clip_norm, or standardize the inputs.")
        self.take_snapshot()
        return losses

    def run_epoch(self, epoch: int, order: Optional[np.ndarray], n_batches: int, sigint, lr: float,
                  start_batch: int = 0, total: float = 0.0):
        """The batches start_batch.. of one epoch (those before were run by an earlier, stopped
        fit, with loss sum ``total``); returns (loss sum, batches counted, interrupted), keeping
        the trainer's partial-epoch record current at each check."""
        tr = self.trainer
        tr.optimizer.set_device_lr(lr)
        host_order = np.ascontiguousarray(order if order is not None else np.arange(self.n_rows), dtype=np.int64)
        if self.resident:
            _cuda.copy_(self.order, host_order, stream=self.stream)
        self.host_order = host_order
        if self.snapshot is None:
            self.take_snapshot()
        batches = start_batch
        bs = tr.batch_size

        def record():
            """Read the pending losses (the check) and record their steps as done."""
            nonlocal total, batches
            losses = self.check(epoch)
            for loss in losses:
                total += loss
            batches += len(losses)
            # Every step up to here is applied: recorded before a callback can stop the fit.
            tr._partial_epoch = (batches, total, tr._partial_epoch[2], self.n_rows, bs)
            return losses

        for b in range(start_batch, n_batches):
            lo, hi = b * bs, min(self.n_rows, (b + 1) * bs)
            try:
                with sigint.atomic():  # a second Ctrl-C stops the fit after this step, not inside it
                    self.step(lo, hi)
            except KeyboardInterrupt:
                record()  # the steps since the last check ran: a resumed fit must not run them again
                raise
            last = b == n_batches - 1
            if self.pending == self.every or last:
                losses = record()
                first_step = tr.step - len(losses) + 1
                for i, loss in enumerate(losses):
                    for cb in tr.callbacks:
                        cb.on_batch_end(tr, first_step + i, loss)
                if sigint.requested and not last:
                    return total, batches, True
        return total, batches, False


def host_rows(a, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the device array ``a`` as a NumPy array: gathered on the device, then one
    download of just those rows."""
    arr = _cuda.asarray(a)
    rows = len(idx)
    _cuda.synchronize()  # whichever stream (torch's, CuPy's) wrote a, it is done
    with _cuda._on_device(arr.device):
        out = _cuda.empty((rows,) + tuple(arr.shape[1:]), arr.dtype, arr.device)
        if rows:
            dev_idx = _cuda.asarray(np.ascontiguousarray(idx, dtype=np.int64))  # the upload waits
            native, handle = _cuda._native(), _cuda.current_stream().handle
            native.gather_rows(arr.ptr, dev_idx.ptr, out.ptr, rows, arr.nbytes // max(arr.shape[0], 1), handle)
            native.stream_synchronize(handle)
        return out.to_numpy()


def _pinned(shape, dtype):
    """A page-locked host buffer and a NumPy view of it: (buffer, array)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = _cuda._native().PinnedBuffer(max(nbytes, 1))
    raw = (ctypes.c_char * max(nbytes, 1)).from_address(buf.ptr)
    return buf, np.frombuffer(raw, dtype=np.uint8)[:nbytes].view(dtype).reshape(shape)
