"""The CUDA runtime helpers' bookkeeping (csrc/cuda/runtime.cu: scratch buffers shared between a
stream and the graphs captured with them, deferred frees and destroys during a capture), built as
plain C++ against a stand-in CUDA runtime (tests/cuda_host) and run on the host, under ASan and
UBSan where the compiler has them. Needs a C++ compiler and the source tree; no GPU, no CUDA."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, "tests", "cuda_host")
RUNTIME = os.path.join(ROOT, "csrc", "cuda", "runtime.cu")


def _compiler():
    for cxx in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


@pytest.mark.skipif(not os.path.exists(RUNTIME), reason="needs the source tree (csrc/cuda/runtime.cu)")
@pytest.mark.skipif(_compiler() is None, reason="needs a C++ compiler")
def test_captured_scratch_is_freed_once_its_stream_and_graphs_let_go(tmp_path):
    cxx = _compiler()
    exe = str(tmp_path / "runtime_test")
    base = [cxx, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-I", HOST,
            "-I", os.path.join(ROOT, "csrc"), "-x", "c++", RUNTIME, "-x", "none",
            os.path.join(HOST, "runtime_test.cpp"), "-o", exe]
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    build = subprocess.run(base + sanitize, capture_output=True, text=True)
    if build.returncode != 0:  # no sanitizer runtime here: build without
        build = subprocess.run(base, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    env.pop("LD_PRELOAD", None)
    run = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "all checks passed" in run.stdout
