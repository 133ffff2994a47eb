#!/usr/bin/env bash
# Incremental developer build: compiles the extension in build/dev and drops it into
# src/acestep_ggml/, so that `PYTHONPATH=src python -m pytest` runs the working tree.
# Editing one .cpp and re-running this recompiles that file only.
set -euo pipefail
cd "$(dirname "$0")/.."
launcher=()
if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f build/dev/CMakeCache.txt ]; then
    cmake -S . -B build/dev "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "${launcher[@]}" "$@"
fi
cmake --build build/dev -j "$(nproc)"
cp build/dev/_core*.so src/acestep_ggml/
