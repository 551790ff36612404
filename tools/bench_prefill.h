/* bench_prefill.h: `hisa bench prefill` (tools/bench_prefill.c), the prefill-chunk benchmark of
 * issue 4. argv[0] is "prefill"; returns the process exit code (tools.h conventions). */
#ifndef HISA_TOOLS_BENCH_PREFILL_H
#define HISA_TOOLS_BENCH_PREFILL_H

#include <stdio.h>

int hisa_cmd_bench_prefill(int argc, char **argv);
/* Its --help text (hisa bench --help prints both benchmarks'). */
void hisa_bench_prefill_help(FILE *f);

#endif /* HISA_TOOLS_BENCH_PREFILL_H */
