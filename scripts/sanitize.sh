#!/usr/bin/env bash
# The extension and ggml under AddressSanitizer + UndefinedBehaviorSanitizer (docs/hardening.md).
#
#   scripts/sanitize.sh                 # build build/asan, then run the whole test suite under it
#   scripts/sanitize.sh tests/test_x.py # ... or the named tests (any pytest arguments)
#   SANITIZE_BUILD_ONLY=1 scripts/sanitize.sh
#   SANITIZE_PROCS=2 scripts/sanitize.sh  # the whole suite as two pytest processes over alternate
#                                         # test files (pytest-xdist's workers do not start under
#                                         # the preloaded runtime); logs in build/asan/tests-N.log
#
# Build: a separate tree (build/asan), ACESTEP_NATIVE=ON (ggml linked statically into _core, so
# ggml is instrumented too), -O1 -g.  The package the tests import is build/asan/site/acestep_ggml:
# links to src/acestep_ggml's Python files and the instrumented _core.
# Run: the Python process gets libasan by LD_PRELOAD (python itself is not instrumented), leak
# checking on, with tests/fuzz/lsan.supp suppressing leaks that CPython, numpy, torch and other
# uninstrumented libraries own (never ours: no suppression names _core or ggml); any UBSan report
# stops the process (halt_on_error) with a stack.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
build=build/asan
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g -O1"

launcher=()
if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
start=$SECONDS
if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACESTEP_NATIVE=ON \
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
        -DCMAKE_C_FLAGS_RELWITHDEBINFO="-g -O1" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-g -O1" \
        -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
        -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "${launcher[@]}" >/dev/null
fi
cmake --build "$build" -j "${JOBS:-$(nproc)}"
echo "sanitize: built in $((SECONDS - start)) s"

# The package: src/acestep_ggml's files by link, the instrumented extension in place of the dev one.
site="$build/site/acestep_ggml"
rm -rf "$build/site"
mkdir -p "$site"
for f in src/acestep_ggml/* src/acestep_ggml/.[!.]*; do
    [ -e "$f" ] || continue
    case "$(basename "$f")" in _core*.so | lib | __pycache__) continue ;; esac
    ln -s "$root/$f" "$site/"
done
cp "$build"/acestep_ggml/_core*.so "$site/"
[ "${SANITIZE_BUILD_ONLY:-0}" = 1 ] && exit 0

# The interpreter itself, not a wrapper script (pyenv's shim is bash, which would run under ASan).
py="$(python3 -c 'import sys; print(sys.executable)')"
asan="$(${CC:-gcc} -print-file-name=libasan.so)"
# libstdc++ first: a C++ exception thrown through an uninstrumented library otherwise trips
# ASan's interceptor of __cxa_throw before libstdc++ is resolved.
libstdcxx="$(${CXX:-g++} -print-file-name=libstdc++.so)"
export LD_PRELOAD="$asan $libstdcxx"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_odr_violation=0:allocator_may_return_null=1:symbolize=1:print_suppressions=0"
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# CPython's own allocator hides its blocks from ASan; the system malloc shows every one.
export PYTHONMALLOC=malloc
export PYTHONPATH="$root/$build/site:$root/tests${PYTHONPATH:+:$PYTHONPATH}"
export ACESTEP_SANITIZE=1
start=$SECONDS
set +e
"$py" -c "import acestep_ggml._core as c, sys; sys.exit(0 if '/build/asan/' in c.__file__ else 'sanitize: not the instrumented _core: ' + c.__file__)"
rc=$?
procs="${SANITIZE_PROCS:-1}"
if [ $rc -eq 0 ] && [ "$procs" -gt 1 ] && [ $# -eq 0 ]; then
    # Tests needing a Ray cluster run outside: Ray starts its workers itself, without the preload.
    mapfile -t files < <(ls tests/test_*.py | grep -v '/test_batch_ray')
    pids=()
    for ((k = 0; k < procs; k++)); do
        part=()
        for ((i = k; i < ${#files[@]}; i += procs)); do part+=("${files[i]}"); done
        "$py" -m pytest -q -p no:cacheprovider -p no:xdist -rfEs "${part[@]}" >"$build/tests-$k.log" 2>&1 &
        pids+=($!)
    done
    for k in "${!pids[@]}"; do
        wait "${pids[k]}" || rc=1
        echo "sanitize: part $k: $(tail -n 1 "$build/tests-$k.log")"
    done
elif [ $rc -eq 0 ]; then
    "$py" -m pytest -q -p no:cacheprovider "${@:-tests}"
    rc=$?
fi
set -e
echo "sanitize: tests ran in $((SECONDS - start)) s, exit $rc"
exit $rc
