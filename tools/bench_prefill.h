/* bench_prefill.h: `hisa bench prefill` (tools/bench_prefill.c), the prefill-chunk benchmark of
 * issue 4. argv[0] is "prefill"; returns the process exit code (tools.h conventions). */
#ifndef HISA_TOOLS_BENCH_PREFILL_H
#define HISA_TOOLS_BENCH_PREFILL_H

int hisa_cmd_bench_prefill(int argc, char **argv);

#endif /* HISA_TOOLS_BENCH_PREFILL_H */
