#!/usr/bin/env bash
# python/run_tests.sh [BUILD_DIR [WORD...]]: the Python binding's tests (python/tests/test_hisa.py)
# against BUILD_DIR/libhisa.so (default build); WORDs pick the tests whose names contain one.
#   interpreter  $PYTHON when set (it must import numpy), else the first of python3 and
#                /usr/bin/python3 that imports numpy; none: prints "python tests: skipped: ..."
#                and exits 0 (Debian: apt-get install python3-numpy)
#   sanitizers   a library linked with libasan (make SANITIZE=1) runs with libasan preloaded and
#                leak checking off: the interpreter's own allocations are not hisa's
# The last line is the tests' "N passed, N failed, N skipped"; the exit status is 1 on a failure.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
if [ ! -e "$build/libhisa.so" ]; then
    echo "python/run_tests.sh: $build/libhisa.so does not exist (make all)"
    exit 1
fi
lib=$(cd "$build" && pwd)/libhisa.so

py=""
if [ -n "${PYTHON:-}" ]; then
    if ! "$PYTHON" -c 'import numpy' > /dev/null 2>&1; then
        echo "python/run_tests.sh: PYTHON=$PYTHON cannot import numpy"
        exit 1
    fi
    py=$PYTHON
else
    for c in python3 /usr/bin/python3; do
        if command -v "$c" > /dev/null 2>&1 && "$c" -c 'import numpy' > /dev/null 2>&1; then
            py=$c
            break
        fi
    done
fi
if [ -z "$py" ]; then
    echo "python tests: skipped: no python3 with numpy (Debian: apt-get install python3-numpy)"
    exit 0
fi

export HISA_LIB=$lib PYTHONDONTWRITEBYTECODE=1
asan=$(ldd "$lib" 2> /dev/null | awk '/libasan/ { print $3; exit }')
if [ -n "$asan" ]; then
    # libstdc++ too: else ASan's __cxa_throw interceptor finds no real one when an extension
    # module (torch) throws a C++ exception
    cxx=$(ldd "$lib" 2> /dev/null | awk '/libstdc\+\+/ { print $3; exit }')
    export LD_PRELOAD=$asan${cxx:+:$cxx}${LD_PRELOAD:+:$LD_PRELOAD}
    export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
fi
echo "python tests: $("$py" --version 2>&1), numpy $("$py" -c 'import numpy; print(numpy.__version__)')"
exec "$py" "$root/python/tests/test_hisa.py" "$@"
