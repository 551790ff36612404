/* test_core.c: the fixed-memory core on the CPU backend: plan, arena, paged cache, incremental
 * summaries, SPEC selection semantics, and the bad-input table. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/internal.h"
#include "common.h"
#include "test.h"

static hisa_runtime *open_or_null(hisa_config c) {
    hisa_runtime *rt = NULL;
    return hisa_open(&rt, &c, NULL) == HISA_OK ? rt : NULL;
}

/* Write generated keys for positions [pos0, pos0+n) of seq, every layer, through write_range. */
static int fill(hisa_runtime *rt, int32_t seq, int32_t pos0, int32_t n, uint64_t seed) {
    const hisa_config *c = hisa_get_config(rt);
    int32_t chunk = c->max_prefill_queries;
    float *keys = malloc(sizeof(float) * 128 * (size_t)chunk);
    int err = 0;
    for (int32_t p = pos0; p < pos0 + n && !err; p += chunk) {
        int32_t cnt = pos0 + n - p < chunk ? pos0 + n - p : chunk;
        hisa_tgen_keys(seed, p, cnt, keys);
        for (int32_t l = 0; l < c->n_layers && !err; l++) {
            hisa_write req = {.layer = l, .n_tokens = cnt, .keys = keys, .flags = HISA_HOST_IO};
            err = hisa_write_range(rt, seq, p, &req);
        }
    }
    free(keys);
    return err;
}

/* Stored keys of seq (layer 0) dequantized, and its block means. */
static void stored(hisa_runtime *rt, int32_t seq, int32_t n, float *deq, float *means) {
    int32_t B = (int32_t)rt->g.block_size;
    for (int32_t s = 0; s < n; s++) {
        int32_t page = rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + s / B];
        hisa__kv_dequant(&rt->kv, hisa__page(rt, 0, page), s % B, deq + (int64_t)s * 128);
    }
    for (int32_t b = 0; b < (n + B - 1) / B; b++) {
        int32_t page = rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + b];
        for (int d = 0; d < 128; d++)
            means[b * 128 + d] = hisa__bf16_to_f32(rt->r.block_means[hisa__summary_index(rt, 0, page) * 128 + d]);
    }
}

HISA_TEST(plan_regions_add_up_and_do_not_overlap) {
    hisa_config cfgs[] = {
        {0},
        {.device = HISA_DEVICE_CUDA(0)}, /* planning needs no GPU */
        {.n_layers = 3, .block_size = 32, .top_blocks = 80, .topk = 512, .key_format = HISA_KEY_BF16,
         .payload_bytes = 656, .max_seqs = 5, .max_context = 10000, .max_batch = 3},
        {.n_heads = 32, .block_size = 256, .top_blocks = 9, .max_context = 1 << 20, .max_seqs = 1,
         .device = HISA_DEVICE_CUDA(0)},
    };
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        hisa_plan plan;
        REQUIRE(hisa_plan_compute(&cfgs[ci], &plan) == HISA_OK);
        CHECK_EQ_INT(plan.n_regions, HISA__REGION_COUNT);
        for (int space = 0; space < 2; space++) {
            uint64_t sum = 0, prev_end = 0, total = space ? plan.device_bytes : plan.host_bytes;
            for (int32_t i = 0; i < plan.n_regions; i++) {
                const hisa_region *r = &plan.regions[i];
                if (r->on_device != space) continue;
                CHECK(r->offset % r->align == 0);
                CHECK(r->offset >= prev_end); /* table order is offset order: no overlap */
                prev_end = r->offset + r->bytes;
                sum += r->bytes;
            }
            CHECK(prev_end <= total);
            CHECK(total - sum < (uint64_t)plan.n_regions * 256 + 256); /* only alignment padding */
        }
        const hisa_config *c = &plan.config;
        uint64_t page_bytes = c->key_format == HISA_KEY_FP8 ? (uint64_t)c->block_size * 132
                                                            : (uint64_t)c->block_size * 256;
        int32_t keys = -1;
        for (int32_t i = 0; i < plan.n_regions; i++)
            if (strcmp(plan.regions[i].name, "keys") == 0) keys = i;
        REQUIRE(keys >= 0);
        CHECK_EQ_INT(plan.regions[keys].bytes, (uint64_t)c->n_layers * c->n_pages * page_bytes);
    }
}

HISA_TEST(config_defaults_and_invalid_configs) {
    hisa_config r;
    REQUIRE(hisa_config_resolve(&(hisa_config){0}, &r) == HISA_OK);
    CHECK_EQ_INT(r.n_heads, 64);
    CHECK_EQ_INT(r.head_dim, 128);
    CHECK_EQ_INT(r.block_size, 128);
    CHECK_EQ_INT(r.top_blocks, 64);
    CHECK_EQ_INT(r.topk, 2048);
    CHECK_EQ_INT(r.key_format, HISA_KEY_FP8);
    CHECK_EQ_INT(r.n_pages, 8 * 1024);
    struct {
        hisa_config c;
        int err;
        const char *field;
    } bad[] = {
        {{.top_blocks = 16}, HISA_ECONFIG, "top_blocks"}, /* (16-1)*128 < 2048 */
        {{.block_size = 48}, HISA_ECONFIG, "block_size"},
        {{.block_size = 512}, HISA_ECONFIG, "block_size"},
        {{.head_dim = 64}, HISA_ECONFIG, "head_dim"},
        {{.n_heads = 129}, HISA_ECONFIG, "n_heads"},
        {{.n_heads = -1}, HISA_ECONFIG, "n_heads"},
        {{.n_layers = -3}, HISA_ECONFIG, "n_layers"},
        {{.topk = HISA_TOPK_MAX + 1, .top_blocks = 1000}, HISA_ECONFIG, "topk"},
        {{.key_format = 3}, HISA_ECONFIG, "key_format"},
        {{.payload_bytes = -1}, HISA_ECONFIG, "payload_bytes"},
        {{.max_context = HISA_CONTEXT_MAX + 1}, HISA_ECONFIG, "max_context"},
        {{.max_seqs = HISA_SEQS_MAX, .max_context = HISA_CONTEXT_MAX}, HISA_ECONFIG, "n_pages"},
        {{.max_batch = HISA_BATCH_MAX + 1}, HISA_ECONFIG, "max_batch"},
        {{.max_prefill_queries = HISA_PREFILL_MAX + 1}, HISA_ECONFIG, "max_prefill_queries"},
        {{.device = -2}, HISA_ECONFIG, "device"},
        {{.fp8_mma = 2}, HISA_ECONFIG, "fp8_mma"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        hisa_plan plan;
        int err = hisa_plan_compute(&bad[i].c, &plan);
        CHECKF(err == bad[i].err, "bad config %zu: got %d want %d", i, err, bad[i].err);
        CHECKF(plan.invalid_field && strcmp(plan.invalid_field, bad[i].field) == 0,
               "bad config %zu: field %s want %s", i, plan.invalid_field ? plan.invalid_field : "(null)",
               bad[i].field);
        hisa_runtime *rt = (hisa_runtime *)0x1;
        CHECK_EQ_INT(hisa_open(&rt, &bad[i].c, NULL), bad[i].err);
        CHECK(rt == (hisa_runtime *)0x1); /* untouched on error */
    }
    CHECK_EQ_INT(hisa_plan_compute(NULL, NULL), HISA_EINVAL);
}

HISA_TEST(fp8_and_bf16_match_hand_checked_values) {
    struct { float x; uint8_t code; } e4m3[] = {
        {0.0f, 0x00}, {1.0f, 0x38}, {-1.0f, 0xb8}, {448.0f, 0x7e}, {500.0f, 0x7e}, {-1000.0f, 0xfe},
        {0x1p-9f, 0x01}, {0x1p-10f, 0x00} /* tie to even */, {3 * 0x1p-10f, 0x02} /* 1.5 -> 2 */,
        {1.0625f, 0x38} /* tie between 1 and 1.125 -> even */, {1.1875f, 0x3a} /* -> 1.25 */,
        {240.0f, 0x77}, {17.0f, 0x58} /* tie 16/18 -> 16 */, {0x1p-6f, 0x08}, {0.3f, 0x2a},
    };
    for (size_t i = 0; i < sizeof e4m3 / sizeof e4m3[0]; i++)
        CHECKF(hisa__e4m3_from_f32(e4m3[i].x) == e4m3[i].code, "e4m3(%g) = 0x%02x want 0x%02x",
               e4m3[i].x, hisa__e4m3_from_f32(e4m3[i].x), e4m3[i].code);
    CHECK(hisa__e4m3_to_f32(0x7e) == 448.0f);
    CHECK(hisa__e4m3_to_f32(0x01) == 0x1p-9f);
    CHECK(hisa__e4m3_to_f32(0x08) == 0x1p-6f);
    CHECK(hisa__e4m3_to_f32(0xb8) == -1.0f);
    CHECK(isnan(hisa__e4m3_to_f32(0x7f)));
    for (int c = 0; c < 256; c++) /* every finite code round-trips */
        if ((c & 0x7f) != 0x7f && c != 0x80) CHECKF(hisa__e4m3_from_f32(hisa__e4m3_to_f32((uint8_t)c)) == c, "code 0x%02x", c);
    /* SPEC quantization: scale = amax / 448, code = RNE(x / scale), saturating. */
    float key[128], scale;
    uint8_t codes[128];
    for (int d = 0; d < 128; d++) key[d] = (d % 2 ? -1.0f : 1.0f) * (float)d * 7.0f;
    hisa__quantize_fp8(key, codes, &scale);
    CHECK(scale == 889.0f / 448.0f);
    CHECK(codes[127] == 0xfe && codes[0] == 0x00);
    CHECK(codes[2] == hisa__e4m3_from_f32(14.0f / scale));
    memset(key, 0, sizeof key);
    hisa__quantize_fp8(key, codes, &scale);
    CHECK(scale == 1.0f && codes[5] == 0);
    CHECK(hisa__bf16_from_f32(1.0f) == 0x3f80);
    CHECK(hisa__bf16_from_f32(1.0f + 0x1p-8f) == 0x3f80);      /* tie -> even */
    CHECK(hisa__bf16_from_f32(1.0f + 3 * 0x1p-8f) == 0x3f82);  /* tie -> even (up) */
    CHECK(hisa__bf16_from_f32(-2.0f) == 0xc000);
    CHECK(isnan(hisa__bf16_to_f32(hisa__bf16_from_f32(NAN))));
}

/* The summary rule (kvcache/layout.h), checked from the stored keys: every block's mean is
 * bf16(sum / count) of its written tokens summed in offset order from 0, bit for bit, and every
 * sequence's running sum holds exactly that sum of the page it names. */
static void block_sum(const hisa_runtime *rt, int32_t l, int32_t page, float *sum, int32_t *count) {
    const uint32_t *mask = rt->r.block_masks + hisa__summary_index(rt, l, page) * rt->g.mask_words;
    float deq[128];
    memset(sum, 0, 128 * sizeof(float));
    *count = 0;
    for (int32_t off = 0; off < rt->g.block_size; off++)
        if (mask[off / 32] >> (off % 32) & 1) {
            hisa__kv_dequant(&rt->kv, hisa__page(rt, l, page), off, deq);
            for (int d = 0; d < 128; d++) sum[d] += deq[d];
            (*count)++;
        }
}

static int summaries_match(hisa_runtime *rt, hisa_test_ctx *ctx) {
    for (int32_t seq = 0; seq < rt->g.max_seqs; seq++) {
        if (!rt->r.seq_is_open[seq]) continue;
        int32_t nb = hisa__blocks_of(rt->r.seq_len[seq], (int32_t)rt->g.block_size);
        for (int32_t l = 0; l < rt->g.n_layers; l++) {
            int32_t slot_page = rt->r.sum_pages[l * rt->g.max_seqs + seq];
            const float *slot_sum = rt->r.block_sums + (l * rt->g.max_seqs + seq) * 128;
            for (int32_t b = 0; b < nb; b++) {
                int32_t page = rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + b], count;
                const uint16_t *mean = rt->r.block_means + hisa__summary_index(rt, l, page) * 128;
                float sum[128];
                block_sum(rt, l, page, sum, &count);
                for (int d = 0; d < 128; d++) {
                    uint16_t want = count ? hisa__bf16_from_f32(sum[d] / (float)count) : 0;
                    CHECKF(mean[d] == want, "seq %d layer %d block %d dim %d: mean %04x, rule %04x", seq, l, b, d,
                           mean[d], want);
                    if (mean[d] != want) return 0;
                }
                if (page == slot_page) {
                    CHECKF(memcmp(slot_sum, sum, sizeof sum) == 0, "seq %d layer %d: running sum of block %d "
                           "differs from its offset-order sum", seq, l, b);
                    if (memcmp(slot_sum, sum, sizeof sum)) return 0;
                }
            }
            int owned = slot_page == -1;
            for (int32_t b = 0; b < nb; b++) owned |= rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + b] == slot_page;
            CHECKF(owned, "seq %d layer %d: running sum names page %d, not one of its own", seq, l, slot_page);
            if (!owned) return 0;
        }
    }
    return 1;
}

HISA_TEST(incremental_summaries_equal_recomputed_after_random_ops) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_config c = {.n_layers = 2, .n_heads = 4, .block_size = 32, .top_blocks = 4, .topk = 64,
                         .key_format = fmt, .max_seqs = 4, .max_context = 2000, .n_pages = 150,
                         .max_batch = 4, .max_prefill_queries = 100};
        hisa_runtime *rt = open_or_null(c);
        REQUIRE(rt);
        uint64_t rng = 1234 + (uint64_t)fmt;
        int32_t seqs[4], n_open = 0;
        float keys[100 * 128];
        int32_t n_ops = 3000, n_ok = 0;
        for (int32_t op = 0; op < n_ops; op++) {
            uint32_t r = (uint32_t)(hisa_test_rng(&rng) % 100);
            if (n_open < 4 && (n_open == 0 || r < 5)) {
                if (hisa_seq_open(rt, &seqs[n_open]) == HISA_OK) n_open++;
                continue;
            }
            int32_t si = (int32_t)(hisa_test_rng(&rng) % (uint64_t)n_open), seq = seqs[si], len;
            REQUIRE(hisa_seq_length(rt, seq, &len) == HISA_OK);
            for (int i = 0; i < 100 * 128; i++) keys[i] = hisa_test_gauss(&rng) * (1.0f + (float)(r % 7));
            if (r < 40) { /* extend then write the new tokens by range */
                int32_t n = 1 + (int32_t)(hisa_test_rng(&rng) % 100);
                if (hisa_seq_extend(rt, seq, n) != HISA_OK) continue;
                hisa_write w = {.layer = (int32_t)(r % 2), .n_tokens = n, .keys = keys};
                REQUIRE(hisa_write_range(rt, seq, len, &w) == HISA_OK);
                w.layer = 1 - w.layer;
                REQUIRE(hisa_write_range(rt, seq, len, &w) == HISA_OK);
                n_ok++;
            } else if (r < 70 && len > 0) { /* overwrite one random written position, both layers */
                int32_t pos = (int32_t)(hisa_test_rng(&rng) % (uint64_t)len);
                for (int32_t l = 0; l < 2; l++) {
                    hisa_write w = {.layer = l, .n_tokens = 1, .seq_ids = &seq, .positions = &pos, .keys = keys};
                    REQUIRE(hisa_write_keys(rt, &w) == HISA_OK);
                }
                n_ok++;
            } else if (r < 90 && len > 0) {
                REQUIRE(hisa_seq_truncate(rt, seq, (int32_t)(hisa_test_rng(&rng) % (uint64_t)(len + 1))) == HISA_OK);
                n_ok++;
            } else if (r < 95) {
                REQUIRE(hisa_seq_close(rt, seq) == HISA_OK);
                seqs[si] = seqs[--n_open];
            }
            if (op % 300 == 299 && !summaries_match(rt, ctx)) break;
        }
        CHECK(n_ok > n_ops / 2);
        CHECK(summaries_match(rt, ctx));
        hisa_close(rt);
    }
}

HISA_TEST(truncate_restores_summary_exactly) {
    hisa_config c = {.n_layers = 2, .n_heads = 4, .block_size = 64, .top_blocks = 4, .topk = 64,
                     .max_seqs = 2, .max_context = 1000, .max_prefill_queries = 200};
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        c.key_format = fmt;
        hisa_runtime *a = open_or_null(c), *b = open_or_null(c);
        REQUIRE(a && b);
        int32_t sa, sb;
        REQUIRE(hisa_seq_open(a, &sa) == 0 && hisa_seq_open(b, &sb) == 0);
        REQUIRE(hisa_seq_extend(a, sa, 300) == 0 && fill(a, sa, 0, 300, 77) == 0);
        REQUIRE(hisa_seq_truncate(a, sa, 150) == 0); /* 150 = 2 full blocks + 22 */
        REQUIRE(hisa_seq_extend(b, sb, 150) == 0 && fill(b, sb, 0, 150, 77) == 0);
        for (int32_t l = 0; l < 2; l++)
            for (int32_t blk = 0; blk < 3; blk++) {
                int64_t ia = hisa__summary_index(a, l, a->r.page_table[sa * a->g.pages_per_seq + blk]);
                int64_t ib = hisa__summary_index(b, l, b->r.page_table[sb * b->g.pages_per_seq + blk]);
                CHECK(memcmp(a->r.block_means + ia * 128, b->r.block_means + ib * 128, 256) == 0);
                CHECK(memcmp(a->r.block_masks + ia * 2, b->r.block_masks + ib * 2, 8) == 0);
            }
        hisa_memory_report ra, rb;
        hisa_memory_report_get(a, &ra);
        hisa_memory_report_get(b, &rb);
        CHECK_EQ_INT(ra.pages_used, 3);
        CHECK_EQ_INT(rb.pages_used, 3);
        CHECK_EQ_INT(ra.pages_high_water, 5);
        hisa_close(a);
        hisa_close(b);
    }
}

HISA_TEST(padding_when_fewer_than_k_positions) {
    hisa_config c = {.n_heads = 8, .block_size = 32, .top_blocks = 5, .topk = 100, .max_seqs = 1,
                     .max_context = 512};
    hisa_runtime *rt = open_or_null(c);
    REQUIRE(rt);
    int32_t seq, out[100], pages[16], n_pages;
    float q[8 * 128], w[8];
    REQUIRE(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, 70) == 0 && fill(rt, seq, 0, 70, 5) == 0);
    hisa_tgen_query(9, 8, 10, q, w);
    for (int mode = 0; mode < 2; mode++)
        for (int slots = 0; slots < 2; slots++) {
            memset(out, 0x7f, sizeof out);
            hisa_decode d = {.mode = (hisa_mode)mode, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w,
                             .out = out, .flags = slots ? HISA_SLOTS : 0};
            REQUIRE(hisa_select_decode(rt, &d) == 0);
            REQUIRE(hisa_seq_pages(rt, seq, pages, 16, &n_pages) == 0);
            CHECK_EQ_INT(n_pages, 3);
            for (int32_t i = 0; i < 70; i++)
                CHECK_EQ_INT(out[i], slots ? pages[i / 32] * 32 + i % 32 : i);
            for (int32_t i = 70; i < 100; i++) CHECK_EQ_INT(out[i], -1);
        }
    hisa_close(rt);
}

/* Planted answers: P tokens with keys along the query direction dominate every score, so flat
 * and HISA (their blocks' means dominate too) must select exactly them, plus the forced
 * blocks' best tokens when k leaves room. */
HISA_TEST(selection_of_planted_tokens_and_blocks) {
    const int32_t H = 8, B = 32, m = 6, k = 64, n = 32 * 40;
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_config c = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k, .key_format = fmt,
                         .max_seqs = 1, .max_context = n, .max_prefill_queries = n};
        hisa_runtime *rt = open_or_null(c);
        REQUIRE(rt);
        int32_t seq;
        REQUIRE(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, n) == 0);
        float *keys = calloc((size_t)n * 128, sizeof(float)), u[128], q[8 * 128], w[8];
        uint64_t rng = 42;
        for (int d = 0; d < 128; d++) u[d] = hisa_test_gauss(&rng);
        for (int32_t s = 0; s < n; s++)
            for (int d = 0; d < 128; d++) keys[s * 128 + d] = 0.05f * hisa_test_gauss(&rng) - 0.02f * u[d];
        /* planted: the 32 tokens of block 7 and of block 30 (64 = k), scores ordered by position */
        uint8_t planted[32 * 40] = {0};
        for (int32_t s = 7 * 32; s < 8 * 32; s++) planted[s] = 1;
        for (int32_t s = 30 * 32; s < 31 * 32; s++) planted[s] = 1;
        for (int32_t s = 0; s < n; s++)
            if (planted[s])
                for (int d = 0; d < 128; d++) keys[s * 128 + d] = (2.0f + 0.001f * (float)s) * u[d];
        hisa_write wr = {.n_tokens = n, .keys = keys};
        REQUIRE(hisa_write_range(rt, seq, 0, &wr) == 0);
        for (int32_t h = 0; h < H; h++) {
            for (int d = 0; d < 128; d++) q[h * 128 + d] = u[d] * (1.0f + 0.1f * (float)h);
            w[h] = 1.0f;
        }
        for (int mode = 0; mode < 2; mode++) {
            int32_t out[64];
            memset(out, 0x7f, sizeof out);
            hisa_decode d = {.mode = (hisa_mode)mode, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out};
            REQUIRE(hisa_select_decode(rt, &d) == 0);
            int32_t hits = 0;
            for (int32_t i = 0; i < k; i++) hits += out[i] >= 0 && out[i] < n && planted[out[i]];
            CHECKF(hits == k, "fmt %d mode %d: %d of %d planted tokens selected", fmt, mode, hits, k);
        }
        /* The coarse stage kept blocks 7 and 30 (the planted ones) plus 0 and the last. */
        int32_t *kept = rt->r.cpu_blocks, found = 0;
        for (int32_t i = 0; i < m; i++) found += kept[i] == 7 || kept[i] == 30;
        CHECK_EQ_INT(found, 2);
        CHECK_EQ_INT(kept[0], 0);
        CHECK_EQ_INT(kept[m - 1], 39);
        free(keys);
        hisa_close(rt);
    }
}

/* Blocks 0 and last score lowest of all blocks, yet each holds the best token of the context:
 * only the forcing rule puts those tokens in HISA's selection. */
HISA_TEST(first_and_own_blocks_are_always_kept) {
    const int32_t H = 4, B = 32, m = 4, k = 96, n = 32 * 20 + 5;
    hisa_config c = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k,
                     .key_format = HISA_KEY_BF16, .max_seqs = 1, .max_context = n, .max_prefill_queries = n};
    hisa_runtime *rt = open_or_null(c);
    REQUIRE(rt);
    int32_t seq;
    REQUIRE(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, n) == 0);
    float *keys = malloc(sizeof(float) * 128 * (size_t)n), u[128], q[4 * 128], w[4];
    uint64_t rng = 7;
    for (int d = 0; d < 128; d++) u[d] = hisa_test_gauss(&rng);
    for (int32_t s = 0; s < n; s++) {
        int32_t b = s / B;
        float along = (b == 0 || b == 20) ? -1.0f : 0.3f + 0.01f * (float)b;
        for (int d = 0; d < 128; d++) keys[s * 128 + d] = along * u[d] + 0.05f * hisa_test_gauss(&rng);
    }
    for (int d = 0; d < 128; d++) {
        keys[3 * 128 + d] = 5.0f * u[d];             /* best token, in block 0 */
        keys[(n - 2) * 128 + d] = 4.0f * u[d];       /* second best, in the query's own block */
    }
    hisa_write wr = {.n_tokens = n, .keys = keys};
    REQUIRE(hisa_write_range(rt, seq, 0, &wr) == 0);
    for (int32_t h = 0; h < H; h++) {
        memcpy(q + h * 128, u, sizeof u);
        w[h] = 1.0f;
    }
    float *I = malloc(sizeof(float) * (size_t)n), J[21];
    REQUIRE(hisa__cpu_scores(rt, 0, seq, n - 1, q, HISA_Q_F32, w, I, J) == 0);
    for (int32_t b = 1; b < 20; b++) CHECK(J[0] < J[b] && J[20] < J[b]); /* the test means something */
    int32_t out[96];
    hisa_decode d = {.mode = HISA_MODE_HISA, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out};
    REQUIRE(hisa_select_decode(rt, &d) == 0);
    int has3 = 0, has_own = 0;
    for (int32_t i = 0; i < k; i++) {
        has3 |= out[i] == 3;
        has_own |= out[i] == n - 2;
    }
    CHECK(has3 && has_own);
    CHECK_EQ_INT(rt->r.cpu_blocks[0], 0);
    CHECK_EQ_INT(rt->r.cpu_blocks[m - 1], 20);
    /* the two middle blocks kept are the best-J ones: 18 and 19 (J rises with the index) */
    CHECK_EQ_INT(rt->r.cpu_blocks[1], 18);
    CHECK_EQ_INT(rt->r.cpu_blocks[2], 19);
    free(keys);
    free(I);
    hisa_close(rt);
}

/* The CPU reference against an independent double-precision brute force, under the SPEC's
 * agreement rule, across lengths around k, m*B and block edges, both formats and modes, decode
 * and prefill. Also: HISA equals flat exactly whenever nb <= m, and a one-query prefill at t
 * equals decode at t. */
HISA_TEST(cpu_reference_agrees_with_brute_force) {
    const int32_t H = 8, B = 32, m = 6, k = 64;
    const int32_t lens[] = {1, 63, 64, 65, 100, 6 * 32, 6 * 32 + 1, 7 * 32 - 1, 7 * 32 + 1, 500, 1025, 3000};
    int32_t n_checked = 0;
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_config c = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k, .key_format = fmt,
                         .max_seqs = 2, .max_context = 3000, .max_prefill_queries = 64};
        hisa_runtime *rt = open_or_null(c);
        REQUIRE(rt);
        int32_t seq;
        REQUIRE(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, 3000) == 0);
        REQUIRE(fill(rt, seq, 0, 3000, 1000 + (uint64_t)fmt) == 0);
        float *deq = malloc(sizeof(float) * 128 * 3000), *means = malloc(sizeof(float) * 128 * 100);
        float *I = malloc(sizeof(float) * 3000), J[100], q[8 * 128], w[8];
        int32_t out[64], ref[64], flat_out[64];
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int32_t n = lens[li];
            REQUIRE(hisa_seq_truncate(rt, seq, n) == 0); /* shrink, then decode at t = n - 1 */
            stored(rt, seq, n, deq, means);
            hisa_tgen_query(31 * (uint64_t)n, H, n / 3, q, w);
            for (int mode = 0; mode < 2; mode++) {
                memset(out, 0x7f, sizeof out);
                hisa_decode d = {.mode = (hisa_mode)mode, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out};
                REQUIRE(hisa_select_decode(rt, &d) == 0);
                hisa_brute_select(deq, means, n, B, m, k, H, q, w, mode == HISA_MODE_FLAT, ref, I, J);
                char why[200];
                CHECKF(hisa_agree(I, n, NULL, ref, out, k, why, sizeof why), "fmt %d n %d mode %d: %s",
                       fmt, n, mode, why);
                if (mode == HISA_MODE_FLAT) memcpy(flat_out, out, sizeof out);
                n_checked++;
            }
            /* nb <= m: HISA's result is flat's, exactly (CPU outputs are sorted) */
            int32_t nb = (n + B - 1) / B;
            if (nb <= m) {
                hisa_decode d = {.mode = HISA_MODE_HISA, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out};
                REQUIRE(hisa_select_decode(rt, &d) == 0);
                CHECK(memcmp(out, flat_out, sizeof out) == 0);
            }
            /* a one-query prefill chunk at t equals decode at t */
            int32_t pre[64];
            hisa_prefill p = {.mode = HISA_MODE_HISA, .seq = seq, .t0 = n - 1, .n_q = 1, .q = q, .w = w, .out = pre};
            hisa_decode d = {.mode = HISA_MODE_HISA, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out};
            REQUIRE(hisa_select_prefill(rt, &p) == 0 && hisa_select_decode(rt, &d) == 0);
            CHECK(memcmp(out, pre, sizeof out) == 0);
            REQUIRE(hisa_seq_extend(rt, seq, 3000 - n) == 0 && fill(rt, seq, n, 3000 - n, 1000 + (uint64_t)fmt) == 0);
        }
        /* a prefill chunk of 40 queries at t0 = 1500: row i is the decode at 1500 + i */
        float *qs = malloc(sizeof(float) * 40 * H * 128), *ws = malloc(sizeof(float) * 40 * H);
        int32_t *outs = malloc(sizeof(int32_t) * 40 * k);
        for (int32_t i = 0; i < 40; i++) hisa_tgen_query(5 + (uint64_t)i, H, 1500 + i, qs + i * H * 128, ws + i * H);
        hisa_prefill p = {.mode = HISA_MODE_HISA, .seq = seq, .t0 = 1500, .n_q = 40, .q = qs, .w = ws, .out = outs};
        REQUIRE(hisa_select_prefill(rt, &p) == 0);
        for (int32_t i = 0; i < 40; i += 13) {
            int32_t n = 1501 + i;
            stored(rt, seq, n, deq, means);
            hisa_brute_select(deq, means, n, B, m, k, H, qs + i * H * 128, ws + i * H, 0, ref, I, J);
            char why[200];
            CHECKF(hisa_agree(I, n, NULL, ref, outs + i * k, k, why, sizeof why), "prefill row %d: %s", i, why);
            for (int32_t j = 0; j < k; j++) CHECK(outs[i * k + j] <= 1500 + i); /* causal */
        }
        free(qs);
        free(ws);
        free(outs);
        free(deq);
        free(means);
        free(I);
        hisa_close(rt);
    }
    CHECK(n_checked == 2 * 2 * 12);
}

/* Nothing the library does after open allocates: not the cache operations, not selection, not
 * the error paths. The test binary wraps malloc & co. */
HISA_TEST(nothing_allocates_after_open) {
    hisa_config c = {.n_layers = 2, .n_heads = 4, .block_size = 32, .top_blocks = 4, .topk = 64,
                     .max_seqs = 3, .max_context = 1000, .max_prefill_queries = 128};
    hisa_runtime *rt = open_or_null(c);
    REQUIRE(rt);
    static float keys[128 * 128], q[4 * 128 * 128], w[4 * 128];
    static int32_t out[128 * 64];
    uint64_t rng = 3;
    for (int i = 0; i < 128 * 128; i++) keys[i] = hisa_test_gauss(&rng);
    for (int i = 0; i < 4 * 128 * 128; i++) q[i] = hisa_test_gauss(&rng);
    for (int i = 0; i < 4 * 128; i++) w[i] = 1.0f;
    int64_t reservations = hisa__arena_reservations();
    hisa_test_alloc_arm();
    int32_t s0, s1, ids[2];
    int err = hisa_seq_open(rt, &s0) | hisa_seq_open(rt, &s1);
    err |= hisa_seq_extend(rt, s0, 700) | hisa_seq_extend(rt, s1, 300);
    for (int32_t l = 0; l < 2; l++)
        for (int32_t p = 0; p < 700; p += 100) {
            hisa_write wr = {.layer = l, .n_tokens = 100, .keys = keys};
            err |= hisa_write_range(rt, s0, p, &wr);
            if (p < 300) err |= hisa_write_range(rt, s1, p, &wr);
        }
    ids[0] = s0;
    ids[1] = s1;
    hisa_decode d = {.mode = HISA_MODE_HISA, .n_seqs = 2, .seq_ids = ids, .q = q, .w = w, .out = out};
    err |= hisa_select_decode(rt, &d);
    d.mode = HISA_MODE_FLAT;
    err |= hisa_select_decode(rt, &d);
    hisa_prefill p = {.seq = s0, .t0 = 500, .n_q = 100, .q = q, .w = w, .out = out, .flags = HISA_SLOTS};
    err |= hisa_select_prefill(rt, &p);
    err |= hisa_seq_truncate(rt, s0, 333) | hisa_seq_close(rt, s1);
    (void)hisa_seq_extend(rt, s0, 100000); /* error paths too */
    (void)hisa_select_decode(rt, NULL);
    hisa_memory_report rep;
    err |= hisa_memory_report_get(rt, &rep);
    int64_t allocs = hisa_test_alloc_disarm();
    CHECK_EQ_INT(err, 0);
    CHECK_EQ_INT(allocs, 0);
    CHECK_EQ_INT(hisa__arena_reservations(), reservations);
    CHECK(rt->arena.sealed);
    hisa_close(rt);
}

HISA_TEST(caller_memory_and_failed_reservations) {
    hisa_config c = {.n_heads = 4, .block_size = 32, .top_blocks = 4, .topk = 64, .max_seqs = 2,
                     .max_context = 500};
    hisa_plan plan;
    REQUIRE(hisa_plan_compute(&c, &plan) == 0);
    void *dev = aligned_alloc(256, plan.device_bytes), *host = aligned_alloc(256, plan.host_bytes);
    int64_t before = hisa__arena_reservations();
    hisa_runtime *rt = NULL;
    hisa_memory mem = {dev, plan.device_bytes, host, plan.host_bytes};
    REQUIRE(hisa_open(&rt, &c, &mem) == HISA_OK);
    CHECK_EQ_INT(hisa__arena_reservations(), before); /* nothing reserved: the caller's memory */
    CHECK((void *)rt >= host && (uint8_t *)rt < (uint8_t *)host + plan.host_bytes);
    int32_t seq;
    CHECK(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, 100) == 0 && fill(rt, seq, 0, 100, 1) == 0);
    hisa_close(rt);
    mem.host_bytes = plan.host_bytes - 256;
    CHECK_EQ_INT(hisa_open(&rt, &c, &mem), HISA_ENOMEM);
    mem.host_bytes = plan.host_bytes;
    mem.device_base = (uint8_t *)dev + 8; /* misaligned */
    CHECK_EQ_INT(hisa_open(&rt, &c, &mem), HISA_ENOMEM);
    free(dev);
    free(host);
    /* injected failures of the first and second reservation: clean error, nothing leaked
     * (LeakSanitizer checks the second under SANITIZE=1) */
    for (int32_t n = 1; n <= 2; n++) {
        hisa__arena_fail_at(n);
        rt = (hisa_runtime *)0x1;
        CHECK_EQ_INT(hisa_open(&rt, &c, NULL), HISA_ENOMEM);
        CHECK(rt == (hisa_runtime *)0x1);
        hisa__arena_fail_at(0);
    }
    CHECK_EQ_INT(hisa__arena_reservations(), before + 1); /* only the n=2 try reserved (once) */
}

/* Every entry point rejects bad input with its code and changes nothing. */
HISA_TEST(bad_inputs_return_codes_and_change_nothing) {
    hisa_config c = {.n_layers = 2, .n_heads = 4, .block_size = 32, .top_blocks = 4, .topk = 64,
                     .key_format = HISA_KEY_FP8, .max_seqs = 2, .max_context = 300, .n_pages = 12,
                     .max_batch = 2, .max_prefill_queries = 50, .payload_bytes = 8};
    hisa_runtime *rt = open_or_null(c);
    REQUIRE(rt);
    int32_t s0, s1, closed = 5; /* 5 is never opened: max_seqs is 2 */
    REQUIRE(hisa_seq_open(rt, &s0) == 0 && hisa_seq_open(rt, &s1) == 0);
    REQUIRE(hisa_seq_extend(rt, s0, 200) == 0 && fill(rt, s0, 0, 200, 3) == 0);
    REQUIRE(hisa_seq_extend(rt, s1, 20) == 0); /* reserved, not written */
    static float keys[64 * 128], q[2 * 4 * 128], w[8], scales[64];
    static uint8_t codes[64 * 128];
    static int32_t out[2 * 64];
    for (int i = 0; i < 64 * 128; i++) keys[i] = 1.0f + (float)(i % 13);
    for (int i = 0; i < 2 * 4 * 128; i++) q[i] = 0.5f;
    for (int i = 0; i < 8; i++) w[i] = 1.0f;
    for (int i = 0; i < 64; i++) scales[i] = 1.0f;
    int32_t both[2] = {s0, s0}, one[1] = {s0}, bad_seq[1] = {closed}, unwritten[1] = {s1};
    int32_t pos_bad[1] = {200}, pos_neg[1] = {-1};
    hisa_memory_report before, after;
    REQUIRE(hisa_memory_report_get(rt, &before) == 0);
    uint8_t *keys_before = malloc((size_t)(rt->g.n_layers * rt->g.n_pages * rt->g.page_bytes));
    float *sums_before = malloc((size_t)(rt->g.n_layers * rt->g.max_seqs * 128 * 4));
    memcpy(keys_before, rt->r.keys, (size_t)(rt->g.n_layers * rt->g.n_pages * rt->g.page_bytes));
    memcpy(sums_before, rt->r.block_sums, (size_t)(rt->g.n_layers * rt->g.max_seqs * 128 * 4));
    int32_t dummy, pages[20];
    struct {
        const char *what;
        int got, want;
    } cases[] = {
        {"open null out", hisa_open(NULL, &c, NULL), HISA_EINVAL},
        {"seq_open null", hisa_seq_open(rt, NULL), HISA_EINVAL},
        {"seq_open full", hisa_seq_open(rt, &dummy), HISA_ESEQFULL},
        {"seq_open null rt", hisa_seq_open(NULL, &dummy), HISA_EINVAL},
        {"close unknown", hisa_seq_close(rt, closed), HISA_ESEQ},
        {"close negative", hisa_seq_close(rt, -1), HISA_ESEQ},
        {"extend unknown", hisa_seq_extend(rt, closed, 1), HISA_ESEQ},
        {"extend negative", hisa_seq_extend(rt, s0, -1), HISA_EINVAL},
        {"extend past max_context", hisa_seq_extend(rt, s0, 101), HISA_ELIMIT},
        {"extend full pool", hisa_seq_extend(rt, s1, 200), HISA_EPOOL},
        {"truncate longer", hisa_seq_truncate(rt, s0, 201), HISA_ERANGE},
        {"truncate negative", hisa_seq_truncate(rt, s0, -1), HISA_ERANGE},
        {"truncate unknown", hisa_seq_truncate(rt, closed, 0), HISA_ESEQ},
        {"length unknown", hisa_seq_length(rt, closed, &dummy), HISA_ESEQ},
        {"length null", hisa_seq_length(rt, s0, NULL), HISA_EINVAL},
        {"pages too small", hisa_seq_pages(rt, s0, pages, 3, &dummy), HISA_ELIMIT},
        {"write null", hisa_write_keys(rt, NULL), HISA_EINVAL},
        {"write layer", hisa_write_keys(rt, &(hisa_write){.layer = 2, .n_tokens = 1, .seq_ids = one, .keys = keys}), HISA_ERANGE},
        {"write layer neg", hisa_write_keys(rt, &(hisa_write){.layer = -1, .n_tokens = 1, .seq_ids = one, .keys = keys}), HISA_ERANGE},
        {"write batch over", hisa_write_keys(rt, &(hisa_write){.n_tokens = 3, .seq_ids = one, .keys = keys}), HISA_ELIMIT},
        {"write zero tokens", hisa_write_keys(rt, &(hisa_write){.n_tokens = 0, .seq_ids = one, .keys = keys}), HISA_EINVAL},
        {"write duplicate seqs", hisa_write_keys(rt, &(hisa_write){.n_tokens = 2, .seq_ids = both, .keys = keys}), HISA_EINVAL},
        {"write unknown seq", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = bad_seq, .keys = keys}), HISA_ESEQ},
        {"write null seqs", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .keys = keys}), HISA_EINVAL},
        {"write pos past len", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .positions = pos_bad, .keys = keys}), HISA_ERANGE},
        {"write pos negative", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .positions = pos_neg, .keys = keys}), HISA_ERANGE},
        {"write no data", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one}), HISA_EINVAL},
        {"write keys and codes", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .keys = keys, .codes = codes, .scales = scales}), HISA_EINVAL},
        {"write codes no scales", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .codes = codes}), HISA_EINVAL},
        {"write zero scale", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .codes = codes, .scales = (float[]){0.0f}}), HISA_EINVAL},
        {"write bad flags", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .keys = keys, .flags = 64}), HISA_EINVAL},
        {"range over max", hisa_write_range(rt, s0, 0, &(hisa_write){.n_tokens = 51, .keys = keys}), HISA_ELIMIT},
        {"range past len", hisa_write_range(rt, s0, 190, &(hisa_write){.n_tokens = 11, .keys = keys}), HISA_ERANGE},
        {"range unknown seq", hisa_write_range(rt, closed, 0, &(hisa_write){.n_tokens = 1, .keys = keys}), HISA_ESEQ},
        {"range negative pos", hisa_write_range(rt, s0, -1, &(hisa_write){.n_tokens = 1, .keys = keys}), HISA_ERANGE},
        {"decode null", hisa_select_decode(rt, NULL), HISA_EINVAL},
        {"decode layer", hisa_select_decode(rt, &(hisa_decode){.layer = 2, .n_seqs = 1, .seq_ids = one, .q = q, .w = w, .out = out}), HISA_ERANGE},
        {"decode batch over", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 3, .seq_ids = one, .q = q, .w = w, .out = out}), HISA_ELIMIT},
        {"decode unknown seq", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 1, .seq_ids = bad_seq, .q = q, .w = w, .out = out}), HISA_ESEQ},
        {"decode null q", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 1, .seq_ids = one, .w = w, .out = out}), HISA_EINVAL},
        {"decode null out", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 1, .seq_ids = one, .q = q, .w = w}), HISA_EINVAL},
        {"decode bad mode", hisa_select_decode(rt, &(hisa_decode){.mode = (hisa_mode)7, .n_seqs = 1, .seq_ids = one, .q = q, .w = w, .out = out}), HISA_EINVAL},
        {"decode unwritten", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 1, .seq_ids = unwritten, .q = q, .w = w, .out = out}), HISA_EUNWRITTEN},
        {"prefill over max", hisa_select_prefill(rt, &(hisa_prefill){.seq = s0, .n_q = 51, .q = q, .w = w, .out = out}), HISA_ELIMIT},
        {"prefill past len", hisa_select_prefill(rt, &(hisa_prefill){.seq = s0, .t0 = 199, .n_q = 2, .q = q, .w = w, .out = out}), HISA_ERANGE},
        {"prefill unknown seq", hisa_select_prefill(rt, &(hisa_prefill){.seq = closed, .n_q = 1, .q = q, .w = w, .out = out}), HISA_ESEQ},
        {"prefill layer", hisa_select_prefill(rt, &(hisa_prefill){.layer = 9, .seq = s0, .n_q = 1, .q = q, .w = w, .out = out}), HISA_ERANGE},
        {"prefill zero", hisa_select_prefill(rt, &(hisa_prefill){.seq = s0, .n_q = 0, .q = q, .w = w, .out = out}), HISA_EINVAL},
        {"prefill unwritten", hisa_select_prefill(rt, &(hisa_prefill){.seq = s1, .t0 = 0, .n_q = 1, .q = q, .w = w, .out = out}), HISA_EUNWRITTEN},
        {"payload layer", hisa_payload_pool(rt, 2, (void **)&pages), HISA_ERANGE},
        {"payload null", hisa_payload_pool(rt, 0, NULL), HISA_EINVAL},
        {"report null", hisa_memory_report_get(rt, NULL), HISA_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECKF(cases[i].got == cases[i].want, "%s: got %d (%s), want %d", cases[i].what, cases[i].got,
               hisa_strerror(cases[i].got), cases[i].want);
    REQUIRE(hisa_memory_report_get(rt, &after) == 0);
    CHECK(memcmp(&before, &after, sizeof before) == 0);
    CHECK(memcmp(keys_before, rt->r.keys, (size_t)(rt->g.n_layers * rt->g.n_pages * rt->g.page_bytes)) == 0);
    CHECK(memcmp(sums_before, rt->r.block_sums, (size_t)(rt->g.n_layers * rt->g.max_seqs * 128 * 4)) == 0);
    int32_t len;
    CHECK(hisa_seq_length(rt, s0, &len) == 0 && len == 200);
    CHECK(hisa_seq_length(rt, s1, &len) == 0 && len == 20);
    /* a bf16 runtime rejects fp8 codes */
    c.key_format = HISA_KEY_BF16;
    hisa_runtime *rb = open_or_null(c);
    REQUIRE(rb);
    int32_t sb;
    REQUIRE(hisa_seq_open(rb, &sb) == 0 && hisa_seq_extend(rb, sb, 1) == 0);
    CHECK_EQ_INT(hisa_write_keys(rb, &(hisa_write){.n_tokens = 1, .seq_ids = &sb, .codes = codes, .scales = scales}), HISA_EFORMAT);
    hisa_close(rb);
    free(keys_before);
    free(sums_before);
    hisa_close(rt);
}

/* Ties go to the lower position (tokens) and the lower index (blocks): with every key equal,
 * every score ties, so the answer is known exactly. */
HISA_TEST(ties_go_to_lower_positions_and_blocks) {
    const int32_t H = 4, B = 32, m = 5, k = 100, n = 32 * 12 + 7;
    hisa_config c = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k, .max_seqs = 1,
                     .max_context = n, .max_prefill_queries = n};
    hisa_runtime *rt = open_or_null(c);
    REQUIRE(rt);
    int32_t seq, out[100];
    REQUIRE(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, n) == 0);
    float *keys = malloc(sizeof(float) * 128 * (size_t)n), q[4 * 128], w[4];
    for (int32_t i = 0; i < n * 128; i++) keys[i] = (float)(i % 128) * 0.25f - 3.0f;
    for (int32_t i = 0; i < 4 * 128; i++) q[i] = (float)(i % 128) * 0.01f;
    for (int32_t h = 0; h < H; h++) w[h] = 1.0f;
    hisa_write wr = {.n_tokens = n, .keys = keys};
    REQUIRE(hisa_write_range(rt, seq, 0, &wr) == 0);
    hisa_decode d = {.mode = HISA_MODE_FLAT, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out};
    REQUIRE(hisa_select_decode(rt, &d) == 0);
    for (int32_t i = 0; i < k; i++) CHECK_EQ_INT(out[i], i);
    d.mode = HISA_MODE_HISA;
    REQUIRE(hisa_select_decode(rt, &d) == 0);
    /* kept blocks: 0, the lowest m-2 = 3 of 1..11 (1, 2, 3), and 12: tokens 0..99 again */
    for (int32_t i = 0; i < m - 1; i++) CHECK_EQ_INT(rt->r.cpu_blocks[i], i);
    CHECK_EQ_INT(rt->r.cpu_blocks[m - 1], 12);
    for (int32_t i = 0; i < k; i++) CHECK_EQ_INT(out[i], i);
    free(keys);
    hisa_close(rt);
}

/* The test suite's kept-block judge (tests/common.c, used by the GPU tests) holds the SPEC rule:
 * forced ends, ascending, the middle the best m - 2 by J up to a near-tie. */
HISA_TEST(agree_blocks_judges_the_block_rule) {
    float J[10] = {5, 1, 9, 3, 8, 2, 7, 7.00001f, 0, 4}; /* blocks 0..9; last = 9 */
    char why[256];
    int32_t good[5] = {0, 2, 4, 6, 9};    /* m = 5: the best 3 of 1..8 are 2 (9), 4 (8), 7 (7.00001) */
    int32_t tie[5] = {0, 2, 4, 7, 9};     /* 6 (7) and 7 (7.00001) are a near-tie: either agrees */
    int32_t worse[5] = {0, 1, 2, 4, 9};   /* 1 (J 1) instead of 6 or 7 */
    int32_t unforced[5] = {1, 2, 4, 6, 9};
    int32_t unsorted[5] = {0, 4, 2, 6, 9};
    CHECKF(hisa_agree_blocks(J, 10, 5, good, why, sizeof why), "%s", why);
    CHECKF(hisa_agree_blocks(J, 10, 5, tie, why, sizeof why), "%s", why);
    CHECK(!hisa_agree_blocks(J, 10, 5, worse, why, sizeof why));
    CHECK(!hisa_agree_blocks(J, 10, 5, unforced, why, sizeof why));
    CHECK(!hisa_agree_blocks(J, 10, 5, unsorted, why, sizeof why));
    int32_t two[2] = {0, 9};
    CHECK(hisa_agree_blocks(J, 10, 2, two, why, sizeof why));
}

/* Every error code has its own message; a code past the last one is "unknown error". */
HISA_TEST(every_error_code_has_a_distinct_message) {
    const char *unknown = hisa_strerror(HISA_EUNSUPPORTED - 1);
    CHECK(strcmp(unknown, "unknown error") == 0);
    for (int e = HISA_OK; e >= HISA_EUNSUPPORTED; e--) {
        const char *m = hisa_strerror(e);
        CHECKF(m && strcmp(m, unknown) != 0, "code %d has no message", e);
        for (int f = e + 1; f <= HISA_OK; f++) CHECKF(strcmp(m, hisa_strerror(f)) != 0, "codes %d and %d share a message", e, f);
    }
}
