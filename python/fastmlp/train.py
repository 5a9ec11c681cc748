"""The Trainer: minibatch training with validation, early stopping, schedules, standardisation,
progress bars, checkpoints, a NaN guard and clean Ctrl-C handling.

Randomness (DESIGN.md): epoch ``e`` shuffles with ``numpy.random.default_rng([seed, e])`` and
training step ``t`` (0-based, counted over the whole fit) draws dropout masks from the Philox
streams ``t · n_streams + i``, so a run resumed from a checkpoint replays exactly the masks and
batches it would have seen, and continues bitwise as if never stopped.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _arrays, _core
from . import losses as _losses
from . import optim as _optim
from . import schedules as _schedules
from .io import ModelFileError, read_file, write_file
from .nn import training_guard

__all__ = ["Callback", "History", "NonFiniteLossError", "Trainer", "find_step_size"]


#: No unfinished epoch: (batches done, their loss sum, their seconds, rows, batch size).
_NO_PARTIAL_EPOCH = (0, 0.0, 0.0, None, None)


class NonFiniteLossError(FloatingPointError, ValueError):
    """Training produced a NaN or infinite loss. The model keeps its last good weights."""


class Callback:
    """Hooks the Trainer calls. Return True from ``on_epoch_end`` to stop training
    (``stop_reason`` becomes ``"callback"``)."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        pass

    def on_batch_end(self, trainer: "Trainer", step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Dict[str, float]) -> Optional[bool]:
        return None

    def on_train_end(self, trainer: "Trainer", history: "History") -> None:
        pass


class History:
    """Per-epoch records of a fit: ``epoch``, ``train_loss`` (mean data loss over the epoch's
    batches), ``penalty`` (the regularisation term at the end of the epoch), ``val_loss``,
    ``val_metric`` (accuracy, R² or subset accuracy), ``lr`` and ``time_s``; plus ``best_epoch``
    and ``stop_reason`` ("completed", "early_stopping", "interrupted", "non_finite_loss",
    "callback")."""

    FIELDS = ("epoch", "train_loss", "penalty", "val_loss", "val_metric", "lr", "time_s")

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, [])
        self.best_epoch: Optional[int] = None
        self.stop_reason: Optional[str] = None
        self.metric_name: Optional[str] = None

    def append(self, **row) -> None:
        for f in self.FIELDS:
            getattr(self, f).append(row.get(f, float("nan")))

    def __len__(self) -> int:
        return len(self.epoch)

    def as_dict(self) -> dict:
        d = {f: list(getattr(self, f)) for f in self.FIELDS}
        d.update(best_epoch=self.best_epoch, stop_reason=self.stop_reason, metric_name=self.metric_name)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls()
        for f in cls.FIELDS:
            setattr(h, f, [float(v) if v is not None else float("nan") for v in d.get(f, [])])
        h.epoch = [int(e) for e in h.epoch]
        h.best_epoch = d.get("best_epoch")
        h.stop_reason = d.get("stop_reason")
        h.metric_name = d.get("metric_name")
        return h

    def __repr__(self) -> str:
        return (f"History({len(self)} epochs, best_epoch={self.best_epoch}, stop_reason={self.stop_reason!r}, "
                f"final train_loss={self.train_loss[-1] if self.train_loss else None})")

    def plot(self, path=None, *, title: Optional[str] = None):
        """Draw the learning curves (losses, and the validation metric when present) with
        matplotlib; saves to ``path`` when given. Returns the figure."""
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - optional extra
            raise ImportError("History.plot needs matplotlib: pip install 'fastmlp[plot]'") from e
        has_metric = any(not math.isnan(v) for v in self.val_metric)
        fig, axes = plt.subplots(1, 2 if has_metric else 1, figsize=(10 if has_metric else 5, 4), squeeze=False)
        ax = axes[0][0]
        ax.plot(self.epoch, self.train_loss, label="train loss")
        if any(not math.isnan(v) for v in self.val_loss):
            ax.plot(self.epoch, self.val_loss, label="validation loss")
        if self.best_epoch is not None:
            ax.axvline(self.best_epoch, color="gray", linestyle=":", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
        if has_metric:
            ax2 = axes[0][1]
            ax2.plot(self.epoch, self.val_metric, label=f"validation {self.metric_name or 'metric'}", color="C2")
            ax2.set_xlabel("epoch")
            ax2.set_ylabel(self.metric_name or "metric")
            ax2.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
            plt.close(fig)
        return fig


def metric_name(loss: str) -> str:
    return {"cross_entropy": "accuracy", "squared": "r2", "binary_cross_entropy": "subset_accuracy"}[loss]


def compute_metric(loss: str, logits: np.ndarray, target: np.ndarray) -> float:
    """Accuracy (cross_entropy), R² (squared, uniform average over outputs) or subset accuracy."""
    if target.shape[0] == 0:
        return float("nan")
    if loss == "cross_entropy":
        return float(np.mean(logits.argmax(axis=1) == target))
    if loss == "binary_cross_entropy":
        return float(np.mean(np.all((logits > 0) == (target > 0.5), axis=1)))
    t = target.astype(np.float64)
    ss_res = np.sum((t - logits) ** 2, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res > 0, 0.0, 1.0))
    return float(np.mean(r2))


def _stratified_split(n: int, labels: Optional[np.ndarray], fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx); stratified by ``labels`` when given. Every class keeps >= 1 training row."""
    rng = np.random.default_rng([seed, 0x5EED])
    if labels is None:
        perm = rng.permutation(n)
        n_val = min(max(1, int(round(fraction * n))), n - 1)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        k = int(round(fraction * idx.size))
        k = min(k, idx.size - 1)
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    if val_idx.size == 0:
        perm = rng.permutation(n)
        val_idx = np.sort(perm[:1])
    mask = np.ones(n, bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


class _SigintDeferral:
    """Turns Ctrl-C into a flag checked between steps (main thread only), so a step is never cut
    in half. A second Ctrl-C raises KeyboardInterrupt at once, except inside a step or the
    end-of-epoch bookkeeping (:meth:`atomic`), which it lets finish first. Outside the main
    thread, KeyboardInterrupt behaves as usual."""

    def __init__(self):
        self.requested = False
        self._old = None
        self._atomic = False
        self._raise_on_exit = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # pragma: no cover - not the main interpreter
                self._old = None
        return self

    def _handler(self, signum, frame):
        if self.requested:  # second Ctrl-C: interrupt at once, or as soon as the step is whole
            if not self._atomic:
                raise KeyboardInterrupt
            self._raise_on_exit = True
        self.requested = True

    def atomic(self) -> "_Atomic":
        """``with sigint.atomic():`` runs a block that no Ctrl-C cuts in half."""
        return _Atomic(self)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class _Atomic:
    __slots__ = ("deferral",)

    def __init__(self, deferral: _SigintDeferral):
        self.deferral = deferral

    def __enter__(self):
        self.deferral._atomic = True

    def __exit__(self, exc_type, *exc):
        d = self.deferral
        d._atomic = False
        if d._raise_on_exit:
            d._raise_on_exit = False
            if exc_type is None:
                raise KeyboardInterrupt
        return False


def _cuda_asarray(a):
    from . import cuda

    return cuda.asarray(a)


class Trainer:
    """Minibatch training of a model (``fastmlp.MLP``, ``fastmlp.nn.Sequential``).

    ``Trainer(model, optimizer=fastmlp.optim.Adam(), batch_size=64, epochs=10,
    validation=0.1, early_stopping=5).fit(X, y)`` returns a :class:`History`.

    - ``loss``: "squared", "cross_entropy" (integer labels) or "binary_cross_entropy"
      (multi-label); inferred from the model's ``output`` when None.
    - ``validation``: None, a fraction of the training rows (stratified for classification), or
      an ``(X_val, y_val)`` pair.
    - ``early_stopping``: None or a patience in epochs; monitors the validation loss (the
      training loss without validation); an epoch counts as better when it lowers the monitored
      loss by more than ``min_delta``. ``restore_best`` puts the best epoch's weights back.
    - ``schedule``: a :mod:`fastmlp.schedules` schedule or its name; steps once per epoch.
    - ``standardize``: scale X (and y for regression) to zero mean and unit variance; the
      statistics are stored in the model, which applies them in ``forward``/``predict``.
    - ``drop_last``: drop a final partial batch (default: only when the model has batch norm and
      the partial batch would have a single row).
    - ``callbacks``: :class:`Callback` objects.

    On a CUDA model (``MLP(..., device="cuda")``) the parameters, gradients, optimizer state and
    activations stay on the device: the training set is uploaded once, batches are gathered on the
    device, and the host reads the losses only every ``check_every`` steps (default 50 there;
    callbacks' ``on_batch_end`` runs at those checks). A non-finite loss rolls the model back to the
    last check and the error names the step range. With ``use_graphs`` (default) a full-batch step
    is captured once as a CUDA graph and replayed (the optimizer's ``clip_norm`` included).
    ``lr="auto"`` searches on a CPU copy of the model.

    Threads: one thread at a time trains a model. ``fit`` or ``train_step`` on a model that
    another thread is training (through this Trainer or another) raises ``RuntimeError`` at once
    and changes nothing; so does a second ``fit`` started from a callback. Separate models train
    in parallel threads bitwise as they would one after the other. ``predict`` from another
    thread during training is safe but may see weights halfway through an update.

    Ctrl-C: in the main thread, ``fit`` finishes the current step, records nothing for the
    unfinished epoch, sets ``History.stop_reason = "interrupted"`` and re-raises
    ``KeyboardInterrupt``; a second Ctrl-C raises at once between steps and never splits a step.
    A step is all or nothing: a KeyboardInterrupt (or any error) raised inside it by a callback,
    data hook or custom loss leaves the weights, batch-norm statistics and optimizer state as after
    the previous step. Afterwards ``Trainer.step == optimizer.step_count`` counts the completed
    steps, the History holds the whole epochs, and ``fit`` again resumes the interrupted epoch at
    its next batch (as does a checkpoint saved between steps): the same weights, bit for bit, as a
    run never stopped. A non-finite loss, or weights made non-finite by an epoch's last update,
    stop ``fit`` with :class:`NonFiniteLossError`, naming the step, and put back the weights of
    the start of that epoch (the state the History's last row describes).
    """

    def __init__(self, model, *, loss: Optional[str] = None, optimizer: Optional[_optim.Optimizer] = None,
                 batch_size: int = 64, epochs: int = 10, shuffle: bool = True,
                 validation: Union[None, float, Tuple[Any, Any]] = None, early_stopping: Optional[int] = None,
                 min_delta: float = 0.0, restore_best: bool = True,
                 schedule: Union[None, str, _schedules.Schedule] = None, standardize: bool = False,
                 progress: bool = True, seed: int = 0, callbacks: Sequence[Callback] = (),
                 drop_last: Optional[bool] = None, check_every: Optional[int] = None, loss_scale: float = 1.0,
                 use_graphs: bool = True):
        self.model = model
        self.loss = _losses.resolve(loss, model.output)
        self.optimizer = optimizer if optimizer is not None else _optim.Adam()
        if not isinstance(self.optimizer, _optim.Optimizer):
            raise TypeError(f"optimizer must be a fastmlp.optim.Optimizer, got {type(self.optimizer).__name__}")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(epochs, bool) or int(epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        self.batch_size = int(batch_size)
        self.epochs = int(epochs)
        self.shuffle = bool(shuffle)
        if validation is not None and not isinstance(validation, tuple):
            fraction = float(validation)
            if not 0.0 < fraction < 1.0:
                raise ValueError(f"validation must be None, a fraction in (0, 1) or (X_val, y_val); got {validation!r}")
            validation = fraction
        self.validation = validation
        if early_stopping is not None and (isinstance(early_stopping, bool) or int(early_stopping) < 1):
            raise ValueError(f"early_stopping must be None or a patience >= 1, got {early_stopping!r}")
        self.early_stopping = None if early_stopping is None else int(early_stopping)
        self.min_delta = float(min_delta)
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.restore_best = bool(restore_best)
        self.schedule = _schedules.resolve(schedule)
        self.standardize = bool(standardize)
        self.progress = bool(progress)
        if isinstance(seed, bool) or not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.seed = int(seed)
        self.callbacks = list(callbacks)
        self.drop_last = drop_last
        if check_every is not None and (isinstance(check_every, bool) or int(check_every) < 1):
            raise ValueError(f"check_every must be None or an int >= 1, got {check_every!r}")
        #: Steps between host checks of the loss on a CUDA model (None: 50); the CPU checks every step.
        self.check_every = None if check_every is None else int(check_every)
        self.use_graphs = bool(use_graphs)
        self.loss_scale = float(loss_scale)
        if not (self.loss_scale > 0 and math.isfinite(self.loss_scale)):
            raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale}")
        # Progress of training (saved in checkpoints).
        self.epoch = 0
        self.step = 0
        self.history = History()
        self.base_lr: Optional[float] = None if self.optimizer.lr == "auto" else float(self.optimizer.lr)
        self._best = {"loss": math.inf, "epoch": None, "params": None, "buffers": None, "bad_epochs": 0}
        self._bound = False
        self._weights: Optional[np.ndarray] = None
        self._grad_buf: Optional[np.ndarray] = None
        self._batch_bufs: Dict[str, np.ndarray] = {}
        self._buffer_backup: Optional[Dict[str, np.ndarray]] = None
        self._device_loop = None
        # An epoch stopped part-way (Ctrl-C, a callback, a checkpoint taken between steps): its
        # batches done, their loss sum and seconds. fit resumes it there; checkpoints keep it.
        # Also the rows and batch size it ran on: a fit on other data does not continue it.
        self._partial_epoch: Tuple = _NO_PARTIAL_EPOCH
        self._order: Optional[Callable[[int, int], np.ndarray]] = None
        self._penalty_per_batch_rows = False  # the scikit-learn estimators' definition of alpha

    # -- data -------------------------------------------------------------------------------------

    def _check_device_data(self, X, y, sample_weight) -> None:
        """fit on arrays already on the device: the model must be there too, and the host-side
        preparations (standardising, a validation fraction) are not offered. Sample weights come
        from the host and are uploaded."""
        model = self.model
        if model.device == "cpu":
            raise TypeError("fit: X or y is a CUDA array but the model is on the CPU; use model.to('cuda') or pass "
                            "NumPy arrays")
        if not (_arrays.is_device(X) and _arrays.is_device(y)):
            raise TypeError("fit: X and y must both be CUDA arrays, or both host arrays")
        if sample_weight is not None and _arrays.is_device(sample_weight):
            raise TypeError("fit: sample_weight must be host data (one float per row); it is uploaded")
        if self.standardize or (self.validation is not None and not isinstance(self.validation, tuple)):
            raise NotImplementedError("fit on CUDA arrays: standardize and a validation fraction need host data; "
                                      "pass NumPy arrays, or validation=(X_val, y_val)")

    def _prepare_device(self, X, y):
        """Device (X, y) checked for the model and the loss, used as they are (zero-copy)."""
        model = self.model
        x = model._as_input(X)
        rows = x.shape[0]
        t = _cuda_asarray(y)
        if self.loss == "cross_entropy":
            if tuple(t.shape) != (rows,) or t.dtype not in (np.int32, np.int64):
                raise ValueError(f"cross_entropy on the device needs int32/int64 labels of shape ({rows},), got "
                                 f"shape {tuple(t.shape)} and dtype {t.dtype}")
        elif tuple(t.shape) != (rows, model.out_features) or t.dtype != np.float32:
            raise ValueError(f"y on the device must be float32 of shape ({rows}, {model.out_features}), got shape "
                             f"{tuple(t.shape)} and dtype {t.dtype}")
        return x, t

    def _prepare(self, X, y, upload: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """Convert (X, y) once: scaled, contiguous, model dtype; targets as the loss needs. For a
        CUDA model the result is uploaded unless ``upload`` is False (fit streams it itself)."""
        model = self.model
        if _arrays.is_device(X) and model.device != "cpu":
            return self._prepare_device(X, y)
        X = _arrays.dense_host("X", X, sparse_ok=True)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
        # Sparse X: SparseRows for fit's batches and predictions (dense rows on demand); a CUDA
        # model takes it dense.
        x = model._as_host_input(X, sparse_ok=model.device == "cpu")
        scaled_y = self.loss == "squared" and model.scaler is not None and "y_mean" in model.scaler
        # Standardised in float64, then cast: a float32 y with a large offset (1e8) would lose its
        # variation before the offset is taken off.
        target = _losses.prepare_target(self.loss, y, x.shape[0], model.out_features,
                                        np.float64 if scaled_y else model.dtype)
        if scaled_y:
            target = np.ascontiguousarray((target - model.scaler["y_mean"]) / model.scaler["y_scale"],
                                          dtype=model.dtype)
        if upload and model.device != "cpu":
            return _arrays.to_device(x, model.device), _arrays.to_device(target, model.device)
        return x, target

    def _fit_scaler(self, X, y) -> None:
        if _arrays.is_sparse(X):  # two-pass moments over the stored values; the zeros in closed form
            csr = X.tocsr(copy=True).astype(np.float64)
            csr.sum_duplicates()
            n, cols = csr.shape
            col = csr.indices
            mean = np.bincount(col, weights=csr.data, minlength=cols) / n
            squares = np.bincount(col, weights=(csr.data - mean[col]) ** 2, minlength=cols)
            zeros = n - np.bincount(col, minlength=cols)
            scale = np.sqrt((squares + zeros * mean ** 2) / n)
            scaler = {"x_mean": mean, "x_scale": np.where(scale > 0, scale, 1.0)}
        else:
            X = np.asarray(X, dtype=np.float64)
            scale = X.std(axis=0)
            scaler = {"x_mean": X.mean(axis=0), "x_scale": np.where(scale > 0, scale, 1.0)}
        if self.loss == "squared":
            Y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
            ys = Y.std(axis=0)
            scaler.update(y_mean=Y.mean(axis=0), y_scale=np.where(ys > 0, ys, 1.0))
        self.model.scaler = scaler

    def _split(self, X, y):
        if self.validation is None:
            return X, y, None, None
        if isinstance(self.validation, tuple):
            Xv, yv = self.validation
            return X, y, _arrays.dense_host("validation X", Xv, sparse_ok=True), np.asarray(yv)
        X, y = _arrays.dense_host("X", X, sparse_ok=True), np.asarray(y)
        labels = y if self.loss == "cross_entropy" and y.ndim == 1 else None
        if X.shape[0] < 2:
            raise ValueError("a validation fraction needs at least 2 rows")
        tr, va = _stratified_split(X.shape[0], labels, self.validation, self.seed)
        return X[tr], y[tr], X[va], y[va]

    def _split_weighted(self, X, y, weights):
        X, y = _arrays.dense_host("X", X, sparse_ok=True), np.asarray(y)
        labels = y if self.loss == "cross_entropy" and y.ndim == 1 else None
        tr, va = _stratified_split(X.shape[0], labels, self.validation, self.seed)
        return X[tr], y[tr], X[va], y[va], weights[tr]

    # -- one step ---------------------------------------------------------------------------------

    def _ensure_bound(self) -> None:
        if not self._bound or self.optimizer.device != self.model.device:  # first use, or the model moved
            self.optimizer.bind(self.model)
            self._bound = True
        if self.optimizer.current_lr is None:
            if self.base_lr is None:
                raise RuntimeError("optimizer lr='auto' is resolved at the start of fit(); call fit first or "
                                   "give a numeric lr")
            self.optimizer.current_lr = self.base_lr

    def _penalty_factor(self, rows: float) -> float:
        """The factor on the optimizer's penalties (held as alpha / batch_size) for a batch of
        ``rows`` rows, or of weights summing to it (_penalty_per_batch_rows)."""
        return self.batch_size / rows if rows > 0 else 1.0

    def _step(self, xb: np.ndarray, yb: np.ndarray, wb: Optional[np.ndarray] = None) -> float:
        """One update; returns the batch's data loss. All or nothing: when the forward or backward
        pass raises (a KeyboardInterrupt from a callback or data hook included) or the loss is not
        finite, the batch-norm running statistics it touched are put back and nothing else has
        changed; the optimizer update (one kernel pass) and the step counters change together."""
        model = self.model
        backup = self._backup_buffers()
        try:
            loss = self._forward_backward(xb, yb, wb)
            if not math.isfinite(loss):
                self._restore_buffers(backup)
                return loss
            # Raises only before its kernel writes anything (and then takes its step count back).
            if self._penalty_per_batch_rows:
                # scikit-learn's alpha: divided by this batch's rows (or its weights' sum), where the
                # optimizer holds alpha / batch_size: a short last batch, or weighted rows.
                rows = float(wb.sum()) if wb is not None else float(xb.shape[0])
                with self.optimizer.penalties_scaled(self._penalty_factor(rows)):
                    self.optimizer.step(model.parameters(), model.gradients())
            else:
                self.optimizer.step(model.parameters(), model.gradients())
        except BaseException:
            self._restore_buffers(backup)
            model._saved = None
            raise
        self.step += 1
        return loss

    def _forward_backward(self, xb, yb, wb) -> float:
        model = self.model
        logits = model._forward(xb, True, self.seed, self.step)
        grad_buf = self._grad_buf
        if grad_buf is None or grad_buf.shape != logits.shape or grad_buf.dtype != logits.dtype:
            grad_buf = self._grad_buf = np.empty_like(logits)
        loss, grad = _losses.compute(self.loss, logits, yb, out=grad_buf)
        if wb is not None:  # weighted mean: sum(w_i l_i) / sum(w_i)
            total = float(wb.sum())
            rows = _losses.per_row(self.loss, logits, yb)
            loss = float(rows @ wb) / total if total > 0 else 0.0
            grad *= (wb * (xb.shape[0] / total if total > 0 else 0.0)).astype(grad.dtype)[:, None]
        if self.loss_scale != 1.0:
            loss *= self.loss_scale
            grad *= grad.dtype.type(self.loss_scale)
        if not math.isfinite(loss):
            model._saved = None
            return loss
        model._backward(grad)
        return loss

    def _backup_buffers(self) -> Optional[Dict[str, np.ndarray]]:
        """Copies of the model's buffers (batch-norm running statistics) into reused arrays."""
        model = self.model
        if getattr(model, "device", "cpu") != "cpu":
            return None
        live = model.buffers()
        if not live:
            return None
        backup = self._buffer_backup
        if backup is None or backup.keys() != live.keys() or any(
                backup[k].shape != v.shape or backup[k].dtype != v.dtype for k, v in live.items()):
            backup = self._buffer_backup = {k: v.copy() for k, v in live.items()}
        else:
            for k, v in live.items():
                np.copyto(backup[k], v)
        return backup

    def _restore_buffers(self, backup: Optional[Dict[str, np.ndarray]]) -> None:
        if backup is not None:
            for k, v in self.model.buffers().items():
                np.copyto(v, backup[k])

    def _gather(self, a: np.ndarray, idx: np.ndarray, name: str) -> np.ndarray:
        """a[idx] into a reused buffer (no allocation per step; a new array for sparse rows)."""
        if isinstance(a, _arrays.SparseRows):
            return a[idx]
        shape = (idx.size,) + a.shape[1:]
        buf = self._batch_bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != a.dtype:
            buf = self._batch_bufs[name] = np.empty(shape, a.dtype)
        if a.flags.c_contiguous and a.dtype.kind in "biuf" and idx.dtype == np.int64 and idx.flags.c_contiguous:
            _core._gather_rows(a, idx, buf)  # np.take's rows, copied on the pool without the GIL
        else:
            np.take(a, idx, axis=0, out=buf)
        return buf

    def train_step(self, X_batch, y_batch) -> float:
        """One minibatch update with the current settings; returns its data loss. Useful for
        custom loops and benchmarks (the step counter and dropout streams advance as in fit)."""
        with self._busy_guard("Trainer.train_step"):
            self._ensure_bound()
            x, t = self._prepare(X_batch, y_batch)
            if isinstance(x, _arrays.SparseRows):
                x = x[:]
            if self.model.device != "cpu":
                return self._step_device(x, t)
            loss = self._step(x, t)
            if not math.isfinite(loss):
                # The weights are not checked after each update (a pass over all of them per step);
                # here, on the failure path, they are, so the message can say which step broke them.
                earlier = not _arrays.all_finite(self.model.parameters())
                raise NonFiniteLossError(
                    f"non-finite loss ({loss}) at step {self.step}; no update was applied" +
                    ("; the weights were already non-finite: the previous step's update overflowed them" if earlier
                     else ""))
            return loss

    def _step_device(self, x, t):
        """train_step on a CUDA model: no synchronisation; the loss comes back as a device scalar
        (``float(loss)`` reads it). The non-finite guard is fit's, at its checks."""
        model = self.model
        from . import _device_train

        logits = model._forward(x, True, self.seed, device_step=self.optimizer.device_step)
        grad = self._grad_buf
        if grad is None or tuple(grad.shape) != tuple(logits.shape) or not _arrays.is_device(grad):
            grad = self._grad_buf = _arrays.empty(tuple(logits.shape), model.dtype, model.device)
        loss, grad = _losses.compute(self.loss, logits, t, out=grad)
        _device_train.scale_loss(self, loss, grad, None)
        model._backward(grad)
        if self._penalty_per_batch_rows and x.shape[0] != self.batch_size:  # as _step on the CPU
            with self.optimizer.penalties_scaled(self._penalty_factor(float(x.shape[0]))):
                self.optimizer.step(model.parameters(), model.gradients())
        else:
            self.optimizer.step(model.parameters(), model.gradients())
        self.step += 1
        return loss

    def _busy_guard(self, what: str):
        """One thread at a time trains a model: a second gets RuntimeError (nn.TrainingGuard)."""
        return training_guard(self.model).hold(what)

    # -- evaluation -------------------------------------------------------------------------------

    def _evaluate_prepared(self, x, t) -> Tuple[float, float]:
        if x.shape[0] == 0:
            return float("nan"), float("nan")
        logits = self.model._predict_chunks(x)
        if _arrays.is_device(logits):  # the metric is computed on the host
            logits, t = logits.to_numpy(), _arrays.host_copy(t) if _arrays.is_device(t) else t
        loss, _ = _losses.compute(self.loss, logits, t)
        return float(loss), compute_metric(self.loss, logits, t)

    def evaluate(self, X, y) -> Dict[str, float]:
        """``{"loss": data loss, <metric>: value}`` on (X, y) in inference mode (losses on
        standardised targets when y was standardised)."""
        x, t = self._prepare(X, y)
        loss, metric = self._evaluate_prepared(x, t)
        return {"loss": loss, metric_name(self.loss): metric}

    def penalty(self) -> float:
        """The regularisation term ½·Σ wd_l‖W_l‖² + Σ l1_l‖W_l‖₁ at the current weights."""
        opt = self.optimizer
        total = 0.0
        params = None
        for info in self.model.param_layout():
            if info.kind != "weight":
                continue
            wd = opt.weight_decay[info.dense_index] if isinstance(opt.weight_decay, list) else opt.weight_decay
            l1 = opt.l1[info.dense_index] if isinstance(opt.l1, list) else opt.l1
            if isinstance(opt, _optim.AdamW):
                wd = 0.0  # decoupled decay is not a penalty on the loss
            if wd or l1:
                if params is None:
                    params = self.model.parameters()
                    params = params.to_numpy() if _arrays.is_device(params) else params
                w = params[info.start:info.start + info.size].astype(np.float64)
                total += 0.5 * wd * float(w @ w) + l1 * float(np.abs(w).sum())
        return total

    # -- fit --------------------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None) -> History:
        """Train for the remaining epochs (all of them on a fresh Trainer; the rest after
        :meth:`from_checkpoint`). ``sample_weight`` (one non-negative weight per row) makes each
        batch's loss the weighted mean of its rows' losses. Returns the :class:`History`."""
        with self._busy_guard("Trainer.fit"):
            return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight=None) -> History:
        model = self.model
        if _arrays.is_device(X) or _arrays.is_device(y):
            self._check_device_data(X, y, sample_weight)
        else:
            # Checked before anything changes: a NaN would otherwise surface as a non-finite loss
            # (a misleading message), after the scaler had been fitted to it.
            # A scipy.sparse X trains from dense minibatches made as they are needed (SparseRows).
            X, y = _arrays.dense_host("X", X, sparse_ok=True), _arrays.dense_host("y", y)
            X = X.tocsr() if _arrays.is_sparse(X) else X  # row indexing, for the validation split
            _arrays.check_finite("X", X)
            _arrays.check_finite("y", y)
            if isinstance(self.validation, tuple):
                Xv, yv = (_arrays.dense_host(n, a, sparse_ok=n == "validation X")
                          for n, a in zip(("validation X", "validation y"), self.validation))
                _arrays.check_finite("validation X", Xv)
                _arrays.check_finite("validation y", yv)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (samples, features), got shape {X.shape}")
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != (X.shape[0],):
                raise ValueError(f"sample_weight has shape {weights.shape} but X has {X.shape[0]} rows")
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError("sample_weight must be finite and >= 0")
            if np.all(weights == 1.0):
                weights = None  # the unweighted path, bit for bit
        if weights is not None and self.validation is not None and not isinstance(self.validation, tuple):
            Xtr, ytr, Xva, yva, weights = self._split_weighted(X, y, weights)
        else:
            Xtr, ytr, Xva, yva = self._split(X, y)
        resuming = self.epoch > 0 or self.step > 0
        scaler_before = model.scaler
        if self.standardize and not resuming and self.epoch < self.epochs:  # epochs=0 changes nothing
            self._fit_scaler(Xtr, ytr)
        try:
            return self._fit_prepared(Xtr, ytr, Xva, yva, weights)
        except BaseException:
            # Refused data (a check after the scaler was fitted), or rolled back to the weights this
            # fit started from: no step is applied, so the model keeps the scaler they went with.
            if self.epoch == 0 and self.step == 0:
                model.scaler = scaler_before
            raise

    def _fit_prepared(self, Xtr, ytr, Xva, yva, weights) -> History:
        model = self.model
        x, t = self._prepare(Xtr, ytr, upload=False)
        self._weights = weights
        xv = tv = None
        if Xva is not None:
            xv, tv = self._prepare(Xva, yva)
        self.history.metric_name = metric_name(self.loss)
        if self.base_lr is None:  # lr="auto": the Bottou trick on a subset
            self.base_lr, _ = find_step_size(model, x, t, loss=self.loss, optimizer=self.optimizer,
                                             seed=self.seed, _prepared=True, batch_size=self.batch_size)
            self.optimizer.current_lr = self.base_lr
        self._ensure_bound()
        self.schedule.set_horizon(self.epochs)
        n = x.shape[0]
        has_bn = any(type(l).__name__ == "BatchNorm" for l in model.layers)
        drop_last = self.drop_last if self.drop_last is not None else (has_bn and n % self.batch_size == 1)
        n_batches = n // self.batch_size if drop_last else -(-n // self.batch_size)
        if n_batches == 0:
            raise ValueError(f"no full batch: {n} training rows with batch_size={self.batch_size} and drop_last")
        self._device_loop = None
        bar = None
        try:
            if model.device != "cpu":
                from ._device_train import DeviceLoop

                self._device_loop = DeviceLoop(self, x, t, weights)
            for cb in self.callbacks:
                cb.on_train_begin(self)
            bar = self._progress_bar()
            self.history.stop_reason = None
            with _SigintDeferral() as sigint:
                while self.epoch < self.epochs:
                    reason = self._run_epoch(x, t, xv, tv, n_batches, sigint, bar)
                    if reason is not None:
                        self.history.stop_reason = reason
                        break
                else:
                    self.history.stop_reason = "completed"
        except KeyboardInterrupt:  # raised by a callback, or a second Ctrl-C between steps
            self.history.stop_reason = "interrupted"
            raise
        finally:
            if bar is not None:
                bar.close()
            # The device loop (an uploaded copy of the training set, pinned buffers, the captured
            # graph, the rollback snapshot) goes with the fit: a later fit builds its own, and the
            # loop refers back to this Trainer, so keeping it would hold all of that, the model
            # too, until Python's cyclic collector happened to run.
            self._device_loop = None
        if self.history.stop_reason in ("early_stopping", "completed", "callback") and self.restore_best \
                and self.early_stopping is not None and self._best["params"] is not None:
            _arrays.assign(model.parameters(), self._best["params"])
            for k, v in model.buffers().items():
                _arrays.assign(v, self._best["buffers"][k])
        for cb in self.callbacks:
            cb.on_train_end(self, self.history)
        if self.history.stop_reason == "interrupted":
            raise KeyboardInterrupt
        return self.history

    def _progress_bar(self):
        if not self.progress or self.epochs <= self.epoch:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.epochs, initial=self.epoch, desc="training", unit="epoch", leave=True,
                    dynamic_ncols=True)

    def _run_epoch(self, x, t, xv, tv, n_batches, sigint, bar) -> Optional[str]:
        model, opt = self.model, self.optimizer
        epoch = self.epoch
        lr = float(self.schedule.lr(epoch, self.base_lr))
        opt.current_lr = lr
        n = x.shape[0]
        if self._order is not None:  # an estimator's own row order (scikit-learn's shuffles)
            order = self._order(epoch, n)
        else:
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else None
        bs = self.batch_size
        # Resumed part-way: the same order, from batch b0. An unfinished epoch of other data (rows
        # or batch size changed) is not continued on these: its steps stay applied, the epoch
        # starts over.
        b0, total, prior_seconds, rows, batch = self._partial_epoch
        if b0 and rows is not None and (rows, batch) != (n, bs):
            warnings.warn(f"epoch {epoch + 1} was stopped after {b0} batches of {rows} rows in batches of {batch}; "
                          f"this fit has {n} rows in batches of {bs}, so the epoch starts over on them",
                          RuntimeWarning, stacklevel=5)
            b0, total, prior_seconds = 0, 0.0, 0.0
            self._partial_epoch = _NO_PARTIAL_EPOCH
        if self._device_loop is not None:
            start = time.perf_counter()
            try:
                total, batches, interrupted = self._device_loop.run_epoch(epoch, order, n_batches, sigint, lr, b0, total)
            finally:
                self._time_partial_epoch(prior_seconds, start, n, bs)
            if interrupted:
                self.history.stop_reason = "interrupted"
                return "interrupted"
            return self._end_epoch(epoch, lr, total / max(batches, 1), self._partial_epoch[2], n, xv, tv, sigint, bar)
        # Snapshot for the NaN guard: the weights, optimizer state and progress at the start of
        # the epoch (or of its resumed part).
        snapshot = (model.parameters().copy(), {k: v.copy() for k, v in opt.state.items()},
                    {k: v.copy() for k, v in model.buffers().items()}, opt.step_count, self.step,
                    self._partial_epoch)
        start = time.perf_counter()
        contiguous = order is None
        try:
            for b in range(b0, n_batches):
                lo, hi = b * bs, min(n, (b + 1) * bs)
                w = self._weights
                if contiguous:
                    xb, tb, wb = x[lo:hi], t[lo:hi], (None if w is None else w[lo:hi])
                else:
                    idx = order[lo:hi]
                    xb, tb = self._gather(x, idx, "x"), self._gather(t, idx, "t")
                    wb = None if w is None else w[idx]
                with sigint.atomic():  # a second Ctrl-C raises on leaving it: the step is recorded by then
                    loss = self._step(xb, tb, wb)
                    if math.isfinite(loss):
                        total += loss
                        self._partial_epoch = (b + 1, total, prior_seconds, n, bs)
                if not math.isfinite(loss):
                    return self._non_finite(loss, epoch, b, snapshot)
                for cb in self.callbacks:
                    cb.on_batch_end(self, self.step, loss)
                if sigint.requested and b < n_batches - 1:
                    self.history.stop_reason = "interrupted"
                    return "interrupted"
            # Every loss was finite, but the last update can still have overflowed the weights
            # (a loss is computed before its update): an epoch ends only with finite weights.
            if not _arrays.all_finite(model.parameters()):
                return self._non_finite(float("nan"), epoch, n_batches - 1, snapshot, weights=True)
        finally:
            self._time_partial_epoch(prior_seconds, start, n, bs)
        # The record stays until _record_epoch writes the History row: a Ctrl-C or an error in the
        # validation pass leaves the epoch's batches done, and the next fit only finishes it.
        return self._end_epoch(epoch, lr, total / max(n_batches, 1), self._partial_epoch[2], n, xv, tv, sigint, bar)

    def _time_partial_epoch(self, prior_seconds: float, start: float, n: int, bs: int) -> None:
        """On leaving an epoch's batches (done, stopped or raised): the record's seconds."""
        done, loss_sum = self._partial_epoch[:2]
        if done > 0:
            self._partial_epoch = (done, loss_sum, prior_seconds + time.perf_counter() - start, n, bs)

    def _end_epoch(self, epoch, lr, train_loss, seconds, n, xv, tv, sigint, bar) -> Optional[str]:
        """Validation, the History row, early stopping, progress and callbacks at an epoch's end."""
        val_loss, val_metric = (float("nan"), float("nan")) if xv is None else self._evaluate_prepared(xv, tv)
        row = dict(epoch=epoch + 1, train_loss=train_loss, penalty=self.penalty(), val_loss=val_loss,
                   val_metric=val_metric, lr=lr, time_s=seconds)
        with sigint.atomic():  # the History row, the epoch counter and early stopping change together
            reason = self._record_epoch(epoch, row, train_loss if xv is None else val_loss)
        if bar is not None:
            post = {"loss": f"{train_loss:.4g}", "samples/s": f"{n / max(seconds, 1e-9):,.0f}"}
            if xv is not None:
                post[self.history.metric_name] = f"{val_metric:.4g}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        for cb in self.callbacks:
            if cb.on_epoch_end(self, epoch + 1, row):
                reason = reason or "callback"
        if sigint.requested:  # Ctrl-C during the epoch's last step: the epoch is complete
            reason = "interrupted"
            self.history.stop_reason = reason
        return reason

    def _record_epoch(self, epoch: int, row: dict, monitored: float) -> Optional[str]:
        """Append the epoch's History row and update the epoch counter, schedule and early
        stopping; returns "early_stopping" when patience has run out."""
        model = self.model
        self.history.append(**row)
        self.epoch += 1
        self._partial_epoch = _NO_PARTIAL_EPOCH  # the epoch is whole now
        self.schedule.observe(monitored)
        reason = None
        if self.early_stopping is not None:
            if monitored < self._best["loss"] - self.min_delta:
                self._best.update(loss=monitored, epoch=epoch + 1, params=_arrays.host_copy(model.parameters()),
                                  buffers={k: _arrays.host_copy(v) for k, v in model.buffers().items()},
                                  bad_epochs=0)
            else:
                self._best["bad_epochs"] += 1
                if self._best["bad_epochs"] >= self.early_stopping:
                    reason = "early_stopping"
            self.history.best_epoch = self._best["epoch"]
        elif not math.isnan(monitored) and (self.history.best_epoch is None or
                                            monitored < min(self._monitored_history()[:-1], default=math.inf)):
            self.history.best_epoch = epoch + 1
        return reason

    def _monitored_history(self) -> List[float]:
        h = self.history
        return h.val_loss if any(not math.isnan(v) for v in h.val_loss) else h.train_loss

    def _non_finite(self, loss, epoch, batch, snapshot, weights: bool = False) -> str:
        model, opt = self.model, self.optimizer
        failed_step = self.step  # named in the message; the snapshot rewinds the counter
        # Weights whose loss is not finite are not good even when they are finite (overflowing
        # logits): go back to the start of the epoch, which matches the History's last record.
        params, state, buffers, step_count, step, partial = snapshot
        model.parameters()[...] = params
        for k, v in state.items():
            opt.state[k][...] = v
        for k, v in model.buffers().items():
            v[...] = buffers[k]
        opt.step_count, self.step = step_count, step
        self._partial_epoch = partial
        self.history.stop_reason = "non_finite_loss"
        what = (f"the update of step {failed_step} (batch {batch + 1}, the last of epoch {epoch + 1}) made the "
                f"weights non-finite" if weights else
                f"non-finite training loss ({loss}) at epoch {epoch + 1}, step {failed_step} (batch {batch + 1} of "
                f"the epoch)")
        good = (f"those of the start of epoch {epoch + 1}" if partial[0] == 0 else
                f"those after batch {partial[0]} of epoch {epoch + 1}, where this fit resumed it")
        raise NonFiniteLossError(
            f"{what}; training stopped and the model keeps its last good weights, {good}. Lower the learning "
            f"rate, enable clip_norm, or standardize the inputs.")

    # -- checkpoints ------------------------------------------------------------------------------

    def settings(self) -> dict:
        val = self.validation
        return {"loss": self.loss, "batch_size": self.batch_size, "epochs": self.epochs, "shuffle": self.shuffle,
                "validation": val if not isinstance(val, tuple) else "arrays", "early_stopping": self.early_stopping,
                "min_delta": self.min_delta, "restore_best": self.restore_best, "standardize": self.standardize,
                "progress": self.progress, "seed": self.seed, "drop_last": self.drop_last,
                "check_every": self.check_every}

    def save_checkpoint(self, path) -> None:
        """Write the model, the optimizer and its state, the Trainer's settings, the epoch, step,
        schedule, early-stopping state and History to ``path`` (atomic). Validation arrays given
        as ``(X_val, y_val)`` are saved too."""
        from .serialize import model_to_parts

        header, arrays = model_to_parts(self.model, prefix="model.")
        opt_state = self.optimizer.state_dict()
        for k, v in opt_state.pop("state").items():
            arrays["optim." + k] = v
        best = self._best
        if best["params"] is not None:
            arrays["best.params"] = best["params"]
            for k, v in best["buffers"].items():
                arrays["best.buffer." + k] = v
        if isinstance(self.validation, tuple):
            arrays["validation.X"] = np.asarray(self.validation[0])
            arrays["validation.y"] = np.asarray(self.validation[1])
        ckpt = {"kind": "checkpoint", "model": header, "optimizer": opt_state, "settings": self.settings(),
                "epoch": self.epoch, "step": self.step, "base_lr": self.base_lr,
                "partial_epoch": list(self._partial_epoch),
                "schedule": self.schedule.state_dict(), "history": self.history.as_dict(),
                "best": {"loss": best["loss"], "epoch": best["epoch"], "bad_epochs": best["bad_epochs"],
                         "has_params": best["params"] is not None}}
        write_file(path, ckpt, arrays)

    @classmethod
    def from_checkpoint(cls, path, *, callbacks: Sequence[Callback] = (), progress: Optional[bool] = None) -> "Trainer":
        """Rebuild a Trainer (with its model) from :meth:`save_checkpoint`; ``fit`` then continues
        bitwise as if never stopped."""
        from .serialize import model_from_parts

        header, arrays = read_file(path)
        if header.get("kind") != "checkpoint":
            raise ModelFileError(f"{path} is not a training checkpoint (kind {header.get('kind')!r})")
        try:
            model = model_from_parts(header["model"], arrays, prefix="model.")
            opt_state = dict(header["optimizer"])
            opt_state["state"] = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
            optimizer = _optim.optimizer_from_state(opt_state)
            s = dict(header["settings"])
            validation = s.pop("validation")
            if validation == "arrays":
                validation = (arrays["validation.X"], arrays["validation.y"])
            if progress is not None:
                s["progress"] = progress
            trainer = cls(model, optimizer=optimizer, validation=validation,
                          schedule=_schedules.from_state(header["schedule"]), callbacks=callbacks, **s)
            trainer.epoch, trainer.step = int(header["epoch"]), int(header["step"])
            partial = header.get("partial_epoch", [0, 0.0, 0.0])  # absent from older checkpoints
            if isinstance(partial, list) and len(partial) == 3:  # without the rows and batch size it ran on
                partial = partial + [None, None]
            if not (isinstance(partial, list) and len(partial) == 5 and isinstance(partial[0], int)
                    and 0 <= partial[0] and all(isinstance(v, (int, float)) for v in partial[1:3])
                    and all(v is None or (isinstance(v, int) and v > 0) for v in partial[3:])):
                raise ModelFileError(f"{path}: malformed checkpoint (partial_epoch {partial!r})")
            trainer._partial_epoch = (int(partial[0]), float(partial[1]), float(partial[2]), partial[3], partial[4])
            trainer.base_lr = None if header["base_lr"] is None else float(header["base_lr"])
            trainer.history = History.from_dict(header["history"])
            b = header["best"]
            trainer._best.update(loss=float(b["loss"]), epoch=b["epoch"], bad_epochs=int(b["bad_epochs"]))
            if b["has_params"]:
                trainer._best["params"] = arrays["best.params"]
                trainer._best["buffers"] = {k[len("best.buffer."):]: v for k, v in arrays.items()
                                            if k.startswith("best.buffer.")}
            optimizer.bind(model)
            if optimizer.state and any(v.size != model.n_parameters for v in optimizer.state.values()):
                raise ModelFileError("optimizer state does not match the model size")
            trainer._bound = True
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: malformed checkpoint ({type(e).__name__}: {e})") from None
        return trainer


def find_step_size(model, X, y, *, loss: Optional[str] = None, optimizer: Optional[_optim.Optimizer] = None,
                   subset: float = 0.05, min_rows: int = 256, steps: Optional[int] = None, batch_size: int = 64,
                   start: Optional[float] = None, max_trials: int = 20, seed: int = 0,
                   _prepared: bool = False) -> Tuple[float, Dict[float, float]]:
    """The Bottou trick: pick the step size on a small random subset.

    Takes ``subset`` of the rows (at least ``min_rows``), and for a candidate step size trains a
    copy of the model for ``steps`` minibatch steps (default: one pass over the subset) from the
    current weights, then measures the loss on the subset. It brackets on a log scale — doubling
    while the loss keeps falling, halving while it does not — and then narrows the bracket with
    geometric midpoints, to the step size whose short run lowers the loss most. That one sits near
    the edge of stability, so the step size returned is half of it, times ``1 − β^steps`` for an
    optimizer with momentum β (the part of its steady state the momentum buffer reached in the
    short run). The model is left unchanged. Returns ``(lr, {lr tried: loss after the short
    run})``.

    A CUDA model is searched on a CPU copy (the subset and short runs; the dropout masks are
    bit-identical to the device's): from device data only the subset's rows come to the host.
    """
    if getattr(model, "device", "cpu") != "cpu":
        from .serialize import model_from_parts, model_to_parts

        model = model_from_parts(*model_to_parts(model))
        if not _prepared:  # prepared (converted, checked) on the host
            X, y = (_arrays.host_copy(a) if _arrays.is_device(a) else a for a in (X, y))
    optimizer = optimizer if optimizer is not None else _optim.SGD()
    loss = _losses.resolve(loss, model.output)
    if _prepared:
        x, t = X, y
    else:
        x = model._as_input(X, sparse_ok=True)  # sparse X: only the subset below is made dense
        t = _losses.prepare_target(loss, y, x.shape[0], model.out_features, model.dtype)
    n = x.shape[0]
    rng = np.random.default_rng([seed, 0xB077])
    k = min(n, max(int(min_rows), int(math.ceil(subset * n))))
    idx = np.sort(rng.choice(n, size=k, replace=False))
    if _arrays.is_device(x) or _arrays.is_device(t):  # a CUDA model's device data (the Trainer's)
        from ._device_train import host_rows

        xs, ts = host_rows(x, idx), host_rows(t, idx)
    else:
        xs, ts = x[idx], t[idx]
    bs = min(batch_size, k)
    n_steps = int(steps) if steps is not None else max(1, k // bs)
    saved_params = model.parameters().copy()
    saved_buffers = {name: b.copy() for name, b in model.buffers().items()}
    tried: Dict[float, float] = {}

    def trial(lr: float) -> float:
        lr = float(lr)
        if lr in tried:
            return tried[lr]
        model.parameters()[...] = saved_params
        for name, b in model.buffers().items():
            b[...] = saved_buffers[name]
        hp = optimizer.hyperparameters()
        hp["lr"] = lr
        if "betas" in hp:
            hp["betas"] = tuple(hp["betas"])
        opt = type(optimizer)(**hp).bind(model)
        trainer = Trainer(model, loss=loss, optimizer=opt, batch_size=bs, epochs=1, progress=False, seed=seed)
        trainer._bound = True
        order = np.random.default_rng([seed, 1]).permutation(k)
        value = math.inf
        with np.errstate(all="ignore"):
            for s in range(n_steps):
                b = order[(s * bs) % k: (s * bs) % k + bs]
                if b.size < 2 and any(type(l).__name__ == "BatchNorm" for l in model.layers):
                    continue
                if not math.isfinite(trainer._step(xs[b], ts[b])) or not np.all(np.isfinite(model.parameters())):
                    break
            else:
                logits = model._predict_chunks(xs)
                value = float(_losses.compute(loss, logits, ts)[0])
                if not math.isfinite(value):
                    value = math.inf
        tried[lr] = value
        return value

    try:
        lr = float(start) if start is not None else (optimizer.default_lr if optimizer.lr == "auto"
                                                     else float(optimizer.lr) or optimizer.default_lr)
        best_lr, best = lr, trial(lr)
        trials = 1
        # Bracket: walk up while it improves, else walk down while it improves.
        up = trial(lr * 2.0)
        trials += 1
        direction = 2.0 if up < best else 0.5
        if up < best:
            best_lr, best = lr * 2.0, up
        cur = best_lr
        while trials < max_trials:
            nxt = cur * direction
            v = trial(nxt)
            trials += 1
            if v < best:
                best_lr, best, cur = nxt, v, nxt
            else:
                break
        # Narrow: geometric midpoints around the best, halving the log-step each round.
        factor = math.sqrt(2.0)
        for _ in range(3):
            if trials + 2 > max_trials:
                break
            center = best_lr
            for cand in (center / factor, center * factor):
                v = trial(cand)
                trials += 1
                if v < best:
                    best_lr, best = cand, v
            factor = math.sqrt(factor)
        if not math.isfinite(best):
            raise NonFiniteLossError("find_step_size: every step size tried diverged; standardize the inputs")
        # The best short run sits near the edge of stability: over a whole fit it can diverge (SGD
        # with momentum 0.9 on the digits: chance accuracy at the best trial's lr). Use half of it,
        # and with momentum beta also the fraction 1 - beta**steps of its steady state that the
        # momentum buffer reached in the trial (it builds up to 1 / (1 - beta) times the step).
        beta = float(optimizer.hyperparameters().get("momentum", 0.0) or 0.0)
        # (momentum 1 never reaches a steady state: its buffer grows by one step per step)
        best_lr *= 0.5 * (1.0 - beta ** n_steps) if beta < 1.0 else 0.5 / n_steps
    finally:
        model.parameters()[...] = saved_params
        for name, b in model.buffers().items():
            b[...] = saved_buffers[name]
    return best_lr, dict(sorted(tried.items()))
