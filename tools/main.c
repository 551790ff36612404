/* main.c: the `hisa` command line. Dispatches to one subcommand per file in tools/. */
#include <stdio.h>
#include <string.h>

#include "tools.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} k_cmds[] = {
    {"stream", hisa_cmd_stream,
     "stream decode steps over a long structured context, selecting with HISA (make run)"},
    {"mem", hisa_cmd_mem, "the memory plan of a configuration, region by region; GPU sizing"},
    {"select", hisa_cmd_select, "select top-k positions for queries in .npy files (flat or HISA)"},
    {"eval", hisa_cmd_eval, "HISA against flat on .npy inputs: IoU, needle recall, timings"},
    {"niah", hisa_cmd_niah, "needle in a haystack: recall over context lengths x depths, heatmap"},
    {"bench", hisa_cmd_bench, "decode and prefill benchmarks"},
};
#define N_CMDS (int)(sizeof k_cmds / sizeof k_cmds[0])

static void usage(FILE *f) {
    fprintf(f,
            "hisa %s: the HISA hierarchical sparse-attention indexer (arXiv 2603.28458)\n"
            "\n"
            "usage: hisa COMMAND [options]     hisa COMMAND --help for its options\n"
            "\n"
            "commands:\n",
            hisa_version());
    for (int i = 0; i < N_CMDS; i++) fprintf(f, "  %-8s %s\n", k_cmds[i].name, k_cmds[i].summary);
    fprintf(f,
            "\n"
            "Every command runs on CUDA device 0 when a runtime opens there and on the CPU\n"
            "reference backend otherwise; --device cpu|cuda|cuda:N chooses, and each command\n"
            "says which device it used.\n"
            "Exit status: 0 success, 2 usage or input error, 1 runtime failure.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return TOOL_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return TOOL_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("hisa %s\n", hisa_version());
        return TOOL_EXIT_OK;
    }
    for (int i = 0; i < N_CMDS; i++)
        if (strcmp(cmd, k_cmds[i].name) == 0) return k_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "hisa: unknown command '%s' (see hisa --help)\n", cmd);
    return TOOL_EXIT_USAGE;
}
