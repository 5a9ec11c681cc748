"""Learning-rate schedules. They step once per epoch: the Trainer asks ``lr(epoch, base_lr)``
(epoch counts from 0) before each epoch, and ``observe(metric)`` after it (used by
:class:`ReduceOnPlateau`, which automates the "babysitting" of the step size: it lowers the step
size when the validation loss — or the training loss without validation — stops improving).
Strings name the defaults: "constant", "step", "inverse_time", "cosine", "warmup", "plateau".
"""

from __future__ import annotations

import math
from typing import Optional, Union

__all__ = ["Constant", "Cosine", "InverseTimeDecay", "LinearWarmup", "ReduceOnPlateau", "Schedule", "StepDecay",
           "resolve"]


class Schedule:
    def lr(self, epoch: int, base_lr: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, metric: float) -> None:
        """Called after each epoch with the monitored loss (lower is better)."""

    def set_horizon(self, epochs: int) -> None:
        """Told the total number of epochs by the Trainer (used by Cosine)."""

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "config": self.config(), "state": {}}

    def load_state_dict(self, d: dict) -> None:
        pass

    def config(self) -> dict:
        return {}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


class Constant(Schedule):
    """The base step size every epoch."""

    def lr(self, epoch, base_lr):
        return base_lr


class StepDecay(Schedule):
    """``base_lr · gamma^(epoch // step_size)``: multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int = 10, gamma: float = 0.1):
        if int(step_size) < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def lr(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class InverseTimeDecay(Schedule):
    """1/t decay: ``base_lr / (1 + decay · epoch)``."""

    def __init__(self, decay: float = 0.1):
        if not decay >= 0.0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.decay = float(decay)

    def lr(self, epoch, base_lr):
        return base_lr / (1.0 + self.decay * epoch)

    def config(self):
        return {"decay": self.decay}


class Cosine(Schedule):
    """Cosine annealing from ``base_lr`` to ``min_lr`` over ``epochs`` (default: the Trainer's)."""

    def __init__(self, epochs: Optional[int] = None, min_lr: float = 0.0):
        self.epochs = None if epochs is None else int(epochs)
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.min_lr = float(min_lr)

    def set_horizon(self, epochs):
        if self.epochs is None:
            self.epochs = int(epochs)

    def lr(self, epoch, base_lr):
        horizon = max(self.epochs or 1, 1)
        t = min(epoch, horizon) / horizon
        return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def config(self):
        return {"epochs": self.epochs, "min_lr": self.min_lr}


class LinearWarmup(Schedule):
    """Linear warm-up from ``base_lr / (warmup_epochs + 1)`` to ``base_lr`` over ``warmup_epochs``
    epochs, then ``after`` (default constant), counted from the end of the warm-up."""

    def __init__(self, warmup_epochs: int = 5, after: Optional[Schedule] = None):
        if int(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = int(warmup_epochs)
        self.after = after if after is not None else Constant()

    def set_horizon(self, epochs):
        self.after.set_horizon(max(1, epochs - self.warmup_epochs))

    def lr(self, epoch, base_lr):
        if epoch < self.warmup_epochs:
            return base_lr * (epoch + 1) / (self.warmup_epochs + 1)
        return self.after.lr(epoch - self.warmup_epochs, base_lr)

    def observe(self, metric):
        self.after.observe(metric)

    def config(self):
        return {"warmup_epochs": self.warmup_epochs, "after": self.after.state_dict()}

    def state_dict(self):
        return {"type": "LinearWarmup", "config": {"warmup_epochs": self.warmup_epochs},
                "state": {"after": self.after.state_dict()}}

    def load_state_dict(self, d):
        self.after = from_state(d["state"]["after"])


class ReduceOnPlateau(Schedule):
    """Multiply the step size by ``factor`` when the monitored loss has not improved by more than
    ``threshold`` (relative) for ``patience`` epochs; then wait ``cooldown`` epochs. Never below
    ``min_lr``. Same rule as torch.optim.lr_scheduler.ReduceLROnPlateau (mode "min", "rel")."""

    def __init__(self, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.factor, self.patience, self.threshold = float(factor), int(patience), float(threshold)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    def lr(self, epoch, base_lr):
        return max(base_lr * self.scale, self.min_lr)

    def observe(self, metric):
        metric = float(metric)
        if metric < self.best * (1.0 - self.threshold):
            self.best = metric
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.cooldown_left = self.cooldown
            self.bad_epochs = 0

    def config(self):
        return {"factor": self.factor, "patience": self.patience, "threshold": self.threshold,
                "cooldown": self.cooldown, "min_lr": self.min_lr}

    def state_dict(self):
        return {"type": "ReduceOnPlateau", "config": self.config(),
                "state": {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs,
                          "cooldown_left": self.cooldown_left}}

    def load_state_dict(self, d):
        s = d["state"]
        self.scale, self.best = float(s["scale"]), float(s["best"])
        self.bad_epochs, self.cooldown_left = int(s["bad_epochs"]), int(s["cooldown_left"])


_NAMES = {"constant": Constant, "step": StepDecay, "inverse_time": InverseTimeDecay, "cosine": Cosine,
          "warmup": LinearWarmup, "plateau": ReduceOnPlateau}
_TYPES = {cls.__name__: cls for cls in _NAMES.values()}


def resolve(schedule: Union[None, str, Schedule]) -> Schedule:
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str) and schedule in _NAMES:
        return _NAMES[schedule]()
    raise ValueError(f"schedule must be a Schedule or one of {', '.join(repr(n) for n in _NAMES)}, got {schedule!r}")


def from_state(d: dict) -> Schedule:
    cls = _TYPES.get(d.get("type"))
    if cls is None:
        raise ValueError(f"unknown schedule type {d.get('type')!r}")
    cfg = dict(d.get("config", {}))
    cfg.pop("after", None)
    sched = cls(**cfg)
    sched.load_state_dict(d)
    return sched
