#!/usr/bin/env bash
# Build a wheel and repair it to a manylinux tag, into dist/.
#   scripts/build_wheel.sh [cpu|cuda12|cuda13|vulkan]
# cpu (the default) is acestep-ggml itself: the extension plus ggml's CPU backend once per ISA
# level.  The others are the GPU plugin wheels of plugins/<kind>/ (ggml's backend library alone).
# Passes through: CMAKE_ARGS (e.g. -DVulkan_INCLUDE_DIR=..., -DCMAKE_CUDA_ARCHITECTURES=...),
# CMAKE_BUILD_PARALLEL_LEVEL (jobs).  The repair runs the pyproject's cibuildwheel
# repair-wheel-command, so CI and this script exclude the same libraries (GPU drivers, runtimes).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-cpu}"
case "$kind" in
    cpu) project=. ;;
    cuda12 | cuda13 | vulkan) project="plugins/$kind" ;;
    *) echo "usage: $0 [cpu|cuda12|cuda13|vulkan]" >&2; exit 2 ;;
esac
if command -v ccache >/dev/null; then
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
    export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
fi
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT
python3 -m pip wheel --no-deps --wheel-dir "$raw" "$project"
mkdir -p dist
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
        eval "${repair//\{wheel\}/\"$wheel\"}"
        ;;
    Darwin) delocate-wheel -w dist "$wheel" ;;
    *) cp "$wheel" dist/ ;;
esac
ls -l dist/
