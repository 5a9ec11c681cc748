"""Layers and models: ``Sequential`` of ``Dense``, activations, ``Dropout`` and ``BatchNorm``, and
``MLP``, its common case.

All parameters of a model live in one flat arena (``model.parameters()``), their gradients in a
second one of the same layout (``model.gradients()``); every layer's tensors are views into them.
An optimizer step is then one fused kernel pass over the whole model.

The forward pass fuses what the kernels can fuse: a ``Dense`` followed by an activation is one
GEMM with the bias and activation in its epilogue; ``Dense`` (no bias) → ``BatchNorm`` → activation
is one GEMM and one fused batch-norm pass. Dropout draws from the Philox stream
``offset = step · n_streams + stream_index`` (DESIGN.md), and its backward regenerates the mask.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _arrays, _core, _cuda_kernels
from . import init as _init
from . import kernels as K
from . import losses as _losses

__all__ = [
    "BatchNorm",
    "Dense",
    "Dropout",
    "Identity",
    "Layer",
    "MLP",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
]

#: Accepted activation names and the kernel name each maps to.
ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "logistic": "sigmoid", "tanh": "tanh",
               "identity": "identity"}
#: Model output kinds: what ``predict`` / ``predict_proba`` make of the logits.
OUTPUTS = ("identity", "softmax", "sigmoid")
#: Rows per chunk when predicting, so any number of rows fits in memory.
PREDICT_CHUNK_ROWS = 8192


class TrainingGuard:
    """Who is training a model right now: one thread at a time.

    ``Trainer.fit``, ``Trainer.train_step`` and the training-mode ``forward`` / ``backward`` /
    ``value_and_grad`` change the weights, the gradient arena, the batch-norm running statistics
    and the buffers a training step reuses, so two threads doing so at once would silently corrupt
    the model. They hold this guard instead: a second thread gets a ``RuntimeError`` at once (it
    never waits and never races). The thread that holds it may call the low-level training-mode
    methods again (a callback may call ``value_and_grad`` during ``fit``), but not start a second
    ``fit`` or ``train_step`` on the same model. Inference (``predict``, ``forward`` with
    ``training=False``) takes no guard.
    """

    __slots__ = ("_lock", "_owner", "_what")

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: Optional[int] = None  # threading.get_ident() of the holder
        self._what: Optional[str] = None

    def hold(self, what: str, *, reentrant: bool = False) -> "_Held":
        """A context manager that holds the guard for ``what`` (a name for messages)."""
        return _Held(self, what, reentrant)


class _Held:
    __slots__ = ("guard", "what", "reentrant", "acquired")

    def __init__(self, guard: TrainingGuard, what: str, reentrant: bool):
        self.guard, self.what, self.reentrant, self.acquired = guard, what, reentrant, False

    def __enter__(self):
        g = self.guard
        me = threading.get_ident()
        if g._owner == me:  # only this thread can have set _owner to its own ident
            if self.reentrant:
                return self
            raise RuntimeError(f"{self.what}: this model is already being trained by {g._what} in this thread "
                               f"(called from a callback?); finish that call first")
        if not g._lock.acquire(blocking=False):
            raise RuntimeError(f"{self.what}: this model is already being trained in another thread (by "
                               f"{g._what or 'another call'}); a model trains in one thread at a time. Train "
                               f"separate models (or copies, copy.deepcopy(model)) in parallel, or wait for the "
                               f"other call to finish")
        g._owner, g._what, self.acquired = me, self.what, True
        return self

    def __exit__(self, *exc):
        if self.acquired:
            g = self.guard
            g._owner = g._what = None
            g._lock.release()
        return False


def training_guard(model) -> TrainingGuard:
    """The model's :class:`TrainingGuard` (created on first use for models not built by this module)."""
    guard = getattr(model, "_training_guard", None)
    if guard is None:
        with _GUARD_CREATION:
            guard = getattr(model, "_training_guard", None)
            if guard is None:
                guard = model._training_guard = TrainingGuard()
    return guard


_GUARD_CREATION = threading.Lock()


def physical_memory_bytes() -> Optional[int]:
    """This machine's physical memory in bytes, or None when the OS does not say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def _dtype(dtype) -> np.dtype:
    d = np.dtype(dtype)
    if d not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {d}")
    return d


def _activation_name(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(repr(a) for a in ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class Layer:
    """Base class. A layer declares its parameters with ``param_specs`` (name, shape, kind) and
    receives views into the model's arenas as attributes ``<name>`` and ``d<name>``."""

    def param_specs(self) -> List[Tuple[str, Tuple[int, ...], str]]:
        return []

    def config(self) -> dict:
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``y = x Wᵀ + b``; ``weight`` is (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Dense: {name} must be a positive int, got {v!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.bias_enabled = bool(bias)

    def param_specs(self):
        specs = [("weight", (self.out_features, self.in_features), "weight")]
        if self.bias_enabled:
            specs.append(("bias", (self.out_features,), "bias"))
        return specs

    def config(self):
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias_enabled}


class _Activation(Layer):
    kind = "identity"

    def config(self):
        return {"type": type(self).__name__}


class Identity(_Activation):
    kind = "identity"


class ReLU(_Activation):
    kind = "relu"


class Sigmoid(_Activation):
    kind = "sigmoid"


class Tanh(_Activation):
    kind = "tanh"


_ACTIVATION_LAYERS = {"identity": Identity, "relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class Dropout(Layer):
    """Inverted dropout with drop probability ``p`` (0 <= p < 1); active in training only."""

    def __init__(self, p: float):
        p = float(p)
        if not (0.0 <= p < 1.0):
            raise ValueError(f"Dropout: p must satisfy 0 <= p < 1, got {p}")
        self.p = p

    def config(self):
        return {"type": "Dropout", "p": self.p}


class Noise(Layer):
    """Input corruption for denoising autoencoders, active in training only: ``"gaussian"`` adds
    ``level · N(0, 1)``; ``"mask"`` zeroes a ``level`` fraction of the inputs, without rescaling."""

    def __init__(self, kind: str = "gaussian", level: float = 0.1):
        if kind not in ("gaussian", "mask"):
            raise ValueError(f"Noise: kind must be 'gaussian' or 'mask', got {kind!r}")
        level = float(level)
        if kind == "mask" and not 0.0 <= level < 1.0:
            raise ValueError(f"Noise: a mask level must satisfy 0 <= level < 1, got {level}")
        if kind == "gaussian" and not (level >= 0.0 and math.isfinite(level)):
            raise ValueError(f"Noise: a gaussian level (standard deviation) must be >= 0, got {level}")
        self.kind, self.level = kind, level

    def config(self):
        return {"type": "Noise", "kind": self.kind, "level": self.level}


class TiedDense(Layer):
    """A dense layer that reuses the transposed weight of an earlier ``Dense`` (layer index
    ``tied_to``), with a bias of its own: ``y = x W_tied + b``. Used by tied autoencoders."""

    def __init__(self, tied_to: int, bias: bool = True):
        self.tied_to = int(tied_to)
        self.bias_enabled = bool(bias)
        self.source: Optional[Dense] = None  # set by Sequential

    def param_specs(self):
        if self.source is None:
            raise ValueError("TiedDense must be part of a Sequential")
        return [("bias", (self.source.in_features,), "bias")] if self.bias_enabled else []

    def config(self):
        return {"type": "TiedDense", "tied_to": self.tied_to, "bias": self.bias_enabled}


class BatchNorm(Layer):
    """Batch normalisation over the batch (``torch.nn.BatchNorm1d`` semantics): learned
    ``gamma``/``beta`` in the arena, running statistics as buffers."""

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 1:
            raise ValueError(f"BatchNorm: features must be a positive int, got {features!r}")
        if not (0.0 <= momentum <= 1.0):
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {momentum}")
        if not (eps > 0.0 and math.isfinite(eps)):
            raise ValueError(f"BatchNorm: eps must be > 0, got {eps}")
        self.features = int(features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.running_mean: Optional[np.ndarray] = None
        self.running_var: Optional[np.ndarray] = None

    def param_specs(self):
        return [("gamma", (self.features,), "gamma"), ("beta", (self.features,), "beta")]

    def config(self):
        return {"type": "BatchNorm", "features": self.features, "momentum": self.momentum, "eps": self.eps}


LAYER_TYPES = {cls.__name__: cls for cls in (Dense, TiedDense, Identity, ReLU, Sigmoid, Tanh, Dropout, Noise,
                                              BatchNorm)}


def layer_from_config(cfg: dict) -> Layer:
    """Rebuild a layer from ``Layer.config()`` (used by the model-file loader)."""
    if not isinstance(cfg, dict) or cfg.get("type") not in LAYER_TYPES:
        raise ValueError(f"unknown layer config {cfg!r}")
    kind = cfg["type"]
    if kind == "Dense":
        return Dense(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg["bias"]))
    if kind == "Dropout":
        return Dropout(float(cfg["p"]))
    if kind == "BatchNorm":
        return BatchNorm(int(cfg["features"]), float(cfg["momentum"]), float(cfg["eps"]))
    if kind == "Noise":
        return Noise(str(cfg["kind"]), float(cfg["level"]))
    if kind == "TiedDense":
        return TiedDense(int(cfg["tied_to"]), bias=bool(cfg["bias"]))
    return LAYER_TYPES[kind]()


class ParamInfo:
    """Where one parameter tensor lives in the arena."""

    __slots__ = ("layer", "name", "kind", "start", "size", "shape", "dense_index")

    def __init__(self, layer, name, kind, start, size, shape, dense_index):
        self.layer, self.name, self.kind = layer, name, kind
        self.start, self.size, self.shape = start, size, shape
        self.dense_index = dense_index  # index among the Dense layers, None for batch-norm parameters

    def __repr__(self):
        return (f"ParamInfo(layer={self.layer}, name={self.name!r}, kind={self.kind!r}, start={self.start}, "
                f"shape={self.shape})")


# --- execution blocks: what one forward/backward unit runs ------------------------------------


class _Workspace:
    """Arrays a block reuses from one training step to the next, so that a steady-state training
    step allocates nothing. Only training-mode passes use it (their outputs live until the next
    training step); inference allocates fresh outputs."""

    __slots__ = ("arrays", "device")

    def __init__(self):
        self.arrays: Dict[str, np.ndarray] = {}
        self.device = "cpu"

    def get(self, name: str, shape, dtype) -> np.ndarray:
        a = self.arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = _arrays.empty(shape, dtype, self.device)
            self.arrays[name] = a
        return a


def _ws_out(ws: Optional[_Workspace], name: str, shape, dtype) -> Optional[np.ndarray]:
    return None if ws is None else ws.get(name, shape, dtype)


class _DenseBlock:
    """Dense [→ BatchNorm] [→ activation], fused."""

    def __init__(self, dense: Dense, bn: Optional[BatchNorm], act: str):
        self.dense, self.bn, self.act = dense, bn, act
        self.accumulate_weight_grad = False
        self.ws = _Workspace()

    def forward(self, x, training, ctx):
        d = self.dense
        bias = d.bias if d.bias_enabled else None
        ws = self.ws if training else None
        shape = (x.shape[0], d.out_features)
        if self.bn is None:
            y = K.gemm(x, d.weight, trans_b=True, bias=bias, activation=self.act, out=_ws_out(ws, "y", shape, x.dtype))
            if training:
                ctx.append((x, y))
            return y
        z = K.gemm(x, d.weight, trans_b=True, bias=bias, out=_ws_out(ws, "z", shape, x.dtype))
        bn = self.bn
        if training and x.shape[0] < 2:
            _raise_bn_batch(x.shape[0])
        y, mean, invstd = K.batch_norm(z, bn.gamma, bn.beta, bn.running_mean, bn.running_var, training=training,
                                       momentum=bn.momentum, eps=bn.eps, activation=self.act,
                                       out=_ws_out(ws, "y", shape, x.dtype), **_bn_stats_out(ws, shape[1], x.dtype))
        if training:
            ctx.append((x, z, y, mean, invstd))
        return y

    def forward_dropout(self, x, ctx, drop: "_DropoutBlock", seed, offset, rng):
        """Training forward of this Dense+ReLU block and the dropout block after it in one GEMM
        (device arrays): the result lands in the dropout's workspace, where its backward looks,
        and both blocks keep what backward needs (this block's ReLU backward then always comes
        through the dropout's, from that output)."""
        d = self.dense
        y = drop.ws.get("y", (x.shape[0], d.out_features), x.dtype)
        rng = rng or {}
        _cuda_kernels.gemm(x, d.weight, trans_a=False, trans_b=True, alpha=1.0, beta=0.0, out=y,
                           bias=d.bias if d.bias_enabled else None, activation=self.act, stream=None,
                           dropout=(drop.layer.p, seed, offset, rng.get("step"), rng.get("n_streams")))
        ctx.append((x, y))
        ctx.append((offset, rng))
        return y

    def backward(self, grad_y, saved, need_input_grad, act_done=False, relu_mask=None, branch=None):
        """``act_done``: grad_y is already the gradient before the activation (the dropout block
        after a ReLU block did both, see _DropoutBlock.backward_through_relu). ``relu_mask``:
        ``(y, p)`` of the dropout block that follows a ReLU block before this one; the input
        gradient then comes back through that dropout and ReLU already, the GEMM's epilogue doing
        what backward_through_relu would. ``branch``: a _Branch whose second stream takes the
        weight gradient's GEMM."""
        d = self.dense
        if self.bn is None:
            x, y = saved
            dz = K.activation_backward(grad_y, y, self.act, out=grad_y) if self.act != "identity" and not act_done \
                else grad_y
        else:
            x, z, y, mean, invstd = saved
            dz, dgamma, dbeta = K.batch_norm_backward(grad_y, z, self.bn.gamma, mean, invstd, activation=self.act,
                                                      y=y if self.act != "identity" else None,
                                                      **_bn_grads_out(self.ws, self.bn, z.shape, z.dtype))
            _set_grad(self.bn.dgamma, dgamma)
            _set_grad(self.bn.dbeta, dbeta)
        beta = 1.0 if self.accumulate_weight_grad else 0.0
        # The bias gradient (dz's column sums; bitwise bias_grad's on the CPU, summed in double
        # on a GPU) comes out of the dW GEMM, which reads dz anyway: no pass of its own.
        a_sums = d.dbias if d.bias_enabled else None
        if branch is not None and not self.accumulate_weight_grad and need_input_grad:
            with branch.on_side(d.dweight, a_sums):  # dz is final here; the dX GEMM below runs beside it
                _fused_gemm(dz, x, True, beta, d.dweight, a_sums=a_sums)
        else:
            _fused_gemm(dz, x, True, beta, d.dweight, a_sums=a_sums)
        if not need_input_grad:
            return None
        dx = self.ws.get("dx", (dz.shape[0], d.in_features), dz.dtype)
        if relu_mask is not None:
            return _fused_gemm(dz, d.weight, False, 0.0, dx, relu_mask=relu_mask)
        return K.gemm(dz, d.weight, out=dx)


#: Whether a device backward may run its weight-gradient GEMMs on a second stream (a switch for
#: tests and debugging: the results are the same either way).
_SIDE_STREAM = True


class _Branch:
    """A model's second stream for its device backward: on_side(*written) forks it from the main
    stream at the current point (dz ready) and launches the block's work there; join() makes the
    main stream wait for everything launched on it and hands the arrays written there back to the
    main stream. Its events are re-recorded at each fork and join. ``warm``: an eager backward has
    used it (its GEMM scratch exists, which a capture cannot allocate)."""

    def __init__(self, device: int):
        from . import cuda as _cuda

        self.side = _cuda.Stream(device)
        self.fork_event, self.join_event = _cuda.Event(device), _cuda.Event(device)
        self.main = None
        self.capturing = False
        self.used = self.warm = False
        self.written: list = []

    @contextlib.contextmanager
    def on_side(self, *written):
        from . import cuda as _cuda

        self.fork_event.record(self.main)
        self.side.wait_event(self.fork_event)
        self.used = True
        self.written.extend(a for a in written if a is not None)
        with _cuda.stream(self.side):
            yield

    def join(self) -> None:
        from . import cuda as _cuda

        if not self.used:
            return
        self.used = False
        written, self.written = self.written, []
        self.join_event.record(self.side)
        self.main.wait_event(self.join_event)
        if not self.capturing:
            self.warm = True
            for a in written:  # ordered after the join on the main stream: readable there
                if isinstance(a, _cuda.DeviceArray):
                    a._stream = self.main


def _fused_gemm(a, b, trans_a: bool, beta: float, out, a_sums=None, relu_mask=None):
    """``out = op(a) @ b + beta * out`` with a layer's backward extras: ``a_sums`` receives a's
    column sums, ``relu_mask`` = ``(y, p)`` turns the product into the gradient through that
    dropout and ReLU (as relu_dropout_backward). On the host or on a GPU, like the arrays."""
    y, p = relu_mask if relu_mask is not None else (None, 0.0)
    if type(a) is np.ndarray:
        return _core._gemm(a, b, trans_a, False, 1.0, beta, out, None, "identity", a_sums, y, p)
    return _cuda_kernels.gemm(a, b, trans_a=trans_a, trans_b=False, alpha=1.0, beta=beta, out=out, bias=None,
                              activation="identity", stream=None, a_sums=a_sums, relu_mask=y, mask_p=p)


def _bn_stats_out(ws: Optional[_Workspace], cols: int, dtype) -> dict:
    """On a device, batch norm's saved statistics go to workspaces (nothing is allocated inside a
    captured step); on the CPU the kernel returns new ones."""
    if ws is None or ws.device == "cpu":
        return {}
    return {"save_mean": ws.get("mean", (cols,), dtype), "save_invstd": ws.get("invstd", (cols,), dtype)}


def _bn_grads_out(ws: Optional[_Workspace], bn: BatchNorm, shape, dtype) -> dict:
    """On a device, batch norm's backward writes dx to a workspace and dgamma/dbeta into the arena."""
    if ws is None or ws.device == "cpu":
        return {}
    return {"dx": ws.get("dx_bn", tuple(shape), dtype), "dgamma": bn.dgamma, "dbeta": bn.dbeta}


def _set_grad(dst, src) -> None:
    if src is not dst:
        _arrays.assign(dst, src)


def _raise_bn_batch(rows):
    raise ValueError(f"BatchNorm in training mode needs at least 2 rows per batch, got {rows} "
                     "(as in torch.nn.BatchNorm1d); use a larger batch or drop the last partial batch")


class _BatchNormBlock:
    """A BatchNorm not preceded by a Dense, fused with a following activation."""

    def __init__(self, bn: BatchNorm, act: str):
        self.bn, self.act = bn, act
        self.ws = _Workspace()

    def forward(self, x, training, ctx):
        bn = self.bn
        if training and x.shape[0] < 2:
            _raise_bn_batch(x.shape[0])
        ws = self.ws if training and self.ws.device != "cpu" else None
        y, mean, invstd = K.batch_norm(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, training=training,
                                       momentum=bn.momentum, eps=bn.eps, activation=self.act,
                                       out=_ws_out(ws, "y", tuple(x.shape), x.dtype),
                                       **_bn_stats_out(ws, x.shape[1], x.dtype))
        if training:
            ctx.append((x, y, mean, invstd))
        return y

    def backward(self, grad_y, saved, need_input_grad):
        x, y, mean, invstd = saved
        dx, dgamma, dbeta = K.batch_norm_backward(grad_y, x, self.bn.gamma, mean, invstd, activation=self.act,
                                                  y=y if self.act != "identity" else None,
                                                  **_bn_grads_out(self.ws, self.bn, x.shape, x.dtype))
        _set_grad(self.bn.dgamma, dgamma)
        _set_grad(self.bn.dbeta, dbeta)
        return dx


class _TiedDenseBlock:
    """TiedDense [→ activation]: y = act(x W + b) with W the source layer's (out, in) weight."""

    def __init__(self, layer: TiedDense, act: str):
        self.layer, self.act = layer, act
        self.ws = _Workspace()

    def forward(self, x, training, ctx):
        src = self.layer.source
        y = K.gemm(x, src.weight, bias=self.layer.bias if self.layer.bias_enabled else None, activation=self.act,
                   out=_ws_out(self.ws if training else None, "y", (x.shape[0], src.in_features), x.dtype))
        if training:
            ctx.append((x, y))
        return y

    def backward(self, grad_y, saved, need_input_grad):
        x, y = saved
        src = self.layer.source
        dz = K.activation_backward(grad_y, y, self.act, out=grad_y) if self.act != "identity" else grad_y
        # This block runs before the source's backward: it writes dW, the source accumulates.
        K.gemm(x, dz, trans_a=True, out=src.dweight)
        if self.layer.bias_enabled:
            K.bias_grad(dz, out=self.layer.dbias)
        if not need_input_grad:
            return None
        return K.gemm(dz, src.weight, trans_b=True, out=self.ws.get("dx", (dz.shape[0], src.out_features), dz.dtype))


class _NoiseBlock:
    def __init__(self, layer: Noise, stream_index: int):
        self.layer, self.stream_index = layer, stream_index
        self.ws = _Workspace()

    def forward(self, x, training, ctx, seed=0, offset=0, rng=None):
        if not training or self.layer.level == 0.0:
            if training:
                ctx.append(None)
            return x
        rng = rng or {}
        ctx.append((offset, rng))
        return K.add_noise(x, self.layer.kind, self.layer.level, seed=seed, offset=offset,
                           out=self.ws.get("y", x.shape, x.dtype), **rng)

    def backward(self, grad_y, saved, need_input_grad, seed=0):
        if saved is None or self.layer.kind == "gaussian":
            return grad_y
        offset, rng = saved
        return K.add_noise(grad_y, "mask", self.layer.level, seed=seed, offset=offset, out=grad_y, **rng)


class _ActivationBlock:
    def __init__(self, act: str):
        self.act = act
        self.ws = _Workspace()

    def forward(self, x, training, ctx):
        y = K.activation(x, self.act, out=_ws_out(self.ws if training else None, "y", x.shape, x.dtype))
        if training:
            ctx.append(y)
        return y

    def backward(self, grad_y, saved, need_input_grad):
        return K.activation_backward(grad_y, saved, self.act, out=grad_y)


class _DropoutBlock:
    def __init__(self, layer: Dropout, stream_index: int):
        self.layer, self.stream_index = layer, stream_index
        self.ws = _Workspace()
        self.relu_before = False

    def forward(self, x, training, ctx, seed=0, offset=0, rng=None):
        if not training or self.layer.p == 0.0:
            if training:
                ctx.append(None)
            return x
        rng = rng or {}
        ctx.append((offset, rng))
        return K.dropout(x, self.layer.p, seed=seed, offset=offset, out=self.ws.get("y", x.shape, x.dtype), **rng)

    def backward(self, grad_y, saved, need_input_grad, seed=0):
        if saved is None:
            return grad_y
        offset, rng = saved
        return K.dropout_backward(grad_y, self.layer.p, seed=seed, offset=offset, out=grad_y, **rng)

    def fuses_relu_backward(self, grad_y, saved) -> bool:
        """Whether backward_through_relu applies: a step that drew a mask, after a block whose
        output went through a plain ReLU (``relu_before``, set by Sequential)."""
        return self.relu_before and saved is not None

    def backward_through_relu(self, grad_y):
        """The gradient through this dropout and the ReLU before it, from the dropout's output:
        kept elements of a positive ReLU output are exactly those with output > 0, so the mask need
        not be drawn again (one kernel instead of two on a GPU). Bitwise what dropout's backward
        then ReLU's backward give."""
        y = self.ws.arrays["y"]
        if type(grad_y) is np.ndarray:
            return _core._relu_dropout_backward(grad_y, y, self.layer.p, grad_y)
        return _cuda_kernels.relu_dropout_backward(grad_y, y, self.layer.p, out=grad_y, stream=None)


class Sequential:
    """A stack of layers with one flat parameter arena.

    ``Sequential(Dense(784, 256), ReLU(), Dropout(0.2), Dense(256, 10), init="he", seed=0)``.
    The model outputs logits; ``output`` ("identity", "softmax" or "sigmoid") only decides what
    :meth:`predict` and :meth:`predict_proba` make of them.

    Threads: inference (``predict``, ``forward``) may run from any number of threads at once.
    Training-mode calls (``Trainer.fit``/``train_step``, ``forward(training=True)``, ``backward``,
    ``value_and_grad``) take the model's :class:`TrainingGuard`: from a second thread they raise
    ``RuntimeError`` instead of corrupting the model. A model whose parameter and gradient arenas
    would exceed the machine's physical memory raises ``MemoryError`` before allocating.
    """

    def __init__(self, *layers: Layer, output: str = "identity", init="he", seed: int = 0,
                 dtype="float32", device: str = "cpu"):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {type(layer).__name__}, not a fastmlp.nn.Layer")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(repr(o) for o in OUTPUTS)}, got {output!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.layers: List[Layer] = list(layers)
        self.output = output
        self.init = _init.resolve(init)
        self.seed = int(seed)
        self.dtype = _dtype(dtype)
        self.device = _arrays.check_device(device)
        if self.device != "cpu" and self.dtype != np.float32:
            raise TypeError(f"device={self.device!r} trains in float32, got dtype={self.dtype.name}")
        self.scaler: Optional[Dict[str, np.ndarray]] = None  # standardisation statistics (Trainer)
        self._training_guard = TrainingGuard()
        self._check_shapes()
        self._build_arena()
        self._build_blocks()
        self._saved: Optional[list] = None
        self._saved_seed = 0
        on = self.device
        self.device = "cpu"
        self.reset_parameters()
        if on != "cpu":
            self.to(on)

    # -- structure ------------------------------------------------------------------------------

    def _check_shapes(self):
        width = None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                if width is not None and layer.in_features != width:
                    raise ValueError(f"layer {i} (Dense) expects {layer.in_features} inputs but the previous "
                                     f"layer gives {width}")
                width = layer.out_features
            elif isinstance(layer, TiedDense):
                if not (0 <= layer.tied_to < i) or not isinstance(self.layers[layer.tied_to], Dense):
                    raise ValueError(f"layer {i} (TiedDense) must tie to an earlier Dense layer, got index "
                                     f"{layer.tied_to}")
                layer.source = self.layers[layer.tied_to]
                if width is not None and layer.source.out_features != width:
                    raise ValueError(f"layer {i} (TiedDense) expects {layer.source.out_features} inputs but the "
                                     f"previous layer gives {width}")
                width = layer.source.in_features
            elif isinstance(layer, BatchNorm):
                if width is not None and layer.features != width:
                    raise ValueError(f"layer {i} (BatchNorm) has {layer.features} features but its input has {width}")
                width = layer.features
        first = next((l for l in self.layers if isinstance(l, (Dense, BatchNorm))), None)
        if first is None:
            raise ValueError("Sequential needs at least one Dense or BatchNorm layer to know its width")
        self.in_features = first.in_features if isinstance(first, Dense) else first.features
        self.out_features = width

    def _build_arena(self):
        infos: List[ParamInfo] = []
        start = 0
        dense = -1
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                dense += 1
            for name, shape, kind in layer.param_specs():
                size = math.prod(shape)  # Python ints: no silent int64 overflow
                infos.append(ParamInfo(i, name, kind, start, size, tuple(shape),
                                       dense if isinstance(layer, Dense) else None))
                start += size
        self._param_infos = infos
        #: Number of Dense layers: per-layer regularisation takes one value per Dense layer.
        self.n_dense = dense + 1
        self._check_allocatable(start)
        self._params = np.zeros(start, self.dtype)
        self._grads = np.zeros(start, self.dtype)
        for info in infos:
            layer = self.layers[info.layer]
            sl = slice(info.start, info.start + info.size)
            setattr(layer, info.name, self._params[sl].reshape(info.shape))
            setattr(layer, "d" + info.name, self._grads[sl].reshape(info.shape))
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.running_mean = np.zeros(layer.features, self.dtype)
                layer.running_var = np.ones(layer.features, self.dtype)

    def _check_allocatable(self, n_params: int) -> None:
        """Refuse, before allocating, a model whose parameter and gradient arenas cannot fit in
        this machine's physical memory (an allocation that large could only succeed through
        overcommit and would then kill the process when touched)."""
        widths = [l.in_features for l in self.layers if isinstance(l, Dense)][:1] + \
            [l.out_features for l in self.layers if isinstance(l, Dense)]
        what = f"{type(self).__name__} with layer widths {widths}" if widths else type(self).__name__
        if n_params >= 2**63:
            raise ValueError(f"{what} would have {n_params} parameters, more than 2**63 - 1")
        arena_bytes = 2 * n_params * self.dtype.itemsize  # parameters + gradients
        limit = physical_memory_bytes()
        if limit is not None and arena_bytes > limit:
            raise MemoryError(f"{what} would have {n_params:,} parameters: its parameter and gradient arenas need "
                              f"{arena_bytes:,} bytes ({arena_bytes / 2**30:,.1f} GiB) of {self.dtype.name}, more "
                              f"than this machine's physical memory ({limit:,} bytes, {limit / 2**30:,.1f} GiB); "
                              f"nothing was allocated")

    def _build_blocks(self):
        blocks = []
        i, n, streams = 0, len(self.layers), 0
        while i < n:
            layer, first = self.layers[i], i
            if isinstance(layer, Dense):
                bn, act, j = None, "identity", i + 1
                if j < n and isinstance(self.layers[j], BatchNorm):
                    bn, j = self.layers[j], j + 1
                if j < n and isinstance(self.layers[j], _Activation):
                    act, j = self.layers[j].kind, j + 1
                blocks.append(_DenseBlock(layer, bn, act))
                i = j
            elif isinstance(layer, TiedDense):
                act, j = "identity", i + 1
                if j < n and isinstance(self.layers[j], _Activation):
                    act, j = self.layers[j].kind, j + 1
                blocks.append(_TiedDenseBlock(layer, act))
                i = j
            elif isinstance(layer, BatchNorm):
                act, j = "identity", i + 1
                if j < n and isinstance(self.layers[j], _Activation):
                    act, j = self.layers[j].kind, j + 1
                blocks.append(_BatchNormBlock(layer, act))
                i = j
            elif isinstance(layer, Noise):
                blocks.append(_NoiseBlock(layer, streams))
                streams += 1
                i += 1
            elif isinstance(layer, _Activation):
                blocks.append(_ActivationBlock(layer.kind))
                i += 1
            elif isinstance(layer, Dropout):
                blocks.append(_DropoutBlock(layer, streams))
                streams += 1
                i += 1
            else:  # pragma: no cover - guarded in __init__
                raise TypeError(f"unsupported layer {layer!r}")
            blocks[-1].first_layer = first
        tied_sources = {id(l.source) for l in self.layers if isinstance(l, TiedDense)}
        for b in blocks:
            if isinstance(b, _DenseBlock) and id(b.dense) in tied_sources:
                b.accumulate_weight_grad = True
        for prev, b in zip(blocks, blocks[1:]):
            if isinstance(b, _DropoutBlock):
                b.relu_before = type(prev) is _DenseBlock and prev.bn is None and prev.act == "relu"
        self._blocks = blocks
        # Blocks before the first one with parameters need no input gradient.
        self._first_param_block = next(
            (k for k, b in enumerate(blocks) if isinstance(b, (_DenseBlock, _TiedDenseBlock, _BatchNormBlock))),
            len(blocks))
        #: Random streams one training step uses (one per dropout or noise layer); see DESIGN.md.
        self.n_streams = streams

    def reset_parameters(self, init=None, seed: Optional[int] = None) -> None:
        """(Re)initialise every parameter: weights by ``init`` (default: the model's), biases and
        batch-norm shifts to 0, batch-norm scales to 1, running statistics to (0, 1)."""
        if self.device != "cpu":  # the initialisers write NumPy views: initialise on the host
            device = self.device
            self.to("cpu")
            try:
                self.reset_parameters(init, seed)
            finally:
                self.to(device)
            return
        init = self.init if init is None else _init.resolve(init)
        seed = self.seed if seed is None else int(seed)
        for stream, info in enumerate(self._param_infos):
            layer = self.layers[info.layer]
            view = getattr(layer, info.name)
            if info.kind == "weight":
                _init.init_weight(view, layer.in_features, layer.out_features, init, seed, stream)
            elif info.kind == "gamma":
                view[...] = 1
            else:
                view[...] = 0
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.running_mean[...] = 0
                layer.running_var[...] = 1

    def to(self, device: str) -> "Sequential":
        """Move the parameters, gradients, buffers and workspaces to ``device`` ("cpu" or
        "cuda"); returns the model. A Trainer or optimizer bound to the model re-binds its state
        on its next step. Training a CUDA model keeps everything on the device."""
        device = _arrays.check_device(device)
        if device != "cpu" and self.dtype != np.float32:
            raise TypeError(f"device={device!r} trains in float32; this model is {self.dtype.name}")
        if device == self.device:
            return self
        self._params = _arrays.to_device(self._params, device)
        self._grads = _arrays.to_device(self._grads, device)
        for info in self._param_infos:
            layer = self.layers[info.layer]
            setattr(layer, info.name, _arrays.view(self._params, info.start, info.shape))
            setattr(layer, "d" + info.name, _arrays.view(self._grads, info.start, info.shape))
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.running_mean = _arrays.to_device(layer.running_mean, device)
                layer.running_var = _arrays.to_device(layer.running_var, device)
        for block in self._blocks:
            ws = getattr(block, "ws", None)
            if ws is not None:
                ws.arrays.clear()
                ws.device = device
        self._saved = None
        self.device = device
        return self

    def _workspace_arrays(self) -> list:
        """Every workspace array of every block (a captured CUDA graph keeps them alive)."""
        return [a for b in self._blocks if getattr(b, "ws", None) is not None for a in b.ws.arrays.values()]

    # -- arenas ---------------------------------------------------------------------------------

    def parameters(self) -> np.ndarray:
        """The flat parameter arena (a view: writing to it changes the model); a device array
        when the model is on a CUDA device."""
        return self._params

    def gradients(self) -> np.ndarray:
        """The flat gradient arena, filled by :meth:`backward` / :meth:`value_and_grad`."""
        return self._grads

    def param_layout(self) -> List[ParamInfo]:
        """Where each parameter tensor lives in the arena, in order."""
        return list(self._param_infos)

    @property
    def n_parameters(self) -> int:
        return int(self._params.size)

    def buffers(self) -> Dict[str, np.ndarray]:
        """Non-learned state (batch-norm running statistics), by name."""
        out = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, BatchNorm):
                out[f"{i}.running_mean"] = layer.running_mean
                out[f"{i}.running_var"] = layer.running_var
        return out

    # -- computation ----------------------------------------------------------------------------

    def _as_input(self, X, sparse_ok: bool = False) -> np.ndarray:
        if self.device != "cpu":
            if _arrays.is_sparse(X):
                X = self._as_host_input(X)  # densified: device models take dense rows
            return self._as_device_input(X)
        return self._as_host_input(X, sparse_ok)

    def _as_host_input(self, X, sparse_ok: bool = False) -> np.ndarray:
        """X checked and converted on the host: scaled, C-contiguous, the model's dtype. A
        scipy.sparse X becomes :class:`~fastmlp._arrays.SparseRows` (dense rows on demand) where
        the caller takes them (``sparse_ok``: prediction chunks, training batches), else one dense
        array."""
        if (type(X) is np.ndarray and X.dtype == self.dtype and X.ndim == 2 and X.shape[1] == self.in_features
                and self.scaler is None and X.flags.c_contiguous):
            return X  # what the checks below would pass and leave as it is, for a few attribute reads
        if _arrays.is_sparse(X):
            if len(X.shape) != 2 or X.shape[1] != self.in_features:
                raise ValueError(f"X has shape {X.shape} but the model expects (samples, {self.in_features})")
            if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
                raise TypeError(f"X must be numeric, got dtype {X.dtype}")
            rows = _arrays.SparseRows(X, self.dtype, self.scaler)
            return rows if sparse_ok else rows[:]
        X = np.asarray(X)
        if X.ndim == 1 and self.in_features == 1:
            X = X.reshape(-1, 1)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
        if X.shape[1] != self.in_features:
            raise ValueError(f"X has {X.shape[1]} features but the model expects {self.in_features}")
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
            raise TypeError(f"X must be numeric, got dtype {X.dtype}")
        if self.scaler is not None:
            X = (X - self.scaler["x_mean"]) / self.scaler["x_scale"]
        return np.ascontiguousarray(X, dtype=self.dtype)

    def _as_device_input(self, X):
        """X for a model on a CUDA device: device arrays are checked and used as they are (they
        must already be scaled, float32 and C-contiguous); host data is converted, then uploaded."""
        if not _arrays.is_device(X):
            return _arrays.to_device(self._as_host_input(X), self.device)
        shape, dtype = tuple(X.shape), np.dtype(getattr(X, "dtype", np.float32))
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ValueError(f"X has shape {shape} but the model expects (samples, {self.in_features})")
        if dtype != np.float32:
            raise TypeError(f"X on the device must be float32, got {dtype}")
        if self.scaler is not None:
            raise ValueError("this model standardises its inputs: pass host data (it is scaled, then uploaded), "
                             "or scale the device array yourself and clear model.scaler")
        return X

    def _forward(self, x: np.ndarray, training: bool, seed: int = 0, step: int = 0,
                 device_step=None) -> np.ndarray:
        """Forward on an already converted input; in training mode keeps what backward needs.
        ``device_step`` (a device int64 scalar) makes the random streams derive from the device's
        step counter (DESIGN.md: ``offset = step · n_streams + stream_index``)."""
        return self._forward_blocks(x, 0, len(self._blocks), training, seed, step, device_step)

    def _forward_blocks(self, x, first: int, last: int, training: bool, seed: int = 0, step: int = 0,
                        device_step=None):
        ctx: Optional[list] = [] if training else None
        rng = None if device_step is None else {"step": device_step, "n_streams": self.n_streams}
        i = first
        while i < last:
            block = self._blocks[i]
            if isinstance(block, (_DropoutBlock, _NoiseBlock)):
                if rng is None:
                    x = block.forward(x, training, ctx, seed=seed, offset=step * self.n_streams + block.stream_index)
                else:
                    x = block.forward(x, training, ctx, seed=seed, offset=block.stream_index, rng=rng)
            elif (training and i + 1 < last and isinstance(block, _DenseBlock)
                  and isinstance(self._blocks[i + 1], _DropoutBlock) and self._blocks[i + 1].relu_before
                  and self._blocks[i + 1].layer.p > 0.0 and _cuda_kernels.is_device_array(x)):
                # On a GPU a ReLU layer's dropout runs in its GEMM's epilogue: one kernel and one
                # pass over the activations less, the same mask and values.
                drop = self._blocks[i + 1]
                offset = drop.stream_index if rng is not None else step * self.n_streams + drop.stream_index
                x = block.forward_dropout(x, ctx, drop, seed, offset, rng)
                i += 1
            else:
                x = block.forward(x, training, ctx)
            i += 1
        if training:
            self._saved = ctx
            self._saved_seed = seed
        return x

    def __getstate__(self):
        # Plain arrays and the file header (DESIGN.md): pickling the layers as they are would
        # turn their views of the arena into separate copies.
        from .serialize import model_to_parts

        header, arrays = model_to_parts(self)
        return {"fastmlp_model": header, "arrays": arrays, "init": self.init if callable(self.init) else None,
                "device": self.device}

    def __setstate__(self, state):
        from .serialize import model_from_parts

        model = model_from_parts(state["fastmlp_model"], state["arrays"])
        self.__dict__.update(model.__dict__)
        if state.get("init") is not None:
            self.init = state["init"]
        if state.get("device", "cpu") != "cpu":
            self.to(state["device"])  # raises a clear error where no CUDA device is usable

    def save(self, path) -> None:
        """Save the model (architecture, parameters, buffers, scaler) atomically; reload with
        :func:`fastmlp.load`."""
        from .serialize import save

        save(self, path)

    def forward(self, X, training: bool = False, *, seed: int = 0, step: int = 0) -> np.ndarray:
        """The logits for X (rows, in_features). ``training=True`` applies dropout (streams from
        ``seed`` and ``step``) and batch statistics, and keeps what :meth:`backward` needs."""
        x = self._as_input(X, sparse_ok=not training)
        if not training:
            out = self._predict_chunks(x)
        else:
            # The internal buffers are reused by the next training step: hand the caller a copy.
            with training_guard(self).hold("forward(training=True)", reentrant=True):
                out = _arrays.copy(self._forward(x, True, seed, step))
        # A CUDA model answers host input with host arrays, device input with device arrays.
        return out if _arrays.is_device(X) or not _arrays.is_device(out) else out.to_numpy()

    __call__ = forward

    def backward(self, grad_logits: np.ndarray, need_input_grad: bool = False) -> Optional[np.ndarray]:
        """Back-propagate d loss / d logits through the last training-mode forward, filling
        :meth:`gradients`. Returns d loss / d input when ``need_input_grad``."""
        if self._saved is None:
            raise RuntimeError("backward needs a forward(..., training=True) first")
        if self.device != "cpu":
            grad = _arrays.to_device(grad_logits, self.device)
            grad = _arrays.copy(grad) if grad is grad_logits else grad  # the blocks work in place on it
        else:
            grad = np.ascontiguousarray(grad_logits, dtype=self.dtype)
            if grad is grad_logits:
                grad = grad.copy()  # the blocks work in place on the gradient
        with training_guard(self).hold("backward", reentrant=True):
            return self._backward(grad, need_input_grad)

    def _backward(self, grad: np.ndarray, need_input_grad: bool = False) -> Optional[np.ndarray]:
        """backward on a gradient array the model may overwrite (the Trainer's loss buffer)."""
        branch = self._backward_branch(grad)
        try:
            result = self._backward_blocks(grad, need_input_grad, branch)
        except BaseException:
            if branch is not None:
                with contextlib.suppress(Exception):  # the original error is the one to see
                    branch.join()
            raise
        if branch is not None:
            branch.join()
        return result

    def _backward_branch(self, grad) -> Optional["_Branch"]:
        """On a GPU, inside a stream block (the Trainer's steps, graph captures): the weight
        gradients go to a second stream of this model's, beside the input gradients on the first,
        so the small GEMMs of a layer's backward overlap instead of queueing (each fills the GPU
        only briefly). None elsewhere."""
        from . import cuda as _cuda

        if not _SIDE_STREAM or not isinstance(grad, _cuda.DeviceArray) or _cuda._context_stream() is None:
            return None
        if sum(isinstance(b, _DenseBlock) and not b.accumulate_weight_grad for b in self._blocks) < 2:
            return None
        branches = self.__dict__.setdefault("_branches", {})
        branch = branches.get(grad.device)
        main = _cuda.current_stream()
        capturing = _cuda._capturing() or main.is_capturing()  # fastmlp's capture or another library's
        if capturing:
            # The second stream's GEMM scratch grows only outside a capture: a captured backward
            # branches once an eager one has.
            if branch is None or not branch.warm:
                return None
        elif branch is None:
            branch = branches[grad.device] = _Branch(grad.device)
        branch.main, branch.capturing = main, capturing
        return branch

    def _backward_blocks(self, grad, need_input_grad: bool, branch: Optional["_Branch"]):
        ctx = self._saved
        act_done = False
        side = {} if branch is None else {"branch": branch}  # a dense block's extra, only when there is one
        idx = len(self._blocks)
        while idx > 0:
            idx -= 1
            block = self._blocks[idx]
            saved = ctx[idx]
            need = need_input_grad or idx > self._first_param_block
            if isinstance(block, _DropoutBlock) and block.fuses_relu_backward(grad, saved):
                grad, act_done = block.backward_through_relu(grad), True  # the ReLU block's too
                continue
            if (need and idx > 0 and isinstance(block, _DenseBlock)
                    and isinstance(self._blocks[idx - 1], _DropoutBlock)
                    and self._blocks[idx - 1].fuses_relu_backward(grad, ctx[idx - 1])):
                # This block's input gradient goes straight through the dropout and the ReLU
                # before it, in its dX GEMM's epilogue: one pass and one kernel call less.
                drop = self._blocks[idx - 1]
                grad = block.backward(grad, saved, need, act_done=act_done,
                                      relu_mask=(drop.ws.arrays["y"], drop.layer.p), **side)
                act_done = True  # for the ReLU block before the dropout
                idx -= 1
                continue
            dense = side if isinstance(block, _DenseBlock) else {}
            if isinstance(block, (_DropoutBlock, _NoiseBlock)):
                grad = block.backward(grad, saved, need, seed=self._saved_seed)
            elif act_done:
                grad, act_done = block.backward(grad, saved, need, act_done=True, **dense), False
            else:
                grad = block.backward(grad, saved, need, **dense)
            if grad is None:
                break
        self._saved = None
        return grad

    def value_and_grad(self, X, y, loss: Optional[str] = None, *, training: bool = True, seed: int = 0,
                       step: int = 0) -> Tuple[float, np.ndarray]:
        """The mean data loss on (X, y) and its gradient with respect to :meth:`parameters`.

        ``loss`` is "squared", "cross_entropy" or "binary_cross_entropy" (default: from
        ``output``). Returns ``(loss, gradients)``; the gradient array is the model's gradient
        arena (overwritten by the next call; copy it to keep it).
        """
        loss = _losses.resolve(loss, self.output)
        x = self._as_input(X)
        target = _losses.prepare_target(loss, y, x.shape[0], self.out_features, self.dtype)
        target = _arrays.to_device(target, self.device)
        with training_guard(self).hold("value_and_grad", reentrant=True):
            if training:
                logits = self._forward(x, True, seed, step)
            else:
                logits = self._forward_eval_saving(x)
            value, grad = _losses.compute(loss, logits, target)
            self.backward(grad)
            return float(value), self._grads

    def _forward_eval_saving(self, x):
        """Inference-mode forward that still keeps what backward needs (dropout off, running
        batch-norm statistics). Backward through batch norm assumes batch statistics, so this
        is offered for models without batch norm only."""
        if any(isinstance(l, BatchNorm) for l in self.layers):
            raise ValueError("value_and_grad(training=False) is not supported with BatchNorm layers")
        ctx: list = []
        for block in self._blocks:
            if isinstance(block, (_DropoutBlock, _NoiseBlock)):
                ctx.append(None)
            else:
                x = block.forward(x, True, ctx)
        self._saved = ctx
        return x

    def _predict_chunks(self, x: np.ndarray) -> np.ndarray:
        rows = x.shape[0]
        if rows <= PREDICT_CHUNK_ROWS:
            return self._forward(x[:] if isinstance(x, _arrays.SparseRows) else x, False)
        out = _arrays.empty((rows, self.out_features), self.dtype, self.device)
        for start in range(0, rows, PREDICT_CHUNK_ROWS):
            stop = min(rows, start + PREDICT_CHUNK_ROWS)
            _arrays.assign(out[start:stop], self._forward(x[start:stop], False))
        return out

    def decision_function(self, X) -> np.ndarray:
        """The logits (inference mode)."""
        return self.forward(X)

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities: softmax of the logits (output="softmax") or sigmoid (output="sigmoid")."""
        if self.output == "identity":
            raise ValueError("predict_proba needs output='softmax' or 'sigmoid'; this model's output is 'identity'")
        logits = self.forward(X)
        return _losses.probabilities(self.output, logits.to_numpy() if _arrays.is_device(logits) else logits)

    def predict(self, X) -> np.ndarray:
        """Outputs (identity; un-standardised in float64 if the Trainer standardised y), class indices
        (softmax) or a 0/1 matrix at probability 0.5 (sigmoid)."""
        logits = self.forward(X)
        if _arrays.is_device(logits):
            logits = logits.to_numpy()
        if self.output == "softmax":
            return logits.argmax(axis=1)
        if self.output == "sigmoid":
            return (logits > 0).astype(np.int64)
        if self.scaler is not None and "y_mean" in self.scaler:
            # float64: in float32 a target offset of 1e7 would leave 16 distinct predictions
            return logits * self.scaler["y_scale"] + self.scaler["y_mean"]
        return logits

    # -- description ----------------------------------------------------------------------------

    def config(self) -> dict:
        return {"kind": "Sequential", "layers": [l.config() for l in self.layers], "output": self.output,
                "seed": self.seed, "dtype": self.dtype.name,
                "init": self.init if isinstance(self.init, str) else "callable"}

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n) output={self.output!r}, {self.n_parameters} parameters"


def _per_layer(value, count: int, name: str) -> List[float]:
    if np.ndim(value) == 0:
        return [float(value)] * count
    values = [float(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} values but the model has {count} hidden layers")
    return values


def _check_drop_probs(probs: List[float], name: str) -> List[float]:
    for p in probs:
        if not 0.0 <= p < 1.0:  # a zero adds no layer, so Dropout's own check would not see it
            raise ValueError(f"{name} must satisfy 0 <= p < 1, got {p}")
    return probs


class MLP(Sequential):
    """A multi-layer perceptron.

    ``MLP([784, 512, 512, 10], activation="relu", output="softmax", dropout=0.2)`` is
    Dense → ReLU → Dropout → Dense → ReLU → Dropout → Dense. With ``batch_norm=True`` each hidden
    layer is Dense (no bias) → BatchNorm → activation → Dropout. ``dropout`` is one value or one
    per hidden layer; ``input_dropout`` drops inputs. ``activation`` is one name or one per hidden
    layer (``["relu", "relu", "identity"]``: a linear last hidden layer, as ``from_encoder`` builds
    for an autoencoder's linear code).

    Threads and memory as for :class:`Sequential`: predict from many threads at once; train from
    one thread at a time (a second gets ``RuntimeError``); sizes beyond physical memory raise
    ``MemoryError`` before anything is allocated.
    """

    def __init__(self, sizes: Sequence[int], *, activation: Union[str, Sequence[str]] = "relu",
                 output: str = "identity", dropout: Union[float, Sequence[float]] = 0.0, input_dropout: float = 0.0,
                 batch_norm: bool = False, init="he", seed: int = 0, dtype="float32", device: str = "cpu"):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
        hidden = len(sizes) - 2
        if isinstance(activation, str):
            acts = [_activation_name(activation)] * hidden
        else:
            acts = [_activation_name(a) for a in activation]
            if len(acts) != hidden:
                raise ValueError(f"activation has {len(acts)} names but the model has {hidden} hidden layers")
        drops = _check_drop_probs(_per_layer(dropout, hidden, "dropout"), "dropout")
        _check_drop_probs([float(input_dropout)], "input_dropout")
        layers: List[Layer] = []
        if input_dropout:
            layers.append(Dropout(input_dropout))
        for i in range(hidden):
            layers.append(Dense(sizes[i], sizes[i + 1], bias=not batch_norm))
            if batch_norm:
                layers.append(BatchNorm(sizes[i + 1]))
            layers.append(_ACTIVATION_LAYERS[acts[i]]())
            if drops[i] > 0:
                layers.append(Dropout(drops[i]))
        layers.append(Dense(sizes[-2], sizes[-1]))
        self.sizes = sizes
        # One name when every hidden layer has it (as given, or all the same); else the list.
        self.activation = _activation_name(activation) if isinstance(activation, str) else \
            (acts[0] if acts and acts.count(acts[0]) == len(acts) else acts)
        self.dropout = drops
        self.input_dropout = float(input_dropout)
        self.batch_norm = bool(batch_norm)
        super().__init__(*layers, output=output, init=init, seed=seed, dtype=dtype, device=device)

    def config(self) -> dict:
        cfg = super().config()
        activation = list(self.activation) if isinstance(self.activation, list) else self.activation
        cfg.update(kind="MLP", sizes=list(self.sizes), activation=activation, dropout=list(self.dropout),
                   input_dropout=self.input_dropout, batch_norm=self.batch_norm)
        return cfg

    @classmethod
    def from_encoder(cls, autoencoder, outputs: int, *, output: str = "softmax", dropout=0.0, seed: int = 0,
                     init="he") -> "MLP":
        """An MLP whose hidden layers start from a trained autoencoder's encoder (unsupervised
        pre-training), with the encoder's activations (the code layer keeps the autoencoder's
        ``code_activation``, linear by default); the new output layer of width ``outputs`` is
        initialised by ``init``."""
        enc_sizes = list(autoencoder.sizes)
        acts = [autoencoder.activation] * (len(enc_sizes) - 2) + [autoencoder.code_activation]
        model = cls(enc_sizes + [int(outputs)], activation=acts, output=output,
                    dropout=dropout, seed=seed, init=init, dtype=autoencoder.model.dtype,
                    device=autoencoder.model.device)
        src = [l for l in autoencoder.model.layers if isinstance(l, Dense)][: len(enc_sizes) - 1]
        dst = [l for l in model.layers if isinstance(l, Dense)][: len(enc_sizes) - 1]
        for s, d in zip(src, dst):
            _arrays.assign(d.weight, s.weight)
            if d.bias_enabled and s.bias_enabled:
                _arrays.assign(d.bias, s.bias)
        if autoencoder.model.scaler is not None:
            model.scaler = {k: v.copy() for k, v in autoencoder.model.scaler.items() if k.startswith("x_")}
        return model
