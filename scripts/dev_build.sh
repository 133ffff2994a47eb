#!/usr/bin/env bash
# Incremental developer build: compiles the extension and ggml's libraries in build/dev and
# drops them into src/acestep_ggml/ (_core*.so, lib/), so that `PYTHONPATH=src python -m pytest`
# runs the working tree.  Editing one .cpp and re-running this recompiles that file only.
# By default ggml's CPU backend and our kernels are built for this machine's CPU alone
# (ACESTEP_NATIVE=ON: one CPU library instead of a dozen, and not portable);
# ACESTEP_NATIVE=OFF ./scripts/dev_build.sh builds every CPU variant, as the wheel does.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every tool up front, with what installs it.  Ninja is optional (make otherwise).
missing=()
command -v cmake >/dev/null || missing+=("cmake >= 3.18 (pip install cmake, or apt-get install cmake)")
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
    || missing+=("a C++17 compiler (apt-get install g++)")
command -v python3 >/dev/null || missing+=("python3")
python3 -m pybind11 --cmakedir >/dev/null 2>&1 || missing+=("pybind11 (pip install pybind11)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "dev_build: missing tools:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
command -v ninja >/dev/null || echo "dev_build: ninja not found, using make (pip install ninja builds faster)" >&2

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
