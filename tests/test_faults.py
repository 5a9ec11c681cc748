"""Faults (issue 8, point 4): Ctrl-C during fit stops within one step and leaves a usable,
consistent model; a save that fails part-way (disk full, file-size limit, permission, Ctrl-C)
raises and leaves any earlier file intact and no temp file; impossible sizes raise MemoryError or
ValueError before allocating; non-finite inputs propagate through the kernels and stop the Trainer
with an error that names the step.

"Within one step" is counted in steps, never in seconds: the machine may be slow and shared.
"""

from __future__ import annotations

import _thread
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K
from fastmlp import optim
from fastmlp.train import Callback

TIMEOUT_S = 60


def _data(n=200, features=6, classes=3, seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, features)).astype(np.float32)
    return X, X[:, :classes].argmax(axis=1)


def _model(seed=0):
    # dropout (random streams keyed by the step) and batch norm (running statistics changed by the
    # forward pass): the state a half-done step could leave inconsistent
    return fastmlp.MLP([6, 16, 16, 3], output="softmax", batch_norm=True, dropout=0.2, seed=seed)


def _trainer(model, callbacks=(), epochs=4):
    return fastmlp.Trainer(model, optimizer=optim.Adam(1e-2), batch_size=20, epochs=epochs, progress=False,
                           callbacks=list(callbacks))


class _StateAt(Callback):
    """Records the full training state after step ``at`` of an uninterrupted run."""

    def __init__(self, at):
        self.at, self.state = at, None

    def on_batch_end(self, trainer, step, loss):
        if step == self.at:
            self.state = _state(trainer)


def _state(trainer):
    return {"params": trainer.model.parameters().copy(),
            "buffers": {k: v.copy() for k, v in trainer.model.buffers().items()},
            "optim": {k: v.copy() for k, v in trainer.optimizer.state.items()},
            "step_count": trainer.optimizer.step_count, "step": trainer.step}


def _reference_state(steps):
    """The state of an uninterrupted run after ``steps`` steps."""
    X, y = _data()
    recorder = _StateAt(steps)
    _trainer(_model(), [recorder], epochs=steps // 10 + 1).fit(X, y)
    return recorder.state


def _assert_state(trainer, expected):
    got = _state(trainer)
    assert got["step"] == expected["step"] and got["step_count"] == expected["step_count"]
    np.testing.assert_array_equal(got["params"], expected["params"])
    for name in ("buffers", "optim"):
        assert got[name].keys() == expected[name].keys()
        for k in got[name]:
            np.testing.assert_array_equal(got[name][k], expected[name][k], err_msg=f"{name} {k}")


def _assert_usable(trainer, tmp_path):
    """Predicts, saves, reloads, and trains on (the History keeps whole epochs only)."""
    X, y = _data()
    model = trainer.model
    assert np.all(np.isfinite(model.predict_proba(X)))
    model.save(tmp_path / "after.npz")
    np.testing.assert_array_equal(fastmlp.load(tmp_path / "after.npz").parameters(), model.parameters())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    epochs_before, steps_before = trainer.epoch, trainer.step
    trainer.callbacks = []
    history = trainer.fit(X, y)
    assert history.stop_reason == "completed" and trainer.epoch == trainer.epochs
    assert len(history) == trainer.epochs and history.epoch == list(range(1, trainer.epochs + 1))
    assert trainer.step == 10 * trainer.epochs  # an interrupted epoch resumes at its next batch: none twice
    assert trainer.optimizer.step_count == trainer.step


# --- Ctrl-C during fit -------------------------------------------------------------------------------

class _RaiseAt(Callback):
    def __init__(self, at, error=KeyboardInterrupt):
        self.at, self.error = at, error

    def on_batch_end(self, trainer, step, loss):
        if step == self.at:
            raise self.error


def test_keyboard_interrupt_from_a_callback_leaves_a_consistent_usable_model(tmp_path):
    X, y = _data()
    trainer = _trainer(_model(), [_RaiseAt(13)])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    _assert_state(trainer, _reference_state(13))
    h = trainer.history
    assert h.stop_reason == "interrupted"
    assert len(h) == 1 and h.epoch == [1] and trainer.epoch == 1  # whole epochs only
    _assert_usable(trainer, tmp_path)


def _interrupt_inside_step(monkeypatch, trainer, at_step, where, action):
    """Runs ``action`` inside training step ``at_step`` (0-based): in the forward pass (after it
    changed the batch-norm statistics), in the loss, or in the optimizer just before its kernel."""
    model = trainer.model
    if where == "forward":
        original = model._forward

        def hooked(*args, **kw):
            out = original(*args, **kw)
            if trainer.step == at_step and kw.get("training", args[1] if len(args) > 1 else False):
                action()
            return out

        monkeypatch.setattr(model, "_forward", hooked)
    elif where == "loss":
        from fastmlp import losses

        original = losses.compute

        def hooked(*args, **kw):
            if trainer.step == at_step:
                action()
            return original(*args, **kw)

        monkeypatch.setattr(losses, "compute", hooked)
    else:
        original = trainer.optimizer._update

        def hooked(*args, **kw):
            if trainer.step == at_step:
                action()
            return original(*args, **kw)

        monkeypatch.setattr(trainer.optimizer, "_update", hooked)


@pytest.mark.parametrize("where", ("forward", "loss", "optimizer"))
def test_keyboard_interrupt_raised_inside_a_step_rolls_that_step_back(monkeypatch, tmp_path, where):
    """A KeyboardInterrupt raised by code running inside a step (a data hook, a custom loss)
    leaves the model exactly as after the previous step: batch-norm statistics and the
    optimizer's step count included."""
    X, y = _data()
    trainer = _trainer(_model())

    def interrupt():
        raise KeyboardInterrupt

    _interrupt_inside_step(monkeypatch, trainer, 13, where, interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    monkeypatch.undo()
    _assert_state(trainer, _reference_state(13))
    assert trainer.history.stop_reason == "interrupted" and len(trainer.history) == 1
    _assert_usable(trainer, tmp_path)


def test_sigint_between_steps_stops_at_once(tmp_path):
    X, y = _data()

    class Signal(Callback):
        def on_batch_end(self, trainer, step, loss):
            if step == 13:
                signal.raise_signal(signal.SIGINT)

    trainer = _trainer(_model(), [Signal()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    _assert_state(trainer, _reference_state(13))  # no step after the one that saw Ctrl-C
    assert trainer.history.stop_reason == "interrupted"
    _assert_usable(trainer, tmp_path)


@pytest.mark.parametrize("where", ("forward", "loss", "optimizer"))
@pytest.mark.parametrize("presses", (1, 2), ids=("ctrl-c", "ctrl-c-twice"))
def test_sigint_inside_a_step_finishes_that_step_and_stops(monkeypatch, tmp_path, where, presses):
    """Ctrl-C (pressed once, or twice) while step 12 runs: step 12 completes whole, no other step
    starts, and fit raises KeyboardInterrupt."""
    X, y = _data()
    trainer = _trainer(_model())
    handler = signal.getsignal(signal.SIGINT)

    def press():
        for _ in range(presses):
            signal.raise_signal(signal.SIGINT)

    _interrupt_inside_step(monkeypatch, trainer, 12, where, press)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is handler
    _assert_state(trainer, _reference_state(13))  # 12 steps before + the interrupted one, whole
    assert trainer.history.stop_reason == "interrupted" and len(trainer.history) == 1
    _assert_usable(trainer, tmp_path)


def test_interrupt_main_from_a_timer_thread_stops_within_one_step(monkeypatch, tmp_path):
    """The way a real Ctrl-C arrives: asynchronously, from outside the training loop. The timer
    thread fires while the main thread is inside step 12."""
    X, y = _data()
    trainer = _trainer(_model())
    inside, fired = threading.Event(), threading.Event()

    def timer():
        if inside.wait(TIMEOUT_S):
            _thread.interrupt_main()
        fired.set()

    def wait_for_interrupt():  # keeps the main thread inside the step until the signal is in
        inside.set()
        assert fired.wait(TIMEOUT_S)

    thread = threading.Thread(target=timer)
    thread.start()
    _interrupt_inside_step(monkeypatch, trainer, 12, "loss", wait_for_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(X, y)
    finally:
        inside.set()
        thread.join(TIMEOUT_S)
    monkeypatch.undo()
    _assert_state(trainer, _reference_state(13))
    assert trainer.history.stop_reason == "interrupted"
    _assert_usable(trainer, tmp_path)


def test_interrupted_fit_resumes_the_epoch_at_its_next_batch_bitwise():
    """The completed steps of an interrupted epoch stay applied; the next fit continues that
    epoch at its next batch, so the run ends as one never interrupted: same steps, same weights,
    same History."""
    X, y = _data()
    whole = _trainer(_model(), epochs=2)
    whole.fit(X, y)
    trainer = _trainer(_model(), [_RaiseAt(13)], epochs=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    trainer.callbacks = []
    trainer.fit(X, y)
    assert trainer.epoch == 2 and trainer.step == 20 and trainer.optimizer.step_count == 20
    _assert_state(trainer, _state(whole))
    assert trainer.history.train_loss == whole.history.train_loss


def test_an_interrupt_in_the_end_of_epoch_validation_keeps_the_epochs_batches(monkeypatch):
    """A Ctrl-C (or an error) in the validation pass, after the epoch's last step and before its
    History row: the next fit validates and records that epoch, without training it again."""
    X, y = _data()
    whole = fastmlp.Trainer(_model(), optimizer=optim.Adam(1e-2), batch_size=20, epochs=2, validation=0.2,
                            progress=False)
    whole.fit(X, y)
    trainer = fastmlp.Trainer(_model(), optimizer=optim.Adam(1e-2), batch_size=20, epochs=2, validation=0.2,
                              progress=False)
    original, calls = trainer._evaluate_prepared, []

    def interrupted_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(trainer, "_evaluate_prepared", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    assert trainer.step == 8 and trainer.epoch == 0 and len(trainer.history) == 0
    trainer.fit(X, y)
    assert trainer.step == whole.step == 16
    _assert_state(trainer, _state(whole))
    assert trainer.history.val_loss == whole.history.val_loss


def test_an_unfinished_epoch_is_not_continued_on_other_data():
    X, y = _data()
    trainer = _trainer(_model(), [_RaiseAt(7)], epochs=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    trainer.callbacks = []
    with pytest.warns(RuntimeWarning, match="stopped after 7 batches of 200 rows .* this fit has 60 rows"):
        history = trainer.fit(X[:60], y[:60])
    assert trainer.step == 7 + 3 and len(history) == 1  # the epoch ran over again on the 60 rows


def test_a_refused_fit_leaves_the_scaler_as_it_was():
    X, y = _data()
    model = fastmlp.MLP([6, 8, 3], output="sigmoid", seed=0)
    before = model.predict_proba(X)
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):  # refused after the scaler was fitted
        fastmlp.Trainer(model, epochs=1, standardize=True, progress=False).fit(X, np.full((200, 3), 2.0))
    assert model.scaler is None
    np.testing.assert_array_equal(model.predict_proba(X), before)
    with pytest.raises(ValueError, match="X has 7 features but the model expects 6"):
        fastmlp.Trainer(model, epochs=1, standardize=True, progress=False).fit(np.c_[X, X[:, :1]],
                                                                               np.full((200, 3), 0.5))
    assert model.scaler is None


def test_weights_overflowed_by_an_epochs_last_update_stop_fit_and_roll_back():
    """A loss is computed before its update, so the update of an epoch's last step can leave
    non-finite weights behind finite losses: the epoch end catches it, without a validation set
    and with one, and puts back the weights of the epoch's start."""
    X, y = _data()
    X = X * 1e4  # gradients of ~1e4: lr 1e37 takes the weights past float32's 3.4e38 in one update
    for validation in (None, 0.25):
        model = fastmlp.MLP([6, 8, 3], output="softmax", seed=0)
        before = model.parameters().copy()
        trainer = fastmlp.Trainer(model, optimizer=optim.SGD(1e37), batch_size=1000, epochs=3,
                                  validation=validation, progress=False)
        with np.errstate(all="ignore"), pytest.raises(fastmlp.NonFiniteLossError,
                                                      match=r"update of step 1 .* made the weights non-finite"):
            trainer.fit(X, y)
        np.testing.assert_array_equal(model.parameters(), before)
        assert trainer.step == 0 and len(trainer.history) == 0
    # train_step cannot check every update (a pass over the weights per step); the next step's
    # error says the weights were already broken
    trainer = fastmlp.Trainer(fastmlp.MLP([6, 8, 3], output="softmax", seed=0), optimizer=optim.SGD(1e37),
                              progress=False)
    with np.errstate(all="ignore"):
        trainer.train_step(X, y)
        with pytest.raises(fastmlp.NonFiniteLossError, match="the previous step's update overflowed them"):
            trainer.train_step(X, y)


def test_fit_with_no_epochs_to_run_leaves_the_model_unchanged():
    X, y = _data()
    model = fastmlp.MLP([6, 8, 3], output="softmax", seed=0)
    before = model.predict_proba(X)
    history = fastmlp.Trainer(model, epochs=0, standardize=True, progress=False).fit(X, y)
    assert len(history) == 0 and model.scaler is None
    np.testing.assert_array_equal(model.predict_proba(X), before)


# --- saves that fail part-way ------------------------------------------------------------------------------

def _leftovers(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".tmp") or p.startswith(".fastmlp-"))


def _savers(tmp_path):
    """(what, save(obj, path), load(path) -> comparable arrays, an object, another object)."""
    X, y = _data()
    a, b = _model(1), fastmlp.MLP([6, 64, 64, 3], output="softmax", seed=2)
    ta, tb = _trainer(a, epochs=1), _trainer(b, epochs=1)
    ta.fit(X, y)
    from fastmlp.sklearn import MLPClassifier

    ea = MLPClassifier((8,), max_iter=50, tol=1e3, n_iter_no_change=1, random_state=0).fit(X, y)
    eb = MLPClassifier((64, 64), max_iter=50, tol=1e3, n_iter_no_change=1, random_state=1).fit(X, y)
    return {
        "model": (lambda m, p: m.save(p), lambda p: fastmlp.load(p).parameters(), a, b),
        "checkpoint": (lambda t, p: t.save_checkpoint(p),
                       lambda p: fastmlp.Trainer.from_checkpoint(p).model.parameters(), ta, tb),
        "estimator": (lambda e, p: e.save(p), lambda p: fastmlp.load(p).predict_proba(X), ea, eb),
    }


def _failing_write_array(error, after_calls=1):
    original = np.lib.format.write_array
    calls = []

    def failing(fp, array, *args, **kw):  # writes some members, then some bytes, then fails
        calls.append(1)
        if len(calls) > after_calls:
            fp.write(b"\x00" * 64)
            raise error
        return original(fp, array, *args, **kw)

    return failing


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                   OSError(errno.EFBIG, os.strerror(errno.EFBIG)), KeyboardInterrupt()],
                         ids=("disk-full", "file-too-large", "ctrl-c"))
@pytest.mark.parametrize("kind", ("model", "checkpoint", "estimator"))
def test_a_save_failing_part_way_keeps_the_earlier_file_and_leaves_no_temp_file(tmp_path, monkeypatch, kind,
                                                                                  error):
    save, load, first, second = _savers(tmp_path)[kind]
    path = tmp_path / "out.npz"
    save(first, path)
    before, expected = path.read_bytes(), load(path)
    monkeypatch.setattr(np.lib.format, "write_array", _failing_write_array(error))
    with pytest.raises(type(error)) as e:
        save(second, path)
    monkeypatch.undo()
    if isinstance(error, OSError):
        assert e.value.errno == error.errno
    assert path.read_bytes() == before
    np.testing.assert_array_equal(load(path), expected)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", ("fsync", "replace"))
def test_a_save_failing_at_fsync_or_rename_keeps_the_earlier_file(tmp_path, monkeypatch, stage):
    save, load, first, second = _savers(tmp_path)["model"]
    path = tmp_path / "out.npz"
    save(first, path)
    before = path.read_bytes()

    def fail(*args, **kw):
        raise OSError(errno.ENOSPC if stage == "fsync" else errno.EIO, "injected")

    monkeypatch.setattr(os, stage, fail)
    with pytest.raises(OSError, match="injected"):
        save(second, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


FSIZE_SCRIPT = """
import os, resource, signal, sys
import numpy as np
import fastmlp
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
directory = sys.argv[1]
path = os.path.join(directory, "model.npz")
small = fastmlp.MLP([4, 8, 2], seed=1)
small.save(path)
before = open(path, "rb").read()
limit = len(before) + 4096
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
big = fastmlp.MLP([64, 256, 256, 2], seed=2)   # about 330 kB: cannot fit under the limit
try:
    big.save(path)
except OSError as e:
    print("raised", e.errno == __import__("errno").EFBIG, type(e).__name__)
else:
    print("no error")
assert open(path, "rb").read() == before
np.testing.assert_array_equal(fastmlp.load(path).parameters(), small.parameters())
print("left", sorted(p for p in os.listdir(directory) if p != "model.npz"))
"""


def test_a_save_past_the_file_size_limit_raises_and_keeps_the_earlier_file(tmp_path):
    r = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["raised True OSError", "left []"], r.stdout


PERMISSION_SCRIPT = """
import os, stat, sys
import numpy as np
import fastmlp
directory = sys.argv[1]
path = os.path.join(directory, "model.npz")
model = fastmlp.MLP([4, 8, 2], seed=1)
if os.path.exists(path):
    before = open(path, "rb").read()
try:
    model.save(path)
except PermissionError as e:
    print("raised", e.errno)
else:
    print("no error")
print("left", sorted(os.listdir(directory)))
"""


def test_a_save_into_a_read_only_directory_raises_and_keeps_the_earlier_file(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "model.npz"
    first = fastmlp.MLP([4, 8, 2], seed=0)
    first.save(path)
    before = path.read_bytes()
    directory.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionError):
                fastmlp.MLP([4, 8, 2], seed=1).save(path)
        else:  # root ignores permissions: try as an unprivileged user, or skip
            for parent in directory.parents:  # let that user reach the directory
                if parent == parent.parent or not str(parent).startswith(str(tmp_path.parent.parent)):
                    break
                parent.chmod(parent.stat().st_mode | 0o055)
            try:
                r = subprocess.run([sys.executable, "-c", PERMISSION_SCRIPT, str(directory)], capture_output=True,
                                   text=True, timeout=TIMEOUT_S, user=65534, group=65534, extra_groups=[])
            except (OSError, subprocess.SubprocessError) as e:
                pytest.skip(f"running as root and cannot run as an unprivileged user ({e})")
            if r.returncode != 0:
                pytest.skip(f"running as root; the unprivileged user cannot run fastmlp here: {r.stderr[-300:]}")
            assert r.stdout.split("\n")[:2] == [f"raised {errno.EACCES}", "left ['model.npz']"], r.stdout
    finally:
        directory.chmod(0o755)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(fastmlp.load(path).parameters(), first.parameters())
    assert _leftovers(directory) == []


def test_a_save_refused_by_permissions_raises_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    """The same as the read-only directory, injected (so it runs as root too): creating the
    temporary file is refused."""
    import tempfile

    path = tmp_path / "model.npz"
    first = fastmlp.MLP([4, 8, 2], seed=0)
    first.save(path)
    before = path.read_bytes()

    def refuse(*args, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError):
        fastmlp.MLP([4, 8, 2], seed=1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    np.testing.assert_array_equal(fastmlp.load(path).parameters(), first.parameters())


def test_save_sets_the_file_mode_from_the_umask_without_changing_it(tmp_path):
    old = os.umask(0o027)
    try:
        fastmlp.MLP([2, 1]).save(tmp_path / "m.npz")
        assert os.umask(0o027) == 0o027  # unchanged
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640


# --- impossible sizes ---------------------------------------------------------------------------------------

def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_F32 = np.float32
IMPOSSIBLE = {
    # name: (call, error, pattern the message must contain)
    "random_uniform": (lambda: K.random_uniform((10**12,), seed=0, offset=0), MemoryError,
                       r"random_uniform: out of shape \(1000000000000,\) would need 4000000000000 bytes"),
    "random_normal-f64": (lambda: K.random_normal((10**6, 10**6), seed=0, offset=0, dtype=np.float64), MemoryError,
                          r"random_normal: out of shape \(1000000, 1000000\) would need 8000000000000 bytes"),
    "dropout_mask": (lambda: K.dropout_mask((10**6, 10**6), 0.5, seed=0, offset=0), MemoryError,
                     r"dropout_mask: mask of shape \(1000000, 1000000\) would need 1000000000000 bytes"),
    "gemm-outer-product": (lambda: K.gemm(np.ones((10**6, 1), _F32), np.ones((1, 10**6), _F32)), MemoryError,
                           r"gemm: out of shape \(1000000, 1000000\) would need 4000000000000 bytes"),
    "gemm-transposed": (lambda: K.gemm(np.ones((1, 10**6), _F32), np.ones((10**6, 1), _F32), trans_a=True,
                                       trans_b=True), MemoryError, r"gemm: out of shape \(1000000, 1000000\)"),
    "overflowing-shape": (lambda: K.random_uniform((2**40, 2**40), seed=0, offset=0), ValueError,
                          r"random_uniform: shape \(1099511627776, 1099511627776\) has more than 2\*\*63 - 1 elements"),
    "overflowing-mask": (lambda: K.dropout_mask((2**32, 2**32, 2), 0.5, seed=0, offset=0), ValueError,
                         r"dropout_mask: shape .* has more than 2\*\*63 - 1 elements"),
    "overflowing-with-zero": (lambda: K.random_normal((0, 2**40, 2**40), seed=0, offset=0), ValueError,
                              r"more than 2\*\*63 - 1 elements"),
    "dimension-beyond-int64": (lambda: K.random_uniform(2**70, seed=0, offset=0), ValueError,
                               r"random_uniform: shape has a dimension 1180591620717411303424 beyond 2\*\*63 - 1"),
    "bytes-beyond-int64": (lambda: K.random_normal((2**31, 2**31), seed=0, offset=0, dtype=np.float64), ValueError,
                           r"random_normal: out of shape \(2147483648, 2147483648\) would need more than "
                           r"2\*\*63 bytes"),
    "MLP": (lambda: fastmlp.MLP([10**7, 10**7]), MemoryError,
            r"MLP with layer widths \[10000000, 10000000\] would have 100,000,010,000,000 parameters: .* need "
            r"800,000,080,000,000 bytes"),
    "MLP-float64-deep": (lambda: fastmlp.MLP([10**5, 10**5, 10**5], dtype="float64"), MemoryError,
                         r"MLP with layer widths \[100000, 100000, 100000\] .* of float64, more than this machine's"),
    "MLP-overflowing": (lambda: fastmlp.MLP([10**10, 10**10, 3]), ValueError, r"more than 2\*\*63 - 1"),
}


@pytest.mark.parametrize("name", list(IMPOSSIBLE))
def test_impossible_sizes_raise_before_allocating(name):
    call, error, pattern = IMPOSSIBLE[name]
    peak = _peak_rss_bytes()
    with pytest.raises(error, match=pattern) as e:
        call()
    if error is MemoryError:
        assert "physical memory" in str(e.value) and "nothing was allocated" in str(e.value)
    # Nothing big was touched (an allocation that overcommit let through would show in the peak).
    assert _peak_rss_bytes() - peak < 256 << 20


def test_sizes_that_fit_are_still_allowed():
    assert K.random_uniform((0, 2**40), seed=0, offset=0).shape == (0, 2**40)
    assert K.dropout_mask((3, 0), 0.5, seed=0, offset=0).shape == (3, 0)
    assert K.gemm(np.ones((1000, 1), _F32), np.ones((1, 1000), _F32)).shape == (1000, 1000)
    assert fastmlp.MLP([1000, 1000, 10]).n_parameters == 1000 * 1000 + 1000 + 1000 * 10 + 10


# --- non-finite inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_kernels_propagate_nan_and_inf(dtype):
    nan, inf = np.nan, np.inf
    x = np.array([[nan, inf, -inf, 1.0]], dtype)
    # activations, as in torch: relu/tanh/sigmoid keep NaN; saturate at +-inf
    np.testing.assert_array_equal(K.activation(x, "relu"), np.array([[nan, inf, 0, 1]], dtype))
    np.testing.assert_array_equal(K.activation(x, "tanh")[0, :3], np.array([nan, 1, -1], dtype))
    np.testing.assert_array_equal(K.activation(x, "sigmoid")[0, :3], np.array([nan, 1, 0], dtype))
    assert np.isnan(K.activation_backward(np.ones_like(x), x, "tanh")[0, 0])
    # gemm: a NaN or Inf in row i of a reaches exactly row i of the result, through the epilogue
    a = np.ones((3, 4), dtype)
    b = np.ones((4, 5), dtype)
    for bad in (nan, inf):
        a[1, 2] = bad
        for act in ("identity", "relu", "tanh"):
            out = K.gemm(a, b, bias=np.zeros(5, dtype), activation=act)
            assert np.all(np.isfinite(out[[0, 2]]))
            assert np.all(np.isnan(out[1])) if bad != bad else np.all(np.isinf(out[1]) | (out[1] == 1))
    # losses: the loss and that row's gradient become NaN; other rows are unaffected
    logits = np.array([[nan, 1.0], [1.0, 2.0]], dtype)
    for loss, grad in (K.softmax_cross_entropy(logits, np.array([0, 1])),
                       K.sigmoid_cross_entropy(logits, np.ones((2, 2), dtype)),
                       K.squared_error(logits, np.zeros((2, 2), dtype))):
        assert np.isnan(loss) and np.isnan(grad[0, 0]) and np.all(np.isfinite(grad[1]))
    # optimizer steps: a non-finite gradient element poisons only its own parameter (and state)
    grad = np.array([nan, inf, 1.0, 1.0], dtype)
    z = lambda: np.zeros(4, dtype)  # noqa: E731
    for step in (lambda p: K.adam_step(p, grad, z(), z(), step=1, lr=0.1),
                 lambda p: K.sgd_step(p, grad, None, step=1, lr=0.1),
                 lambda p: K.adagrad_step(p, grad, z(), step=1, lr=0.1),
                 lambda p: K.rmsprop_step(p, grad, z(), lr=0.1)):
        p = step(np.ones(4, dtype))
        assert not np.isfinite(p[0]) and not np.isfinite(p[1]) and np.all(np.isfinite(p[2:]))
    # batch norm: a NaN in a column makes that column NaN, the others stay finite
    xb = np.random.default_rng(0).standard_normal((4, 3)).astype(dtype)
    xb[2, 1] = nan
    out = K.batch_norm(xb, np.ones(3, dtype), np.zeros(3, dtype), z()[:3], np.ones(3, dtype), training=True)[0]
    assert np.all(np.isnan(out[:, 1])) and np.all(np.isfinite(out[:, [0, 2]]))


def test_overflowing_data_stops_fit_naming_the_step_and_keeps_the_last_good_state():
    X, y = _data()
    X_bad = X.copy()
    X_bad[157] = 3e38  # finite, so fit takes it; the logits overflow. Unshuffled, row 157 is in batch 8

    def trainer(callbacks=()):
        return fastmlp.Trainer(_model(), optimizer=optim.Adam(1e-2), batch_size=20, epochs=1, shuffle=False,
                               progress=False, callbacks=list(callbacks))

    recorder = _StateAt(10)
    reference = trainer([recorder])
    reference.epochs = 2
    reference.fit(X, y)
    t = trainer()
    t.fit(X, y)  # one good epoch, then the data goes bad
    t.epochs = 3
    with np.errstate(all="ignore"), pytest.raises(fastmlp.NonFiniteLossError,
                                                  match=r"at epoch 2, step 17 \(batch 8 of the epoch\)"):
        t.fit(X_bad, y)
    assert t.history.stop_reason == "non_finite_loss" and len(t.history) == 1
    _assert_state(t, recorder.state)  # the start of epoch 2: the last state the History vouches for
    assert np.all(np.isfinite(t.model.predict_proba(X)))


@pytest.mark.parametrize("where", ["X", "y", "validation X"])
def test_fit_refuses_non_finite_data_before_changing_anything(where):
    X, y = _data()
    if where == "y":  # a regression target
        y = y.astype(np.float64).reshape(-1, 1)
    model = fastmlp.MLP([X.shape[1], 16, 1 if where == "y" else 3], output="identity" if where == "y" else "softmax",
                        seed=1)
    fastmlp.Trainer(model, epochs=1, standardize=True, progress=False).fit(X, y)
    scaler = {k: v.copy() for k, v in model.scaler.items()}
    params = model.parameters().copy()
    bad_X, bad_y = X.copy(), y.copy()
    validation = None
    if where == "X":
        bad_X[7, 2] = np.nan
    elif where == "y":
        bad_y[11, 0] = np.inf
    else:
        validation = (bad_X[:10].copy(), y[:10])
        validation[0][3, 1] = -np.inf
    trainer = fastmlp.Trainer(model, epochs=1, standardize=True, progress=False, validation=validation)
    with pytest.raises(ValueError, match=f"^{where} contains NaN or infinity"):
        trainer.fit(bad_X, bad_y)
    assert np.array_equal(model.parameters(), params)
    assert all(np.array_equal(model.scaler[k], v) for k, v in scaler.items())
    assert len(trainer.history) == 0 and trainer.step == 0


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("validation", [None, 0.2])
def test_sparse_x_trains_as_its_dense_copy_without_densifying_it(standardize, validation):
    """A scipy.sparse X (CSR, CSC or COO) trains from dense minibatches made as they are needed,
    with the dense path's arithmetic: the same weights as X.toarray(), bit for bit, when X is not
    standardised (the scaler's moments come from the stored values, so there to rounding)."""
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(3)
    X = sparse.random(150, 40, density=0.1, format="csr", random_state=3, dtype=np.float64)
    X.data[:5] = 0.0  # explicit zeros are values like any other
    y = np.asarray(X @ rng.normal(size=(40, 3))).argmax(axis=1)
    models = []
    for data in (X, X.tocsc(), X.tocoo(), X.toarray()):
        model = fastmlp.MLP([40, 16, 3], output="softmax", dropout=0.2, seed=0)
        fastmlp.Trainer(model, epochs=3, batch_size=32, standardize=standardize, validation=validation,
                        progress=False, seed=1).fit(data, y)
        models.append(model)
    for model in models[:3]:
        if standardize:
            np.testing.assert_allclose(model.parameters(), models[3].parameters(), rtol=1e-5, atol=1e-6)
            for k, v in model.scaler.items():
                np.testing.assert_allclose(v, models[3].scaler[k], rtol=1e-12)
        else:
            np.testing.assert_array_equal(model.parameters(), models[3].parameters())
        # predictions from sparse rows, a chunk at a time, as from the dense copy
        np.testing.assert_array_equal(model.predict_proba(X), model.predict_proba(X.toarray()))
    bad = X.copy()
    bad.data[7] = np.inf
    with pytest.raises(ValueError, match=r"X contains NaN or infinity \(the first at index \("):
        fastmlp.Trainer(models[0], epochs=1, progress=False).fit(bad, y)


def test_sparse_targets_are_refused_by_name():
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _data()
    with pytest.raises(TypeError, match=r"y is a scipy.sparse .*y.toarray\(\)"):
        fastmlp.Trainer(_model(), epochs=1, progress=False).fit(X, sparse.csr_matrix(np.eye(3)[y]))


def test_a_fit_that_diverges_in_its_first_epoch_keeps_the_models_scaler():
    X, y = _data()
    model = _model()
    fastmlp.Trainer(model, epochs=1, progress=False).fit(X, y)  # trained unscaled
    before = model.predict_proba(X)
    with np.errstate(all="ignore"), pytest.raises(fastmlp.NonFiniteLossError):
        fastmlp.Trainer(model, optimizer=optim.SGD(1e30), epochs=2, standardize=True, progress=False).fit(X, y)
    assert model.scaler is None  # the weights went back to the start of the fit, and so did the scaler
    assert np.array_equal(model.predict_proba(X), before)


def test_train_step_on_non_finite_data_changes_nothing():
    X, y = _data()
    model = _model()
    trainer = _trainer(model)
    trainer.train_step(X[:20], y[:20])
    before = _state(trainer)
    X_bad = X[:20].copy()
    X_bad[3, 2] = np.inf
    with np.errstate(all="ignore"), pytest.raises(fastmlp.NonFiniteLossError, match="at step 1; no update"):
        trainer.train_step(X_bad, y[:20])
    _assert_state(trainer, before)  # batch-norm running statistics included
