#!/usr/bin/env bash
# The GPU check, as one script for a lent GPU machine (DEVELOPERS.md: device time is short, so
# everything runs in one call): build with CUDA for this GPU, run the GPU tests, compute-sanitizer
# (memcheck and racecheck) on a named subset, then the GPU benchmark. Each stage has its own time
# limit so that one hang cannot eat the call; logs and results go to $OUT (default /tmp/gpu-out).
#
#   bash tools/gpu_check.sh [stages...]      stages: build tests bench sanitize (default: all, in this order)
#
# Environment: ARCH (default 90), PY (default python3), TEST_ARGS (extra pytest arguments),
# BENCH_ARGS (extra `python -m fastmlp.bench --device cuda` arguments), T_TESTS, T_BENCH and
# T_SANITIZE (seconds per stage; 150, 200 and 100 per tool by default).
set -u
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
OUT="${OUT:-/tmp/gpu-out}"
PY="${PY:-python3}"
ARCH="${ARCH:-90}"
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*"; }
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build tests bench sanitize)
want() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
# Tests see the warnings-as-errors filter of pyproject.toml; third-party imports (torch, JAX, CuPy)
# on that machine may warn on import, which must not fail the interop tests.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -W "default::DeprecationWarning" -W "default::FutureWarning"
        -W "default::UserWarning")

if want build; then
  say "build (sm_$ARCH)"
  export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
  if ! timeout 400 "$PY" -m pip install -q --no-build-isolation --no-deps . -Ccmake.define.FASTMLP_CUDA=ON \
      -Ccmake.define.FASTMLP_CUDA_ARCHITECTURES="$ARCH" -Cbuild-dir=/tmp/fastmlp-build >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    say "build FAILED"
    exit 1
  fi
  if ! (cd /tmp && "$PY" -c "
import fastmlp, fastmlp._core as core, fastmlp.cuda as c
n = core.cuda.device_count()
print('fastmlp', fastmlp.__file__, 'runtime', core.cuda.runtime_version(), 'driver', core.cuda.driver_version(), 'devices', n,
      c.get_device_name() if c.is_available() else c.unavailable_reason())
raise SystemExit(0 if n else 1)"); then
    say "no usable CUDA device after the build: stopping (the GPU tests would only skip)"
    exit 1
  fi
fi

if want tests; then
  say "GPU tests"
  timeout "${T_TESTS:-150}" "${PYTEST[@]}" tests/test_cuda.py tests/test_cuda_training.py ${TEST_ARGS:-} 2>&1 \
    | tee "$OUT/tests.log" | grep -E "passed|failed|error|FAILED|ERROR" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want bench; then
  say "GPU benchmark"
  (cd /tmp && PYTHONUNBUFFERED=1 timeout "${T_BENCH:-200}" "$PY" -m fastmlp.bench --device cuda --json "$OUT/bench-cuda.json" \
    ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-cuda.txt"; exit "${PIPESTATUS[0]}") || status=1
fi
if want sanitize; then
  # Kernels only (no torch/CuPy interop, whose libraries the tools would instrument too).
  subset="gemm or activation or bias_grad or dropout or random or loss or entropy or squared or batch_norm or adam or sgd or rmsprop or adagrad or graph"
  for tool in memcheck racecheck; do
    say "compute-sanitizer --tool $tool"
    timeout "${T_SANITIZE:-100}" compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "${PYTEST[@]}" -x tests/test_cuda.py -k "($subset) and not torch and not cupy" >"$OUT/sanitize-$tool.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed|Device not supported" "$OUT/sanitize-$tool.log" | tail -5
    say "$tool exit $rc"
    [ $rc -eq 0 ] || status=1
  done
fi

say "done (status $status)"
exit $status
