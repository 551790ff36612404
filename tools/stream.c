/* stream.c: `hisa stream`, the main job. Streams decode steps over a long structured context
 * the way an inference engine drives the indexer: prefill the prompt's keys, then per step
 * append one token's key to every layer and select with HISA; every few steps it checks HISA
 * against flat DSA on the same query. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "synth.h"
#include "tools.h"

#define D HISA_HEAD_DIM

static void stream_help(void) {
    printf(
        "usage: hisa stream [options]\n"
        "\n"
        "Builds a long structured synthetic context (topic segments, attention sinks; see\n"
        "'Synthetic data' below), writes its keys with hisa_write_range in chunks of\n"
        "--prefill-chunk tokens, then streams decode steps: each step extends every stream by\n"
        "one token, writes its key to every layer (hisa_write_keys) and selects with HISA\n"
        "(hisa_select_decode), one call per layer for all streams. Every --check-every steps\n"
        "it also selects with flat DSA on the same queries and reports the IoU. A live\n"
        "progress line goes to stderr when it is a terminal (a few plain lines otherwise).\n"
        "The summary: p50/p99 select latency per layer, steps/s and tokens/s, mean IoU vs\n"
        "flat, and the arena's memory. Tensors cross as host memory (HISA_HOST_IO), so GPU\n"
        "latencies include the small query/result copies and a stream sync per call.\n"
        "\n"
        "options (GPU default / CPU default):\n"
        "  --context N        prompt tokens before decoding (64K / 8K); K, M suffixes\n"
        "  --steps N          decode steps (512 / 64)\n"
        "  --batch N          streams decoded together (4 / 1)\n"
        "  --layers N         indexer layers (4 / 2)\n"
        "  --heads H          indexer heads (64)\n"
        "  --key-format F     fp8 (default) or bf16\n"
        "  --block-size B     tokens per block = page: 32, 64, 128 (default), 256\n"
        "  --top-blocks M     blocks kept by the coarse stage (64 / 32)\n"
        "  --topk K           tokens selected per query (2048)\n"
        "  --check-every N    flat check period in steps (steps/8: 64 / 8)\n"
        "  --prefill-chunk N  tokens per hisa_write_range (1024)\n"
        "  --seed S           synthetic data seed (1)\n"
        "  --profile          print the pool figures at the end: pages used / free /\n"
        "                     high-water, sequences, tokens, and the plan's regions\n"
        "  --device D         cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)\n"
        "\n"
        "The CPU defaults keep `make run` on a machine without a GPU well under a minute on\n"
        "two cores: a shorter context, few steps and layers, one stream, and m = 32 (with\n"
        "m = 64 and B = 128 an 8K context has only 64 blocks, every block is a candidate and\n"
        "HISA equals flat; m = 32 makes the coarse stage prune half of them).\n"
        "\n"
        "Synthetic data: topic segments of 32..512 tokens (keys = one of 64 topic vectors +\n"
        "0.5 noise), 4 attention-sink tokens at the start, queries aligned with 3 topics the\n"
        "context has shown (the current one half the time), head weights mostly positive.\n"
        "Seeded and reproducible; every stream has its own seed.\n");
}

typedef struct stream_opts {
    int32_t context, steps, batch, check_every, prefill_chunk;
    int64_t seed;
    int profile;
    tool_cfg_opts c;
} stream_opts;

static void progress(int tty, int32_t step, int32_t steps, int64_t context, double step_s,
                     int32_t batch, double last_iou, int final) {
    char iou[32] = "";
    if (last_iou >= 0) snprintf(iou, sizeof iou, "  IoU %.3f", last_iou);
    if (tty)
        fprintf(stderr, "\r\033[Kstep %d/%d  context %lld  step %.3f ms  %.0f tok/s%s%s", step,
                steps, (long long)context, step_s * 1e3, step_s > 0 ? batch / step_s : 0.0, iou,
                final ? "\n" : "");
    else
        fprintf(stderr, "step %d/%d  context %lld  step %.3f ms  %.0f tok/s%s\n", step, steps,
                (long long)context, step_s * 1e3, step_s > 0 ? batch / step_s : 0.0, iou);
}

int hisa_cmd_stream(int argc, char **argv) {
    const char *cmd = "stream";
    stream_opts o = {0};
    o.seed = 1;
    tool_opt opts[24];
    int n = 0;
    opts[n++] = (tool_opt){"context", TOOL_OPT_INT, &o.context};
    opts[n++] = (tool_opt){"steps", TOOL_OPT_INT, &o.steps};
    opts[n++] = (tool_opt){"batch", TOOL_OPT_INT, &o.batch};
    opts[n++] = (tool_opt){"layers", TOOL_OPT_INT, &o.c.layers};
    opts[n++] = (tool_opt){"check-every", TOOL_OPT_INT, &o.check_every};
    opts[n++] = (tool_opt){"prefill-chunk", TOOL_OPT_INT, &o.prefill_chunk};
    opts[n++] = (tool_opt){"seed", TOOL_OPT_I64, &o.seed};
    opts[n++] = (tool_opt){"profile", TOOL_OPT_FLAG, &o.profile};
    tool_cfg_opts_add(opts, &n, &o.c);
    int rc = tool_parse_opts(cmd, argc, argv, opts, n);
    if (rc < 0) {
        stream_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    if (o.context < 0 || o.steps < 0 || o.batch < 0 || o.check_every < 0 || o.prefill_chunk < 0) {
        fprintf(stderr, "hisa stream: --context, --steps, --batch, --check-every and "
                        "--prefill-chunk must not be negative\n");
        return TOOL_EXIT_USAGE;
    }

    hisa_config cfg = {0};
    const char *why;
    rc = tool_pick_device(cmd, o.c.device, &cfg.device, &why);
    if (rc) return rc;
    int gpu = cfg.device != HISA_DEVICE_CPU;
    if (!o.context) o.context = gpu ? 65536 : 8192;
    if (!o.steps) o.steps = gpu ? 512 : 64;
    if (!o.batch) o.batch = gpu ? 4 : 1;
    if (!o.c.layers) o.c.layers = gpu ? 4 : 2;
    if (!o.c.top_blocks && !gpu) o.c.top_blocks = 32;
    if (!o.check_every) o.check_every = o.steps >= 8 ? o.steps / 8 : 1;
    if (!o.prefill_chunk) o.prefill_chunk = 1024;
    if (o.context < 1) {
        fprintf(stderr, "hisa stream: --context must be at least 1\n");
        return TOOL_EXIT_USAGE;
    }
    if ((int64_t)o.context + o.steps > INT32_MAX) {
        fprintf(stderr, "hisa stream: --context + --steps is too large\n");
        return TOOL_EXIT_USAGE;
    }
    rc = tool_cfg_apply(cmd, &o.c, &cfg);
    if (rc) return rc;
    cfg.max_seqs = o.batch;
    cfg.max_batch = o.batch;
    cfg.max_context = o.context + o.steps;
    cfg.max_prefill_queries = o.prefill_chunk;

    hisa_runtime *rt = NULL;
    rc = tool_open(cmd, &cfg, &rt);
    if (rc) return rc;
    const hisa_config *rc_cfg = hisa_get_config(rt);
    const int32_t L = rc_cfg->n_layers, H = rc_cfg->n_heads, B = o.batch, k = rc_cfg->topk;
    const int32_t chunk = rc_cfg->max_prefill_queries;
    char dev[32];
    tool_device_name(rc_cfg->device, dev, sizeof dev);
    printf("hisa stream: device %s%s%s%s\n", dev, *why ? " (" : "", why, *why ? ")" : "");
    printf("  %d stream%s x %d layer%s, H=%d, B=%d, m=%d, k=%d, keys %s; prompt %d tokens, "
           "%d decode steps\n",
           B, B == 1 ? "" : "s", L, L == 1 ? "" : "s", H, rc_cfg->block_size,
           rc_cfg->top_blocks, k, tool_key_format_name(rc_cfg->key_format), o.context, o.steps);
    fflush(stdout);

    synth_gen *gens = calloc((size_t)B, sizeof *gens);
    int32_t *seqs = calloc((size_t)B, sizeof *seqs);
    float *prefill_keys = malloc(sizeof(float) * (size_t)L * (size_t)chunk * D);
    float *step_keys = malloc(sizeof(float) * (size_t)L * (size_t)B * D);
    float *qs = malloc(sizeof(float) * (size_t)L * (size_t)B * (size_t)H * D);
    float *ws = malloc(sizeof(float) * (size_t)L * (size_t)B * (size_t)H);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)B * (size_t)k);
    int32_t *sel_flat = malloc(sizeof(int32_t) * (size_t)B * (size_t)k);
    int32_t *scratch = malloc(sizeof(int32_t) * 2 * (size_t)k);
    double *lat = malloc(sizeof(double) * ((size_t)o.steps + 1) * (size_t)L);
    double *step_lat = malloc(sizeof(double) * ((size_t)o.steps + 1));
    int32_t n_gens = 0, n_seqs = 0;
    rc = TOOL_EXIT_FAIL;
    if (!gens || !seqs || !prefill_keys || !step_keys || !qs || !ws || !sel || !sel_flat ||
        !scratch || !lat || !step_lat) {
        fprintf(stderr, "hisa stream: out of memory\n");
        goto done;
    }
    for (int32_t b = 0; b < B; b++, n_gens++) {
        synth_params sp;
        synth_params_default(&sp);
        sp.seed = (uint64_t)o.seed * 1000003u + (uint64_t)b;
        sp.n_heads = H;
        sp.n_layers = L;
        if (synth_init(&gens[b], &sp) != 0) {
            fprintf(stderr, "hisa stream: out of memory for the synthetic generator\n");
            goto done;
        }
    }
    int err = 0;
    const char *what = "";

    /* --- prefill: the prompt's keys, chunk by chunk, every layer ---------------------------- */
    double t_prefill = tool_now_s(), t_write = 0;
    for (int32_t b = 0; b < B && !err; b++) {
        what = "opening a sequence";
        err = hisa_seq_open(rt, &seqs[b]);
        if (err) break;
        n_seqs++;
        for (int32_t p0 = 0; p0 < o.context && !err; p0 += chunk) {
            int32_t m = o.context - p0 < chunk ? o.context - p0 : chunk;
            synth_keys(&gens[b], m, prefill_keys, (int64_t)m * D);
            double t0 = tool_now_s();
            what = "extending a sequence for the prompt";
            err = hisa_seq_extend(rt, seqs[b], m);
            for (int32_t l = 0; l < L && !err; l++) {
                hisa_write req = {.layer = l, .n_tokens = m,
                                  .keys = prefill_keys + (size_t)l * (size_t)m * D,
                                  .flags = HISA_HOST_IO};
                what = "writing the prompt's keys";
                err = hisa_write_range(rt, seqs[b], p0, &req);
            }
            t_write += tool_now_s() - t0;
        }
    }
    if (err) goto lib_fail;
    t_prefill = tool_now_s() - t_prefill;
    printf("prefill: %d tokens x %d layer%s x %d stream%s in %.2f s (hisa writes %.2f s, "
           "%.2f M keys/s)\n",
           o.context, L, L == 1 ? "" : "s", B, B == 1 ? "" : "s", t_prefill, t_write,
           t_write > 0 ? (double)o.context * B * L / t_write / 1e6 : 0.0);
    fflush(stdout);

    /* --- decode ---------------------------------------------------------------------------- */
    int tty = isatty(2);
    int32_t plain_every = o.steps >= 4 ? o.steps / 4 : 1;
    double iou_sum = 0, iou_min = 1, last_iou = -1, t_last_print = 0;
    int64_t iou_n = 0;
    int32_t checks = 0;
    double t_decode = tool_now_s();
    for (int32_t s = 0; s < o.steps; s++) {
        /* The new token's key and this step's queries come from the generator; that is the
         * model's work, not the indexer's, so it stays outside the timed region. */
        for (int32_t b = 0; b < B; b++) {
            synth_keys(&gens[b], 1, step_keys + (size_t)b * D, (int64_t)B * D);
            for (int32_t l = 0; l < L; l++)
                synth_query(&gens[b], l, 0, qs + ((size_t)l * B + b) * (size_t)H * D,
                            ws + ((size_t)l * B + b) * (size_t)H);
        }
        double t_step = tool_now_s();
        for (int32_t b = 0; b < B && !err; b++) {
            what = "extending a sequence by one token";
            err = hisa_seq_extend(rt, seqs[b], 1);
        }
        for (int32_t l = 0; l < L && !err; l++) {
            hisa_write req = {.layer = l, .n_tokens = B, .seq_ids = seqs, .positions = NULL,
                              .keys = step_keys + (size_t)l * B * D, .flags = HISA_HOST_IO};
            what = "appending the new token's key";
            err = hisa_write_keys(rt, &req);
        }
        for (int32_t l = 0; l < L && !err; l++) {
            hisa_decode req = {.layer = l, .mode = HISA_MODE_HISA, .n_seqs = B, .seq_ids = seqs,
                               .q = qs + (size_t)l * B * H * D, .w = ws + (size_t)l * B * H,
                               .out = sel, .flags = HISA_HOST_IO};
            double t0 = tool_now_s();
            what = "selecting with HISA";
            err = hisa_select_decode(rt, &req);
            lat[(size_t)s * L + l] = tool_now_s() - t0;
            if (err || (s + 1) % o.check_every != 0) continue;
            /* The check: flat DSA on the same queries, outside the step's timing. */
            double t_check = tool_now_s();
            req.mode = HISA_MODE_FLAT;
            req.out = sel_flat;
            what = "selecting with flat DSA for the check";
            err = hisa_select_decode(rt, &req);
            for (int32_t b = 0; b < B && !err; b++) {
                double v = tool_iou(sel + (size_t)b * k, sel_flat + (size_t)b * k, k, scratch);
                iou_sum += v;
                iou_n++;
                if (v < iou_min) iou_min = v;
                last_iou = v;
            }
            t_step += tool_now_s() - t_check;
        }
        if (err) break;
        step_lat[s] = tool_now_s() - t_step;
        if ((s + 1) % o.check_every == 0) checks++;
        int64_t ctx_now = (int64_t)o.context + s + 1;
        double now = tool_now_s();
        if (tty) {
            if (now - t_last_print > 0.1 || s + 1 == o.steps) {
                progress(1, s + 1, o.steps, ctx_now, step_lat[s], B, last_iou, s + 1 == o.steps);
                t_last_print = now;
            }
        } else if ((s + 1) % plain_every == 0 || s + 1 == o.steps) {
            progress(0, s + 1, o.steps, ctx_now, step_lat[s], B, last_iou, 0);
        }
    }
    if (err) {
        if (tty) fprintf(stderr, "\n");
        goto lib_fail;
    }
    t_decode = tool_now_s() - t_decode;

    /* --- summary --------------------------------------------------------------------------- */
    double step_sum = 0;
    for (int32_t s = 0; s < o.steps; s++) step_sum += step_lat[s];
    printf("decode: %d steps in %.2f s wall", o.steps, t_decode);
    if (o.steps > 0) {
        double p50 = tool_percentile(step_lat, o.steps, 50);
        double p99 = tool_percentile(step_lat, o.steps, 99);
        printf("; per step (append + HISA select, all layers): p50 %.3f ms, p99 %.3f ms\n",
               p50 * 1e3, p99 * 1e3);
        printf("  %.1f steps/s, %.1f tokens/s (indexer time only; %.1f steps/s wall with the "
               "synthetic model and the flat checks)\n",
               step_sum > 0 ? o.steps / step_sum : 0.0,
               step_sum > 0 ? (double)o.steps * B / step_sum : 0.0,
               t_decode > 0 ? o.steps / t_decode : 0.0);
        printf("select latency per layer, HISA decode of %d stream%s (ms):\n", B,
               B == 1 ? "" : "s");
        double *col = malloc(sizeof(double) * (size_t)o.steps);
        if (col) {
            for (int32_t l = 0; l < L; l++) {
                for (int32_t s = 0; s < o.steps; s++) col[s] = lat[(size_t)s * L + l];
                double c50 = tool_percentile(col, o.steps, 50);
                double c99 = tool_percentile(col, o.steps, 99);
                printf("  layer %d: p50 %.3f  p99 %.3f\n", l, c50 * 1e3, c99 * 1e3);
            }
            free(col);
        }
    } else {
        printf("\n");
    }
    if (iou_n)
        printf("IoU HISA vs flat: mean %.4f, min %.4f (%d checks x %d layer%s x %d stream%s)\n",
               iou_sum / (double)iou_n, iou_min, checks, L, L == 1 ? "" : "s", B,
               B == 1 ? "" : "s");
    else
        printf("IoU HISA vs flat: no checks ran (--check-every > --steps)\n");
    hisa_memory_report mr;
    if (hisa_memory_report_get(rt, &mr) == HISA_OK) {
        char bd[32], bh[32];
        printf("arena: %s device + %s host reserved at open; pages %d of %d used (%.1f%%), "
               "%lld tokens in %d sequence%s\n",
               tool_fmt_bytes(mr.device_bytes, bd, sizeof bd),
               tool_fmt_bytes(mr.host_bytes, bh, sizeof bh), mr.pages_used, mr.pages_total,
               mr.pages_total ? 100.0 * mr.pages_used / mr.pages_total : 0.0,
               (long long)mr.tokens, mr.seqs_open, mr.seqs_open == 1 ? "" : "s");
        if (o.profile) {
            printf("pool (profile): pages total %d, used %d, free %d, high-water %d; sequences "
                   "open %d, high-water %d; tokens %lld\n",
                   mr.pages_total, mr.pages_used, mr.pages_free, mr.pages_high_water,
                   mr.seqs_open, mr.seqs_high_water, (long long)mr.tokens);
            const hisa_plan *plan = hisa_get_plan(rt);
            printf("plan regions (non-empty; hisa mem lists them all):\n");
            for (int32_t i = 0; i < plan->n_regions; i++) {
                const hisa_region *r = &plan->regions[i];
                if (r->bytes == 0) continue; /* the other backend's regions */
                printf("  %-22s %-6s %12s\n", r->name, r->on_device ? "device" : "host",
                       tool_fmt_bytes(r->bytes, bd, sizeof bd));
            }
        }
    }
    rc = TOOL_EXIT_OK;
    goto done;

lib_fail:
    rc = tool_lib_error(cmd, what, err, NULL);
    if (err == HISA_EDEVICE) fprintf(stderr, "  detail: %s\n", hisa_error_detail(rt));
done:
    for (int32_t b = 0; b < n_seqs; b++) hisa_seq_close(rt, seqs[b]);
    for (int32_t b = 0; b < n_gens; b++) synth_free(&gens[b]);
    free(gens);
    free(seqs);
    free(prefill_keys);
    free(step_keys);
    free(qs);
    free(ws);
    free(sel);
    free(sel_flat);
    free(scratch);
    free(lat);
    free(step_lat);
    hisa_close(rt);
    return rc;
}
