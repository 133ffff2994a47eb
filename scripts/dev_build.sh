#!/usr/bin/env bash
# Incremental developer build: compiles the extension and ggml's libraries in build/dev and
# drops them into src/acestep_ggml/ (_core*.so, lib/), so that `PYTHONPATH=src python -m pytest`
# runs the working tree.  Editing one .cpp and re-running this recompiles that file only.
# By default ggml's CPU backend and our kernels are built for this machine's CPU alone
# (ACESTEP_NATIVE=ON: one CPU library instead of a dozen, and not portable);
# ACESTEP_NATIVE=OFF ./scripts/dev_build.sh builds every CPU variant, as the wheel does.
set -euo pipefail
cd "$(dirname "$0")/.."
launcher=()
if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
native=(-DACESTEP_NATIVE="${ACESTEP_NATIVE:-ON}")
if [ ! -f build/dev/CMakeCache.txt ]; then
    cmake -S . -B build/dev "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "${native[@]}" \
        -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "${launcher[@]}" "$@"
else
    cmake -S . -B build/dev "${native[@]}" >/dev/null
fi
cmake --build build/dev -j "${JOBS:-$(nproc)}"
rm -rf src/acestep_ggml/lib src/acestep_ggml/_core*.so
cp -a build/dev/acestep_ggml/. src/acestep_ggml/
