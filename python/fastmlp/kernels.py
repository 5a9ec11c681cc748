"""The fastmlp kernel API: dense-layer math on C-contiguous NumPy arrays.

Every kernel takes float32 or float64 arrays (one float dtype per call), C-contiguous, releases
the GIL while it runs, and is safe to call from several threads. Results are written into ``out=``
when given (and ``out`` is returned), otherwise into a new array. Bad input raises ``TypeError``
(wrong dtype, mixed dtypes) or ``ValueError`` (shapes, non-contiguous arrays, read-only outputs,
overlapping memory, out-of-range hyper-parameters), naming the argument.

Conventions (random streams, loss reductions, the optimizer segment table, batch norm) are those of
the project's DESIGN.md and are summarised in each docstring.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _core

__all__ = [
    "ACTIVATIONS",
    "activation",
    "activation_backward",
    "adagrad_step",
    "adam_step",
    "add_noise",
    "batch_norm",
    "batch_norm_backward",
    "bias_grad",
    "dropout",
    "dropout_backward",
    "dropout_mask",
    "gemm",
    "random_normal",
    "random_uniform",
    "rmsprop_step",
    "sgd_step",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
    "squared_error",
]

#: Activation names the kernels accept (``logistic`` is scikit-learn's name for ``sigmoid``).
ACTIVATIONS = ("identity", "relu", "sigmoid", "logistic", "tanh")

Array = np.ndarray
Segments = Optional[Tuple[Array, Array]]


def gemm(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
         beta: float = 0.0, out: Optional[Array] = None, bias: Optional[Array] = None,
         activation: str = "identity") -> Array:
    """General matrix multiply with a fused epilogue.

    ``out = act(alpha * op(a) @ op(b) + beta * out + bias)``, where ``op(a)`` is ``a.T`` when
    ``trans_a`` (likewise for b). ``op(a)`` is (M, K), ``op(b)`` is (K, N), ``out`` is (M, N) and
    ``bias`` is (N,). With ``beta == 0`` ``out`` is never read (NaN in it does not propagate);
    ``beta != 0`` requires ``out``. ``activation`` is one of :data:`ACTIVATIONS`, applied as the
    result is stored.

    On the CPU, row i of the result is bitwise the same whatever the other rows of ``a`` are and
    however many threads run.
    """
    return _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out,
                      bias=bias, activation=activation)


def activation(x: Array, kind: str, out: Optional[Array] = None) -> Array:
    """Apply an activation elementwise: identity, relu, sigmoid (logistic) or tanh.

    ``out`` may be ``x`` itself (in place).
    """
    return _core.activation(x, kind, out=out)


def activation_backward(grad_out: Array, y: Array, kind: str, out: Optional[Array] = None) -> Array:
    """Gradient through an activation, from its output ``y = act(x)``.

    relu: ``grad_out * (y > 0)``; sigmoid: ``grad_out * y * (1 - y)``; tanh: ``grad_out * (1 - y**2)``.
    """
    return _core.activation_backward(grad_out, y, kind, out=out)


def bias_grad(grad: Array, out: Optional[Array] = None) -> Array:
    """Column sums of a (rows, cols) gradient: the bias gradient of a dense layer, shape (cols,).

    Summed in fixed blocks of rows in float64 and combined in a fixed order, so the result does
    not depend on the thread count.
    """
    return _core.bias_grad(grad, out=out)


def dropout(x: Array, p: float, *, seed: int, offset: int, out: Optional[Array] = None) -> Array:
    """Inverted dropout: each element is dropped with probability ``p`` (0 <= p < 1), kept ones
    are scaled by ``1 / (1 - p)``.

    The mask comes from the Philox4x32-10 stream ``(seed, offset)``: element i is dropped iff word
    ``i % 4`` of block ``i // 4`` is below ``floor(p * 2**32)``. It is never stored;
    :func:`dropout_backward` regenerates it.
    """
    return _core.dropout(x, p, seed=seed, offset=offset, out=out)


def dropout_backward(grad_out: Array, p: float, *, seed: int, offset: int,
                     out: Optional[Array] = None) -> Array:
    """Gradient of :func:`dropout` with the same ``(p, seed, offset)``: the same mask and scale."""
    return _core.dropout_backward(grad_out, p, seed=seed, offset=offset, out=out)


def dropout_mask(shape: Union[int, Sequence[int]], p: float, *, seed: int, offset: int) -> Array:
    """The keep mask :func:`dropout` uses for this shape and stream, as a bool array (True = kept)."""
    return _core.dropout_mask(shape, p, seed=seed, offset=offset)


def add_noise(x: Array, kind: str, level: float, *, seed: int, offset: int,
              out: Optional[Array] = None) -> Array:
    """Corrupt inputs for a denoising autoencoder.

    ``kind="gaussian"``: ``x + level * N(0, 1)`` (``level`` is the standard deviation, >= 0).
    ``kind="mask"``: each element is set to 0 with probability ``level`` (0 <= level < 1), without
    rescaling. Draws come from the Philox stream ``(seed, offset)`` as in :func:`dropout`.
    """
    return _core.add_noise(x, kind, level, seed=seed, offset=offset, out=out)


def random_uniform(shape: Union[int, Sequence[int]], *, seed: int, offset: int, low: float = 0.0,
                   high: float = 1.0, dtype=None, out: Optional[Array] = None) -> Array:
    """Uniform numbers in ``[low, high)``: ``low + (high - low) * (u >> 8) * 2**-24`` for the
    Philox word u of each element. ``dtype`` is float32 unless ``out`` gives another."""
    return _core.random_uniform(shape, seed=seed, offset=offset, low=low, high=high, dtype=dtype, out=out)


def random_normal(shape: Union[int, Sequence[int]], *, seed: int, offset: int, mean: float = 0.0,
                  std: float = 1.0, dtype=None, out: Optional[Array] = None) -> Array:
    """Normal numbers ``mean + std * z``, z from Box-Muller on the Philox words of each block
    (computed in float32; ``dtype`` is float32 unless ``out`` gives another)."""
    return _core.random_normal(shape, seed=seed, offset=offset, mean=mean, std=std, dtype=dtype, out=out)


def squared_error(pred: Array, target: Array, *, out: Optional[Array] = None) -> Tuple[float, Array]:
    """``loss = 0.5 * mean over rows of ||pred - target||^2`` and ``grad = (pred - target) / rows``.

    Returns ``(loss, grad)``; ``out``, when given, receives the gradient. Zero rows: loss 0.
    """
    return _core.squared_error(pred, target, out=out)


def softmax_cross_entropy(logits: Array, labels: Array, *,
                          out: Optional[Array] = None) -> Tuple[float, Array]:
    """Mean over rows of ``-log softmax(logits)[label]``, with ``grad = (softmax - onehot) / rows``.

    ``labels`` are int32 or int64 class indices in ``[0, classes)``. Stable for large logits.
    """
    return _core.softmax_cross_entropy(logits, labels, out=out)


def sigmoid_cross_entropy(logits: Array, targets: Array, *,
                          out: Optional[Array] = None) -> Tuple[float, Array]:
    """Multi-label binary cross-entropy on logits: mean over rows of the sum over labels of
    ``softplus(x) - t * x``, with ``grad = (sigmoid(x) - t) / rows``. Stable for large logits."""
    return _core.sigmoid_cross_entropy(logits, targets, out=out)


def batch_norm(x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array, *,
               training: bool, momentum: float = 0.1, eps: float = 1e-5, activation: str = "identity",
               out: Optional[Array] = None) -> Tuple[Array, Array, Array]:
    """Batch normalisation over the rows of x (batch, features), fused with an activation.

    ``torch.nn.BatchNorm1d`` semantics. Training: normalise with the batch mean and biased
    variance, and update ``running_mean``/``running_var`` in place with
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased variance); needs >= 2 rows.
    Inference: normalise with the running statistics. Returns ``(out, save_mean, save_invstd)``,
    the statistics used (``save_invstd = 1 / sqrt(var + eps)``).
    """
    return _core.batch_norm(x, gamma, beta, running_mean, running_var, training=training,
                            momentum=momentum, eps=eps, activation=activation, out=out)


def batch_norm_backward(grad_out: Array, x: Array, gamma: Array, save_mean: Array, save_invstd: Array, *,
                        activation: str = "identity", y: Optional[Array] = None) -> Tuple[Array, Array, Array]:
    """Backward of a training-mode :func:`batch_norm`: returns ``(dx, dgamma, dbeta)``.

    ``y`` is the forward output, required when ``activation`` is not identity.
    """
    return _core.batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, activation=activation, y=y)


def sgd_step(param: Array, grad: Array, momentum_buffer: Optional[Array], *, step: int, lr: float,
             momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
             l1: float = 0.0, segments: Segments = None) -> Array:
    """One in-place SGD step with torch.optim.SGD's formula.

    ``g = grad + weight_decay * p + l1 * sign(p)``; with momentum, ``buf = g`` on step 1, else
    ``buf = momentum * buf + (1 - dampening) * g``; ``g = g + momentum * buf`` (nesterov) or
    ``g = buf``; ``p -= lr * g``. ``momentum_buffer`` may be None when ``momentum == 0``.
    ``segments=(bounds, values)`` gives per-range ``(lr_scale, weight_decay, l1)`` (DESIGN.md).
    Returns ``param``.
    """
    return _core.sgd_step(param, grad, momentum_buffer, step=step, lr=lr, momentum=momentum,
                          dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, l1=l1,
                          segments=segments)


def adagrad_step(param: Array, grad: Array, state_sum: Array, *, step: int, lr: float, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, eps: float = 1e-10, l1: float = 0.0,
                 segments: Segments = None) -> Array:
    """One in-place AdaGrad step (torch.optim.Adagrad): ``clr = lr / (1 + (step - 1) * lr_decay)``,
    ``state_sum += g**2``, ``p -= clr * g / (sqrt(state_sum) + eps)``. Returns ``param``."""
    return _core.adagrad_step(param, grad, state_sum, step=step, lr=lr, lr_decay=lr_decay,
                              weight_decay=weight_decay, eps=eps, l1=l1, segments=segments)


def rmsprop_step(param: Array, grad: Array, square_avg: Array, *, lr: float, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 momentum_buffer: Optional[Array] = None, grad_avg: Optional[Array] = None, l1: float = 0.0,
                 segments: Segments = None) -> Array:
    """One in-place RMSprop step (torch.optim.RMSprop). ``momentum_buffer`` is required when
    ``momentum > 0`` and ``grad_avg`` when ``centered``. Returns ``param``."""
    return _core.rmsprop_step(param, grad, square_avg, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                              momentum=momentum, centered=centered, momentum_buffer=momentum_buffer,
                              grad_avg=grad_avg, l1=l1, segments=segments)


def adam_step(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, step: int, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled: bool = False, l1: float = 0.0, segments: Segments = None) -> Array:
    """One in-place Adam step (torch.optim.Adam), or AdamW with ``decoupled=True``
    (``p *= 1 - lr * weight_decay`` before the update instead of adding ``weight_decay * p`` to the
    gradient). Bias correction uses the 1-based ``step``. Returns ``param``."""
    return _core.adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
                           eps=eps, weight_decay=weight_decay, decoupled=decoupled, l1=l1, segments=segments)
