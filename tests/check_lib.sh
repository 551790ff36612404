#!/usr/bin/env bash
# tests/check_lib.sh BUILD_DIR: checks the shared library a build made (make test runs it).
#   lib_exports  nm -D --defined-only of BUILD_DIR/libhisa.so lists exactly the functions that
#                runtime/hisa.h declares (nothing internal, no kernels, no cudart / libstdc++)
#   lib_soname   readelf -d shows SONAME libhisa.so.MAJOR (MAJOR from hisa.h)
#   lib_link     a small C program built against hisa.h and linked with -L BUILD_DIR -lhisa runs
#                and its hisa_version() is the version hisa.h states
# One line per check, "ok   NAME" or "FAIL NAME: why"; exits 1 when a check failed.
# CC and CFLAGS (e.g. the sanitizer flags of a SANITIZE=1 build) are used for the program.
set -u
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: tests/check_lib.sh BUILD_DIR" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
header=$root/runtime/hisa.h
so=$build/libhisa.so
cc=${CC:-cc}
fails=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }
first() { tr '\n' ' ' | sed -E 's/ +$//' | cut -c1-300; } # a list on one line, shortened

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The declared functions, found unlike the Makefile's map generator: the preprocessed header
# (no comments, no macros), cut into declarations at ; { }, and of each declaration with a
# parameter list, the identifier right before its first "(" (declarations of function pointers
# and typedefs give none).
major=$(sed -n -E 's/^#define HISA_VERSION_MAJOR +([0-9]+).*/\1/p' "$header")
if ! "$cc" -E -P -x c "$header" > "$tmp/hisa.i" 2> "$tmp/cpp.err"; then
    fail lib_exports "preprocessing $header failed: $(first < "$tmp/cpp.err")"
else
    tr '\n' ' ' < "$tmp/hisa.i" | tr ';{}' '\n' |
        sed -E -e 's/__attribute__ *\(\(([^()]|\([^()]*\))*\)\)//g' -e 's/^ +//' |
        grep -v -E '^typedef[^A-Za-z0-9_]' | grep '(' |
        sed -E -e 's/ *\(.*//' -e 's/.*[^A-Za-z0-9_]//' |
        grep -v -E -x '|sizeof|_Alignas|_Alignof|_Static_assert|static_assert|alignof' |
        sort -u > "$tmp/declared"
    if [ ! -f "$so" ]; then
        fail lib_exports "$so does not exist"
    elif [ ! -s "$tmp/declared" ]; then
        fail lib_exports "found no function declarations in $header"
    elif ! nm -D --defined-only "$so" > "$tmp/nm" 2> "$tmp/nm.err"; then
        fail lib_exports "nm -D $so failed: $(first < "$tmp/nm.err")"
    else
        awk 'NF { print $NF }' "$tmp/nm" | sed 's/@.*//' | sort -u > "$tmp/exported"
        extra=$(comm -13 "$tmp/declared" "$tmp/exported")
        missing=$(comm -23 "$tmp/declared" "$tmp/exported")
        if [ -n "$extra$missing" ]; then
            msg=""
            [ -n "$extra" ] && msg="$(echo "$extra" | wc -l) exported but not in hisa.h: $(echo "$extra" | first)"
            [ -n "$missing" ] && msg="$msg${msg:+; }$(echo "$missing" | wc -l) in hisa.h but not exported: $(echo "$missing" | first)"
            fail lib_exports "$msg"
        else
            ok lib_exports
        fi
    fi
fi

# SONAME
want="libhisa.so.${major:-?}"
soname=$(readelf -d "$so" 2> /dev/null | sed -n -E 's/.*\(SONAME\).*\[(.*)\].*/\1/p')
if [ "$soname" = "$want" ]; then
    ok lib_soname
else
    fail lib_soname "SONAME is '${soname:-none}', want $want"
fi

# A program linked against the shared library (found at run time through the SONAME).
cat > "$tmp/prog.c" << 'EOF'
#include <stdio.h>
#include <string.h>

#include "hisa.h"

int main(void) {
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", HISA_VERSION_MAJOR, HISA_VERSION_MINOR, HISA_VERSION_PATCH);
    const char *v = hisa_version();
    if (!v || strcmp(v, want) != 0) {
        printf("hisa_version() is \"%s\", hisa.h says %s\n", v ? v : "(null)", want);
        return 1;
    }
    hisa_plan plan;
    hisa_config cfg = {.max_context = 4096};
    int err = hisa_plan_compute(&cfg, &plan);
    if (err) {
        printf("hisa_plan_compute: %s\n", hisa_strerror(err));
        return 1;
    }
    return 0;
}
EOF
# shellcheck disable=SC2086 # CFLAGS is a list of flags
if ! "$cc" -std=c11 ${CFLAGS:-} -I"$root/runtime" "$tmp/prog.c" -o "$tmp/prog" -L"$build" -lhisa \
        > "$tmp/link.log" 2>&1; then
    fail lib_link "compiling and linking with -lhisa failed: $(first < "$tmp/link.log")"
elif ! out=$(LD_LIBRARY_PATH="$build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$tmp/prog" 2>&1); then
    fail lib_link "the program linked with -lhisa failed: $(echo "$out" | first)"
elif ! LD_LIBRARY_PATH="$build" ldd "$tmp/prog" 2> /dev/null | grep -q "$want => $build/"; then
    fail lib_link "the program does not load $want from $build: $(LD_LIBRARY_PATH="$build" ldd "$tmp/prog" 2>&1 | grep hisa | first)"
else
    ok lib_link
fi
exit $((fails > 0 ? 1 : 0))
