/* config_msg.c: configuration errors in the command's own terms, and the selections that are
 * trivial by construction (declared in tools.h).
 *
 * The library refuses a configuration with the field of hisa_config and the rule it broke
 * (hisa_plan.invalid_field / invalid_rule, e.g. top_blocks and "(top_blocks - 1) * block_size
 * >= topk"). A user typed options, not fields: the message here names the options that set the
 * fields of the rule, with their values (the defaults marked), writes the rule with the
 * options' names, and for the rules that combine options says what to change. */
#include <assert.h>
#include <stddef.h>
#include <string.h>

#include "tools.h"

/* The names of configuration values, as the tools print them (config_msg.c holds every way the
 * tools describe a configuration; common.c calls in, nothing here calls back). */
const char *tool_device_name(int32_t device, char *buf, size_t buf_len) {
    if (device == HISA_DEVICE_CPU) snprintf(buf, buf_len, "cpu");
    else snprintf(buf, buf_len, "cuda:%d", device - 1);
    return buf;
}

/* Every field of hisa_config a rule can name, with its common option. */
static const struct {
    const char *field, *option;
    size_t off;
} k_fields[] = {
    {"n_layers", "--layers", offsetof(hisa_config, n_layers)},
    {"n_heads", "--heads", offsetof(hisa_config, n_heads)},
    {"head_dim", "head_dim", offsetof(hisa_config, head_dim)},
    {"block_size", "--block-size", offsetof(hisa_config, block_size)},
    {"top_blocks", "--top-blocks", offsetof(hisa_config, top_blocks)},
    {"topk", "--topk", offsetof(hisa_config, topk)},
    {"key_format", "--key-format", offsetof(hisa_config, key_format)},
    {"payload_bytes", "--payload-bytes", offsetof(hisa_config, payload_bytes)},
    {"max_seqs", "--seqs", offsetof(hisa_config, max_seqs)},
    {"max_context", "--context", offsetof(hisa_config, max_context)},
    {"n_pages", "--pages", offsetof(hisa_config, n_pages)},
    {"max_batch", "--max-batch", offsetof(hisa_config, max_batch)},
    {"max_prefill_queries", "--prefill-queries", offsetof(hisa_config, max_prefill_queries)},
    {"device", "--device", offsetof(hisa_config, device)},
    {"fp8_mma", "--fp8-mma", offsetof(hisa_config, fp8_mma)},
};
#define N_FIELDS (int)(sizeof k_fields / sizeof k_fields[0])
#define RULE_FIELDS_MAX 8

/* The index of the field named s[0..n), or -1. */
static int field_index(const char *s, size_t n) {
    for (int i = 0; i < N_FIELDS; i++)
        if (strlen(k_fields[i].field) == n && strncmp(k_fields[i].field, s, n) == 0) return i;
    return -1;
}

static int field_named(const char *name) { return name ? field_index(name, strlen(name)) : -1; }

/* The command's name for field fi (and the note on its value, or NULL). */
static const char *option_of(int fi, const tool_field_name *names, const char **note) {
    assert(fi >= 0 && fi < N_FIELDS);
    *note = NULL;
    for (const tool_field_name *n = names; n && n->field; n++)
        if (strcmp(n->field, k_fields[fi].field) == 0) {
            *note = n->note;
            return n->option;
        }
    return k_fields[fi].option;
}

/* Field fi of c; a 0 that means "the default" is replaced by the default (*dflt set). */
static int64_t field_value(const hisa_config *c, int fi, int *dflt) {
    assert(c && fi >= 0 && fi < N_FIELDS);
    int32_t v = *(const int32_t *)(const void *)((const char *)c + k_fields[fi].off);
    const char *f = k_fields[fi].field;
    *dflt = v == 0 && strcmp(f, "payload_bytes") != 0 && strcmp(f, "device") != 0;
    if (!*dflt) return v;
    hisa_config zero = {0}, d;
    if (hisa_config_resolve(&zero, &d) != HISA_OK) return 0;
    int derived = strcmp(f, "n_pages") == 0 || strcmp(f, "max_batch") == 0 ||
                  strcmp(f, "max_prefill_queries") == 0;
    if (!derived) return *(const int32_t *)(const void *)((const char *)&d + k_fields[fi].off);
    /* the defaults that follow other fields (hisa.h, plan.c) */
    int ignored;
    int64_t seqs = field_value(c, field_named("max_seqs"), &ignored);
    int64_t ctx = field_value(c, field_named("max_context"), &ignored);
    int64_t B = field_value(c, field_named("block_size"), &ignored);
    if (strcmp(f, "n_pages") == 0) return seqs * ((ctx + B - 1) / B);
    if (strcmp(f, "max_batch") == 0) return seqs < HISA_MAX_BATCH ? seqs : HISA_MAX_BATCH;
    return ctx < d.max_prefill_queries ? ctx : d.max_prefill_queries;
}

const char *tool_rule_text(const char *rule, const tool_field_name *names, char *buf,
                           size_t buf_len) {
    assert(buf && buf_len > 0);
    size_t used = 0;
    buf[0] = 0;
    for (const char *p = rule ? rule : ""; *p && used + 1 < buf_len;) {
        size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");
        int fi = n ? field_index(p, n) : -1;
        const char *note, *sym = fi >= 0 ? option_of(fi, names, &note) : NULL;
        if (sym && strncmp(sym, "--", 2) == 0) sym += 2;
        if (!sym) n = n ? n : 1;
        int len = sym ? (int)strlen(sym) : (int)n;
        used += (size_t)snprintf(buf + used, buf_len - used, "%.*s", len, sym ? sym : p);
        p += n;
    }
    return buf;
}

/* The fields a rule names, invalid_field first, one per option (two fields set by one option,
 * like stream's --batch, are one). Returns how many, at most RULE_FIELDS_MAX. */
static int rule_fields(const hisa_plan *plan, const hisa_config *cfg,
                       const tool_field_name *names, int *out) {
    int n = 0, first = field_named(plan->invalid_field), dflt = 1;
    if (first >= 0) out[n++] = first;
    if (first >= 0) field_value(cfg, first, &dflt);
    /* "1 <= n_pages <= ... (default max_seqs * ...)": the fields of the default matter only
     * when the value is the default */
    const char *rule = plan->invalid_rule ? plan->invalid_rule : "";
    const char *d = strstr(rule, "(default"), *end = d && !dflt ? d : rule + strlen(rule);
    for (const char *p = rule; p < end;) {
        size_t len = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");
        int fi = len ? field_index(p, len) : -1;
        p += len ? len : 1;
        if (fi < 0 || n >= RULE_FIELDS_MAX) continue;
        const char *note, *opt = option_of(fi, names, &note);
        int dup = 0;
        for (int j = 0; j < n; j++)
            if (strcmp(option_of(out[j], names, &note), opt) == 0) dup = 1;
        if (!dup) out[n++] = fi;
    }
    return n;
}

/* "--top-blocks 64 (default)" of field fi into buf. */
static void describe_field(int fi, const hisa_config *cfg, const tool_field_name *names,
                           char *buf, size_t len) {
    int dflt;
    const char *note, *opt = option_of(fi, names, &note);
    int64_t v = field_value(cfg, fi, &dflt);
    char val[32];
    if (strcmp(k_fields[fi].field, "key_format") == 0)
        snprintf(val, sizeof val, "%s", tool_key_format_name((int32_t)v));
    else if (strcmp(k_fields[fi].field, "device") == 0)
        tool_device_name((int32_t)v, val, sizeof val);
    else snprintf(val, sizeof val, "%lld", (long long)v);
    const char *paren = note ? note : dflt ? "default" : NULL;
    snprintf(buf, len, "%s %s%s%s%s", opt, val, paren ? " (" : "", paren ? paren : "",
             paren ? ")" : "");
}

/* What breaks the rules that combine options, and what to change; "" for the others. */
static void rule_detail(const hisa_plan *plan, const hisa_config *cfg,
                        const tool_field_name *names, char *buf, size_t len) {
    buf[0] = 0;
    const char *f = plan->invalid_field ? plan->invalid_field : "", *r = plan->invalid_rule;
    int d;
    int64_t B = field_value(cfg, field_named("block_size"), &d);
    const char *nm, *o_m = option_of(field_named("top_blocks"), names, &nm);
    const char *o_k = option_of(field_named("topk"), names, &nm);
    if (strcmp(f, "top_blocks") == 0 && r && strstr(r, "block_size") && strstr(r, "topk")) {
        int64_t m = field_value(cfg, field_named("top_blocks"), &d);
        int64_t k = field_value(cfg, field_named("topk"), &d);
        snprintf(buf, len,
                 ": (%lld - 1) * %lld = %lld < %lld, and the m kept blocks must hold at least k "
                 "candidates; raise %s to at least %lld or lower %s to at most %lld",
                 (long long)m, (long long)B, (long long)((m - 1) * B), (long long)k, o_m,
                 (long long)((k + B - 1) / B + 1), o_k, (long long)((m - 1) * B));
    } else if (strcmp(f, "n_pages") == 0 && r && strstr(r, "2^31")) {
        int64_t pages = field_value(cfg, field_named("n_pages"), &d);
        snprintf(buf, len, ": %lld * %lld = %lld > 2147483648", (long long)pages, (long long)B,
                 (long long)(pages * B));
    }
}

int tool_config_error(const char *cmd, const hisa_plan *plan, const hisa_config *cfg,
                      const tool_field_name *names) {
    assert(cmd && plan && cfg);
    int fis[RULE_FIELDS_MAX];
    int n = rule_fields(plan, cfg, names, fis);
    char who[512] = "", rule[256], detail[320];
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof who; i++) {
        char one[128];
        describe_field(fis[i], cfg, names, one, sizeof one);
        used += (size_t)snprintf(who + used, sizeof who - used, "%s%s",
                                 i == 0 ? "" : i + 1 == n ? " and " : ", ", one);
    }
    tool_rule_text(plan->invalid_rule ? plan->invalid_rule : "a configuration rule", names, rule,
                   sizeof rule);
    rule_detail(plan, cfg, names, detail, sizeof detail);
    fprintf(stderr, "hisa %s: invalid configuration: %s %s the rule %s%s\n", cmd,
            n ? who : "the configuration", n > 1 ? "break" : "breaks", rule, detail);
    return TOOL_EXIT_USAGE;
}

int tool_trivial_kind(int64_t n_visible, const hisa_config *cfg) {
    assert(cfg && cfg->block_size > 0);
    if (n_visible <= cfg->topk) return TOOL_TRIVIAL_TOKENS;
    int64_t nb = (n_visible + cfg->block_size - 1) / cfg->block_size;
    return nb <= cfg->top_blocks ? TOOL_TRIVIAL_BLOCKS : TOOL_TRIVIAL_NONE;
}

const char *tool_trivial_why(int64_t n_visible, const hisa_config *cfg, char *buf, size_t len) {
    assert(cfg && buf);
    int64_t nb = (n_visible + cfg->block_size - 1) / cfg->block_size;
    switch (tool_trivial_kind(n_visible, cfg)) {
    case TOOL_TRIVIAL_TOKENS:
        snprintf(buf, len,
                 "%lld tokens <= k=%d: every visible token is selected, by flat and HISA "
                 "alike (recall 1 and IoU 1 by construction)",
                 (long long)n_visible, cfg->topk);
        return buf;
    case TOOL_TRIVIAL_BLOCKS:
        snprintf(buf, len,
                 "%lld tokens are %lld blocks of B=%d <= m=%d: every block is a candidate, the "
                 "coarse stage is skipped and HISA equals flat by construction (IoU 1)",
                 (long long)n_visible, (long long)nb, cfg->block_size, cfg->top_blocks);
        return buf;
    default: return NULL;
    }
}
