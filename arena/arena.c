/* arena.c: the memory plan and the one reservation. The plan is a pure function of the size
 * table, so `hisa mem` can size a GPU on a machine without one. Open makes at most two
 * reservations (device, host), through the backend's functions; everything else is carved. */
#include "arena.h"

#include <assert.h>
#include <stdatomic.h>
#include <string.h>

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int hisa__arena_plan(hisa__arena_region *regions, int32_t n, int count_overflow, uint64_t *device_bytes,
                     uint64_t *host_bytes) {
    assert(regions && n >= 1 && device_bytes && host_bytes);
    uint64_t end[2] = {0, 0};
    int overflow = count_overflow;
    for (int32_t i = 0; i < n; i++) {
        hisa__arena_region *r = &regions[i];
        assert(r->align >= 1 && (r->align & (r->align - 1)) == 0 && (r->space == 0 || r->space == 1));
        r->offset = align_up(end[r->space], r->align);
        overflow |= r->offset < end[r->space] || __builtin_add_overflow(r->offset, r->bytes, &end[r->space]);
    }
    if (overflow) return HISA__ARENA_EOVERFLOW;
    *device_bytes = align_up(end[HISA__ARENA_DEVICE], 256);
    *host_bytes = align_up(end[HISA__ARENA_HOST], 256);
    return HISA__ARENA_OK;
}

/* --- reservation ------------------------------------------------------------------------- */

static atomic_int g_fail_at;        /* tests: the n-th reservation from now fails */
static atomic_llong g_reservations; /* reservations made by this process */

void hisa__arena_fail_at(int32_t n) { atomic_store(&g_fail_at, n > 0 ? n : 0); }
int64_t hisa__arena_reservations(void) { return atomic_load(&g_reservations); }

/* One reservation; NULL on failure (or injected failure). A sealed arena never reserves again:
 * that would be an allocation after open. */
static void *reserve(const hisa__arena *a, uint64_t bytes, int32_t space) {
    assert(!a->sealed && "allocation after open");
    assert(bytes > 0 && bytes % 256 == 0);
    int armed = atomic_load_explicit(&g_fail_at, memory_order_relaxed);
    if (armed > 0 && atomic_fetch_sub(&g_fail_at, 1) == 1) return NULL;
    void *p = a->mem->reserve(bytes, space);
    if (p) atomic_fetch_add(&g_reservations, 1);
    return p;
}

void hisa__arena_release(hisa__arena a) {
    for (int32_t s = 0; s < 2; s++)
        if (a.owned[s] && a.base[s]) a.mem->release(a.base[s], s);
}

int hisa__arena_open(hisa__arena *a, const hisa__arena_mem *mem, const uint64_t bytes[2],
                     void *const caller_base[2], const uint64_t caller_bytes[2],
                     const hisa__arena_region *regions, int32_t n, void **slots) {
    assert(a && mem && bytes && regions && slots && n >= 1);
    memset(a, 0, sizeof *a);
    a->mem = mem;
    static const int32_t order[2] = {HISA__ARENA_DEVICE, HISA__ARENA_HOST}; /* device first: */
    for (int32_t i = 0; i < 2; i++) {                                          /* it may not fit */
        int32_t s = order[i];
        a->bytes[s] = bytes[s];
        if (caller_base && caller_base[s]) {
            if (caller_bytes[s] < bytes[s] || ((uintptr_t)caller_base[s] & 255)) {
                hisa__arena_release(*a);
                return HISA__ARENA_ENOMEM;
            }
            a->base[s] = caller_base[s];
            continue;
        }
        a->base[s] = reserve(a, bytes[s], s);
        a->owned[s] = 1;
        if (!a->base[s]) {
            hisa__arena_release(*a);
            return HISA__ARENA_ENOMEM;
        }
    }
    /* Zero both: the runtime struct, tables and block summaries start from zero. */
    for (int32_t s = 0; s < 2; s++)
        if (mem->zero(a->base[s], a->bytes[s], s)) {
            hisa__arena_release(*a);
            return HISA__ARENA_ENOMEM;
        }
    for (int32_t i = 0; i < n; i++) {
        const hisa__arena_region *r = &regions[i];
        assert(r->offset + r->bytes <= a->bytes[r->space]);
        slots[i] = r->bytes ? a->base[r->space] + r->offset : NULL;
    }
    return HISA__ARENA_OK;
}

void hisa__arena_seal(hisa__arena *a) {
    assert(a && !a->sealed);
    a->sealed = 1;
}
