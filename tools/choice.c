/* choice.c: options that take one of a few names (--query-format, --fp8-mma, --key-format,
 * --mode, --kernels): one table per option, each name with its value and a note, serves both
 * parsing and naming, so a refusal lists every choice and a report names the value the same way
 * the option spells it. The bottom of the tools: it calls nothing of theirs. */
#include <assert.h>
#include <string.h>

#include "tools.h"

int tool_parse_choice(const char *cmd, const char *opt, const char *s, const tool_choice *c, int n, int32_t *out) {
    assert(cmd && opt && c && n >= 1 && out);
    for (int i = 0; i < n; i++)
        if (!s ? i == 0 : strcmp(s, c[i].name) == 0) {
            *out = c[i].value;
            return 0;
        }
    fprintf(stderr, "hisa %s: --%s: '%s'; expected ", cmd, opt, s);
    for (int i = 0; i < n; i++)
        fprintf(stderr, "%s%s (%s)", i == 0 ? "" : i == n - 1 ? " or " : ", ", c[i].name, c[i].note);
    fprintf(stderr, "\n");
    return TOOL_EXIT_USAGE;
}

const char *tool_choice_name(const tool_choice *c, int n, int32_t value) {
    assert(c && n >= 1);
    for (int i = 1; i < n; i++)
        if (c[i].value == value) return c[i].name;
    return c[0].name;
}

static const tool_choice k_key_formats[2] = {
    {"fp8", "e4m3 codes with a per-token scale, 132 bytes a key: the default", HISA_KEY_FP8},
    {"bf16", "256 bytes a key", HISA_KEY_BF16}};

static const tool_choice k_kernels[3] = {
    {"auto", "the scorer measured fastest on this device: the default", HISA_KERNELS_AUTO},
    {"portable", "mma.sync", HISA_KERNELS_PORTABLE},
    {"hopper", "warpgroup MMA fed by bulk copies", HISA_KERNELS_HOPPER}};

int tool_parse_key_format(const char *cmd, const char *s, int32_t *out) {
    return tool_parse_choice(cmd, "key-format", s, k_key_formats, TOOL_N_CHOICES(k_key_formats), out);
}
const char *tool_key_format_name(int32_t key_format) {
    return tool_choice_name(k_key_formats, TOOL_N_CHOICES(k_key_formats), key_format);
}
int tool_parse_kernels(const char *cmd, const char *s, int32_t *out) {
    return tool_parse_choice(cmd, "kernels", s, k_kernels, TOOL_N_CHOICES(k_kernels), out);
}
const char *tool_kernels_name(int32_t kernels) { return tool_choice_name(k_kernels, TOOL_N_CHOICES(k_kernels), kernels); }
