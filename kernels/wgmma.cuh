/* wgmma.cuh: the Hopper warpgroup MMA wrappers used by the prefill and decode scorers.
 *
 * Why a header: wgmma with A from registers needs one inline-asm statement per N (the
 * accumulator is N/2 registers per thread); they are generated text, kept apart from the
 * kernels so prefill.cu and decode/select.cu read as algorithms (sm_90a only).
 *
 * Invariants: B is a K-major tile in shared memory with the 128-byte swizzle (rows of 128 bytes:
 * 64 bf16 / fp16 or 128 e4m3 elements, 16-byte chunk c of row n stored at chunk c ^ (n % 8),
 * tiles 1024-byte aligned), described by hisa__pf_desc; A is four registers per thread in the
 * mma.m16n8k16 (16-bit) or m16n8k32 (8-bit) A-fragment layout of the thread's warp (rows
 * 16 * (warp % 4) + lane / 4, +8).
 * The caller brackets a group with wgmma_fence / wgmma_commit / wgmma_wait<0>. */
#ifndef HISA_KERNELS_WGMMA_CUH
#define HISA_KERNELS_WGMMA_CUH

#include <stdint.h>

/* Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart. */
__device__ __forceinline__ uint64_t hisa__pf_desc(uint32_t smem_addr) {
    uint64_t d = (uint64_t)((smem_addr & 0x3FFFFu) >> 4);
    d |= (uint64_t)(16 >> 4) << 16;   /* leading byte offset: unused with the 128B swizzle */
    d |= (uint64_t)(1024 >> 4) << 32; /* stride byte offset: 8 rows of 128 bytes */
    d |= (uint64_t)1 << 62;           /* 128-byte swizzle */
    return d;
}

/* Logical K index L (0..127) of the MMA -> physical dimension. A thread (lane % 4 = t) supplies
 * logical columns 2t, 2t+1 (regs a0/a1) and 2t+8, 2t+9 (a2/a3) of k-step kk; we make those the
 * physical dims 32t + 4kk + {0,1} and 32t + 4kk + {2,3}, so a thread's A data for all eight
 * k-steps is 32 contiguous bytes of fp8 codes (64 of bf16) per row. B (the queries) is laid out
 * by the same map; dot products do not care about the order. */
__device__ __forceinline__ int hisa__wg_phys_dim(int L) {
    int kk = L >> 4, c = L & 15, t = (c & 7) >> 1, hi = c >> 3, e = c & 1;
    return 32 * t + 4 * kk + 2 * hi + e;
}
/* The same for e4m3 operands (k32 per instruction): a thread supplies logical columns 4t..4t+3
 * (registers a0 / a1, rows g / g+8) and 16+4t..16+4t+3 (a2 / a3) of k-step kk; they are the
 * physical dims 32t + 8kk + {0..3} and 32t + 8kk + {4..7}, so again a thread's A data for the
 * whole dot is the 32 contiguous code bytes 32t..32t+31 of its row: registers a0, a2 of k-step kk
 * are words 2kk, 2kk+1 of those bytes (row g), a1, a3 the same of row g+8. */
__host__ __device__ constexpr int hisa__wg_phys_dim8(int L) {
    int kk = L >> 5, c = L & 31, t = (c & 15) >> 2, hi = c >> 4, e = c & 3;
    return 32 * t + 8 * kk + 4 * hi + e;
}

/* The e4m3 B tile (queries) in that order: 16-byte chunk ch of a row holds k-step ch / 2's
 * logical columns 16 * (ch % 2) .. +15, i.e. the 4-byte groups at physical dims
 * hisa__wg_q8_dim(ch, j), j = 0..3 (checked against hisa__wg_phys_dim8 below). */
__host__ __device__ constexpr int hisa__wg_q8_dim(int ch, int j) { return 8 * (ch >> 1) + 4 * (ch & 1) + 32 * j; }
constexpr bool hisa__wg_q8_follows_the_map() {
    for (int ch = 0; ch < 8; ch++)
        for (int j = 0; j < 4; j++)
            if (hisa__wg_q8_dim(ch, j) != hisa__wg_phys_dim8(16 * ch + 4 * j)) return false;
    return true;
}
static_assert(hisa__wg_q8_follows_the_map(), "hisa__wg_q8_dim and hisa__wg_phys_dim8 disagree");

__device__ __forceinline__ uint32_t hisa__smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* mbarriers and 1-D bulk copies (the TMA engine without a tensor map): a stage's barrier is
 * armed with the bytes its copies will deliver and completes when they have landed. */
__device__ __forceinline__ void hisa__mbar_init(uint64_t *bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(hisa__smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void hisa__mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void hisa__mbar_expect_tx(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(hisa__smem_u32(bar)), "r"(bytes) : "memory");
}
/* One arrival (no transaction bytes): a consumer warp's release of a stage it has read. */
__device__ __forceinline__ void hisa__mbar_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(hisa__smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void hisa__mbar_wait(uint64_t *bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred P1;\nLAB_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
        "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(hisa__smem_u32(bar)),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void hisa__bulk_copy(void *dst, const void *src, uint32_t bytes, uint64_t *bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     hisa__smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(hisa__smem_u32(bar))
                 : "memory");
}
/* Generic-proxy shared-memory accesses before this are ordered before later async-proxy ones
 * (wgmma operand reads, bulk copies into a stage just read). */
__device__ __forceinline__ void hisa__fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void hisa__wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void hisa__wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void hisa__wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving accesses of r across the asynchronous MMA's fence/wait. */
__device__ __forceinline__ void hisa__reg_fence(float &r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void hisa__reg_fence(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }

/* Operand kinds of the register-A MMA: bf16 or fp16 pairs (k16 per instruction, B rows of 64
 * elements per 128-byte swizzle atom), or e4m3 codes (k32, B rows of 128 codes per atom: fp8 keys
 * times fp8 queries, no conversion; the products are exact and accumulate in fp32). */
enum { HISA_WG_BF16 = 0, HISA_WG_F16 = 1, HISA_WG_E4M3 = 2 };
template <int OP> /* instructions per 128-dim dot: K is 32 per e4m3 instruction, else 16 */
constexpr int hisa__wg_ksteps = OP == HISA_WG_E4M3 ? 128 / 32 : 128 / 16;

/* The byte offset of k-step kk's B slice in a query tile: e4m3 tiles are one 128-code atom per
 * row (32 bytes a k32 step); 16-bit tiles two atoms of 64 elements [2][N][128 bytes] (32 bytes a
 * k16 step, four steps an atom). */
template <int OP, int N>
__host__ __device__ constexpr uint32_t hisa__wg_b_off(int kk) {
    return OP == HISA_WG_E4M3 ? (uint32_t)kk * 32u : (uint32_t)((kk >> 2) * (N * 128) + (kk & 3) * 32);
}

/* The descriptor of k-step kk's B slice from the tile's descriptor desc0 = hisa__pf_desc(tile's
 * shared address): the start-address field is bits 0..13 of (address & 0x3FFFF) >> 4 and every
 * slice ends below 256 KB (the tiles sit at the start of a block's dynamic shared memory, at most
 * 227 KB), so the offset adds into the field without a carry. Why: built from the address each
 * time, the compiler rematerialized the 1024-byte alignment of the shared base and the field
 * masks on the uniform datapath, ~6 instructions per wgmma every tile (SASS of prefill's refine,
 * bench/NOTES-prefill.md). */
template <int OP, int N>
__device__ __forceinline__ uint64_t hisa__wg_b_desc(uint64_t desc0, int kk) {
    return desc0 + (uint64_t)(hisa__wg_b_off<OP, N>(kk) >> 4);
}

/* After wgmma_wait<0>: the accumulators and A fragments are the thread's again (the compiler
 * must not have moved their uses across the asynchronous MMA). */
template <int NA, int KS>
__device__ __forceinline__ void hisa__wg_settle(float (&acc)[NA], uint32_t (&af)[KS][4]) {
#pragma unroll
    for (int i = 0; i < NA; i++) hisa__reg_fence(acc[i]);
#pragma unroll
    for (int kk = 0; kk < KS; kk++)
#pragma unroll
        for (int x = 0; x < 4; x++) hisa__reg_fence(af[kk][x]);
}

/* D[64 x N] (+)= A[64 x K] (four registers per thread) * B[K x N] (shared, K-major); fp32 D;
 * scale_d = 0 overwrites D. One specialization per (kind, N): the accumulator is N/2 registers,
 * so each N is its own asm statement; the operand lists below are generated text. */
template <int OP, int N> struct wgmma_rs;
#define HISA__WG_STR2(x) #x
#define HISA__WG_STR(x) HISA__WG_STR2(x)
#define HISA__WG_D4(o) "+f"(d[(o)]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3])
#define HISA__WG_D8(o) HISA__WG_D4(o), HISA__WG_D4((o) + 4)
#define HISA__WG_D16(o) HISA__WG_D8(o), HISA__WG_D8((o) + 8)
#define HISA__WG_D32(o) HISA__WG_D16(o), HISA__WG_D16((o) + 16)
#define HISA__WG_D64(o) HISA__WG_D32(o), HISA__WG_D32((o) + 32)
#define HISA__WG_D128(o) HISA__WG_D64(o), HISA__WG_D64((o) + 64)
#define HISA__WG_R8 "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %13, p"
#define HISA__WG_P8 "%12"
#define HISA__WG_R16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %21, p"
#define HISA__WG_P16 "%20"
#define HISA__WG_R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %37, p"
#define HISA__WG_P32 "%36"
#define HISA__WG_R64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %69, p"
#define HISA__WG_P64 "%68"
#define HISA__WG_R128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %133, p"
#define HISA__WG_P128 "%132"
#define HISA__WG_ONE(OP, NN, NA, TYPES, TAIL)                                                                   \
    template <> struct wgmma_rs<OP, NN> {                                                                          \
        static __device__ __forceinline__ void mma(float (&d)[NA], const uint32_t (&a)[4], uint64_t desc, int scale_d) { \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " HISA__WG_P##NA ", 0;\n"                                  \
                         "wgmma.mma_async.sync.aligned.m64n" HISA__WG_STR(NN) TYPES " " HISA__WG_R##NA TAIL ";\n}\n"  \
                         : HISA__WG_D##NA(0)                                                                      \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(scale_d), "l"(desc));                  \
        }                                                                                                          \
    };
/* the fp8 form takes no transpose immediate (fp8 operands are K-major only) */
#define HISA__WG_N(NN, NA)                                                                                         \
    HISA__WG_ONE(HISA_WG_BF16, NN, NA, "k16.f32.bf16.bf16", ", 1, 1, 0")                                          \
    HISA__WG_ONE(HISA_WG_F16, NN, NA, "k16.f32.f16.f16", ", 1, 1, 0")                                             \
    HISA__WG_ONE(HISA_WG_E4M3, NN, NA, "k32.f32.e4m3.e4m3", ", 1, 1")
HISA__WG_N(16, 8)
HISA__WG_N(32, 16)
HISA__WG_N(64, 32)
HISA__WG_N(128, 64)
HISA__WG_N(256, 128)
#undef HISA__WG_N
#undef HISA__WG_ONE
#undef HISA__WG_STR
#undef HISA__WG_STR2
#undef HISA__WG_D4
#undef HISA__WG_D8
#undef HISA__WG_D16
#undef HISA__WG_D32
#undef HISA__WG_D64
#undef HISA__WG_D128
#undef HISA__WG_R8
#undef HISA__WG_P8
#undef HISA__WG_R16
#undef HISA__WG_P16
#undef HISA__WG_R32
#undef HISA__WG_P32
#undef HISA__WG_R64
#undef HISA__WG_P64
#undef HISA__WG_R128
#undef HISA__WG_P128

#endif /* HISA_KERNELS_WGMMA_CUH */
