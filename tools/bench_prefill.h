/* bench_prefill.h: `hisa bench prefill` (tools/bench_prefill.c), the prefill-chunk benchmark of
 * issue 4. argv[0] is "prefill"; returns the process exit code (tools.h conventions). */
#ifndef HISA_TOOLS_BENCH_PREFILL_H
#define HISA_TOOLS_BENCH_PREFILL_H

#include <stdio.h>

/* The benchmark's setting (the paper's): H, B, m, k, and the synthetic generator's seed of its
 * keys and queries; bench/sharing.c measures the same chunk on the CPU reference. */
enum { PB_H = 64, PB_B = 128, PB_M = 64, PB_K = 2048, PB_SEED = 4 };

int hisa_cmd_bench_prefill(int argc, char **argv);
/* Its --help text (hisa bench --help prints both benchmarks'). */
void hisa_bench_prefill_help(FILE *f);

#endif /* HISA_TOOLS_BENCH_PREFILL_H */
