"""The fastmlp kernel API: dense-layer math on C-contiguous NumPy arrays or CUDA device arrays.

Every kernel takes float32 or float64 arrays (one float dtype per call), C-contiguous and aligned
to their item size, releases the GIL while it runs, and is safe to call from several threads.
Results are written into ``out=`` when given (and ``out`` is returned), otherwise into a new array.
Bad input raises ``TypeError`` (wrong dtype, mixed dtypes) or ``ValueError`` (shapes,
non-contiguous or misaligned arrays, read-only outputs, overlapping memory, out-of-range
hyper-parameters), naming the argument; an output too large for this machine's memory raises
``MemoryError`` before anything is allocated. NaN and Inf propagate as in PyTorch: through gemm and
its epilogue (only the rows they touch), the activations (ReLU's backward gives a zero gradient
where the output is NaN, as torch does), the losses, batch norm (only that column) and the
optimizer steps (only that element).

Conventions (random streams, loss reductions, the optimizer segment table, batch norm) are those of
the project's DESIGN.md and are summarised in each docstring.

CUDA. Every kernel also runs on device arrays (fastmlp.cuda.DeviceArray, CuPy arrays, torch CUDA
tensors: anything with ``__cuda_array_interface__``), with the same signature and semantics, in
float32 only. Results come back as the first device argument's type, on its device; the launch is
asynchronous on ``stream=`` (or the stream fastmlp.cuda picks; see its docstring). Losses then
return ``(loss, grad)`` with ``loss`` a 0-d device array (``float(loss)`` waits and reads it).
Host and device arrays cannot be mixed in one call (``TypeError``; class labels and segment
tables are the exceptions: host ones are checked, then uploaded). On host arrays ``stream`` must be
None. Capturable training: ``step``/``lr`` may be one-element device arrays (see the optimizer
docstrings) and the random kernels take ``step=``/``n_streams=`` (see :func:`dropout`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from . import _cuda_kernels as _cuda

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
    "clip_grad_norm",
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
_ndarray = np.ndarray
Segments = Optional[Tuple[Array, Array]]


def gemm(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
         beta: float = 0.0, out: Optional[Array] = None, bias: Optional[Array] = None,
         activation: str = "identity", stream=None) -> Array:
    """General matrix multiply with a fused epilogue.

    ``out = act(alpha * op(a) @ op(b) + beta * out + bias)``, where ``op(a)`` is ``a.T`` when
    ``trans_a`` (likewise for b). ``op(a)`` is (M, K), ``op(b)`` is (K, N), ``out`` is (M, N) and
    ``bias`` is (N,). With ``beta == 0`` ``out`` is never read (NaN in it does not propagate);
    ``beta != 0`` requires ``out``. ``activation`` is one of :data:`ACTIVATIONS`, applied as the
    result is stored.

    On the CPU, row i of the result is bitwise the same whatever the other rows of ``a`` are and
    however many threads run. On the GPU, results are deterministic run to run for a given shape.
    """
    if type(a) is _ndarray and stream is None:
        try:
            return _core._gemm(a, b, trans_a, trans_b, alpha, beta, out, bias, activation)  # by position: faster
        except TypeError:
            _cuda.reject_mixed("gemm", a=a, b=b, out=out, bias=bias)
            raise
    return _cuda.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out, bias=bias,
                      activation=activation, stream=stream)


def activation(x: Array, kind: str, out: Optional[Array] = None, *, stream=None) -> Array:
    """Apply an activation elementwise: identity, relu, sigmoid (logistic) or tanh.

    ``out`` may be ``x`` itself (in place).
    """
    if type(x) is _ndarray and stream is None:
        try:
            return _core.activation(x, kind, out=out)
        except TypeError:
            _cuda.reject_mixed("activation", x=x, out=out)
            raise
    return _cuda.activation(x, kind, out=out, stream=stream)


def activation_backward(grad_out: Array, y: Array, kind: str, out: Optional[Array] = None, *,
                        stream=None) -> Array:
    """Gradient through an activation, from its output ``y = act(x)``.

    relu: ``grad_out * (y > 0)``; sigmoid: ``grad_out * y * (1 - y)``; tanh: ``grad_out * (1 - y**2)``.
    """
    if type(grad_out) is _ndarray and stream is None:
        try:
            return _core.activation_backward(grad_out, y, kind, out=out)
        except TypeError:
            _cuda.reject_mixed("activation_backward", grad_out=grad_out, y=y, out=out)
            raise
    return _cuda.activation_backward(grad_out, y, kind, out=out, stream=stream)


def bias_grad(grad: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """Column sums of a (rows, cols) gradient: the bias gradient of a dense layer, shape (cols,).

    Summed in fixed blocks of rows in float64 and combined in a fixed order, so the result does
    not depend on the thread count.
    """
    if type(grad) is _ndarray and stream is None:
        try:
            return _core.bias_grad(grad, out=out)
        except TypeError:
            _cuda.reject_mixed("bias_grad", grad=grad, out=out)
            raise
    return _cuda.bias_grad(grad, out=out, stream=stream)


def dropout(x: Array, p: float, *, seed: int, offset: int, out: Optional[Array] = None, step=None,
            n_streams: Optional[int] = None, stream=None) -> Array:
    """Inverted dropout: each element is dropped with probability ``p`` (0 <= p < 1), kept ones
    are scaled by ``1 / (1 - p)``.

    The mask comes from the Philox4x32-10 stream ``(seed, offset)``: element i is dropped iff word
    ``i % 4`` of block ``i // 4`` is below ``floor(p * 2**32)``. It is never stored;
    :func:`dropout_backward` regenerates it. Masks are bit-identical on the CPU and the GPU.

    ``step`` and ``n_streams`` name the Trainer's streams (DESIGN.md): the stream used is
    ``step * n_streams + offset``, and ``offset`` is then the stream index (``0 <= offset <
    n_streams``). ``step`` is an int, or on the GPU a one-element device int64 array (the
    optimizer's count of steps taken), read on the device when the kernel runs, so a captured CUDA
    graph draws a new mask at each replay.
    """
    if type(x) is _ndarray and stream is None and step is None:
        try:
            return _core.dropout(x, p, seed=seed, offset=offset, out=out)
        except TypeError:
            _cuda.reject_mixed("dropout", x=x, out=out)
            raise
    return _cuda.dropout("dropout", x, p, seed=seed, offset=offset, out=out, step=step, n_streams=n_streams,
                         stream=stream)


def dropout_backward(grad_out: Array, p: float, *, seed: int, offset: int, out: Optional[Array] = None,
                     step=None, n_streams: Optional[int] = None, stream=None) -> Array:
    """Gradient of :func:`dropout` with the same ``(p, seed, offset, step, n_streams)``: the same
    mask and scale."""
    if type(grad_out) is _ndarray and stream is None and step is None:
        try:
            return _core.dropout_backward(grad_out, p, seed=seed, offset=offset, out=out)
        except TypeError:
            _cuda.reject_mixed("dropout_backward", grad_out=grad_out, out=out)
            raise
    return _cuda.dropout("dropout_backward", grad_out, p, seed=seed, offset=offset, out=out, step=step,
                         n_streams=n_streams, stream=stream)


def dropout_mask(shape: Union[int, Sequence[int]], p: float, *, seed: int, offset: int, step=None,
                 n_streams: Optional[int] = None, device=None, stream=None) -> Array:
    """The keep mask :func:`dropout` uses for this shape and stream, as a bool array (True = kept).

    ``device`` ("cuda", "cuda:N" or an index) makes it on the GPU, as a bool DeviceArray; so does a
    device ``step`` (then as ``step``'s array type). ``step``/``n_streams`` as in :func:`dropout`.
    """
    if device is None and step is None and stream is None:
        return _core.dropout_mask(shape, p, seed=seed, offset=offset)
    return _cuda.dropout_mask(shape, p, seed=seed, offset=offset, step=step, n_streams=n_streams, device=device,
                              stream=stream)


def add_noise(x: Array, kind: str, level: float, *, seed: int, offset: int, out: Optional[Array] = None,
              step=None, n_streams: Optional[int] = None, stream=None) -> Array:
    """Corrupt inputs for a denoising autoencoder.

    ``kind="gaussian"``: ``x + level * N(0, 1)`` (``level`` is the standard deviation, >= 0).
    ``kind="mask"``: each element is set to 0 with probability ``level`` (0 <= level < 1), without
    rescaling. Draws come from the Philox stream ``(seed, offset)`` as in :func:`dropout`
    (``step``/``n_streams`` too).
    """
    if type(x) is _ndarray and stream is None and step is None:
        try:
            return _core.add_noise(x, kind, level, seed=seed, offset=offset, out=out)
        except TypeError:
            _cuda.reject_mixed("add_noise", x=x, out=out)
            raise
    return _cuda.add_noise(x, kind, level, seed=seed, offset=offset, out=out, step=step, n_streams=n_streams,
                           stream=stream)


def random_uniform(shape: Union[int, Sequence[int]], *, seed: int, offset: int, low: float = 0.0,
                   high: float = 1.0, dtype=None, out: Optional[Array] = None, device=None,
                   stream=None) -> Array:
    """Uniform numbers in ``[low, high)``: ``low + (high - low) * (u >> 8) * 2**-24`` for the
    Philox word u of each element. ``dtype`` is float32 unless ``out`` gives another. A device
    ``out``, or ``device`` ("cuda", "cuda:N"), fills on the GPU (float32; bit-identical to the CPU)."""
    if (out is None or type(out) is _ndarray) and device is None and stream is None:
        return _core.random_uniform(shape, seed=seed, offset=offset, low=low, high=high, dtype=dtype, out=out)
    return _cuda.random_fill("random_uniform", shape, seed=seed, offset=offset, a=low, b=high, dtype=dtype,
                             out=out, device=device, stream=stream)


def random_normal(shape: Union[int, Sequence[int]], *, seed: int, offset: int, mean: float = 0.0,
                  std: float = 1.0, dtype=None, out: Optional[Array] = None, device=None,
                  stream=None) -> Array:
    """Normal numbers ``mean + std * z``, z from Box-Muller on the Philox words of each block
    (computed in float32; ``dtype`` is float32 unless ``out`` gives another). ``out``/``device``
    as in :func:`random_uniform`."""
    if (out is None or type(out) is _ndarray) and device is None and stream is None:
        return _core.random_normal(shape, seed=seed, offset=offset, mean=mean, std=std, dtype=dtype, out=out)
    return _cuda.random_fill("random_normal", shape, seed=seed, offset=offset, a=mean, b=std, dtype=dtype,
                             out=out, device=device, stream=stream)


def squared_error(pred: Array, target: Array, *, out: Optional[Array] = None, loss_out=None,
                  stream=None) -> Tuple[float, Array]:
    """``loss = 0.5 * mean over rows of ||pred - target||^2`` and ``grad = (pred - target) / rows``.

    Returns ``(loss, grad)``; ``out``, when given, receives the gradient. Zero rows: loss 0.
    On the GPU ``loss`` is a 0-d device array, or ``loss_out`` (a one-element device float32
    array; needed inside graph capture, where nothing may be allocated).
    """
    if type(pred) is _ndarray and stream is None and loss_out is None:
        try:
            return _core.squared_error(pred, target, out=out)
        except TypeError:
            _cuda.reject_mixed("squared_error", pred=pred, target=target, out=out)
            raise
    return _cuda.squared_error(pred, target, out=out, loss_out=loss_out, stream=stream)


def softmax_cross_entropy(logits: Array, labels: Array, *, out: Optional[Array] = None, loss_out=None,
                          stream=None) -> Tuple[float, Array]:
    """Mean over rows of ``-log softmax(logits)[label]``, with ``grad = (softmax - onehot) / rows``.

    ``labels`` are int32 or int64 class indices in ``[0, classes)``. Stable for large logits.
    On the GPU, device labels are used as they are (an out-of-range one makes its row's loss and
    gradient NaN); host labels are range-checked, uploaded, and the call waits for the kernel.
    ``loss_out`` as in :func:`squared_error`.
    """
    if type(logits) is _ndarray and stream is None and loss_out is None:
        try:
            return _core.softmax_cross_entropy(logits, labels, out=out)
        except TypeError:
            _cuda.reject_mixed("softmax_cross_entropy", logits=logits, labels=labels, out=out)
            raise
    return _cuda.softmax_cross_entropy(logits, labels, out=out, loss_out=loss_out, stream=stream)


def sigmoid_cross_entropy(logits: Array, targets: Array, *, out: Optional[Array] = None, loss_out=None,
                          stream=None) -> Tuple[float, Array]:
    """Multi-label binary cross-entropy on logits: mean over rows of the sum over labels of
    ``softplus(x) - t * x``, with ``grad = (sigmoid(x) - t) / rows``. Stable for large logits.
    ``loss_out`` as in :func:`squared_error`."""
    if type(logits) is _ndarray and stream is None and loss_out is None:
        try:
            return _core.sigmoid_cross_entropy(logits, targets, out=out)
        except TypeError:
            _cuda.reject_mixed("sigmoid_cross_entropy", logits=logits, targets=targets, out=out)
            raise
    return _cuda.sigmoid_cross_entropy(logits, targets, out=out, loss_out=loss_out, stream=stream)


def batch_norm(x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array, *,
               training: bool, momentum: float = 0.1, eps: float = 1e-5, activation: str = "identity",
               out: Optional[Array] = None, save_mean=None, save_invstd=None,
               stream=None) -> Tuple[Array, Array, Array]:
    """Batch normalisation over the rows of x (batch, features), fused with an activation.

    ``torch.nn.BatchNorm1d`` semantics. Training: normalise with the batch mean and biased
    variance, and update ``running_mean``/``running_var`` in place with
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased variance); needs >= 2 rows.
    Inference: normalise with the running statistics. Returns ``(out, save_mean, save_invstd)``,
    the statistics used (``save_invstd = 1 / sqrt(var + eps)``). On the GPU, ``save_mean`` and
    ``save_invstd`` may be given (device float32, one value per feature) so that nothing is
    allocated, as graph capture requires.
    """
    if type(x) is _ndarray and stream is None and save_mean is None and save_invstd is None:
        try:
            return _core.batch_norm(x, gamma, beta, running_mean, running_var, training=training,
                                    momentum=momentum, eps=eps, activation=activation, out=out)
        except TypeError:
            _cuda.reject_mixed("batch_norm", x=x, gamma=gamma, beta=beta, running_mean=running_mean,
                               running_var=running_var, out=out)
            raise
    return _cuda.batch_norm(x, gamma, beta, running_mean, running_var, training=training, momentum=momentum,
                            eps=eps, activation=activation, out=out, save_mean=save_mean, save_invstd=save_invstd,
                            stream=stream)


def batch_norm_backward(grad_out: Array, x: Array, gamma: Array, save_mean: Array, save_invstd: Array, *,
                        activation: str = "identity", y: Optional[Array] = None, dx=None, dgamma=None,
                        dbeta=None, stream=None) -> Tuple[Array, Array, Array]:
    """Backward of a training-mode :func:`batch_norm`: returns ``(dx, dgamma, dbeta)``.

    ``y`` is the forward output, required when ``activation`` is not identity. On the GPU the
    results may be given (``dx``, ``dgamma``, ``dbeta``: device float32, overlapping no input).
    """
    if type(grad_out) is _ndarray and stream is None and dx is None and dgamma is None and dbeta is None:
        try:
            return _core.batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, activation=activation, y=y)
        except TypeError:
            _cuda.reject_mixed("batch_norm_backward", grad_out=grad_out, x=x, gamma=gamma, save_mean=save_mean,
                               save_invstd=save_invstd, y=y)
            raise
    return _cuda.batch_norm_backward(grad_out, x, gamma, save_mean, save_invstd, activation=activation, y=y, dx=dx,
                                     dgamma=dgamma, dbeta=dbeta, stream=stream)


def sgd_step(param: Array, grad: Array, momentum_buffer: Optional[Array], *, step: int, lr: float,
             momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
             l1: float = 0.0, segments: Segments = None, stream=None) -> Array:
    """One in-place SGD step with torch.optim.SGD's formula.

    ``g = grad + weight_decay * p + l1 * sign(p)``; with momentum, ``buf = g`` on step 1, else
    ``buf = momentum * buf + (1 - dampening) * g``; ``g = g + momentum * buf`` (nesterov) or
    ``g = buf``; ``p -= lr * g``. ``momentum_buffer`` may be None when ``momentum == 0``.
    ``segments=(bounds, values)`` gives per-range ``(lr_scale, weight_decay, l1)`` (DESIGN.md).
    Returns ``param``.

    Capturable on the GPU: ``step`` may be a one-element device int64 array holding the number of
    steps already taken (the kernel uses that plus one and stores it back: it advances exactly once
    per call), and ``lr`` a one-element device float32 array. The segment table is uploaded once
    per content and device and reused.
    """
    if type(param) is _ndarray and stream is None:
        try:
            return _core.sgd_step(param, grad, momentum_buffer, step=step, lr=lr, momentum=momentum,
                                  dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, l1=l1,
                                  segments=segments)
        except TypeError:
            _cuda.reject_mixed("sgd_step", param=param, grad=grad, momentum_buffer=momentum_buffer, step=step,
                               lr=lr)
            raise
    return _cuda.sgd_step(param, grad, momentum_buffer, step=step, lr=lr, momentum=momentum, dampening=dampening,
                          nesterov=nesterov, weight_decay=weight_decay, l1=l1, segments=segments, stream=stream)


def adagrad_step(param: Array, grad: Array, state_sum: Array, *, step: int, lr: float, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, eps: float = 1e-10, l1: float = 0.0,
                 segments: Segments = None, stream=None) -> Array:
    """One in-place AdaGrad step (torch.optim.Adagrad): ``clr = lr / (1 + (step - 1) * lr_decay)``,
    ``state_sum += g**2``, ``p -= clr * g / (sqrt(state_sum) + eps)``. Returns ``param``.
    ``step``/``lr`` may be device scalars on the GPU, as in :func:`sgd_step`."""
    if type(param) is _ndarray and stream is None:
        try:
            return _core.adagrad_step(param, grad, state_sum, step=step, lr=lr, lr_decay=lr_decay,
                                      weight_decay=weight_decay, eps=eps, l1=l1, segments=segments)
        except TypeError:
            _cuda.reject_mixed("adagrad_step", param=param, grad=grad, state_sum=state_sum, step=step, lr=lr)
            raise
    return _cuda.adagrad_step(param, grad, state_sum, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                              eps=eps, l1=l1, segments=segments, stream=stream)


def rmsprop_step(param: Array, grad: Array, square_avg: Array, *, lr: float, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 momentum_buffer: Optional[Array] = None, grad_avg: Optional[Array] = None, l1: float = 0.0,
                 segments: Segments = None, step=None, stream=None) -> Array:
    """One in-place RMSprop step (torch.optim.RMSprop). ``momentum_buffer`` is required when
    ``momentum > 0`` and ``grad_avg`` when ``centered``. Returns ``param``.

    RMSprop has no bias correction, so ``step`` only matters on the GPU: a one-element device
    int64 step counter is advanced by the kernel (as :func:`sgd_step` describes), so the random
    streams of a captured training step move on; an int is accepted and ignored. ``lr`` may be a
    device scalar."""
    if type(param) is _ndarray and stream is None and step is None:
        try:
            return _core.rmsprop_step(param, grad, square_avg, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, momentum_buffer=momentum_buffer,
                                      grad_avg=grad_avg, l1=l1, segments=segments)
        except TypeError:
            _cuda.reject_mixed("rmsprop_step", param=param, grad=grad, square_avg=square_avg,
                               momentum_buffer=momentum_buffer, grad_avg=grad_avg, lr=lr)
            raise
    return _cuda.rmsprop_step(param, grad, square_avg, step=step, lr=lr, alpha=alpha, eps=eps,
                              weight_decay=weight_decay, momentum=momentum, centered=centered,
                              momentum_buffer=momentum_buffer, grad_avg=grad_avg, l1=l1, segments=segments,
                              stream=stream)


def adam_step(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, step: int, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled: bool = False, l1: float = 0.0, segments: Segments = None, stream=None) -> Array:
    """One in-place Adam step (torch.optim.Adam), or AdamW with ``decoupled=True``
    (``p *= 1 - lr * weight_decay`` before the update instead of adding ``weight_decay * p`` to the
    gradient). Bias correction uses the 1-based ``step``. Returns ``param``. ``step``/``lr`` may be
    device scalars on the GPU, as in :func:`sgd_step` (the step is then the counter plus one)."""
    if type(param) is _ndarray and stream is None:
        try:
            return _core.adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
                                   eps=eps, weight_decay=weight_decay, decoupled=decoupled, l1=l1, segments=segments)
        except TypeError:
            _cuda.reject_mixed("adam_step", param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                               step=step, lr=lr)
            raise
    return _cuda.adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                           weight_decay=weight_decay, decoupled=decoupled, l1=l1, segments=segments, stream=stream)


def clip_grad_norm(grad: Array, max_norm: float, *, eps: float = 1e-6, norm_out=None, stream=None):
    """Clip a gradient by its global L2 norm, in place (``torch.nn.utils.clip_grad_norm_`` on one
    flat array, such as a model's gradient arena).

    ``norm = sqrt(sum(grad ** 2))``, accumulated in float64; when ``norm > max_norm`` every element
    is multiplied by ``max_norm / (norm + eps)`` (rounded once to ``grad``'s dtype), otherwise
    ``grad`` is left as it is. Returns the norm before clipping: a Python float, or on the GPU a
    0-d device float32 array (``norm_out`` when given, a one-element device float32 array: needed
    inside graph capture, where nothing may be allocated; the host never waits). The sum runs over
    fixed blocks in a fixed order, so the norm is bitwise the same on any thread count. A NaN norm
    leaves ``grad`` unchanged (the NaN is already in it); an infinite one multiplies by 0, so the
    finite elements become 0 and the infinite ones NaN, as in torch.
    """
    if type(grad) is _ndarray and stream is None and norm_out is None:
        return _core.clip_grad_norm(grad, max_norm, eps=eps)
    return _cuda.clip_grad_norm(grad, max_norm, eps=eps, norm_out=norm_out, stream=stream)
