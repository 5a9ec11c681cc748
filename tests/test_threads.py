"""Threads: kernels called from many Python threads at once, thread-count control and its
validation, the FASTMLP_NUM_THREADS / FASTMLP_ISA environment variables, and fork safety (DESIGN.md,
"Threads": a child process that calls a kernel must never deadlock).

Anything that could hang runs in a subprocess with a timeout, so a deadlock fails instead of hanging.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels

SUBPROCESS_TIMEOUT_S = 60


# --- many Python threads at once -----------------------------------------------------------------

def make_jobs(rng):
    """Kernel calls of different kinds and sizes, each a zero-argument function."""
    jobs = []
    for i in range(24):
        dtype = (np.float32, np.float64)[i % 2]
        M, N, K = 50 + 13 * i, 40 + 7 * i, 60 + 11 * i
        a = rng.standard_normal((M, K)).astype(dtype)
        b = rng.standard_normal((N, K)).astype(dtype)
        bias = rng.standard_normal(N).astype(dtype)
        x = rng.standard_normal(40_000 + 1000 * i).astype(dtype)
        g = rng.standard_normal((300 + 10 * i, 33 + i)).astype(dtype)
        jobs.append(lambda a=a, b=b, bias=bias: kernels.gemm(a, b, trans_b=True, bias=bias, activation="relu"))
        jobs.append(lambda x=x, i=i: kernels.dropout(x, 0.3, seed=i, offset=2 * i))
        jobs.append(lambda g=g: kernels.bias_grad(g))
    return jobs


@pytest.mark.parametrize("n_threads", (1, 2))
def test_kernels_from_8_python_threads_equal_serial_results(threads, rng, n_threads):
    fastmlp.set_num_threads(n_threads)
    jobs = make_jobs(rng)
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            concurrent = list(pool.map(lambda job: job(), jobs))
            for k, (s, c) in enumerate(zip(serial, concurrent)):
                np.testing.assert_array_equal(s, c, err_msg=f"job {k}")


def test_set_num_threads_while_other_threads_run_kernels(threads, rng):
    """Changing the thread count mid-flight is safe, and results do not depend on it."""
    jobs = make_jobs(rng)[:30]
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(job) for job in jobs]
        for n in (1, 2, 3, 1, 2):
            fastmlp.set_num_threads(n)
        for k, (s, f) in enumerate(zip(serial, futures)):
            np.testing.assert_array_equal(s, f.result(timeout=SUBPROCESS_TIMEOUT_S), err_msg=f"job {k}")


# --- set_num_threads / get_num_threads -----------------------------------------------------------

def test_get_num_threads_reflects_set_num_threads(threads):
    for n in (1, 3, 2):
        fastmlp.set_num_threads(n)
        assert fastmlp.get_num_threads() == n
    fastmlp.set_num_threads(np.int64(2))  # any integer type with __index__
    assert fastmlp.get_num_threads() == 2
    assert type(fastmlp.get_num_threads()) is int


@pytest.mark.parametrize("n", (0, -1, -(2**40)))
def test_set_num_threads_rejects_non_positive_counts(threads, n):
    before = fastmlp.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: n must be >= 1"):
        fastmlp.set_num_threads(n)
    assert fastmlp.get_num_threads() == before


@pytest.mark.parametrize("n", (True, False, "2", 2.0, None, [2]))
def test_set_num_threads_rejects_non_integers(threads, n):
    before = fastmlp.get_num_threads()
    with pytest.raises(TypeError, match=r"set_num_threads: n must be an int"):
        fastmlp.set_num_threads(n)
    assert fastmlp.get_num_threads() == before


def test_set_isa_validates_its_argument():
    with pytest.raises(ValueError, match=r"unknown ISA 'sse9'.*portable, avx2, avx512, auto"):
        fastmlp.set_isa("sse9")
    with pytest.raises(TypeError, match=r"set_isa: name must be a str"):
        fastmlp.set_isa(2)
    assert "portable" in fastmlp.available_isas()


def test_set_isa_rejects_a_path_this_cpu_lacks():
    missing = [name for name in ("avx2", "avx512") if name not in fastmlp.available_isas()]
    if not missing:
        pytest.skip("this CPU supports every ISA path")
    before = fastmlp.get_isa()
    with pytest.raises(ValueError, match=missing[0]):
        fastmlp.set_isa(missing[0])
    assert fastmlp.get_isa() == before


# --- environment variables ------------------------------------------------------------------------

def run_python(code, **env_overrides):
    env = dict(os.environ)
    env.pop("FASTMLP_NUM_THREADS", None)
    env.pop("FASTMLP_ISA", None)
    env.pop("FASTMLP_STREAM_MIN_BYTES", None)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


@pytest.mark.parametrize("value", ("1", "3", " 2 "))
def test_fastmlp_num_threads_environment_variable_sets_the_count(value):
    r = run_python("import fastmlp; print(fastmlp.get_num_threads())", FASTMLP_NUM_THREADS=value)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == value.strip()


@pytest.mark.parametrize("value", ("0", "-2", "two", "1.5"))
def test_bad_fastmlp_num_threads_makes_import_fail_clearly(value):
    r = run_python("import fastmlp", FASTMLP_NUM_THREADS=value)
    assert r.returncode != 0
    assert "FASTMLP_NUM_THREADS" in r.stderr and repr(value) in r.stderr, r.stderr


def test_fastmlp_stream_min_bytes_environment_variable_sets_the_threshold():
    r = run_python("import fastmlp; print(fastmlp._core._get_stream_min_bytes())")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 32 << 20
    r = run_python("import fastmlp; print(fastmlp._core._get_stream_min_bytes())", FASTMLP_STREAM_MIN_BYTES=" 0 ")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 0
    r = run_python("import fastmlp; print(fastmlp._core._get_stream_min_bytes())", FASTMLP_STREAM_MIN_BYTES="9" * 30)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 2**63 - 1
    for bad in ("-1", "big", "1e6"):
        r = run_python("import fastmlp", FASTMLP_STREAM_MIN_BYTES=bad)
        assert r.returncode != 0
        assert "FASTMLP_STREAM_MIN_BYTES" in r.stderr and repr(bad) in r.stderr, r.stderr


def test_fastmlp_isa_environment_variable_selects_the_path():
    r = run_python("import fastmlp; print(fastmlp.get_isa())", FASTMLP_ISA="portable")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "portable"
    for name in fastmlp.available_isas():
        r = run_python("import fastmlp; print(fastmlp.get_isa())", FASTMLP_ISA=name.upper())
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == name


def test_unknown_fastmlp_isa_makes_import_fail_with_a_clear_message():
    r = run_python("import fastmlp", FASTMLP_ISA="sse9")
    assert r.returncode != 0
    assert "FASTMLP_ISA" in r.stderr and "sse9" in r.stderr, r.stderr
    assert "portable" in r.stderr, "the message should list the valid names: " + r.stderr


def test_unsupported_fastmlp_isa_makes_import_fail_with_a_clear_message():
    missing = [name for name in ("avx2", "avx512") if name not in fastmlp.available_isas()]
    if not missing:
        pytest.skip("this CPU supports every ISA path")
    r = run_python("import fastmlp", FASTMLP_ISA=missing[0])
    assert r.returncode != 0
    assert "FASTMLP_ISA" in r.stderr and missing[0] in r.stderr and "not supported" in r.stderr, r.stderr


# --- fork safety ----------------------------------------------------------------------------------

FORK_SCRIPT = """
import os, sys, threading
import numpy as np
import fastmlp
from fastmlp import kernels

fastmlp.set_num_threads(2)
rng = np.random.default_rng(0)
a = rng.standard_normal((400, 300)).astype(np.float32)
b = rng.standard_normal((300, 500)).astype(np.float32)
expected = kernels.gemm(a, b)          # the pool's workers now exist
expected_drop = kernels.dropout(a, 0.5, seed=1, offset=2)

stop, running = threading.Event(), threading.Event()
def busy():                            # keeps the pool busy while we fork
    while not stop.is_set():
        kernels.gemm(a, b)
        running.set()
background = threading.Thread(target=busy) if {busy} else None
if background:
    background.start()
    # Fork only once its first call is done: that call allocates the thread's scratch buffers
    # without the GIL, and a fork in the middle of it left the child's allocator locked under
    # AddressSanitizer (GCC 12's allocator takes no lock around fork; glibc's malloc does).
    running.wait()

for attempt in range(4):
    pid = os.fork()
    if pid == 0:
        try:
            ok = (np.array_equal(kernels.gemm(a, b), expected)
                  and np.array_equal(kernels.dropout(a, 0.5, seed=1, offset=2), expected_drop)
                  and fastmlp.get_num_threads() == 2)
            fastmlp.set_num_threads(3)
            ok = ok and np.array_equal(kernels.gemm(a, b), expected)
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("child", attempt, "failed with", status, file=sys.stderr)
        sys.exit(1)
stop.set()
if background:
    background.join()
assert np.array_equal(kernels.gemm(a, b), expected)   # the parent's pool still works
print("ok")
"""


@pytest.mark.parametrize("busy", (False, True), ids=("idle-pool", "pool-busy-in-another-thread"))
def test_child_process_after_fork_runs_kernels_without_deadlock(busy):
    r = run_python(FORK_SCRIPT.replace("{busy}", str(busy)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def _gemm_in_worker(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((200, 150)).astype(np.float32)
    b = rng.standard_normal((150, 170)).astype(np.float32)
    return kernels.gemm(a, b)


def test_multiprocessing_fork_pool_runs_gemm(threads):
    fastmlp.set_num_threads(2)
    expected = [_gemm_in_worker(s) for s in range(6)]  # the parent's pool threads now exist
    with warnings.catch_warnings():
        # Python >= 3.12 warns that fork() in a multi-threaded process may deadlock; avoiding
        # exactly that is what is under test.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*fork.*")
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(2)
        try:
            got = pool.map_async(_gemm_in_worker, range(6)).get(timeout=SUBPROCESS_TIMEOUT_S)
        finally:
            pool.terminate()
            pool.join()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
