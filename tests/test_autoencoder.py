"""Autoencoders (fastmlp.Autoencoder, fastmlp.DenoisingAutoencoder): fit, encode/decode/
reconstruct, reconstruction_error, tied weights, the input noise, sigmoid outputs with binary
cross-entropy, and a 2-wide code."""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import nn, optim
from fastmlp.train import History


def _digits01(rows=600):
    X, y = fastmlp.datasets.load_digits()
    return X[:rows] / 16.0, y[:rows]


def test_fit_returns_self_with_history_and_passes_trainer_options():
    X, _ = _digits01()
    ae = fastmlp.Autoencoder([64, 32, 8])
    out = ae.fit(X, epochs=4, batch_size=32, validation=0.2, progress=False, seed=3)
    assert out is ae
    assert isinstance(ae.history_, History) and len(ae.history_) == 4
    assert ae.trainer_.loss == "squared" and ae.trainer_.batch_size == 32 and ae.trainer_.seed == 3
    assert np.all(np.isfinite(ae.history_.val_loss))
    assert ae.history_.train_loss[-1] < ae.history_.train_loss[0]
    # explicit validation rows are reconstructed too
    ae2 = fastmlp.Autoencoder([64, 8]).fit(X[:500], epochs=2, validation=(X[500:], None), progress=False)
    assert np.all(np.isfinite(ae2.history_.val_loss))


def test_architecture_mirrors_the_encoder():
    ae = fastmlp.Autoencoder([10, 6, 3], activation="tanh")
    kinds = [type(l).__name__ for l in ae.model.layers]
    assert kinds == ["Dense", "Tanh", "Dense", "Identity", "Dense", "Tanh", "Dense"]
    dense = [(l.in_features, l.out_features) for l in ae.model.layers if isinstance(l, nn.Dense)]
    assert dense == [(10, 6), (6, 3), (3, 6), (6, 10)]
    dae = fastmlp.DenoisingAutoencoder([10, 3], noise="mask", level=0.25, dropout=0.1)
    assert isinstance(dae.model.layers[0], nn.Noise) and dae.model.layers[0].level == 0.25


def test_encode_decode_reconstruct_shapes_and_consistency():
    X, _ = _digits01(300)
    ae = fastmlp.Autoencoder([64, 20, 5], dtype="float64").fit(X, epochs=3, standardize=True, progress=False)
    codes = ae.encode(X)
    assert codes.shape == (300, 5)
    recon = ae.reconstruct(X)
    assert recon.shape == (300, 64)
    np.testing.assert_allclose(ae.decode(codes), recon, rtol=1e-12, atol=1e-12)
    # reconstructions are in data space: the standardisation is undone
    s = ae.model.scaler
    np.testing.assert_allclose(recon, ae.model.forward(X) * s["x_scale"] + s["x_mean"], rtol=1e-12)
    with pytest.raises(ValueError, match=r"codes must have shape \(rows, 5\)"):
        ae.decode(np.zeros((3, 4)))


def test_reconstruction_error_is_the_per_row_sum_of_squared_errors():
    X, _ = _digits01(200)
    ae = fastmlp.Autoencoder([64, 16]).fit(X, epochs=3, progress=False)
    err = ae.reconstruction_error(X)
    assert err.shape == (200,)
    np.testing.assert_allclose(err, np.sum((X - ae.reconstruct(X).astype(np.float64)) ** 2, axis=1), rtol=1e-12)
    # usable as an outlier score: noise images score far above digits
    noise = np.random.default_rng(0).uniform(0, 1, size=(20, 64))
    assert ae.reconstruction_error(noise).min() > np.median(err)


def test_tied_decoder_reuses_the_encoder_weights():
    untied = fastmlp.Autoencoder([12, 7, 3])
    tied = fastmlp.Autoencoder([12, 7, 3], tied=True)
    decoder = [l for l in tied.model.layers if isinstance(l, nn.TiedDense)]
    assert len(decoder) == 2 and all(not hasattr(l, "weight") for l in decoder)
    # the arena holds no decoder weights: only the decoder biases are extra
    assert untied.model.n_parameters - tied.model.n_parameters == 7 * 3 + 12 * 7
    assert tied.model.n_parameters == (12 * 7 + 7) + (7 * 3 + 3) + 7 + 12
    # the decoder multiplies by the encoder weight, transposed back: y = x W + b
    enc = [l for l in tied.model.layers if isinstance(l, nn.Dense)]
    rng = np.random.default_rng(0)
    tied.model.parameters()[...] = rng.normal(size=tied.model.n_parameters)
    codes = rng.normal(size=(5, 3)).astype(np.float32)
    h = np.maximum(codes @ enc[1].weight + decoder[0].bias, 0)
    np.testing.assert_allclose(tied.decode(codes), h @ enc[0].weight + decoder[1].bias, rtol=1e-5, atol=1e-5)


def test_tied_training_moves_the_shared_weight_with_both_gradients():
    X, _ = _digits01(200)
    tied = fastmlp.Autoencoder([64, 10], tied=True, dtype="float64")
    enc = tied.model.layers[0]
    before = enc.weight.copy()
    tied.fit(X, epochs=3, progress=False)
    assert not np.array_equal(enc.weight, before)
    assert tied.history_.train_loss[-1] < tied.history_.train_loss[0]
    # the gradient of the shared weight is the sum of its encoder and decoder uses
    x = X[:8]
    tied.model.value_and_grad(x, x)
    both = enc.dweight.copy()
    dec_bias = tied.model.layers[2].bias
    W, b = enc.weight, enc.bias
    h = x @ W.T + b  # the code activation is the identity by default
    d_out = (h @ W + dec_bias - x) / 8  # squared error: (pred - target) / rows
    d_h = d_out @ W.T
    np.testing.assert_allclose(both, d_h.T @ x + h.T @ d_out, rtol=1e-10, atol=1e-12)


def test_mask_noise_zeroes_a_level_fraction_without_rescaling_in_training_only():
    level = 0.3
    model = nn.Sequential(nn.Noise("mask", level), nn.Dense(200, 200, bias=False))
    model.layers[1].weight[...] = np.eye(200)
    X = np.random.default_rng(0).uniform(1.0, 2.0, size=(100, 200)).astype(np.float32)
    out = model.forward(X, training=True, seed=4, step=2)
    zeroed = out == 0
    n = X.size
    assert np.mean(zeroed) == pytest.approx(level, abs=5 * np.sqrt(level * (1 - level) / n))
    np.testing.assert_array_equal(out[~zeroed], X[~zeroed])  # kept inputs are not rescaled
    np.testing.assert_array_equal(model.forward(X, training=True, seed=4, step=2), out)  # same stream, same mask
    assert not np.array_equal(model.forward(X, training=True, seed=4, step=3), out)
    np.testing.assert_array_equal(model.forward(X), X)  # inference: no noise


def test_gaussian_noise_adds_level_times_a_standard_normal_in_training_only():
    model = nn.Sequential(nn.Noise("gaussian", 0.5), nn.Dense(100, 100, bias=False), dtype="float64")
    model.layers[1].weight[...] = np.eye(100)
    X = np.random.default_rng(1).normal(size=(400, 100))
    noise = model.forward(X, training=True, seed=1, step=0) - X
    assert abs(noise.mean()) < 5 * 0.5 / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(0.5, rel=5 / np.sqrt(2 * noise.size))
    np.testing.assert_array_equal(model.forward(X), X)


def test_denoising_autoencoder_corrupts_only_while_training():
    X, _ = _digits01(300)
    dae = fastmlp.DenoisingAutoencoder([64, 16], noise="mask", level=0.5, seed=0).fit(X, epochs=3, progress=False)
    clean = fastmlp.Autoencoder([64, 16])
    clean.model.parameters()[...] = dae.model.parameters()
    # encode/reconstruct run in inference mode: the noise layer is a no-op there
    np.testing.assert_array_equal(dae.encode(X), clean.encode(X))
    np.testing.assert_array_equal(dae.reconstruct(X), clean.reconstruct(X))
    # the training loss is the loss of reconstructing clean rows from corrupted ones: higher
    assert dae.history_.train_loss[-1] > dae.trainer_.evaluate(X, X)["loss"]


def test_noise_applies_after_standardisation():
    X, _ = _digits01(200)
    X = X * 100 + 50  # far from zero mean
    dae = fastmlp.DenoisingAutoencoder([64, 8], noise="mask", level=0.4).fit(X, epochs=1, standardize=True,
                                                                              progress=False)
    x = dae.model._as_input(X)  # what the network sees: standardised rows
    assert abs(float(x.mean())) < 1e-3
    noisy = nn.Sequential(nn.Noise("mask", 0.4), nn.Dense(64, 64, bias=False))
    noisy.layers[1].weight[...] = np.eye(64)
    masked = noisy.forward(x, training=True, seed=0, step=0)
    # a zeroed input is the column mean in data space, not 0
    assert np.all(masked[masked != x] == 0)


def test_sigmoid_output_trains_with_binary_cross_entropy_and_reconstructs_in_unit_range():
    X, _ = _digits01(400)
    ae = fastmlp.Autoencoder([64, 24], output="sigmoid").fit(X, epochs=5, optimizer=optim.Adam(3e-3),
                                                              progress=False)
    assert ae.trainer_.loss == "binary_cross_entropy"
    recon = ae.reconstruct(X)
    assert recon.min() >= 0 and recon.max() <= 1
    np.testing.assert_allclose(recon, 1 / (1 + np.exp(-ae.model.forward(X).astype(np.float64))), rtol=1e-5)
    assert ae.history_.train_loss[-1] < ae.history_.train_loss[0]
    with pytest.raises(ValueError, match="standardize=True does not fit output='sigmoid'"):
        ae.fit(X, standardize=True)


def test_binary_cross_entropy_refuses_targets_outside_the_unit_interval():
    """Beyond [0, 1] the loss is unbounded below: it trained to -4,431 on raw 0-16 pixels."""
    X, _ = fastmlp.datasets.load_digits()
    with pytest.raises(ValueError, match=r"binary_cross_entropy targets must be in \[0, 1\].*\[0, 16\]"):
        fastmlp.Autoencoder([64, 8], output="sigmoid").fit(X[:100], epochs=1, progress=False)
    model = fastmlp.MLP([64, 16, 3], output="sigmoid")
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        fastmlp.Trainer(model, epochs=1, progress=False).fit(X[:100] / 16, np.full((100, 3), -0.5))
    fastmlp.Trainer(model, epochs=1, progress=False).fit(X[:100] / 16, np.full((100, 3), 0.25))  # probabilities


def test_standardised_reconstructions_keep_a_large_offset_in_float64():
    """Un-standardised in float64: data at 1e7 +- 1 keeps its variation (in float32 its ulp is 1)."""
    rng = np.random.default_rng(0)
    X = 1e7 + rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    ae = fastmlp.Autoencoder([6, 6], activation="identity").fit(X, epochs=60, standardize=True,
                                                                 optimizer=optim.Adam(1e-2), progress=False)
    recon = ae.reconstruct(X)
    assert recon.dtype == np.float64 and np.unique(recon[:, 0]).size > 250
    assert np.mean(ae.reconstruction_error(X)) < 0.1 * np.sum(np.var(X, axis=0))
    plain = fastmlp.Autoencoder([6, 3]).fit(X[:, :] - 1e7, epochs=1, progress=False)
    assert plain.reconstruct(X - 1e7).dtype == np.float32  # no scaler: the model's dtype


def test_two_wide_code_for_visualisation():
    X, y = _digits01(600)
    ae = fastmlp.Autoencoder([64, 32, 2], activation="tanh").fit(X, epochs=30, optimizer=optim.Adam(3e-3),
                                                                  batch_size=32, progress=False)
    codes = ae.encode(X)
    assert codes.shape == (600, 2) and np.all(np.isfinite(codes)) and codes.std(axis=0).min() > 0
    assert ae.decode(codes).shape == (600, 64)
    # the 2-D code keeps class structure: nearest class centre beats chance (0.1) by far
    centres = np.stack([codes[y == c].mean(axis=0) for c in range(10)])
    nearest = np.argmin(((codes[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    assert np.mean(nearest == y) > 0.3


def test_bad_autoencoder_arguments_raise():
    with pytest.raises(ValueError, match="sizes must list the input width and at least one code width"):
        fastmlp.Autoencoder([64])
    with pytest.raises(ValueError, match="output must be 'identity' or 'sigmoid'"):
        fastmlp.Autoencoder([64, 2], output="softmax")
    with pytest.raises(ValueError, match="kind must be 'gaussian' or 'mask'"):
        fastmlp.DenoisingAutoencoder([64, 2], noise="salt")
    with pytest.raises(ValueError, match="0 <= level < 1"):
        fastmlp.DenoisingAutoencoder([64, 2], noise="mask", level=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        fastmlp.DenoisingAutoencoder([64, 2], noise="gaussian", level=-1.0)
    with pytest.raises(ValueError, match="X must be 2-D"):
        fastmlp.Autoencoder([4, 2]).fit(np.zeros(4))
