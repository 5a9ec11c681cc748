"""Optimizers: SGD (momentum, dampening, nesterov), AdaGrad, RMSprop, Adam and AdamW.

Each follows torch.optim's documented algorithm with the same defaults, and updates the whole
model in one fused kernel pass over the flat parameter arena. Regularisation reaches the kernel as
one segment table (DESIGN.md, "Regularisation"):

- ``weight_decay`` (L2, coupled; decoupled for AdamW) and ``l1`` (adds ``l1 · sign(w)`` to the
  gradient) apply to weights, not biases (``decay_bias=True`` opts in). Each is one value or one
  per Dense layer — every layer's strength is a hyper-parameter of its own.
- ``bias_lr_multiplier`` scales the step size of biases (and batch-norm scales and shifts).
- ``clip_norm`` clips the global gradient norm over the arena before the step.
- ``lr="auto"`` asks the Trainer to pick the step size with :func:`fastmlp.find_step_size` at the
  start of ``fit``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _arrays
from . import kernels as K

__all__ = ["AdaGrad", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "global_norm"]

PerLayer = Union[float, Sequence[float]]

#: clip_norm's scale is ``clip_norm / (norm + CLIP_EPS)`` (torch.nn.utils.clip_grad_norm_'s 1e-6).
CLIP_EPS = 1e-6


def global_norm(grads: np.ndarray) -> float:
    """The L2 norm of a flat gradient array, accumulated in float64 (pairwise, deterministic)."""
    return float(math.sqrt(np.sum(np.square(grads, dtype=np.float64))))


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _per_layer(name: str, value: PerLayer) -> Union[float, List[float]]:
    if np.ndim(value) == 0:
        return _check_nonneg(name, value)
    return [_check_nonneg(f"{name}[{i}]", v) for i, v in enumerate(value)]


class Optimizer:
    """Base class: holds hyper-parameters, binds to a model's arena, and runs one fused step."""

    #: Names of the per-element state arrays (each shaped like the arena).
    state_names: Tuple[str, ...] = ()
    default_lr = 1e-3

    def __init__(self, lr: Union[float, str] = None, *, weight_decay: PerLayer = 0.0, l1: PerLayer = 0.0,
                 bias_lr_multiplier: float = 1.0, clip_norm: Optional[float] = None, decay_bias: bool = False):
        if lr is None:
            lr = self.default_lr
        if isinstance(lr, str):
            if lr != "auto":
                raise ValueError(f"lr must be a number >= 0 or 'auto', got {lr!r}")
        else:
            lr = _check_nonneg("lr", lr)
        self.lr: Union[float, str] = lr
        self.weight_decay = _per_layer("weight_decay", weight_decay)
        self.l1 = _per_layer("l1", l1)
        self.bias_lr_multiplier = _check_nonneg("bias_lr_multiplier", bias_lr_multiplier)
        self.clip_norm = None if clip_norm is None else _check_nonneg("clip_norm", clip_norm)
        if self.clip_norm == 0.0:
            raise ValueError("clip_norm must be > 0 (or None for no clipping)")
        self.decay_bias = bool(decay_bias)
        self.step_count = 0
        #: The step size in use this epoch (set by the Trainer's schedule; starts at ``lr``).
        self.current_lr: Optional[float] = None if lr == "auto" else float(lr)
        self.state: Dict[str, np.ndarray] = {}
        #: "cpu", or "cuda" once bound to a model on the device (then ``device_step``/``device_lr``
        #: are the device scalars the capturable kernels read).
        self.device = "cpu"
        self.device_step = self.device_lr = None
        self._segments = None
        self._size = None

    # -- hyper-parameters -------------------------------------------------------------------------

    def hyperparameters(self) -> dict:
        """The constructor arguments, for checkpoints and ``repr``."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "l1": self.l1,
                "bias_lr_multiplier": self.bias_lr_multiplier, "clip_norm": self.clip_norm,
                "decay_bias": self.decay_bias}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def _scalar_wd(self) -> float:
        return self.weight_decay if isinstance(self.weight_decay, float) else 0.0

    def _scalar_l1(self) -> float:
        return self.l1 if isinstance(self.l1, float) else 0.0

    # -- binding ----------------------------------------------------------------------------------

    def bind(self, model) -> "Optimizer":
        """Allocate state for ``model``'s arena and build its segment table. Re-binding to a model
        of the same size keeps the state."""
        params = model.parameters()
        device = "cuda" if _arrays.is_device(params) else "cpu"
        if self._size != params.size or any(s.dtype != params.dtype for s in self.state.values()):
            self.state = {name: _arrays.zeros(params.shape, params.dtype, device) for name in self.state_names}
            self.step_count = 0
        else:  # same arena on another device: the state moves with its values
            self.state = {k: _arrays.to_device(v, device) for k, v in self.state.items()}
        self._size = params.size
        self._segments = self._build_segments(model)
        self.device = device
        if device != "cpu":
            # Capturable stepping (DESIGN.md): the step counter and the step size live on the device;
            # the optimizer kernel alone advances the counter.
            self.device_step = _arrays.to_device(np.array([self.step_count], np.int64), device)
            self._device_step_mirror = self.step_count
            self.device_lr = _arrays.zeros((1,), np.float32, device)
            self._device_lr_value = None
        else:
            self.device_step = self.device_lr = None
        return self

    def set_device_lr(self, lr: float) -> None:
        """Write the step size the device kernels read (outside graph capture; skipped when unchanged)."""
        if self._device_lr_value != lr:
            _arrays.assign(self.device_lr, np.array([lr], np.float32))
            self._device_lr_value = lr

    def _kernel_step_lr(self, lr: Optional[float]) -> dict:
        """``step``/``lr`` for the kernel: host numbers on the CPU; on the device, the device scalars
        (the kernel reads the counter, adds one, and stores it back)."""
        if getattr(self, "device", "cpu") == "cpu":
            return {"step": self.step_count, "lr": lr}
        if self._device_step_mirror != self.step_count - 1:  # after a reload or a rollback
            _arrays.assign(self.device_step, np.array([self.step_count - 1], np.int64))
        self._device_step_mirror = self.step_count
        if lr is not None:
            self.set_device_lr(lr)
        return {"step": self.device_step, "lr": self.device_lr}

    def _build_segments(self, model):
        layout = model.param_layout()
        n_dense = model.n_dense
        for name, value in (("weight_decay", self.weight_decay), ("l1", self.l1)):
            if isinstance(value, list) and len(value) != n_dense:
                raise ValueError(f"{name} has {len(value)} values but the model has {n_dense} Dense layers "
                                 "(give one value, or one per Dense layer)")
        wd0, l10 = self._scalar_wd(), self._scalar_l1()

        def layer_value(value, index):
            return value[index] if isinstance(value, list) else value

        rows: List[Tuple[int, int, float, float, float]] = []
        for info in layout:
            if info.kind == "weight":
                values = (1.0, layer_value(self.weight_decay, info.dense_index),
                          layer_value(self.l1, info.dense_index))
            else:  # bias, batch-norm gamma/beta
                owner = info.dense_index
                wd = layer_value(self.weight_decay, owner) if (self.decay_bias and owner is not None) else 0.0
                l1 = layer_value(self.l1, owner) if (self.decay_bias and owner is not None) else 0.0
                if self.decay_bias and owner is None:
                    wd, l1 = wd0, l10
                values = (self.bias_lr_multiplier, wd, l1)
            if rows and rows[-1][2:] == values and rows[-1][0] + rows[-1][1] == info.start:
                start, length = rows[-1][:2]
                rows[-1] = (start, length + info.size) + values
            else:
                rows.append((info.start, info.size) + values)
        if all(r[2:] == (1.0, wd0, l10) for r in rows):
            return None  # the scalars alone describe it: no table
        bounds = np.array([[r[0], r[1]] for r in rows], dtype=np.int64).reshape(-1, 2)
        values = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 3)
        return bounds, values

    @property
    def segments(self):
        """The (bounds, values) segment table passed to the kernel, or None."""
        return self._segments

    @contextlib.contextmanager
    def penalties_scaled(self, factor: float):
        """Weight decay and L1 multiplied by ``factor`` for the steps taken inside (the segment
        table and the scalars; nothing is rebuilt). A factor of 1 changes nothing."""
        if factor == 1.0:
            yield
            return
        saved = (self.weight_decay, self.l1, None if self._segments is None else self._segments[1].copy())
        try:
            if isinstance(self.weight_decay, float):
                self.weight_decay = self.weight_decay * factor
            if isinstance(self.l1, float):
                self.l1 = self.l1 * factor
            if self._segments is not None:
                self._segments[1][:, 1:] *= factor
            yield
        finally:
            self.weight_decay, self.l1 = saved[0], saved[1]
            if saved[2] is not None:
                self._segments[1][...] = saved[2]

    # -- stepping ---------------------------------------------------------------------------------

    def step(self, params: np.ndarray, grads: np.ndarray, lr: Optional[float] = None):
        """One update of ``params`` in place from ``grads``; returns the gradient norm before
        clipping (NaN when clipping is off, to skip the extra pass; on a CUDA model a 0-d device
        array, read only when asked)."""
        if self._size != params.size:
            raise RuntimeError("optimizer is not bound to this model; call optimizer.bind(model)")
        lr = self.current_lr if lr is None else float(lr)
        if lr is None:
            raise RuntimeError("lr='auto' has not been resolved; the Trainer does it at the start of fit")
        norm = float("nan")
        if self.clip_norm is not None:  # one kernel: the norm in float64, then the scaling if needed
            norm = K.clip_grad_norm(grads, self.clip_norm, eps=CLIP_EPS)
        self.step_count += 1
        try:
            self._update(params, grads, lr)
        except BaseException:  # the kernels validate before they write: nothing was updated
            self.step_count -= 1
            raise
        return norm

    def _update(self, params, grads, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "hyperparameters": self.hyperparameters(),
                "step_count": self.step_count, "current_lr": self.current_lr, "size": self._size,
                "state": {k: _arrays.host_copy(v) for k, v in self.state.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.step_count = int(d["step_count"])
        self.current_lr = None if d["current_lr"] is None else float(d["current_lr"])
        for k, v in d["state"].items():
            if k not in self.state_names:
                raise ValueError(f"unknown optimizer state {k!r} for {type(self).__name__}")
            self.state[k] = np.array(v, copy=True)
        self._size = None if d.get("size") is None else int(d["size"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening and Nesterov momentum
    (torch.optim.SGD): ``buf = momentum · buf + (1 − dampening) · g``, ``p −= lr · buf`` (or
    ``g + momentum · buf`` with nesterov)."""

    default_lr = 1e-3

    def __init__(self, lr: Union[float, str] = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, **kw):
        super().__init__(lr, **kw)
        self.momentum = _check_nonneg("momentum", momentum)
        self.dampening = float(dampening)
        if not 0.0 <= self.dampening <= 1.0:
            raise ValueError(f"dampening must be in [0, 1], got {dampening}")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")
        self.state_names = ("momentum_buffer",) if self.momentum > 0 else ()

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}

    def _update(self, params, grads, lr):
        K.sgd_step(params, grads, self.state.get("momentum_buffer"), **self._kernel_step_lr(lr),
                   momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov,
                   weight_decay=self._scalar_wd(), l1=self._scalar_l1(), segments=self._segments)


class AdaGrad(Optimizer):
    """AdaGrad (torch.optim.Adagrad): ``sum += g²``, ``p −= lr_t · g / (√sum + eps)`` with
    ``lr_t = lr / (1 + (t − 1) · lr_decay)``."""

    state_names = ("state_sum",)
    default_lr = 1e-2

    def __init__(self, lr: Union[float, str] = 1e-2, lr_decay: float = 0.0, eps: float = 1e-10, **kw):
        super().__init__(lr, **kw)
        self.lr_decay = _check_nonneg("lr_decay", lr_decay)
        self.eps = _check_nonneg("eps", eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "lr_decay": self.lr_decay, "eps": self.eps}

    def _update(self, params, grads, lr):
        K.adagrad_step(params, grads, self.state["state_sum"], **self._kernel_step_lr(lr), lr_decay=self.lr_decay,
                       weight_decay=self._scalar_wd(), eps=self.eps, l1=self._scalar_l1(), segments=self._segments)


Adagrad = AdaGrad


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop): ``v = α·v + (1 − α)·g²``, ``p −= lr · g / (√v + eps)``,
    optionally centered and with momentum."""

    default_lr = 1e-2

    def __init__(self, lr: Union[float, str] = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 centered: bool = False, **kw):
        super().__init__(lr, **kw)
        self.alpha = float(alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.eps = _check_nonneg("eps", eps)
        self.momentum = _check_nonneg("momentum", momentum)
        self.centered = bool(centered)
        names = ["square_avg"]
        if self.momentum > 0:
            names.append("momentum_buffer")
        if self.centered:
            names.append("grad_avg")
        self.state_names = tuple(names)

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}

    def _update(self, params, grads, lr):
        step_lr = self._kernel_step_lr(lr)
        if step_lr["step"] is not None and not _arrays.is_device(step_lr["step"]):
            del step_lr["step"]  # the CPU RMSprop has no bias correction, so no step
        K.rmsprop_step(params, grads, self.state["square_avg"], **step_lr, alpha=self.alpha, eps=self.eps,
                       weight_decay=self._scalar_wd(), momentum=self.momentum, centered=self.centered,
                       momentum_buffer=self.state.get("momentum_buffer"), grad_avg=self.state.get("grad_avg"),
                       l1=self._scalar_l1(), segments=self._segments)


class Adam(Optimizer):
    """Adam (torch.optim.Adam): bias-corrected moment estimates; ``weight_decay`` is added to the
    gradient (L2). Use :class:`AdamW` for decoupled weight decay.

    ``epsilon_style="torch"`` adds ``eps`` to the bias-corrected ``sqrt(v / (1 - beta2^t))``, as
    torch.optim.Adam; ``"sklearn"`` adds it to the uncorrected ``sqrt(v)``, as scikit-learn's MLPs
    (and the Adam paper's efficient form) do, where it weighs ``1 / sqrt(1 - beta2^t)`` times more
    in early steps. On a CUDA device the style is torch's."""

    state_names = ("exp_avg", "exp_avg_sq")
    default_lr = 1e-3
    decoupled = False

    def __init__(self, lr: Union[float, str] = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 *, epsilon_style: str = "torch", **kw):
        super().__init__(lr, **kw)
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if epsilon_style not in ("torch", "sklearn"):
            raise ValueError(f"epsilon_style must be 'torch' or 'sklearn', got {epsilon_style!r}")
        self.betas = (b1, b2)
        self.eps = _check_nonneg("eps", eps)
        self.epsilon_style = epsilon_style

    def hyperparameters(self):
        hp = {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}
        if self.epsilon_style != "torch":
            hp["epsilon_style"] = self.epsilon_style
        return hp

    def _update(self, params, grads, lr):
        eps = self.eps
        if self.epsilon_style == "sklearn" and getattr(self, "device", "cpu") == "cpu":
            # eps / sqrt(1 - beta2^t) added to the corrected sqrt(v) is eps added to sqrt(v)
            eps = eps / math.sqrt(1.0 - self.betas[1] ** self.step_count)
        K.adam_step(params, grads, self.state["exp_avg"], self.state["exp_avg_sq"], **self._kernel_step_lr(lr),
                    beta1=self.betas[0], beta2=self.betas[1], eps=eps, weight_decay=self._scalar_wd(),
                    decoupled=self.decoupled, l1=self._scalar_l1(), segments=self._segments)


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay, ``p *= 1 − lr · weight_decay``
    (default 0.01)."""

    decoupled = True

    def __init__(self, lr: Union[float, str] = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: PerLayer = 1e-2, **kw):
        super().__init__(lr, betas, eps, weight_decay=weight_decay, **kw)


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, AdaGrad, RMSprop, Adam, AdamW)}


def optimizer_from_state(d: dict) -> Optimizer:
    """Rebuild an optimizer (hyper-parameters and state) from :meth:`Optimizer.state_dict`."""
    cls = OPTIMIZERS.get(d.get("type"))
    if cls is None:
        raise ValueError(f"unknown optimizer type {d.get('type')!r}")
    hp = dict(d["hyperparameters"])
    if "betas" in hp:
        hp["betas"] = tuple(hp["betas"])
    opt = cls(**hp)
    opt.load_state_dict(d)
    return opt
