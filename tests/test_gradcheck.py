"""fastmlp.gradcheck: back-propagation against central finite differences in float64, for every
layer type, activation and loss, and a deliberately broken gradient is caught.

Threshold: a worst relative error below 1e-5. With eps = 1e-6 the central difference has a
truncation error ~eps² (times the third derivative) and a rounding error ~1e-16·|L|/eps (1e-10
for a loss of order one; gradcheck also differences at 10·eps and keeps the closer estimate, for
large losses), which gradcheck compares against at least 1e-3 of the largest gradient component; the measured
worst errors of these correct gradients are 3e-9 to 2.5e-6, and a 1 % error in a weight gradient
scores above 1e-3. Parameters are randomised (biases included) so that no ReLU pre-activation
sits exactly at its kink, where a finite difference sees half the slope.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import nn

TOLERANCE = 1e-5


def _randomize(model, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    p = model.parameters()
    p[...] = rng.normal(scale=scale, size=p.shape)
    for info in model.param_layout():
        if info.kind == "gamma":
            p[info.start:info.start + info.size] = rng.uniform(0.5, 1.5, size=info.size)
    return model


def _data(loss, rows=12, features=5, outputs=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    if loss == "cross_entropy":
        y = rng.integers(0, outputs, rows)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, (rows, outputs)).astype(float)
    else:
        y = rng.normal(size=(rows, outputs))
    return X, y


_OUTPUT = {"squared": "identity", "cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}


@pytest.mark.parametrize("loss", ["squared", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity"])
def test_dense_gradients_pass_for_every_activation_and_loss(activation, loss):
    model = _randomize(fastmlp.MLP([5, 7, 6, 3], activation=activation, output=_OUTPUT[loss]), seed=1)
    X, y = _data(loss)
    assert fastmlp.gradcheck(model, X, y, loss) < TOLERANCE


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_a_large_loss_passes_too(activation):
    """A reconstruction loss in the thousands (raw 0-16 pixels, summed squared errors): at
    h = 1e-6 rounding alone costs ~2e-5 relative; the 10·eps difference keeps it below 1e-5."""
    X, _ = fastmlp.datasets.load_digits()
    X = X[:30].astype(np.float64)
    ae = fastmlp.Autoencoder([64, 32, 8], activation=activation, tied=True, dtype="float64", seed=0)
    assert fastmlp.gradcheck(ae, X, None) < TOLERANCE


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity"])
def test_batch_norm_gradients_pass(activation):
    model = _randomize(fastmlp.MLP([5, 7, 6, 3], activation=activation, batch_norm=True, output="softmax"), seed=2)
    X, y = _data("cross_entropy")
    running = {k: v.copy() for k, v in model.buffers().items()}
    assert fastmlp.gradcheck(model, X, y) < TOLERANCE
    for k, v in model.buffers().items():  # the model's running statistics are left alone
        np.testing.assert_array_equal(v, running[k])


def test_standalone_batch_norm_and_activation_layers_pass():
    # BatchNorm without a Dense before it, activations as layers of their own, a bias feeding batch
    # norm (its exact gradient is zero: the floor of the relative error handles it)
    model = nn.Sequential(nn.BatchNorm(5), nn.Tanh(), nn.Dense(5, 6), nn.Sigmoid(), nn.Dense(6, 4), nn.ReLU(),
                          nn.Dense(4, 3), nn.BatchNorm(3), nn.Identity(), output="identity")
    _randomize(model, seed=3)
    X, y = _data("squared")
    assert fastmlp.gradcheck(model, X, y) < TOLERANCE


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_dropout_gradients_pass_with_masks_held_fixed(loss):
    model = _randomize(fastmlp.MLP([5, 8, 7, 3], dropout=[0.3, 0.5], input_dropout=0.2, output=_OUTPUT[loss]),
                       seed=4)
    X, y = _data(loss, rows=16)
    for seed, step in ((0, 0), (7, 3)):
        assert fastmlp.gradcheck(model, X, y, loss, seed=seed, step=step) < TOLERANCE


def test_tied_dense_gradients_pass():
    ae = fastmlp.Autoencoder([6, 4, 2], tied=True, activation="tanh")
    _randomize(ae.model, seed=5)
    X = np.random.default_rng(5).normal(size=(10, 6))
    assert fastmlp.gradcheck(ae, X, None) < TOLERANCE


@pytest.mark.parametrize("noise, level", [("mask", 0.3), ("gaussian", 0.5)])
def test_noise_layer_gradients_pass(noise, level):
    ae = fastmlp.DenoisingAutoencoder([6, 5, 3], noise=noise, level=level, activation="sigmoid", output="sigmoid")
    _randomize(ae.model, seed=6)
    X = np.random.default_rng(6).uniform(size=(10, 6))
    assert fastmlp.gradcheck(ae, X, None) < TOLERANCE
    # the noise sits before every parameter: check the input gradient path through it as well
    model = nn.Sequential(nn.Dense(6, 6), nn.Tanh(), nn.Noise(noise, level), nn.Dense(6, 2))
    _randomize(model, seed=7)
    assert fastmlp.gradcheck(model, X, np.random.default_rng(7).normal(size=(10, 2))) < TOLERANCE


def test_standardised_float32_model_is_checked_in_float64():
    model = _randomize(fastmlp.MLP([5, 6, 2], output="softmax"), seed=8)
    model.scaler = {"x_mean": np.full(5, 3.0), "x_scale": np.full(5, 2.0)}
    X, y = _data("cross_entropy", outputs=2)
    before = model.parameters().copy()
    assert fastmlp.gradcheck(model, X * 2 + 3, y) < TOLERANCE
    np.testing.assert_array_equal(model.parameters(), before)  # the model is untouched
    assert model.parameters().dtype == np.float32


def test_a_broken_weight_gradient_is_detected(monkeypatch):
    model = _randomize(fastmlp.MLP([5, 7, 3], activation="tanh", output="softmax"), seed=9)
    X, y = _data("cross_entropy")
    assert fastmlp.gradcheck(model, X, y) < TOLERANCE
    original = nn._DenseBlock.backward

    def backward(self, grad_y, saved, need_input_grad):
        out = original(self, grad_y, saved, need_input_grad)
        self.dense.dweight *= 1.01  # a 1 % error in every weight gradient
        return out

    monkeypatch.setattr(nn._DenseBlock, "backward", backward)
    assert fastmlp.gradcheck(model, X, y) > 1e-3


def test_a_broken_batch_norm_gradient_is_detected(monkeypatch):
    model = _randomize(fastmlp.MLP([5, 7, 3], batch_norm=True, activation="tanh"), seed=10)
    X, y = _data("squared")
    assert fastmlp.gradcheck(model, X, y) < TOLERANCE
    original = fastmlp.kernels.batch_norm_backward

    def backward(*args, **kw):
        dx, dgamma, dbeta = original(*args, **kw)
        return dx, dgamma, dbeta + 1e-3  # a small offset in the shift's gradient

    monkeypatch.setattr(fastmlp.kernels, "batch_norm_backward", backward)
    assert fastmlp.gradcheck(model, X, y) > 1e-3


def test_max_params_checks_a_reproducible_subset():
    model = _randomize(fastmlp.MLP([20, 30, 3], output="softmax"), seed=11)
    X, y = _data("cross_entropy", features=20)
    a = fastmlp.gradcheck(model, X, y, max_params=50)
    assert a == fastmlp.gradcheck(model, X, y, max_params=50) and a < TOLERANCE
