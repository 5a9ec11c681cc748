"""Device-resident training: models, the Trainer, autoencoders and the estimators with
device="cuda". GPU cases skip with "no CUDA device"; the error paths run everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import cuda, nn
from fastmlp.datasets import load_digits
from fastmlp.optim import SGD, Adam
from fastmlp.train import NonFiniteLossError, Trainer

needs_gpu = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")


def _digits(n=1024):
    X, y = load_digits()
    X = (X / 16.0).astype(np.float32)
    return X[:n], y[:n].astype(np.int64)


# -- everywhere -------------------------------------------------------------------------------------

def test_unknown_device_name_is_a_value_error():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        fastmlp.MLP([4, 3, 2], device="tpu")


@pytest.mark.skipif(cuda.is_available(), reason="a CUDA device is present")
def test_cuda_model_without_a_device_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="device='cuda'"):
        fastmlp.MLP([4, 3, 2], device="cuda")
    model = fastmlp.MLP([4, 3, 2])
    with pytest.raises(RuntimeError, match="device='cuda'"):
        model.to("cuda")
    assert model.device == "cpu"


def test_cuda_model_must_be_float32():
    with pytest.raises((TypeError, RuntimeError)):
        fastmlp.MLP([4, 3, 2], device="cuda", dtype="float64")


@pytest.mark.skipif(cuda.is_available(), reason="a CUDA device is present")
def test_estimator_with_cuda_device_raises_at_fit_without_a_device():
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier

    X, y = _digits(64)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, device="cuda")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        est.fit(X, y)


def test_moving_a_cpu_model_to_cpu_is_a_no_op():
    model = fastmlp.MLP([4, 3, 2])
    params = model.parameters()
    assert model.to("cpu") is model and model.parameters() is params


# -- on a GPU ---------------------------------------------------------------------------------------

@needs_gpu
def test_cuda_model_holds_its_arena_on_the_device_and_matches_the_cpu_forward():
    X, _ = _digits(200)
    cpu = fastmlp.MLP([64, 32, 10], output="softmax", seed=3)
    gpu = fastmlp.MLP([64, 32, 10], output="softmax", seed=3, device="cuda")
    assert hasattr(gpu.parameters(), "__cuda_array_interface__")
    np.testing.assert_array_equal(gpu.parameters().to_numpy(), cpu.parameters())
    out = gpu.forward(X)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, cpu.forward(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))
    dev_out = gpu.forward(cuda.asarray(X))
    assert hasattr(dev_out, "__cuda_array_interface__")


@needs_gpu
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_cuda_training_learns_digits_like_the_cpu(dropout):
    X, y = _digits()
    accs = {}
    for device in ("cpu", "cuda"):
        model = fastmlp.MLP([64, 64, 10], output="softmax", dropout=dropout, seed=0, device=device)
        Trainer(model, optimizer=Adam(1e-2), batch_size=64, epochs=15, progress=False, seed=1).fit(X, y)
        accs[device] = float(np.mean(model.predict(X) == y))
    assert accs["cuda"] >= 0.95
    assert abs(accs["cuda"] - accs["cpu"]) < 0.03


@needs_gpu
@pytest.mark.parametrize("batch", [64, 301])
def test_cuda_gradients_with_dropout_match_the_cpu(batch):
    # The GPU's fused layer kernels (the dropout in the forward GEMM's epilogue, the bias gradient
    # beside dW, the dropout and ReLU backward in the dX GEMM's epilogue) against the CPU's; the
    # masks are bit-identical, so only rounding differs.
    X, y = _digits(batch)
    got = {}
    for device in ("cpu", "cuda"):
        model = fastmlp.MLP([64, 48, 33, 10], output="softmax", dropout=0.25, seed=0, device=device)
        loss, g = model.value_and_grad(X, y, seed=7, step=3)
        got[device] = (loss, g.to_numpy() if device == "cuda" else g.copy())
    assert abs(got["cuda"][0] - got["cpu"][0]) <= 1e-5 * abs(got["cpu"][0])
    np.testing.assert_allclose(got["cuda"][1], got["cpu"][1], rtol=1e-3, atol=1e-6)
    assert np.abs(got["cpu"][1]).max() > 1e-3  # not a vacuous comparison


@needs_gpu
def test_the_second_backward_stream_changes_no_result(monkeypatch):
    # The weight-gradient GEMMs on a second stream (eager steps and graph replays) against all on
    # one stream: a missing dependency between the two would show as a different result.
    X, y = _digits(1024)
    params = []
    for side in (True, False):
        monkeypatch.setattr(nn, "_SIDE_STREAM", side)
        model = fastmlp.MLP([64, 256, 256, 128, 10], output="softmax", dropout=0.2, seed=0, device="cuda")
        Trainer(model, optimizer=Adam(1e-3), batch_size=256, epochs=4, progress=False, seed=5,
                use_graphs=True).fit(X, y)
        params.append(model.parameters().to_numpy())
        assert (getattr(model, "_branches", {}) != {}) == side
    np.testing.assert_array_equal(params[0], params[1])


@needs_gpu
def test_training_many_models_with_graphs_returns_their_device_memory():
    # Each model's captured graphs share its streams' scratch buffers; once the model, its streams
    # and its graphs are gone the buffers must be freed (they leaked, a few MiB per model).
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA: no way to read the device's free memory")
    import gc

    X, y = _digits(512)

    def train_one():
        model = fastmlp.MLP([64, 256, 256, 10], output="softmax", dropout=0.2, seed=0, device="cuda")
        Trainer(model, optimizer=Adam(1e-3), batch_size=128, epochs=2, progress=False, seed=1,
                use_graphs=True).fit(X, y)

    train_one()
    gc.collect()
    cuda.synchronize()
    free_before = torch.cuda.mem_get_info()[0]
    for _ in range(12):
        train_one()
    gc.collect()
    cuda.synchronize()
    assert free_before - torch.cuda.mem_get_info()[0] < 8 << 20


@needs_gpu
def test_a_capture_begun_outside_fastmlp_does_not_take_a_cold_second_stream():
    # As in a torch.cuda.graph block: the stream is being captured, but not by graph_capture. The
    # second stream has no scratch yet (no eager step used it), so the backward stays on one.
    X, y = _digits(256)
    model = fastmlp.MLP([64, 48, 32, 10], output="softmax", seed=0, device="cuda")
    x, t = cuda.asarray(X), cuda.asarray(y)
    native = cuda._native()
    logits = model._forward(x, True)  # eager, outside any stream block: one stream, the default
    grad = fastmlp.kernels.softmax_cross_entropy(logits, t)[1]
    model._backward(grad)
    cuda.synchronize()
    model._forward(x, True)
    s = cuda.current_stream()
    with cuda.stream(s):
        native.capture_begin(s.handle)
        try:
            model._backward(grad)
        finally:
            native.capture_end(s.handle)
    assert getattr(model, "_branches", {}) == {}


@needs_gpu
def test_captured_graph_training_matches_eager_training_bitwise():
    X, y = _digits(512)
    params = []
    for graphs in (False, True):
        model = fastmlp.MLP([64, 48, 10], output="softmax", dropout=0.2, seed=0, device="cuda")
        Trainer(model, optimizer=Adam(1e-3, weight_decay=[1e-4, 0.0]), batch_size=64, epochs=3, progress=False,
                seed=5, use_graphs=graphs).fit(X, y)
        params.append(model.parameters().to_numpy())
    np.testing.assert_array_equal(params[0], params[1])


@needs_gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_fit_and_train_step_clip_the_gradient_norm_like_the_cpu(graphs):
    # A bound far under the gradients' norm: every SGD step is clipped, so each moves the
    # parameters by lr * clip_norm (less eps's share) in L2, on either device and in a graph too.
    X, y = _digits(128)
    lr, bound = 0.5, 0.05
    got = {}
    for device in ("cpu", "cuda"):
        model = fastmlp.MLP([64, 32, 10], output="softmax", seed=0, device=device)
        start = np.array(model.parameters().to_numpy() if device == "cuda" else model.parameters())
        trainer = Trainer(model, optimizer=SGD(lr, clip_norm=bound), batch_size=64, epochs=3, progress=False,
                          seed=3, shuffle=False, use_graphs=graphs)
        trainer.fit(X, y)
        trainer.train_step(X[:64], y[:64])  # Optimizer.step's path
        end = model.parameters().to_numpy() if device == "cuda" else model.parameters()
        got[device] = (start, np.array(end))
    start, end = got["cuda"]
    assert np.linalg.norm(end - start) <= 7 * lr * bound * (1 + 1e-5)
    assert np.linalg.norm(end - start) >= 0.5 * lr * bound  # it trained
    np.testing.assert_allclose(got["cuda"][1], got["cpu"][1], rtol=1e-4, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_loss_scale_scales_the_loss_and_the_gradient_like_the_cpu(graphs):
    X, y = _digits(128)
    got = {}
    for device in ("cpu", "cuda"):
        model = fastmlp.MLP([64, 32, 10], output="softmax", seed=0, device=device)
        trainer = Trainer(model, optimizer=SGD(0.05), batch_size=64, epochs=2, progress=False, seed=3, shuffle=False,
                          loss_scale=8.0, use_graphs=graphs)
        history = trainer.fit(X, y)
        loss = float(trainer.train_step(X[:64], y[:64]))
        params = model.parameters().to_numpy() if device == "cuda" else model.parameters()
        got[device] = (history.train_loss, loss, np.array(params))
    np.testing.assert_allclose(got["cuda"][0], got["cpu"][0], rtol=1e-5)  # losses reported scaled
    assert got["cuda"][1] == pytest.approx(got["cpu"][1], rel=1e-5)
    np.testing.assert_allclose(got["cuda"][2], got["cpu"][2], rtol=1e-4, atol=1e-5)
    # Plain SGD on a loss scaled by 8 (a power of two) takes the steps of 8 times the step size.
    unscaled = Trainer(fastmlp.MLP([64, 32, 10], output="softmax", seed=0), optimizer=SGD(0.4), batch_size=64,
                       epochs=2, progress=False, seed=3, shuffle=False).fit(X, y)
    np.testing.assert_allclose(got["cuda"][0], 8.0 * np.array(unscaled.train_loss), rtol=1e-5)


@needs_gpu
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_cuda_autoencoder_transformer_trains_on_the_device_like_the_cpu():
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import AutoencoderTransformer

    X, _ = _digits(256)
    codes = {}
    for device in ("cpu", "cuda"):  # its loss is the mean over features: a loss_scale of 1/64
        est = AutoencoderTransformer((16,), max_iter=5, random_state=0, device=device).fit(X)
        codes[device] = (est.transform(X), est.loss_curve_)
    np.testing.assert_allclose(codes["cuda"][1], codes["cpu"][1], rtol=1e-4)
    np.testing.assert_allclose(codes["cuda"][0], codes["cpu"][0], rtol=1e-3, atol=1e-3)


@needs_gpu
def test_cuda_fit_with_lr_auto_picks_the_cpu_models_step_size():
    X, y = _digits(512)
    got = {}
    for device in ("cpu", "cuda"):
        model = fastmlp.MLP([64, 32, 10], output="softmax", dropout=0.1, seed=0, device=device)
        trainer = Trainer(model, optimizer=SGD("auto", momentum=0.9), batch_size=64, epochs=2, progress=False, seed=4)
        trainer.fit(*((cuda.asarray(X), cuda.asarray(y)) if device == "cuda" else (X, y)))  # device data too
        got[device] = (trainer.base_lr, model.parameters().to_numpy() if device == "cuda" else model.parameters())
    assert got["cuda"][0] == got["cpu"][0] > 0  # the search ran on the host copy, from the same weights
    # find_step_size itself on a CUDA model and device arrays (not prepared by a Trainer)
    model = fastmlp.MLP([64, 32, 10], output="softmax", seed=0, device="cuda")
    before = model.parameters().to_numpy()
    lr, _ = fastmlp.find_step_size(model, cuda.asarray(X), cuda.asarray(y))
    assert lr == fastmlp.find_step_size(fastmlp.MLP([64, 32, 10], output="softmax", seed=0), X, y)[0]
    np.testing.assert_array_equal(model.parameters().to_numpy(), before)  # the model is left unchanged
    np.testing.assert_allclose(got["cuda"][1], got["cpu"][1], rtol=1e-3, atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_relu_dropout_backward_shortcut_trains_bitwise_like_the_mask_regenerating_path(graphs):
    # As on the CPU (test_nn): a dropout after Dense+ReLU takes its gradient from its own output in
    # one kernel instead of drawing the mask again and then applying relu's backward (two kernels).
    X, y = _digits(300)

    def train(shortcut):
        model = fastmlp.MLP([64, 32, 16, 10], output="softmax", dropout=0.3, seed=1, device="cuda")
        for b in model._blocks:
            if hasattr(b, "relu_before"):
                assert b.relu_before
                b.relu_before = shortcut
        Trainer(model, optimizer=Adam(1e-2), batch_size=64, epochs=3, seed=2, progress=False,
                use_graphs=graphs).fit(X, y)
        return model.parameters().to_numpy()

    np.testing.assert_array_equal(train(True).view(np.uint32), train(False).view(np.uint32))


@needs_gpu
def test_cuda_training_streams_large_host_data_like_resident_data(monkeypatch):
    from fastmlp import _device_train

    from fastmlp.train import Callback

    class Where(Callback):  # the fit's device loop, seen while it runs (fit drops it at its end)
        def on_batch_end(self, trainer, step, loss):
            resident.add(trainer._device_loop.resident)

    X, y = _digits(300)  # 300 = 4 full batches of 64 and a partial one
    params = []
    for fraction in (0.5, 0.0):  # resident on the device, then streamed through pinned buffers
        monkeypatch.setattr(_device_train, "RESIDENT_FRACTION", fraction)
        model = fastmlp.MLP([64, 32, 10], output="softmax", dropout=0.1, seed=0, device="cuda")
        tr = Trainer(model, optimizer=Adam(1e-3), batch_size=64, epochs=3, progress=False, seed=2,
                     callbacks=[Where()])
        resident = set()
        tr.fit(X, y)
        assert resident == {fraction > 0}
        params.append(model.parameters().to_numpy())
    np.testing.assert_array_equal(params[0], params[1])


@needs_gpu
@pytest.mark.parametrize("loss,out", [("cross_entropy", 10), ("squared", 3), ("binary_cross_entropy", 4)])
@pytest.mark.parametrize("where", ["resident", "streamed", "device-data"])
def test_cuda_fit_with_sample_weight_matches_the_cpu(monkeypatch, loss, out, where):
    from fastmlp import _device_train

    X, labels = _digits(300)  # 4 full batches of 64 and a partial one
    rng = np.random.default_rng(1)
    y = {"cross_entropy": labels, "squared": X[:, :3] * 2.0 - 1.0,
         "binary_cross_entropy": (X[:, 10:14] > 0.3).astype(np.float32)}[loss]
    weights = rng.uniform(0.0, 3.0, 300)
    weights[:64] = 0.0  # a batch whose weights sum to 0 (no shuffling): no loss, no gradient
    if where == "streamed":
        monkeypatch.setattr(_device_train, "RESIDENT_FRACTION", 0.0)
    got = {}
    for device in ("cpu", "cuda"):
        output = "softmax" if loss == "cross_entropy" else "sigmoid" if loss == "binary_cross_entropy" else "identity"
        model = fastmlp.MLP([64, 32, out], output=output, dropout=0.1, seed=0, device=device)
        tr = Trainer(model, loss=loss, optimizer=Adam(1e-2), batch_size=64, epochs=3, progress=False, seed=2,
                     shuffle=False)
        data = (cuda.asarray(X), cuda.asarray(y)) if device == "cuda" and where == "device-data" else (X, y)
        history = tr.fit(*data, sample_weight=weights)
        params = model.parameters().to_numpy() if device == "cuda" else model.parameters()
        got[device] = (np.array(history.train_loss), np.array(params))
    np.testing.assert_allclose(got["cuda"][0], got["cpu"][0], rtol=2e-5)
    np.testing.assert_allclose(got["cuda"][1], got["cpu"][1], rtol=1e-4, atol=1e-5)
    # the weights matter: unweighted training ends elsewhere
    model = fastmlp.MLP([64, 32, out], output=output, dropout=0.1, seed=0, device="cuda")
    Trainer(model, loss=loss, optimizer=Adam(1e-2), batch_size=64, epochs=3, progress=False, seed=2,
            shuffle=False).fit(X, y)
    assert np.abs(model.parameters().to_numpy() - got["cuda"][1]).max() > 1e-3


@needs_gpu
def test_cuda_fit_takes_device_arrays():
    X, y = _digits(256)
    model = fastmlp.MLP([64, 32, 10], output="softmax", seed=0, device="cuda")
    Trainer(model, optimizer=Adam(1e-2), batch_size=64, epochs=5, progress=False).fit(cuda.asarray(X),
                                                                                       cuda.asarray(y))
    assert float(np.mean(model.predict(X) == y)) > 0.8
    with pytest.raises(NotImplementedError, match="standardize"):
        Trainer(model, standardize=True, progress=False).fit(cuda.asarray(X), cuda.asarray(y))
    with pytest.raises(TypeError, match="sample_weight must be host data"):
        Trainer(model, progress=False).fit(cuda.asarray(X), cuda.asarray(y), sample_weight=cuda.asarray(np.ones(256, np.float32)))
    with pytest.raises(TypeError, match="both"):
        Trainer(model, progress=False).fit(cuda.asarray(X), y)


@needs_gpu
def test_cuda_trainer_reads_the_device_loss_only_at_checks_and_rolls_back_on_non_finite():
    X, y = _digits(512)
    X = X.copy()
    X[5 * 32 + 3] = 3e38  # finite, so fit takes it; it overflows the 6th batch (no shuffling): steps 6.. are not finite
    model = fastmlp.MLP([64, 32, 10], output="softmax", seed=0, device="cuda")
    tr = Trainer(model, optimizer=SGD(0.1), batch_size=32, epochs=2, progress=False, check_every=4, shuffle=False)
    with pytest.raises(NonFiniteLossError, match=r"in steps 5\.\.8 \(first at step 6\)"):
        tr.fit(X, y)
    assert tr.step == 4 and tr.optimizer.step_count == 4  # rolled back to the last good check
    assert np.all(np.isfinite(model.parameters().to_numpy()))
    assert tr.history.stop_reason == "non_finite_loss"


@needs_gpu
@pytest.mark.parametrize("stop_at", [6, 8, 16])  # between checks, at a check, at an epoch's end
def test_cuda_fit_stopped_by_a_callback_resumes_at_the_next_batch(stop_at):
    """The device reads losses (and runs callbacks) every check_every steps; steps run past the
    one whose callback stopped the fit are kept and recorded, so a resumed fit runs no batch
    twice and ends where an uninterrupted one does."""
    from fastmlp.train import Callback

    class Stop(Callback):
        def on_batch_end(self, trainer, step, loss):
            if step == stop_at:
                raise KeyboardInterrupt

    X, y = _digits(512)

    def trainer(callbacks=()):
        model = fastmlp.MLP([64, 32, 10], output="softmax", dropout=0.1, seed=0, device="cuda")
        return Trainer(model, optimizer=Adam(1e-3), batch_size=32, epochs=2, progress=False, check_every=4,
                       callbacks=list(callbacks))

    whole = trainer()
    whole.fit(X, y)
    stopped = trainer([Stop()])
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(X, y)
    stopped.callbacks = []
    stopped.fit(X, y)
    assert stopped.step == whole.step == 32
    np.testing.assert_array_equal(stopped.model.parameters().to_numpy(), whole.model.parameters().to_numpy())


@needs_gpu
@pytest.mark.parametrize("stop", ["no", "during", "at_begin"])
def test_a_cuda_fit_leaves_no_reference_cycle_behind(stop):
    # The device loop refers to its Trainer; kept after fit, it held the model, the uploaded
    # training set and the captured graph in a cycle until Python's cyclic collector ran.
    import gc
    import weakref

    from fastmlp.train import Callback

    class Stop(Callback):
        def on_train_begin(self, trainer):
            if stop == "at_begin":
                raise KeyboardInterrupt

        def on_batch_end(self, trainer, step, loss):
            if stop == "during" and step == 6:
                raise KeyboardInterrupt

    X, y = _digits(256)
    gc.collect()
    gc.disable()
    try:
        model = fastmlp.MLP([64, 32, 10], output="softmax", dropout=0.1, seed=0, device="cuda")
        tr = Trainer(model, optimizer=Adam(1e-3), batch_size=32, epochs=2, progress=False, check_every=4,
                     callbacks=[Stop()])
        try:
            tr.fit(X, y)
        except KeyboardInterrupt:
            assert stop != "no"
        refs = [weakref.ref(model), weakref.ref(tr), weakref.ref(model.parameters())]
        del model, tr
        assert [r() is None for r in refs] == [True] * 3
    finally:
        gc.enable()


@needs_gpu
@pytest.mark.parametrize("presses", (1, 2), ids=("ctrl-c", "ctrl-c-twice"))
def test_cuda_fit_interrupted_inside_a_step_resumes_without_repeating_a_batch(monkeypatch, presses):
    """Ctrl-C while step 6 runs: once, the fit stops at the next check (step 8); twice, right
    after step 6, whose loss and those since the last check are read and recorded first. Either
    way a resumed fit runs each remaining batch once and ends where an uninterrupted one does."""
    import signal

    from fastmlp import _device_train

    X, y = _digits(512)

    def trainer():
        model = fastmlp.MLP([64, 32, 10], output="softmax", dropout=0.1, seed=0, device="cuda")
        return Trainer(model, optimizer=Adam(1e-3), batch_size=32, epochs=2, progress=False, check_every=4)

    whole = trainer()
    whole.fit(X, y)
    stopped = trainer()
    real_step = _device_train.DeviceLoop.step

    def step(self, lo, hi):
        real_step(self, lo, hi)
        if self.trainer.step == 6:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_device_train.DeviceLoop, "step", step)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(X, y)
    monkeypatch.undo()
    assert stopped.step == stopped.optimizer.step_count == (8 if presses == 1 else 6)
    assert stopped.history.stop_reason == "interrupted"
    stopped.fit(X, y)
    assert stopped.step == whole.step == 32
    np.testing.assert_array_equal(stopped.model.parameters().to_numpy(), whole.model.parameters().to_numpy())


@needs_gpu
def test_cuda_fit_replays_its_captured_step_by_the_raw_launch_path(monkeypatch):
    from fastmlp import _device_train

    calls = []
    real = _device_train.DeviceLoop._replay_step
    monkeypatch.setattr(_device_train.DeviceLoop, "_replay_step",
                        lambda self, lo, hi: calls.append(hi - lo) or real(self, lo, hi))
    X, y = _digits(300)  # 9 full batches of 32 and one of 12 per epoch
    model = fastmlp.MLP([64, 32, 10], output="softmax", dropout=0.1, seed=0, device="cuda")
    Trainer(model, optimizer=Adam(1e-3), batch_size=32, epochs=2, progress=False, use_graphs=True).fit(X, y)
    # every full batch after the first two (run eagerly, then captured), none of the partial ones
    assert calls == [32] * (2 * 9 - 2)


@needs_gpu
def test_cuda_train_step_returns_a_device_scalar():
    X, y = _digits(64)
    model = fastmlp.MLP([64, 16, 10], output="softmax", device="cuda")
    tr = Trainer(model, optimizer=Adam(1e-3), progress=False)
    loss = tr.train_step(X, y)
    assert hasattr(loss, "__cuda_array_interface__")
    assert np.isfinite(float(loss))
    assert tr.optimizer.step_count == 1


@needs_gpu
def test_cuda_model_saves_and_loads_through_the_host(tmp_path):
    model = fastmlp.MLP([8, 4, 2], device="cuda")
    model.save(tmp_path / "m.npz")
    back = fastmlp.load(tmp_path / "m.npz")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.parameters(), model.parameters().to_numpy())


@needs_gpu
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_cuda_autoencoder_and_estimators_train_on_the_device():
    X, y = _digits(512)
    ae = fastmlp.Autoencoder([64, 16], device="cuda").fit(X, epochs=3, progress=False)
    assert ae.encode(X).shape == (512, 16)
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier

    scores = {}
    for device in ("cpu", "cuda"):
        est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=20, random_state=0, device=device).fit(X, y)
        scores[device] = est.score(X, y)
    assert scores["cuda"] > 0.7 and abs(scores["cuda"] - scores["cpu"]) < 0.03
    assert isinstance(est.coefs_[0], np.ndarray)


@needs_gpu
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
@pytest.mark.parametrize("weighted,rate", [(False, "constant"), (True, "constant"), (False, "invscaling")])
def test_cuda_estimators_divide_alpha_by_each_batchs_rows_or_weights_like_the_cpu(weighted, rate):
    # invscaling with momentum: the velocity carried across the rate changes (sklearn._carry_velocity)
    # scikit-learn's alpha per batch: over a short last batch's rows, or a batch's weight sum.
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier

    X, y = _digits(300)  # batches of 64 and a short last one of 44
    w = np.random.default_rng(0).uniform(0.2, 5.0, 300) if weighted else None
    coefs = {}
    for device in ("cpu", "cuda"):  # sgd: Adam's epsilon is placed as torch places it on the device
        est = MLPClassifier((32,), solver="sgd", alpha=0.5, learning_rate_init=0.05, learning_rate=rate,
                            momentum=0.9, batch_size=64, max_iter=4, random_state=0, device=device)
        est.fit(X, y, sample_weight=w)
        coefs[device] = est.coefs_ + est.intercepts_
    for a, b in zip(coefs["cpu"], coefs["cuda"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@needs_gpu
def test_cuda_batch_norm_model_trains():
    X, y = _digits(256)
    model = fastmlp.MLP([64, 32, 10], output="softmax", batch_norm=True, device="cuda")
    Trainer(model, optimizer=Adam(1e-2), batch_size=64, epochs=5, progress=False).fit(X, y)
    assert float(np.mean(model.predict(X) == y)) > 0.8


def test_nn_sequential_accepts_device_keyword():
    model = nn.Sequential(nn.Dense(3, 2), device="cpu")
    assert model.device == "cpu"
