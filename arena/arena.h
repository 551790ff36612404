/* arena.h: hisa's memory plan and its one-shot reservation.
 *
 * Why: an engine must know, before it loads a model, exactly how much GPU memory the indexer
 * takes, and must never see an allocation on the decode path. So every byte hisa uses is a
 * region of one size table (runtime/plan.c), planned here into two blocks (device, host); open
 * reserves the two blocks (or takes them from the caller), carves the regions, and seals the
 * arena. After the seal any reservation is a bug (assert).
 *
 * The arena knows no backend: the memory functions are handed in (hisa__arena_mem), so this
 * folder includes no CUDA header, and nothing above it. Results: 0, or a negative
 * HISA__ARENA_E* the caller maps to its own error codes. */
#ifndef HISA_ARENA_H
#define HISA_ARENA_H

#include <stdint.h>

enum { HISA__ARENA_OK = 0, HISA__ARENA_EOVERFLOW = -1, HISA__ARENA_ENOMEM = -2 };
enum { HISA__ARENA_HOST = 0, HISA__ARENA_DEVICE = 1 };

/* One row of a size table; the planner fills offset. */
typedef struct hisa__arena_region {
    const char *name;     /* static string */
    uint64_t offset, bytes;
    uint32_t align;       /* a power of two */
    int32_t space;        /* HISA__ARENA_HOST / HISA__ARENA_DEVICE */
} hisa__arena_region;

/* Lay out n regions in their two spaces in table order; the totals are rounded to 256 bytes.
 * count_overflow: the table's own byte counts overflowed (the caller computed them). */
int hisa__arena_plan(hisa__arena_region *regions, int32_t n, int count_overflow, uint64_t *device_bytes,
                     uint64_t *host_bytes);

/* How a backend reserves, releases and zeroes its memory (device: GPU memory, or host memory for
 * the CPU backend; host: pinned on CUDA). reserve returns NULL on failure. */
typedef struct hisa__arena_mem {
    void *(*reserve)(uint64_t bytes, int32_t space);
    void (*release)(void *p, int32_t space);
    int (*zero)(void *p, uint64_t bytes, int32_t space); /* 0 or nonzero on failure */
} hisa__arena_mem;

typedef struct hisa__arena {
    uint8_t *base[2];             /* [space] */
    uint64_t bytes[2];
    int32_t owned[2];             /* 1: reserved here, released at release */
    int32_t sealed;
    const hisa__arena_mem *mem;
} hisa__arena;

/* Reserve each space (or adopt the caller's block: base non-NULL, at least bytes[space] long,
 * 256-byte aligned), zero both, and point slots[i] at region i (NULL for an empty region). */
int hisa__arena_open(hisa__arena *a, const hisa__arena_mem *mem, const uint64_t bytes[2],
                     void *const caller_base[2], const uint64_t caller_bytes[2],
                     const hisa__arena_region *regions, int32_t n, void **slots);
void hisa__arena_seal(hisa__arena *a);
/* Release what was reserved. a may live inside the host block: pass a copy. */
void hisa__arena_release(hisa__arena a);

/* Tests: the n-th reservation from now fails (0 disarms); reservations made by this process.
 * Both are atomic, so runtimes opened on several threads stay race-free. */
void hisa__arena_fail_at(int32_t n);
int64_t hisa__arena_reservations(void);

#endif /* HISA_ARENA_H */
