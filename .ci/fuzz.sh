#!/usr/bin/env bash
# Fuzzing stage (issue 8): runs each atheris target (fuzz/fuzz_*.py) for a bounded time, starting
# from the committed seed corpus (fuzz/corpus/<target>, copied so that the run does not change the
# checkout), prints executions and corpus size, and fails on any finding (a crash, an exception
# outside the contract, a timeout, memory beyond the limit). Findings are kept in ARTIFACTS.
#
#   .ci/fuzz.sh PYTHON [SECONDS_PER_TARGET] [ARTIFACTS]
#
# Each target runs FASTMLP_FUZZ_RUNS (40000) inputs from seed FASTMLP_FUZZ_SEED (1), at most
# SECONDS_PER_TARGET seconds.
#
# PYTHON must import fastmlp (an installed package, or PYTHONPATH=<build>/pkg); atheris is
# installed into it when missing (pip install '.[fuzz]' does the same). Replay a finding with
#   PYTHON fuzz/fuzz_<target>.py ARTIFACTS/<target>/crash-<sha1>
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${1:?usage: .ci/fuzz.sh PYTHON [SECONDS_PER_TARGET] [ARTIFACTS]}"
SECONDS_PER_TARGET="${2:-60}"
ARTIFACTS="${3:-$(mktemp -d)/fuzz-artifacts}"
# Reproducible by default: a fixed seed and a fixed number of executions (the time bound is a cap),
# so a run that passes here passes in CI; FASTMLP_FUZZ_SEED=0 picks a random seed for exploration.
SEED="${FASTMLP_FUZZ_SEED:-1}"
RUNS="${FASTMLP_FUZZ_RUNS:-40000}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PY" -c "import atheris" 2>/dev/null || "$PY" -m pip install -q "atheris>=2.3"
# Import fastmlp from outside the checkout, so an installed package is not shadowed by python/.
(cd "$WORK" && "$PY" -c "import fastmlp; print('fuzz: fastmlp from', fastmlp.__file__, 'paths', fastmlp.available_isas())")

status=0
for target in load kernels; do
  corpus="$WORK/corpus-$target"
  mkdir -p "$corpus" "$ARTIFACTS/$target"
  cp "$ROOT/fuzz/corpus/$target/"* "$corpus/"
  seeds=$(ls "$corpus" | wc -l)
  t=$(date +%s)
  # -timeout: one input may not take longer (a hang is a finding); -rss_limit_mb: nor grow the process
  # past this (fuzz_load also caps its address space at 1 GiB above its start).
  if (cd "$WORK" && PYTHONHASHSEED=0 "$PY" "$ROOT/fuzz/fuzz_$target.py" "$corpus" -seed="$SEED" -runs="$RUNS" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=3072 -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="$ARTIFACTS/$target/") >"$WORK/$target.log" 2>&1; then
    result="no findings"
  else
    result="FINDING (artifacts in $ARTIFACTS/$target)"
    status=1
    grep -v -E "^#[0-9]+" "$WORK/$target.log" | tail -n 60
    ls -l "$ARTIFACTS/$target"
  fi
  execs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$WORK/$target.log" | grep -o "[0-9]*$" || echo "?")
  rate=$(grep -o "stat::average_exec_per_sec: *[0-9]*" "$WORK/$target.log" | grep -o "[0-9]*$" || echo "?")
  echo "fuzz: $target: $execs executions in $(( $(date +%s) - t )) s ($rate/s), corpus $seeds seeds -> $(ls "$corpus" | wc -l) inputs: $result"
done
exit $status
