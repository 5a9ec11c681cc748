#!/usr/bin/env bash
# Developer build without installing: compiles _core into BUILD_DIR (default build-dev) and lays
# out BUILD_DIR/pkg/fastmlp (symlinks to python/fastmlp plus the extension), so that
#   PYTHONPATH=BUILD_DIR/pkg python -m pytest
# tests the working tree. Several developers can each use their own BUILD_DIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-dev}"
shift || true
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${FASTMLP_BUILD_TYPE:-Release} \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DFASTMLP_WERROR=ON "$@" >/dev/null
cmake --build "$build" -j2
pkg="$build/pkg/fastmlp"
rm -rf "$build/pkg"
mkdir -p "$pkg"
for f in "$root"/python/fastmlp/*; do ln -s "$f" "$pkg/"; done
ln -s "$(ls "$build"/_core*.so | head -1)" "$pkg/"
echo "PYTHONPATH=$build/pkg"
