"""Initialisation (fastmlp.init): the presets' distributions, zero biases, seeding, callables,
and unsupervised pre-training through MLP.from_encoder.

Statistical tolerances: a layer of n = 120 000 weights estimates a standard deviation to a
relative standard error of 1/sqrt(2n) ≈ 0.2 %, and a fraction to sqrt(f(1-f)/n) ≈ 0.14 %; the
tests allow about 5 standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K
from fastmlp import nn
from fastmlp import optim

FAN_IN, FAN_OUT = 400, 300  # 120 000 weights


def _first_weight(init, seed=0, dtype="float32"):
    m = nn.Sequential(nn.Dense(FAN_IN, FAN_OUT), nn.ReLU(), nn.Dense(FAN_OUT, 10), init=init, seed=seed, dtype=dtype)
    return m, m.layers[0].weight.astype(np.float64).ravel()


def _normal_checks(w, std):
    n = w.size
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    assert w.std() == pytest.approx(std, rel=5 / math.sqrt(2 * n))
    # normal, not just the right spread: mass within one and two standard deviations
    assert np.mean(np.abs(w) < std) == pytest.approx(0.6827, abs=0.007)
    assert np.mean(np.abs(w) < 2 * std) == pytest.approx(0.9545, abs=0.004)


def test_he_init_is_normal_with_std_sqrt_2_over_fan_in():
    _, w = _first_weight("he")
    _normal_checks(w, math.sqrt(2.0 / FAN_IN))


def test_tiny_init_is_normal_times_1e_minus_5():
    _, w = _first_weight("tiny")
    _normal_checks(w, 1e-5)


def test_glorot_init_is_uniform_on_plus_minus_sqrt_6_over_fan_in_plus_fan_out():
    _, w = _first_weight("glorot")
    limit = math.sqrt(6.0 / (FAN_IN + FAN_OUT))
    assert np.all(np.abs(w) <= limit)
    assert w.max() > 0.999 * limit and w.min() < -0.999 * limit
    assert w.std() == pytest.approx(limit / math.sqrt(3), rel=5 / math.sqrt(2 * w.size))
    # uniform: each tenth of the range holds a tenth of the weights
    counts, _ = np.histogram(w, bins=10, range=(-limit, limit))
    np.testing.assert_allclose(counts / w.size, 0.1, atol=5 * math.sqrt(0.09 / w.size))


def test_presets_draw_from_the_philox_stream_of_their_parameter_index():
    # DESIGN.md: parameter tensor i of a model draws from the stream (seed, i)
    m = fastmlp.MLP([5, 4, 3], init="he", seed=9)
    layout = m.param_layout()
    w1 = [i for i in layout if i.kind == "weight"][1]
    index = layout.index(w1)
    expected = K.random_normal(w1.shape, seed=9, offset=index, std=math.sqrt(2.0 / 4))
    np.testing.assert_array_equal(m.layers[2].weight, expected)


@pytest.mark.parametrize("init", ["tiny", "glorot", "he"])
def test_every_preset_starts_biases_at_zero_and_batch_norm_at_identity(init):
    m = fastmlp.MLP([6, 5, 4, 3], init=init)
    for d in (l for l in m.layers if isinstance(l, nn.Dense)):
        np.testing.assert_array_equal(d.bias, 0.0)
        assert np.all(d.weight != 0)
    b = fastmlp.MLP([6, 5, 3], init=init, batch_norm=True)
    np.testing.assert_array_equal(b.layers[1].gamma, 1.0)
    np.testing.assert_array_equal(b.layers[1].beta, 0.0)
    np.testing.assert_array_equal(b.layers[1].running_mean, 0.0)
    np.testing.assert_array_equal(b.layers[1].running_var, 1.0)


@pytest.mark.parametrize("init", ["tiny", "glorot", "he"])
def test_init_is_seeded_and_reproducible(init):
    a = fastmlp.MLP([8, 7, 3], init=init, seed=4)
    b = fastmlp.MLP([8, 7, 3], init=init, seed=4)
    c = fastmlp.MLP([8, 7, 3], init=init, seed=5)
    np.testing.assert_array_equal(a.parameters(), b.parameters())
    assert not np.array_equal(a.parameters(), c.parameters())
    # two layers of the same shape get different streams
    d = fastmlp.MLP([6, 6, 6, 6], init=init, seed=4)
    assert not np.array_equal(d.layers[0].weight, d.layers[2].weight)


def test_init_does_not_depend_on_threads_cpu_path_or_later_layers(threads):
    fastmlp.set_num_threads(1)
    one = fastmlp.MLP([300, 200, 10], seed=3).parameters().copy()
    fastmlp.set_num_threads(2)
    two = fastmlp.MLP([300, 200, 10], seed=3).parameters().copy()
    np.testing.assert_array_equal(one, two)
    previous = fastmlp.get_isa()
    try:
        for isa in fastmlp.available_isas():
            fastmlp.set_isa(isa)
            np.testing.assert_array_equal(fastmlp.MLP([300, 200, 10], seed=3).parameters(), one)
    finally:
        fastmlp.set_isa(previous)
    # the first layer's weights are the same whatever follows it
    wider = fastmlp.MLP([300, 200, 50, 7], seed=3)
    np.testing.assert_array_equal(wider.layers[0].weight, one[:300 * 200].reshape(200, 300))


def test_float64_models_draw_the_same_values_as_float32_models():
    m32 = fastmlp.MLP([20, 10, 3], seed=2)
    m64 = fastmlp.MLP([20, 10, 3], seed=2, dtype="float64")
    # the same normals, scaled in the model's precision (within a float32 rounding)
    np.testing.assert_allclose(m64.parameters(), m32.parameters(), rtol=2 * np.finfo(np.float32).eps)


def test_callable_init_gets_shape_fans_and_a_seeded_generator():
    calls = []

    def orthogonal_ish(shape, fan_in, fan_out, rng):
        calls.append((shape, fan_in, fan_out))
        assert isinstance(rng, np.random.Generator)
        return rng.uniform(-0.1, 0.1, size=shape)

    a = fastmlp.MLP([5, 4, 3], init=orthogonal_ish, seed=7)
    assert calls == [((4, 5), 5, 4), ((3, 4), 4, 3)]
    b = fastmlp.MLP([5, 4, 3], init=orthogonal_ish, seed=7)
    c = fastmlp.MLP([5, 4, 3], init=orthogonal_ish, seed=8)
    np.testing.assert_array_equal(a.parameters(), b.parameters())
    assert not np.array_equal(a.parameters(), c.parameters())
    assert np.all(np.abs(a.layers[0].weight) <= 0.1)
    np.testing.assert_array_equal(a.layers[0].bias, 0.0)  # biases stay zero


def test_callable_init_returning_the_wrong_shape_or_non_finite_values_raises():
    with pytest.raises(ValueError, match="returned shape"):
        fastmlp.MLP([5, 4], init=lambda shape, fi, fo, rng: np.zeros((1, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        fastmlp.MLP([5, 4], init=lambda shape, fi, fo, rng: np.full(shape, np.nan))


def test_reset_parameters_takes_another_init_and_seed():
    m = fastmlp.MLP([10, 8, 2], init="he", seed=1)
    m.reset_parameters(init="glorot", seed=2)
    np.testing.assert_array_equal(m.parameters(), fastmlp.MLP([10, 8, 2], init="glorot", seed=2).parameters())
    with pytest.raises(ValueError, match="init must be one of"):
        m.reset_parameters(init="orthogonal")


# --- pre-training -----------------------------------------------------------------------------


def test_from_encoder_copies_the_encoder_weights_and_biases():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6))
    ae = fastmlp.DenoisingAutoencoder([6, 5, 4], noise="mask", level=0.2, activation="tanh", code_activation="tanh")
    ae.fit(X, epochs=2, batch_size=16, progress=False, standardize=True)
    mlp = fastmlp.MLP.from_encoder(ae, outputs=3, seed=1)
    assert mlp.sizes == [6, 5, 4, 3] and mlp.activation == "tanh" and mlp.output == "softmax"
    src = [l for l in ae.model.layers if isinstance(l, nn.Dense)][:2]
    dst = [l for l in mlp.layers if isinstance(l, nn.Dense)]
    for s, d in zip(src, dst):
        np.testing.assert_array_equal(d.weight, s.weight)
        np.testing.assert_array_equal(d.bias, s.bias)
        assert not np.shares_memory(d.weight, s.weight)
    # a fresh output layer from the MLP's own init and seed
    np.testing.assert_array_equal(dst[2].weight, fastmlp.MLP([6, 5, 4, 3], activation="tanh", seed=1).layers[4].weight)
    np.testing.assert_array_equal(dst[2].bias, 0.0)
    # the input standardisation comes along, so the hidden layers see what the encoder saw
    assert set(mlp.scaler) == {"x_mean", "x_scale"}
    hidden = mlp._forward_blocks(mlp._as_input(X), 0, 2, False)
    np.testing.assert_array_equal(hidden, ae.encode(X))


def test_from_encoder_keeps_a_linear_code_linear():
    """The autoencoder's default code layer has no activation; the classifier built on it must not
    add one (a ReLU there zeroed about half of the pre-trained 2-D codes)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 6))
    ae = fastmlp.DenoisingAutoencoder([6, 5, 2], noise="mask", level=0.2, seed=0)
    ae.fit(X, epochs=2, batch_size=16, progress=False, standardize=True)
    mlp = fastmlp.MLP.from_encoder(ae, outputs=3, seed=1)
    assert mlp.activation == ["relu", "identity"]
    assert [type(l).__name__ for l in mlp.layers] == ["Dense", "ReLU", "Dense", "Identity", "Dense"]
    codes = ae.encode(X)
    assert np.any(codes < 0)
    np.testing.assert_array_equal(mlp._forward_blocks(mlp._as_input(X), 0, 2, False), codes)


def test_mlp_takes_one_activation_per_hidden_layer_and_saves_it(tmp_path):
    model = fastmlp.MLP([5, 4, 4, 3, 2], activation=["tanh", "relu", "logistic"], seed=0)
    assert [type(l).__name__ for l in model.layers][1::2] == ["Tanh", "ReLU", "Sigmoid"]
    assert model.activation == ["tanh", "relu", "sigmoid"]
    assert fastmlp.MLP([5, 4, 4, 2], activation=["tanh", "tanh"]).activation == "tanh"
    model.save(tmp_path / "m.npz")
    loaded = fastmlp.load(tmp_path / "m.npz")
    X = np.random.default_rng(0).normal(size=(7, 5))
    assert loaded.activation == model.activation
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    with pytest.raises(ValueError, match="activation has 2 names but the model has 3 hidden layers"):
        fastmlp.MLP([5, 4, 4, 3, 2], activation=["tanh", "relu"])
    with pytest.raises(ValueError, match="activation must be one of"):
        fastmlp.MLP([5, 4, 2], activation=["swish"])


def _labelled_subset(y, per_class, rng):
    picks = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)]
    return np.concatenate(picks)


def test_denoising_pretraining_beats_random_init_on_a_small_labelled_subset():
    """Unsupervised pre-training on all 1797 digits (no labels), then fine-tuning on 5 labelled
    rows per class, against the same network from He init trained the same way; accuracy on the
    other 1747 rows, averaged over 5 seeds.

    Setting: pixels standardised with all-row statistics (no labels needed), a 64-128 ReLU
    denoising autoencoder (mask noise 0.3, 20 epochs of Adam), fine-tuning with SGD + momentum
    and a near-zero output layer (init="tiny", so early steps train the head before they move
    the pre-trained features). Measured over 8 seeds: 0.846 vs 0.800, every seed gaining 0.03
    or more. On raw [0, 1] pixels pre-training does not help: the digits' pixels are already as
    linearly separable as the codes (a linear probe scores about 0.84 on either).
    """
    X, y = fastmlp.datasets.load_digits()
    X = X.astype(np.float64)
    scale = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    gains = []
    for seed in range(5):
        rng = np.random.default_rng([seed, 100])
        labelled = _labelled_subset(y, 5, rng)
        held_out = np.setdiff1d(np.arange(len(y)), labelled)
        ae = fastmlp.DenoisingAutoencoder([64, 128], noise="mask", level=0.3, seed=seed, activation="relu",
                                          code_activation="relu")
        ae.fit(X, epochs=20, batch_size=32, optimizer=optim.Adam(3e-3), progress=False, seed=seed)
        pretrained = fastmlp.MLP.from_encoder(ae, outputs=10, seed=seed, init="tiny")
        random_init = fastmlp.MLP([64, 128, 10], output="softmax", seed=seed)
        accuracy = []
        for model in (pretrained, random_init):
            fastmlp.Trainer(model, optimizer=optim.SGD(0.05, momentum=0.9), epochs=50, batch_size=10,
                            progress=False, seed=seed).fit(X[labelled], y[labelled])
            accuracy.append(np.mean(model.predict(X[held_out]) == y[held_out]))
        gains.append(accuracy[0] - accuracy[1])
    assert np.mean(gains) >= 0.02, f"pre-training gains per seed: {np.round(gains, 3)}"
    assert min(gains) > 0.0, f"pre-training gains per seed: {np.round(gains, 3)}"
