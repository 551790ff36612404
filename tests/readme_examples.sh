#!/usr/bin/env bash
# tests/readme_examples.sh BUILD_DIR: the README's C code is tested (make test runs it).
#   readme_programs   every ```c block of README.md whose line above is exactly
#                     <!-- test: c-program --> is a complete program: it is compiled against
#                     runtime/hisa.h (-std=c11 -Wall -Wextra -Werror), linked with
#                     -L BUILD_DIR -lhisa, and run (on the CPU backend: no GPU is needed); it
#                     must exit 0. At least one block must be marked.
#   readme_fragments  every other ```c block is a fragment: it is compiled (-fsyntax-only, same
#                     warnings) as the body of a function whose parameters are the variables the
#                     fragments use (below), so that its calls, fields and types stay those of
#                     hisa.h. A fragment that needs another variable adds it to FRAGMENT_PARAMS.
# One line per check, "ok   NAME" or "FAIL NAME: why" (with the compiler's or the program's
# output after it); exits 1 when a check failed. CC and CFLAGS (e.g. the sanitizer flags of a
# SANITIZE=1 build, whose libhisa.so needs them) are used for the programs.
set -u
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: tests/readme_examples.sh BUILD_DIR" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
readme=$root/README.md
cc=${CC:-cc}
fails=0
ok() { echo "ok   $1"; }
fail() {
    echo "FAIL $1: $2"
    [ -n "${3:-}" ] && [ -s "$3" ] && sed -e 's/^/    /' "$3" | head -n 40
    fails=$((fails + 1))
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

FRAGMENT_PARAMS='hisa_runtime *rt, int32_t l, int32_t n, int32_t *seqs, int32_t seq_a,
    int32_t seq_b, int32_t prompt_seq, int32_t prompt_len, const void *q, const void *q8,
    const float *w, const float *wq, int32_t *idx, const uint16_t *k_bf16, const float *k_new'

# Cut the README into its C blocks: tmp/prog_N.c (marked) and tmp/frag_N.c (the others), each
# with the README line it starts on in tmp/*.line.
awk -v dir="$tmp" '
    /^<!-- test: c-program -->[ \t]*$/ { marked = NR; next }
    /^```c[ \t]*$/ && !inside {
        inside = 1; n++
        kind = (marked == NR - 1) ? "prog" : "frag"
        file = dir "/" kind "_" n ".c"
        print NR + 1 > (dir "/" kind "_" n ".line")
        printf "" > file
        next
    }
    /^```[ \t]*$/ && inside { inside = 0; close(file); next }
    inside { print >> file }
' "$readme"

cflags="-std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE"
n_prog=0
prog_fail=0
for src in "$tmp"/prog_*.c; do
    [ -e "$src" ] || continue
    n_prog=$((n_prog + 1))
    name=$(basename "$src" .c)
    line=$(cat "$tmp/$name.line")
    # shellcheck disable=SC2086 # flag lists
    if ! "$cc" $cflags ${CFLAGS:-} -I"$root/runtime" "$src" -o "$tmp/$name" -L"$build" -lhisa -lm \
            > "$tmp/$name.log" 2>&1; then
        fail readme_programs "the program at README.md:$line does not compile" "$tmp/$name.log"
        prog_fail=1
    else
        LD_LIBRARY_PATH="$build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$tmp/$name" \
            > "$tmp/$name.out" 2>&1
        st=$?
        if [ "$st" -ne 0 ]; then
            fail readme_programs "the program at README.md:$line exits $st" "$tmp/$name.out"
            prog_fail=1
        fi
    fi
done
if [ "$n_prog" -eq 0 ]; then
    fail readme_programs "no \`\`\`c block of README.md is marked <!-- test: c-program -->"
elif [ "$prog_fail" -eq 0 ]; then
    ok "readme_programs ($n_prog compiled, linked with -lhisa and run)"
fi

n_frag=0
frag_fail=0
for src in "$tmp"/frag_*.c; do
    [ -e "$src" ] || continue
    n_frag=$((n_frag + 1))
    name=$(basename "$src" .c)
    line=$(cat "$tmp/$name.line")
    {
        echo '#include <stdint.h>'
        echo '#include "hisa.h"'
        echo "void readme_fragment($FRAGMENT_PARAMS);"
        echo "void readme_fragment($FRAGMENT_PARAMS) {"
        echo "#line $line \"README.md\""
        cat "$src"
        echo '}'
    } > "$tmp/$name.wrapped.c"
    # shellcheck disable=SC2086 # flag lists
    if ! "$cc" $cflags -Wno-unused-parameter -Wno-unused-variable -fsyntax-only \
            -I"$root/runtime" "$tmp/$name.wrapped.c" > "$tmp/$name.log" 2>&1; then
        fail readme_fragments "the fragment at README.md:$line does not compile against hisa.h" \
            "$tmp/$name.log"
        frag_fail=1
    fi
done
[ "$frag_fail" -eq 0 ] && ok "readme_fragments ($n_frag compiled against hisa.h)"
exit $((fails > 0 ? 1 : 0))
