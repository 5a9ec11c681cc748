#!/usr/bin/env bash
# Sanitizer stage (issue 8): builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (CPU only, -Werror) and runs the kernel and model tests under it. Every kernel runs on every ISA
# path this CPU has: the kernel tests take the `isa` fixture (all paths), and the model tests run
# once per path with FASTMLP_ISA. Any sanitizer report aborts the interpreter (halt_on_error,
# abort_on_error, -fno-sanitize-recover=all) and fails the stage; reports are written to files
# (log_path), printed at the end, and any report at all, a child process's included, fails it.
#
#   .ci/sanitize.sh PYTHON [BUILD_DIR]
#
# PYTHON is an interpreter (e.g. a venv's) with the [test] extras (pybind11, cmake, ninja and atheris
# are installed into it when missing); fastmlp itself need not be installed: the tests import the
# build from BUILD_DIR/pkg (tools/devbuild.sh).
# FASTMLP_SANITIZE_TESTS / FASTMLP_SANITIZE_MODEL_TESTS override the test selections;
# FASTMLP_SANITIZE_FUZZ_SECONDS (default 60, 0 = off) bounds the run of fuzz/fuzz_kernels.py under
# the sanitizers (atheris is installed into PYTHON when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${1:?usage: .ci/sanitize.sh PYTHON [BUILD_DIR]}"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
BUILD="${2:-$ROOT/build-sanitize}"
LOGDIR="$(mktemp -d)"
trap 'rm -rf "$LOGDIR"' EXIT

# Kernel tests: parametrised over the ISA paths by the `isa` fixture, so one run covers them all.
# The thread, fork, fault and model-file tests run here once (on the best path).
KERNEL_TESTS="${FASTMLP_SANITIZE_TESTS:-tests/test_gemm.py tests/test_elementwise.py tests/test_losses.py
  tests/test_batchnorm.py tests/test_optim_kernels.py tests/test_random.py tests/test_bad_input.py
  tests/test_threads.py tests/test_concurrency.py tests/test_faults.py tests/test_properties.py
  tests/test_fuzz_regressions.py tests/test_estimator_io.py}"
# Model tests: not parametrised over paths, so they run once per path (FASTMLP_ISA).
MODEL_TESTS="${FASTMLP_SANITIZE_MODEL_TESTS:-tests/test_nn.py tests/test_io.py tests/test_autoencoder.py
  tests/test_gradcheck.py tests/test_optim.py tests/test_train.py}"

# --- build -------------------------------------------------------------------------------------
t0=$(date +%s)
command -v cmake >/dev/null && command -v ninja >/dev/null || "$PY" -m pip install -q cmake ninja
# pybind11 is a build requirement (pip's isolated build env has it, a test venv need not); atheris
# decodes the fuzz corpora that tests/test_fuzz_regressions.py replays, and runs fuzz_kernels below.
"$PY" -c "import pybind11" 2>/dev/null || "$PY" -m pip install -q "pybind11>=2.12"
"$PY" -c "import atheris" 2>/dev/null || "$PY" -m pip install -q "atheris>=2.3"
# devbuild.sh runs `python3 -m pybind11`: make that the given interpreter.
PATH="$(dirname "$PY"):$PATH" tools/devbuild.sh "$BUILD" -DPython_EXECUTABLE="$PY" \
  -DFASTMLP_SANITIZE=address,undefined -DFASTMLP_CUDA=OFF -DFASTMLP_WERROR=ON >/dev/null
echo "sanitize: built $BUILD in $(( $(date +%s) - t0 )) s"

# --- runtime -----------------------------------------------------------------------------------
# GCC's ASan runtime must be the first library in the process; the UBSan runtime comes with the
# module. libstdc++ is preloaded too: python does not link it, and ASan resolves its __cxa_throw
# interceptor at start-up, so without it the first C++ exception (every ValueError a binding
# raises) aborts with "CHECK failed: ... real___cxa_throw". Leak detection is off: the interpreter
# keeps its objects alive at exit.
LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBSTDCXX="$(gcc -print-file-name=libstdc++.so)"
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  [ -e "$lib" ] || { echo "sanitize: $lib not found (gcc -print-file-name)" >&2; exit 1; }
done
export LD_PRELOAD="$LIBASAN:$LIBSTDCXX"
# Reports go to files (log_path): pytest captures fd 2, and an aborted run loses what it captured.
mkdir -p "$LOGDIR/reports"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:log_path=$LOGDIR/reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGDIR/reports/ubsan"
export PYTHONPATH="$BUILD/pkg"
export PYTHONFAULTHANDLER=1
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

PATHS="$(cd "$LOGDIR" && "$PY" -c 'import fastmlp; print(" ".join(fastmlp.available_isas()))')"
echo "sanitize: ISA paths on this CPU: $PATHS"

status=0
run_pytest() {  # run_pytest NAME ISA TESTS...
  local name="$1" isa="$2"; shift 2
  local t=$(date +%s)
  echo "sanitize: $name (FASTMLP_ISA=$isa)"
  FASTMLP_ISA="$isa" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --junitxml="$LOGDIR/$name.xml" \
    "$@" >"$LOGDIR/$name.log" 2>&1 || { status=1; tail -n 60 "$LOGDIR/$name.log"; }
  tail -n 2 "$LOGDIR/$name.log"
  echo "sanitize: $name took $(( $(date +%s) - t )) s"
}

best="${PATHS##* }"
# shellcheck disable=SC2086
run_pytest kernels "$best" $KERNEL_TESTS
for isa in $PATHS; do
  # shellcheck disable=SC2086
  run_pytest "models-$isa" "$isa" $MODEL_TESTS
done

# The kernel fuzz target under the sanitizers too: wrong-memory accesses that the Python-level
# checks (canaries, references) cannot see, such as misaligned loads, are reported here. With
# GCC's ASan preloaded atheris gets no coverage feedback, so this run mutates the committed corpus
# (seeds plus what a coverage-guided run found) without guidance; .ci/fuzz.sh is the guided run.
FUZZ_SECONDS="${FASTMLP_SANITIZE_FUZZ_SECONDS:-60}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  mkdir -p "$LOGDIR/fuzz-corpus" && cp fuzz/corpus/kernels/* "$LOGDIR/fuzz-corpus/"
  t=$(date +%s)
  # A fixed seed and number of inputs (the time is a cap), as in .ci/fuzz.sh: reproducible.
  (cd "$LOGDIR" && PYTHONHASHSEED=0 "$PY" "$ROOT/fuzz/fuzz_kernels.py" "$LOGDIR/fuzz-corpus" \
     -seed="${FASTMLP_FUZZ_SEED:-1}" -runs="${FASTMLP_SANITIZE_FUZZ_RUNS:-40000}" -max_total_time="$FUZZ_SECONDS" \
     -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$LOGDIR/") >"$LOGDIR/fuzz.log" 2>&1 \
    || { status=1; grep -v "^INFO: Instrumenting" "$LOGDIR/fuzz.log" | tail -n 40; ls "$LOGDIR"/crash-* 2>/dev/null; }
  execs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$LOGDIR/fuzz.log" | grep -o "[0-9]*$" || echo "?")
  echo "sanitize: fuzz_kernels under ASan+UBSan: $execs executions in $(( $(date +%s) - t )) s"
fi

# Any report fails the stage, also one from a child process (fork tests, subprocesses) that the
# parent's test tolerated.
if [ -n "$(ls -A "$LOGDIR/reports")" ]; then
  for report in "$LOGDIR"/reports/*; do
    echo "sanitize: report $(basename "$report"):" >&2
    head -n 60 "$report" >&2
  done
  status=1
fi

# Tests that ran per ISA path: the `isa` fixture's parameter, else the run's FASTMLP_ISA.
"$PY" - "$LOGDIR" "$best" <<'EOF'
import collections, glob, os, re, sys
import xml.etree.ElementTree as ET

logdir, best = sys.argv[1], sys.argv[2]
paths = ("portable", "avx2", "avx512")
passed, skipped, failed = collections.Counter(), collections.Counter(), collections.Counter()
for xml in sorted(glob.glob(os.path.join(logdir, "*.xml"))):
    run = os.path.basename(xml)[:-4]
    default = run.split("-", 1)[1] if run.startswith("models-") else best
    for case in ET.parse(xml).getroot().iter("testcase"):
        params = re.search(r"\[(.*)\]$", case.get("name", ""))
        tokens = set(re.split(r"[-_]", params.group(1))) if params else set()
        path = next((p for p in paths if p in tokens), default)
        if case.find("skipped") is not None:
            skipped[path] += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            failed[path] += 1
        else:
            passed[path] += 1
for p in paths:
    print(f"sanitize: ISA path {p:8s}: {passed[p]:5d} tests passed, {failed[p]} failed, {skipped[p]} skipped")
print(f"sanitize: {sum(passed.values())} tests passed under ASan+UBSan in total")
EOF
echo "sanitize: stage took $(( $(date +%s) - t0 )) s"
exit $status
