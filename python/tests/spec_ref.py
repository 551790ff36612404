"""spec_ref: an independent numpy reading of docs/SPEC.md, for the binding's tests.

Number formats (bf16 round to nearest even; e4m3fn keys with scale = amax / 448, codes rounded to
the nearest e4m3 value, ties to the even code, saturating at 448), scores I(s) and block scores
J(b) in float64 from the exact fp32 values, and the SPEC's checks: "When two backends agree"
(eps = 1e-4 max |I| over the candidates) for flat and HISA selections, with the kept blocks
judged by the same rule on J.
"""
import numpy as np

D = 128


# --- number formats -----------------------------------------------------------------------------

def bf16_bits(x):
    """float32 -> bf16 bits (uint16), round to nearest even (no NaNs in the tests)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_value(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16(x):
    return bf16_value(bf16_bits(x))


def _e4m3_table():
    c = np.arange(127)  # 0x00 .. 0x7e, ascending values; 0x7f is NaN
    e, m = c >> 3, c & 7
    v = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    return v.astype(np.float32)


E4M3 = _e4m3_table()  # E4M3[code] for codes 0..126; E4M3[126] = 448
E4M3_MAX = np.float32(448.0)


def e4m3_value(codes):
    codes = np.asarray(codes, dtype=np.uint8)
    v = E4M3[(codes & 0x7F).clip(0, 126)]
    return np.where(codes & 0x80, -v, v).astype(np.float32)


def e4m3_encode(x):
    """float32 -> e4m3fn codes: nearest value, ties to the even code, saturating at +-448."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    hi = np.searchsorted(E4M3, a).clip(0, 126)  # first value >= a
    lo = (hi - 1).clip(0, 126)
    dl, dh = a - E4M3[lo], E4M3[hi] - a
    code = np.where(dh < dl, hi, np.where(dl < dh, lo, np.where(hi % 2 == 0, hi, lo)))
    code = np.where(a >= E4M3_MAX, 126, code).astype(np.uint8)
    return np.where(np.signbit(x), code | 0x80, code).astype(np.uint8)


def fp8_quantize(keys):
    """keys float32 [n, 128] -> (codes uint8 [n, 128], scales float32 [n]) as SPEC says."""
    keys = np.asarray(keys, dtype=np.float32)
    amax = np.abs(keys).max(axis=1)
    s = (amax / E4M3_MAX).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    codes = e4m3_encode(keys / s[:, None])
    return codes, s


def dequant_fp8(codes, scales):
    return (e4m3_value(codes) * np.asarray(scales, np.float32)[:, None]).astype(np.float32)


def stored_keys(keys, key_format):
    """The dequantized keys k^ a runtime stores for fp32 keys: 'fp8' or 'bf16'."""
    if key_format == "bf16":
        return bf16(keys)
    return dequant_fp8(*fp8_quantize(keys))


def query_value(q):
    """q^ (float32) of a query array by its dtype: float32 rounded to bf16, uint16 bf16 bits,
    uint8 e4m3 codes."""
    q = np.asarray(q)
    if q.dtype == np.float32:
        return bf16(q)
    if q.dtype == np.uint16:
        return bf16_value(q)
    if q.dtype == np.uint8:
        return e4m3_value(q)
    raise TypeError(q.dtype)


# --- scores -------------------------------------------------------------------------------------

def scores(qhat, w, khat):
    """I for queries qhat [nq, H, 128], w [nq, H] against keys khat [L, 128]: [nq, L] float64."""
    dots = np.einsum("qhd,ld->qhl", qhat.astype(np.float64), khat.astype(np.float64))
    return np.einsum("qh,qhl->ql", w.astype(np.float64), np.maximum(dots, 0.0))


def block_means(khat, n, B):
    """kbar_b of the blocks of positions 0..n-1: fp32 sums in offset order, the mean, bf16."""
    nb = -(-n // B)
    sums = np.zeros((nb, D), np.float32)
    counts = np.zeros(nb, np.float32)
    for o in range(B):
        rows = khat[o:n:B]
        sums[:len(rows)] += rows
        counts[:len(rows)] += 1
    return bf16((sums / counts[:, None]).astype(np.float32))


# --- the SPEC's checks --------------------------------------------------------------------------

class Mismatch(AssertionError):
    pass


def top(cands, score, k):
    """The k of cands with the largest score, ties to the lower index."""
    cands = np.asarray(cands)
    order = np.lexsort((cands, -score[cands]))
    return cands[order[:k]]


def agree(row, I, cands, k, what="", S=None):
    """SPEC "When two backends agree": row (k int32, -1 padded at the end) against the
    selection S (by default the top-k of cands by I), eps = 1e-4 max |I| over cands."""
    row = np.asarray(row).reshape(-1)
    if row.size != k:
        raise Mismatch("%s: %d entries, want k = %d" % (what, row.size, k))
    valid = row[row >= 0]
    nvalid = valid.size
    if np.any(row[:nvalid] < 0) or np.any(row[nvalid:] != -1):
        raise Mismatch("%s: -1 padding is not at the end" % what)
    want_n = min(k, len(cands))
    if nvalid != want_n:
        raise Mismatch("%s: %d selected, want %d" % (what, nvalid, want_n))
    if len(set(valid.tolist())) != nvalid:
        raise Mismatch("%s: duplicates" % what)
    cset = set(np.asarray(cands).tolist())
    bad = [p for p in valid.tolist() if p not in cset]
    if bad:
        raise Mismatch("%s: positions outside the candidates: %s" % (what, bad[:8]))
    ref = top(cands, I, k) if S is None else np.asarray(S)
    tau = I[ref].min()
    eps = 1e-4 * np.abs(I[cands]).max()
    extra = set(valid.tolist()) - set(ref.tolist())
    missing = set(ref.tolist()) - set(valid.tolist())
    low = [p for p in extra if I[p] < tau - eps]
    high = [p for p in missing if I[p] > tau + eps]
    if low or high:
        raise Mismatch("%s: %d selected below tau - eps, %d left out above tau + eps (tau %.6g, eps %.3g)"
                       % (what, len(low), len(high), tau, eps))
    return len(extra)  # near-tie swaps


def check_query(row, t, I_row, khat, qhat_q, w_q, B, m, k, mode, what=""):
    """One query at position t (sees 0..t): row against the SPEC selection of `mode`."""
    n = t + 1
    cands = np.arange(n)
    nb = -(-n // B)
    if mode == "flat" or n <= k or nb <= m:
        return agree(row, I_row, cands, k, what)
    last = nb - 1
    J = scores(qhat_q[None], w_q[None], block_means(khat, n, B))[0]
    mid = np.arange(1, last)
    keep = top(mid, J, m - 2)
    tauJ = J[keep].min()
    epsJ = 1e-4 * np.abs(J[mid]).max()
    sure = set(b for b in mid.tolist() if J[b] > tauJ + epsJ)
    maybe = [b for b in top(mid, J, len(mid)).tolist() if abs(J[b] - tauJ) <= epsJ]
    row_blocks = set((np.asarray(row)[np.asarray(row) >= 0] // B).tolist()) - {0, last}
    outside = row_blocks - sure - set(maybe)
    if outside:
        raise Mismatch("%s: tokens of blocks outside the top m by J: %s" % (what, sorted(outside)[:8]))
    kept = set(sure) | (row_blocks & set(maybe))
    if len(kept) > m - 2:
        raise Mismatch("%s: tokens of %d middle blocks, at most m - 2 = %d" % (what, len(kept), m - 2))
    for b in maybe:
        if len(kept) >= m - 2:
            break
        kept.add(b)
    kept |= {0, last}
    cands = np.concatenate([np.arange(b * B, min(b * B + B, n)) for b in sorted(kept)])
    return agree(row, I_row, cands, k, what)


# --- structured synthetic data (topic segments, sinks; as README "Structured synthetic data") ---

def make_keys(rng, L, n_topics=16, seg=(32, 256)):
    topics = rng.standard_normal((n_topics, D)).astype(np.float32)
    sink = rng.standard_normal(D).astype(np.float32)
    keys = np.empty((L, D), np.float32)
    seg_topic = np.empty(L, np.int64)
    p = 0
    while p < L:
        n = int(rng.integers(seg[0], seg[1] + 1))
        t = int(rng.integers(n_topics))
        e = min(L, p + n)
        keys[p:e] = topics[t] + 0.5 * rng.standard_normal((e - p, D))
        seg_topic[p:e] = t
        p = e
    keys[:4] = sink + 0.1 * rng.standard_normal((4, D))
    return keys, (topics, sink, seg_topic)


def make_queries(rng, world, nq, H):
    topics, sink, seg_topic = world
    q = np.empty((nq, H, D), np.float32)
    for i in range(nq):
        picks = rng.choice(len(topics), 3, replace=False)
        for h in range(H):
            c = np.where(np.arange(3) == h % 3, 1.0, 0.3 * rng.random(3))
            q[i, h] = c @ topics[picks] + 0.5 * sink + 0.5 * rng.standard_normal(D)
    w = rng.uniform(0.5, 1.0, (nq, H)).astype(np.float32)
    w[rng.random((nq, H)) < 0.1] *= -1
    return q, w
