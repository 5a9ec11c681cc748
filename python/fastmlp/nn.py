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

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

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

    __slots__ = ("arrays",)

    def __init__(self):
        self.arrays: Dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        a = self.arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype)
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
                                       out=_ws_out(ws, "y", shape, x.dtype))
        if training:
            ctx.append((x, z, y, mean, invstd))
        return y

    def backward(self, grad_y, saved, need_input_grad):
        d = self.dense
        if self.bn is None:
            x, y = saved
            dz = K.activation_backward(grad_y, y, self.act, out=grad_y) if self.act != "identity" else grad_y
        else:
            x, z, y, mean, invstd = saved
            dz, dgamma, dbeta = K.batch_norm_backward(grad_y, z, self.bn.gamma, mean, invstd, activation=self.act,
                                                      y=y if self.act != "identity" else None)
            self.bn.dgamma[...] = dgamma
            self.bn.dbeta[...] = dbeta
        K.gemm(dz, x, trans_a=True, out=d.dweight, beta=1.0 if self.accumulate_weight_grad else 0.0)
        if d.bias_enabled:
            K.bias_grad(dz, out=d.dbias)
        if not need_input_grad:
            return None
        return K.gemm(dz, d.weight, out=self.ws.get("dx", (dz.shape[0], d.in_features), dz.dtype))


def _raise_bn_batch(rows):
    raise ValueError(f"BatchNorm in training mode needs at least 2 rows per batch, got {rows} "
                     "(as in torch.nn.BatchNorm1d); use a larger batch or drop the last partial batch")


class _BatchNormBlock:
    """A BatchNorm not preceded by a Dense, fused with a following activation."""

    def __init__(self, bn: BatchNorm, act: str):
        self.bn, self.act = bn, act

    def forward(self, x, training, ctx):
        bn = self.bn
        if training and x.shape[0] < 2:
            _raise_bn_batch(x.shape[0])
        y, mean, invstd = K.batch_norm(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, training=training,
                                       momentum=bn.momentum, eps=bn.eps, activation=self.act)
        if training:
            ctx.append((x, y, mean, invstd))
        return y

    def backward(self, grad_y, saved, need_input_grad):
        x, y, mean, invstd = saved
        dx, dgamma, dbeta = K.batch_norm_backward(grad_y, x, self.bn.gamma, mean, invstd, activation=self.act,
                                                  y=y if self.act != "identity" else None)
        self.bn.dgamma[...] = dgamma
        self.bn.dbeta[...] = dbeta
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

    def forward(self, x, training, ctx, seed=0, offset=0):
        if not training or self.layer.level == 0.0:
            if training:
                ctx.append(None)
            return x
        ctx.append(offset)
        return K.add_noise(x, self.layer.kind, self.layer.level, seed=seed, offset=offset,
                           out=self.ws.get("y", x.shape, x.dtype))

    def backward(self, grad_y, saved, need_input_grad, seed=0):
        if saved is None or self.layer.kind == "gaussian":
            return grad_y
        return K.add_noise(grad_y, "mask", self.layer.level, seed=seed, offset=saved, out=grad_y)


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

    def forward(self, x, training, ctx, seed=0, offset=0):
        if not training or self.layer.p == 0.0:
            if training:
                ctx.append(None)
            return x
        ctx.append(offset)
        return K.dropout(x, self.layer.p, seed=seed, offset=offset, out=self.ws.get("y", x.shape, x.dtype))

    def backward(self, grad_y, saved, need_input_grad, seed=0):
        if saved is None:
            return grad_y
        return K.dropout_backward(grad_y, self.layer.p, seed=seed, offset=saved, out=grad_y)


class Sequential:
    """A stack of layers with one flat parameter arena.

    ``Sequential(Dense(784, 256), ReLU(), Dropout(0.2), Dense(256, 10), init="he", seed=0)``.
    The model outputs logits; ``output`` ("identity", "softmax" or "sigmoid") only decides what
    :meth:`predict` and :meth:`predict_proba` make of them.
    """

    def __init__(self, *layers: Layer, output: str = "identity", init="he", seed: int = 0,
                 dtype="float32"):
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
        self.scaler: Optional[Dict[str, np.ndarray]] = None  # standardisation statistics (Trainer)
        self._check_shapes()
        self._build_arena()
        self._build_blocks()
        self.reset_parameters()
        self._saved: Optional[list] = None
        self._saved_seed = 0

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
                size = int(np.prod(shape))
                infos.append(ParamInfo(i, name, kind, start, size, tuple(shape),
                                       dense if isinstance(layer, Dense) else None))
                start += size
        self._param_infos = infos
        #: Number of Dense layers: per-layer regularisation takes one value per Dense layer.
        self.n_dense = dense + 1
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

    # -- arenas ---------------------------------------------------------------------------------

    def parameters(self) -> np.ndarray:
        """The flat parameter arena (a view: writing to it changes the model)."""
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

    def _as_input(self, X) -> np.ndarray:
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

    def _forward(self, x: np.ndarray, training: bool, seed: int = 0, step: int = 0) -> np.ndarray:
        """Forward on an already converted input; in training mode keeps what backward needs."""
        return self._forward_blocks(x, 0, len(self._blocks), training, seed, step)

    def _forward_blocks(self, x, first: int, last: int, training: bool, seed: int = 0, step: int = 0):
        ctx: Optional[list] = [] if training else None
        for block in self._blocks[first:last]:
            if isinstance(block, (_DropoutBlock, _NoiseBlock)):
                x = block.forward(x, training, ctx, seed=seed, offset=step * self.n_streams + block.stream_index)
            else:
                x = block.forward(x, training, ctx)
        if training:
            self._saved = ctx
            self._saved_seed = seed
        return x

    def __getstate__(self):
        # Plain arrays and the file header (DESIGN.md): pickling the layers as they are would
        # turn their views of the arena into separate copies.
        from .serialize import model_to_parts

        header, arrays = model_to_parts(self)
        return {"fastmlp_model": header, "arrays": arrays, "init": self.init if callable(self.init) else None}

    def __setstate__(self, state):
        from .serialize import model_from_parts

        model = model_from_parts(state["fastmlp_model"], state["arrays"])
        self.__dict__.update(model.__dict__)
        if state.get("init") is not None:
            self.init = state["init"]

    def save(self, path) -> None:
        """Save the model (architecture, parameters, buffers, scaler) atomically; reload with
        :func:`fastmlp.load`."""
        from .serialize import save

        save(self, path)

    def forward(self, X, training: bool = False, *, seed: int = 0, step: int = 0) -> np.ndarray:
        """The logits for X (rows, in_features). ``training=True`` applies dropout (streams from
        ``seed`` and ``step``) and batch statistics, and keeps what :meth:`backward` needs."""
        x = self._as_input(X)
        if not training:
            return self._predict_chunks(x)
        # The internal buffers are reused by the next training step: hand the caller a copy.
        return self._forward(x, True, seed, step).copy()

    __call__ = forward

    def backward(self, grad_logits: np.ndarray, need_input_grad: bool = False) -> Optional[np.ndarray]:
        """Back-propagate d loss / d logits through the last training-mode forward, filling
        :meth:`gradients`. Returns d loss / d input when ``need_input_grad``."""
        if self._saved is None:
            raise RuntimeError("backward needs a forward(..., training=True) first")
        grad = np.ascontiguousarray(grad_logits, dtype=self.dtype)
        if grad is grad_logits:
            grad = grad.copy()  # the blocks work in place on the gradient
        return self._backward(grad, need_input_grad)

    def _backward(self, grad: np.ndarray, need_input_grad: bool = False) -> Optional[np.ndarray]:
        """backward on a gradient array the model may overwrite (the Trainer's loss buffer)."""
        ctx = self._saved
        for idx in range(len(self._blocks) - 1, -1, -1):
            block = self._blocks[idx]
            saved = ctx[idx]
            need = need_input_grad or idx > self._first_param_block
            if isinstance(block, (_DropoutBlock, _NoiseBlock)):
                grad = block.backward(grad, saved, need, seed=self._saved_seed)
            else:
                grad = block.backward(grad, saved, need)
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
        if training:
            logits = self._forward(x, True, seed, step)
        else:
            logits = self._forward_eval_saving(x)
        value, grad = _losses.compute(loss, logits, target)
        self.backward(grad)
        return value, self._grads

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
            return self._forward(x, False)
        out = np.empty((rows, self.out_features), self.dtype)
        for start in range(0, rows, PREDICT_CHUNK_ROWS):
            stop = min(rows, start + PREDICT_CHUNK_ROWS)
            out[start:stop] = self._forward(x[start:stop], False)
        return out

    def decision_function(self, X) -> np.ndarray:
        """The logits (inference mode)."""
        return self.forward(X)

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities: softmax of the logits (output="softmax") or sigmoid (output="sigmoid")."""
        if self.output == "identity":
            raise ValueError("predict_proba needs output='softmax' or 'sigmoid'; this model's output is 'identity'")
        return _losses.probabilities(self.output, self.forward(X))

    def predict(self, X) -> np.ndarray:
        """Outputs (identity, un-standardised if the Trainer standardised y), class indices
        (softmax) or a 0/1 matrix at probability 0.5 (sigmoid)."""
        logits = self.forward(X)
        if self.output == "softmax":
            return logits.argmax(axis=1)
        if self.output == "sigmoid":
            return (logits > 0).astype(np.int64)
        if self.scaler is not None and "y_mean" in self.scaler:
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
    per hidden layer; ``input_dropout`` drops inputs.
    """

    def __init__(self, sizes: Sequence[int], *, activation: str = "relu", output: str = "identity",
                 dropout: Union[float, Sequence[float]] = 0.0, input_dropout: float = 0.0,
                 batch_norm: bool = False, init="he", seed: int = 0, dtype="float32"):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
        act = _activation_name(activation)
        hidden = len(sizes) - 2
        drops = _check_drop_probs(_per_layer(dropout, hidden, "dropout"), "dropout")
        _check_drop_probs([float(input_dropout)], "input_dropout")
        layers: List[Layer] = []
        if input_dropout:
            layers.append(Dropout(input_dropout))
        for i in range(hidden):
            layers.append(Dense(sizes[i], sizes[i + 1], bias=not batch_norm))
            if batch_norm:
                layers.append(BatchNorm(sizes[i + 1]))
            layers.append(_ACTIVATION_LAYERS[act]())
            if drops[i] > 0:
                layers.append(Dropout(drops[i]))
        layers.append(Dense(sizes[-2], sizes[-1]))
        self.sizes = sizes
        self.activation = act
        self.dropout = drops
        self.input_dropout = float(input_dropout)
        self.batch_norm = bool(batch_norm)
        super().__init__(*layers, output=output, init=init, seed=seed, dtype=dtype)

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(kind="MLP", sizes=self.sizes, activation=self.activation, dropout=self.dropout,
                   input_dropout=self.input_dropout, batch_norm=self.batch_norm)
        return cfg

    @classmethod
    def from_encoder(cls, autoencoder, outputs: int, *, output: str = "softmax", dropout=0.0, seed: int = 0,
                     init="he") -> "MLP":
        """An MLP whose hidden layers start from a trained autoencoder's encoder (unsupervised
        pre-training); the new output layer of width ``outputs`` is initialised by ``init``."""
        enc_sizes = list(autoencoder.sizes)
        model = cls(enc_sizes + [int(outputs)], activation=autoencoder.activation, output=output,
                    dropout=dropout, seed=seed, init=init, dtype=autoencoder.model.dtype)
        src = [l for l in autoencoder.model.layers if isinstance(l, Dense)][: len(enc_sizes) - 1]
        dst = [l for l in model.layers if isinstance(l, Dense)][: len(enc_sizes) - 1]
        for s, d in zip(src, dst):
            d.weight[...] = s.weight
            if d.bias_enabled and s.bias_enabled:
                d.bias[...] = s.bias
        if autoencoder.model.scaler is not None:
            model.scaler = {k: v.copy() for k, v in autoencoder.model.scaler.items() if k.startswith("x_")}
        return model
