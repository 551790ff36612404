#!/usr/bin/env python3
"""Tests of the Python binding (python/hisa), runnable as `python3 python/tests/test_hisa.py`.

Plain functions, no pytest: one line per test, "ok   NAME", "FAIL NAME: why" or
"skip NAME: skipped: why", then "N passed, N failed, N skipped"; the exit status is 1 when a test
failed. Arguments are words: only the tests whose names contain one of them run.

Selections are judged against spec_ref.py, an independent numpy reading of docs/SPEC.md,
under its agreement rule. The CUDA tests need a CUDA device (they print "skipped: no CUDA
device" without one) and, for device arrays, torch with CUDA.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.dirname(HERE)
ROOT = os.path.dirname(PYDIR)
sys.path.insert(0, PYDIR)
sys.dont_write_bytecode = True

try:
    import numpy as np  # noqa: E402
except ImportError:
    sys.exit("%s has no numpy (Debian: apt-get install python3-numpy); python/run_tests.sh finds "
             "a python3 that has it" % sys.executable)

import hisa  # noqa: E402
from hisa import _arrays, _capi  # noqa: E402
import spec_ref as ref  # noqa: E402

HEADER = os.path.join(ROOT, "runtime", "hisa.h")


class Skip(Exception):
    pass


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def raises(code, fn, *args, **kw):
    """fn(*args, **kw) raises HisaError with `code`; returns it."""
    try:
        fn(*args, **kw)
    except hisa.HisaError as e:
        assert e.code == code, "%s: want %s, got %s" % (fn.__name__, _capi.ERROR_NAMES[code], e)
        assert e.name == _capi.ERROR_NAMES[code] and e.message == hisa.strerror(code), e
        return e
    raise AssertionError("%s: no HisaError, want %s" % (getattr(fn, "__name__", fn), _capi.ERROR_NAMES[code]))


def raises_py(exc, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s: no %s" % (getattr(fn, "__name__", fn), exc.__name__))


# A small configuration: H 8, B 32, m 8, k 128; contexts of a few thousand tokens have far more
# than m blocks, so HISA and flat differ.
SMALL = dict(n_layers=2, n_heads=8, block_size=32, top_blocks=8, topk=128, max_seqs=8,
             max_context=4096, max_prefill_queries=1024)


def cfg_tuple(c):
    return c["n_heads"], c["block_size"], c["top_blocks"], c["topk"]


def fill(rt, seq, keys, layer=0, chunk=1000, **kw):
    """Extend seq to hold keys and write them with write_range in chunks."""
    L0 = rt.seq_length(seq)
    rt.seq_extend(seq, len(keys))
    for p in range(0, len(keys), chunk):
        rt.write_range(seq, L0 + p, layer, keys=keys[p:p + chunk], **kw)


def check_rows(out, ts, I, khat, qhat, w, cfg, mode, what):
    """Each row i of out (query at position ts[i]) against the SPEC."""
    H, B, m, k = cfg_tuple(cfg)
    out = np.asarray(out).reshape(len(ts), k)
    swaps = 0
    for i, t in enumerate(ts):
        swaps += ref.check_query(out[i], t, I[i, :t + 1], khat, qhat[i], w[i], B, m, k, mode,
                                 "%s query %d (t=%d)" % (what, i, t))
    return swaps


# --- the C header against the mirror ------------------------------------------------------------

def _c_category(ctype):
    if issubclass(ctype, ctypes.Structure):
        return ("struct",)
    if issubclass(ctype, ctypes.Array):
        return ("array",)
    return {ctypes.c_int32: ("i32",), ctypes.c_uint32: ("u32",), ctypes.c_int64: ("i64",),
            ctypes.c_uint64: ("u64",), ctypes.c_char_p: ("cstr",), ctypes.c_void_p: ("ptr",),
            ctypes.c_int: ("i32", "u32")}[ctype]  # c_int: the hisa_mode enum (GCC: unsigned)


LAYOUT_PROGRAM_HEAD = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "hisa.h"
#define CAT(x) _Generic((x), int32_t: "i32", uint32_t: "u32", int64_t: "i64", uint64_t: "u64", \
    const char *: "cstr", char *: "cstr", void *: "ptr", const void *: "ptr", \
    int32_t *: "ptr", const int32_t *: "ptr", const float *: "ptr", const uint16_t *: "ptr", \
    const uint8_t *: "ptr", hisa_config: "struct", hisa_region *: "array", default: "other")
int main(void) {
"""


def compile_layout_program(tmp):
    cc = os.environ.get("CC") or "cc"
    if not shutil.which(cc.split()[0]):
        raise Skip("skipped: no C compiler (%s)" % cc)
    lines = [LAYOUT_PROGRAM_HEAD]
    for cname, cls in _capi.STRUCTS.items():
        lines.append('  { static %s v; (void)v;' % cname)
        lines.append('    printf("sizeof %s %%zu\\n", sizeof(%s));' % (cname, cname))
        lines.append('    printf("alignof %s %%zu\\n", _Alignof(%s));' % (cname, cname))
        for f, _ in cls._fields_:
            lines.append('    printf("field %s.%s %%zu %%zu %%s\\n", offsetof(%s, %s), sizeof v.%s, CAT(v.%s));'
                         % (cname, f, cname, f, f, f))
            if issubclass(dict(cls._fields_)[f], ctypes.Array):
                lines.append('    printf("length %s.%s %%zu\\n", sizeof v.%s / sizeof v.%s[0]);' % (cname, f, f, f))
        lines.append("  }")
    for name in _capi.CONSTANTS:
        lines.append('  printf("const %s %%lld\\n", (long long)(%s));' % (name, name))
    for i in (0, 1, 7):
        lines.append('  printf("const HISA_DEVICE_CUDA(%d) %%lld\\n", (long long)HISA_DEVICE_CUDA(%d));' % (i, i))
    lines.append("  return 0;\n}\n")
    src = os.path.join(tmp, "layout.c")
    with open(src, "w") as f:
        f.write("\n".join(lines))
    exe = os.path.join(tmp, "layout")
    r = subprocess.run(cc.split() + ["-std=c11", "-Wall", "-Werror", "-I", os.path.dirname(HEADER), src, "-o", exe],
                       capture_output=True, text=True)
    if r.returncode:
        raise AssertionError("the layout program does not compile against hisa.h (a mirrored field or "
                             "constant is gone or renamed?):\n" + r.stderr[-3000:])
    return subprocess.run([exe], capture_output=True, text=True, check=True).stdout


@test
def test_layout_matches_header():
    """Every mirrored struct: size, alignment, and each field's offset, size and kind as the C
    compiler sees hisa.h; every mirrored constant's value."""
    with tempfile.TemporaryDirectory() as tmp:
        out = compile_layout_program(tmp)
    errors = []
    for line in out.splitlines():
        kind, name, *rest = line.split()
        if kind in ("sizeof", "alignof"):
            cls = _capi.STRUCTS[name]
            got = ctypes.sizeof(cls) if kind == "sizeof" else ctypes.alignment(cls)
            if got != int(rest[0]):
                errors.append("%s(%s): C %s, ctypes %d" % (kind, name, rest[0], got))
        elif kind == "field":
            sname, f = name.split(".")
            cls = _capi.STRUCTS[sname]
            desc = getattr(cls, f)
            ftype = dict(cls._fields_)[f]
            if (desc.offset, desc.size) != (int(rest[0]), int(rest[1])):
                errors.append("%s: C offset %s size %s, ctypes offset %d size %d"
                              % (name, rest[0], rest[1], desc.offset, desc.size))
            if rest[2] not in _c_category(ftype):
                errors.append("%s: C kind %s, ctypes %s" % (name, rest[2], ftype.__name__))
        elif kind == "length":
            sname, f = name.split(".")
            n = dict(_capi.STRUCTS[sname]._fields_)[f]._length_
            if n != int(rest[0]):
                errors.append("%s: C length %s, ctypes %d" % (name, rest[0], n))
        elif kind == "const":
            if name.startswith("HISA_DEVICE_CUDA("):
                got = _capi.HISA_DEVICE_CUDA(int(name[17:-1]))
            else:
                got = _capi.CONSTANTS[name]
            if got != int(rest[0]):
                errors.append("%s: C %s, python %d" % (name, rest[0], got))
    assert not errors, "; ".join(errors)
    # Fields the C struct has beyond the mirror show in sizeof; check that every struct was seen.
    seen = set(re.findall(r"^sizeof (\w+)", out, re.M))
    assert seen == set(_capi.STRUCTS), seen


def header_functions():
    """{name: (return type text, parameter count)} of the functions hisa.h declares."""
    cc = os.environ.get("CC") or "cc"
    if not shutil.which(cc.split()[0]):
        raise Skip("skipped: no C compiler (%s)" % cc)
    text = subprocess.run(cc.split() + ["-E", "-P", "-x", "c", HEADER], capture_output=True, text=True,
                          check=True).stdout
    text = re.sub(r"\s+", " ", text)
    out = {}
    for decl in re.split(r"[;{}]", text):
        decl = decl.strip()
        m = re.match(r"^(?!typedef)([A-Za-z_][\w \*]*?)\s*\b(hisa_\w+)\s*\((.*)\)$", decl)
        if m:
            params = m.group(3).strip()
            n = 0 if params in ("", "void") else params.count(",") + 1
            out[m.group(2)] = (m.group(1).strip(), n)
    return out


@test
def test_functions_match_header():
    """Every function hisa.h declares is bound, with its parameter count and return kind."""
    decls = header_functions()
    assert decls, "no declarations parsed from hisa.h"
    errors = []
    for name, (ret, n) in sorted(decls.items()):
        if name not in _capi.PROTOTYPES:
            errors.append("%s is not bound" % name)
            continue
        restype, argtypes = _capi.PROTOTYPES[name]
        if len(argtypes) != n:
            errors.append("%s: C has %d parameters, the binding %d" % (name, n, len(argtypes)))
        want = None if ret == "void" else ctypes.c_char_p if "char" in ret and "*" in ret \
            else "pointer" if "*" in ret else ctypes.c_int
        got = "pointer" if restype is not None and issubclass(restype, ctypes._Pointer) else restype
        if want != got:
            errors.append("%s: C returns %s, the binding %s" % (name, ret, restype))
    extra = set(_capi.PROTOTYPES) - set(decls)
    if extra:
        errors.append("bound but not in hisa.h: %s" % ", ".join(sorted(extra)))
    assert not errors, "; ".join(errors)


# --- configuration, plan, errors ----------------------------------------------------------------

@test
def test_config_and_plan():
    assert hisa.version() == "%d.%d.%d" % (hisa.HISA_VERSION_MAJOR, hisa.HISA_VERSION_MINOR, hisa.HISA_VERSION_PATCH)
    c = hisa.Config(max_context=4096, device="cpu", key_format="bf16")
    r = c.resolve()
    assert (r.n_heads, r.block_size, r.top_blocks, r.topk, r.head_dim) == (64, 128, 64, 2048, 128), r
    assert r.key_format == hisa.HISA_KEY_BF16 and r.device == 0 and r.n_pages == 8 * 32, r
    assert hisa.Config(device="cuda:2").device == hisa.HISA_DEVICE_CUDA(2) == 3
    raises_py(TypeError, hisa.Config, n_head=8)
    assert hisa.Config(fp8_mma="native").fp8_mma == hisa.HISA_FP8_MMA_NATIVE == 1 and r.fp8_mma == 0
    raises_py(ValueError, hisa.Config, fp8_mma="fast")
    assert raises(hisa.HISA_ECONFIG, hisa.plan, fp8_mma=2).field == "fp8_mma"
    p = hisa.plan(c)
    assert p.config == r and p.device_bytes > 0 and p.host_bytes > 0
    assert p.regions and all(x.name and x.bytes >= 0 and x.align > 0 for x in p.regions), p.regions
    for side, total in ((1, p.device_bytes), (0, p.host_bytes)):
        ends = [x.offset + x.bytes for x in p.regions if x.on_device == side]
        assert max(ends) <= total, (side, max(ends), total)
    assert hisa.plan(max_context=4096).device_bytes == hisa.plan(hisa.Config(max_context=4096)).device_bytes
    e = raises(hisa.HISA_ECONFIG, hisa.plan, top_blocks=4, block_size=32, topk=2048)
    assert e.field == "top_blocks" and "topk" in e.rule and e.rule in str(e), (e.field, e.rule, str(e))
    e = raises(hisa.HISA_ECONFIG, hisa.Config(n_heads=200).resolve)
    assert e.field == "n_heads", e.field
    e = raises(hisa.HISA_ECONFIG, hisa.Runtime, n_heads=200)
    assert e.call == "hisa_open" and e.field == "n_heads" and "n_heads" in str(e), str(e)


@test
def test_errors_and_sequences():
    with hisa.Runtime(**SMALL) as rt:
        assert rt.config.topk == 128 and not rt.is_cuda and rt.plan.device_bytes > 0
        s = rt.seq_open()
        assert rt.seq_length(s) == 0 and rt.seq_pages(s).size == 0
        rt.seq_extend(s, 100)
        assert rt.seq_length(s) == 100 and rt.seq_pages(s).size == 4
        rt.seq_truncate(s, 40)
        assert rt.seq_length(s) == 40 and rt.seq_pages(s).size == 2
        raises(hisa.HISA_ERANGE, rt.seq_truncate, s, 41)
        raises(hisa.HISA_ELIMIT, rt.seq_extend, s, 5000)
        raises(hisa.HISA_ESEQ, rt.seq_close, 999)
        raises(hisa.HISA_ESEQ, rt.seq_length, -1)
        raises(hisa.HISA_ERANGE, rt.write_keys, 2, [s], keys=np.zeros((1, 128), np.float32))
        # never written: the CPU backend refuses to select over it
        q, w = np.ones((1, 8, 128), np.float32), np.ones((1, 8), np.float32)
        raises(hisa.HISA_EUNWRITTEN, rt.select_decode, 0, [s], q, w)
        t = rt.seq_open()
        rt.seq_close(t)
        raises(hisa.HISA_ESEQ, rt.seq_close, t)
        raises(hisa.HISA_ESEQ, rt.select_decode, 0, [t], q, w)
        raises(hisa.HISA_ESEQ, rt.write_keys, 0, [t], keys=np.zeros((1, 128), np.float32))
        raises(hisa.HISA_EINVAL, rt.write_keys, 0, [s, s], keys=np.zeros((2, 128), np.float32))
        ids = [rt.seq_open() for _ in range(7)]
        raises(hisa.HISA_ESEQFULL, rt.seq_open)
        for i in ids:
            rt.seq_close(i)
        # checked before the call: dtype, shape, the one-of rule
        e = raises_py(TypeError, rt.write_keys, 0, [s], keys=np.zeros((1, 128)))
        assert "float32" in str(e) and "float64" in str(e), e
        e = raises_py(ValueError, rt.write_keys, 0, [s], keys=np.zeros((1, 64), np.float32))
        assert "[1, 128]" in str(e), e
        raises_py(ValueError, rt.write_keys, 0, [s])
        raises_py(ValueError, rt.write_keys, 0, [s], codes=np.zeros((1, 128), np.uint8))
        raises_py(ValueError, rt.select_decode, 0, [s], q, w, next_n=2)
        raises_py(TypeError, rt.select_decode, 0, [s], q.astype(np.float64), w)
        raises_py(ValueError, rt.select_decode, 0, [s], q, w, mode="dense")
        raises_py(ValueError, rt.select_decode, 0, [s], q, w, out=np.empty((1, 127), np.int32))
        raises_py(ValueError, rt.select_decode, 0, [s], q, w, out=np.empty((1, 256), np.int32)[:, ::2])
        # a device array on a CPU runtime
        fake = type("Fake", (), {"__cuda_array_interface__": {"shape": (1, 128), "typestr": "<f4",
                                                               "data": (1 << 20, False), "version": 3}})()
        e = raises_py(TypeError, rt.write_keys, 0, [s], keys=fake)
        assert "CPU runtime" in str(e), e
        # the fp8 runtime refuses codes for a bf16 one and vice versa
        rep = rt.memory_report()
        assert rep["seqs_open"] == 1 and rep["tokens"] == 40 and rep["pages_used"] == 2, rep
        assert rep["seqs_high_water"] == 8 and rep["poisoned"] == 0 and rep["pages_shared"] == 0, rep
        assert rep["pages_total"] == rt.config.n_pages and rep["device_bytes"] == rt.plan.device_bytes, rep
    assert rt.closed
    raises_py(ValueError, rt.seq_open)
    rt.close()  # idempotent
    with hisa.Runtime(n_heads=8, block_size=32, top_blocks=8, topk=128, max_context=256, key_format="bf16") as rt:
        s = rt.seq_open()
        rt.seq_extend(s, 1)
        raises(hisa.HISA_EFORMAT, rt.write_keys, 0, [s], codes=np.zeros((1, 128), np.uint8),
               scales=np.ones(1, np.float32))


@test
def test_open_failures():
    e = raises(hisa.HISA_ECONFIG, hisa.Runtime, topk=100000)
    assert e.field == "topk" and e.detail, (e.field, e.detail)
    try:
        with hisa.Runtime(n_heads=8, max_context=256, device="cuda:63"):
            pass
    except hisa.HisaError as e:
        assert e.code == hisa.HISA_ENODEVICE and e.call == "hisa_open" and e.detail, str(e)
        assert e.detail in str(e)
    else:
        raise AssertionError("opened CUDA device 63")


# --- selection against the SPEC -----------------------------------------------------------------

def world(seed, L, H):
    rng = np.random.default_rng(seed)
    keys, w_ = ref.make_keys(rng, L)
    return rng, keys, w_


@test
def test_decode_against_spec():
    """Decode, flat and HISA, fp8 and bf16 key storage, f32 / bf16 / fp8 queries, next_n,
    slots, batches of sequences: every selection agrees with the SPEC reference."""
    H, B, m, k = cfg_tuple(SMALL)
    for key_format in ("fp8", "bf16"):
        with hisa.Runtime(key_format=key_format, **SMALL) as rt:
            rng = np.random.default_rng(1)
            lens = [3000, 1111, 100, 257]  # 100: n <= k, every position; 257: nb = 9 > m
            seqs, khats, worlds = [], [], []
            for i, L in enumerate(lens):
                keys, wd = ref.make_keys(rng, L)
                s = rt.seq_open()
                fill(rt, s, keys, layer=1)
                seqs.append(s)
                khats.append(ref.stored_keys(keys, key_format))
                worlds.append(wd)
            for next_n in (1, 3):
                qs, ws = zip(*(ref.make_queries(rng, wd, next_n, H) for wd in worlds))
                q, w = np.stack(qs), np.stack(ws)  # [n, next_n, H, 128], [n, next_n, H]
                for qf in ("f32", "bf16", "fp8"):
                    qx = q if qf == "f32" else ref.bf16_bits(q) if qf == "bf16" else ref.e4m3_encode(q * 4)
                    qhat = ref.query_value(qx)
                    for mode in ("flat", "hisa"):
                        args = (qx[:, 0], w[:, 0]) if next_n == 1 else (qx, w)
                        out = rt.select_decode(1, seqs, *args, mode=mode, next_n=next_n)
                        assert out.shape == ((len(seqs), k) if next_n == 1 else (len(seqs), next_n, k)), out.shape
                        out = out.reshape(len(seqs), next_n, k)
                        for i, L in enumerate(lens):
                            ts = [L - next_n + j for j in range(next_n)]
                            I = ref.scores(qhat[i], w[i], khats[i])
                            check_rows(out[i], ts, I, khats[i], qhat[i], w[i], SMALL, mode,
                                       "%s keys, %s q, %s, next_n %d, seq %d" % (key_format, qf, mode, next_n, i))
            # slots: the same selection, as page * B + offset
            q, w = ref.make_queries(rng, worlds[0], 1, H)
            pos = rt.select_decode(1, seqs[:1], q, w)
            slots = rt.select_decode(1, seqs[:1], q, w, slots=True, out=np.empty((1, 1, k), np.int32))
            pages = rt.seq_pages(seqs[0])
            assert slots.shape == (1, 1, k)
            assert set(slots.ravel()) == set((pages[pos // B] * B + pos % B).ravel())


@test
def test_hisa_equals_flat_when_few_blocks():
    """nb <= m: every block is a candidate, HISA's selection is flat's."""
    H, B, m, k = cfg_tuple(SMALL)
    with hisa.Runtime(**SMALL) as rt:
        rng, keys, wd = world(2, m * B, H)
        s = rt.seq_open()
        for L in (k + 1, m * B - 5, m * B):
            fill(rt, s, keys[rt.seq_length(s):L])
            q, w = ref.make_queries(rng, wd, 4, H)
            for i in range(4):
                a = rt.select_decode(0, [s], q[i:i + 1], w[i:i + 1], mode="hisa")
                b = rt.select_decode(0, [s], q[i:i + 1], w[i:i + 1], mode="flat")
                assert sorted(a.ravel()) == sorted(b.ravel()), (L, i)
        # and nb > m really differs somewhere (the test data gives the coarse stage work)
        fill(rt, s, ref.make_keys(rng, 3000 - m * B)[0])
        q, w = ref.make_queries(rng, wd, 8, H)
        diff = sum(sorted(rt.select_decode(0, [s], q[i:i + 1], w[i:i + 1]).ravel())
                   != sorted(rt.select_decode(0, [s], q[i:i + 1], w[i:i + 1], mode="flat").ravel())
                   for i in range(8))
        assert diff > 0, "HISA equal to flat on every query at 3000 tokens, m * B = %d" % (m * B)


@test
def test_prefill_against_spec():
    """Prefill: one chunk, and several chunks of two sequences in one call."""
    H, B, m, k = cfg_tuple(SMALL)
    with hisa.Runtime(**SMALL) as rt:
        rng = np.random.default_rng(3)
        ka, wa = ref.make_keys(rng, 2500)
        kb, wb = ref.make_keys(rng, 1500)
        a, b = rt.seq_open(), rt.seq_open()
        fill(rt, a, ka)
        fill(rt, b, kb)
        ha, hb = ref.stored_keys(ka, "fp8"), ref.stored_keys(kb, "fp8")
        for mode in ("hisa", "flat"):
            q, w = ref.make_queries(rng, wa, 48, H)
            out = rt.select_prefill(0, q, w, seq=a, t0=2400, mode=mode)
            assert out.shape == (48, k)
            qhat = ref.query_value(q)
            check_rows(out, list(range(2400, 2448)), ref.scores(qhat, w, ha), ha, qhat, w, SMALL, mode, "prefill " + mode)
            chunks = [(a, 100, 8), (b, 1490, 10), (a, 2490, 10), (b, 0, 4)]
            qs, ws = zip(*(ref.make_queries(rng, wa if c[0] == a else wb, c[2], H) for c in chunks))
            q, w = np.concatenate(qs), np.concatenate(ws)
            out = rt.select_prefill(0, q, w, chunks=chunks, mode=mode)
            qhat = ref.query_value(q)
            row = 0
            for seq, t0, n in chunks:
                kh = ha if seq == a else hb
                sl = slice(row, row + n)
                check_rows(out[sl], list(range(t0, t0 + n)), ref.scores(qhat[sl], w[sl], kh), kh, qhat[sl], w[sl],
                           SMALL, mode, "chunk (%d, %d, %d) %s" % (seq, t0, n, mode))
                row += n
        raises_py(ValueError, rt.select_prefill, 0, q, w, chunks=[(a, 0, 5)])
        raises(hisa.HISA_EINVAL, rt.select_prefill, 0, q[:4], w[:4], chunks=[(a, 0, 2), (a, 1, 2)])
        raises(hisa.HISA_ERANGE, rt.select_prefill, 0, q[:4], w[:4], seq=a, t0=2497)
        raises_py(ValueError, rt.select_prefill, 0, q[:4], w[:4], seq=a)


@test
def test_key_inputs_are_equivalent():
    """codes + scales quantized by spec_ref, and bf16 bits, give the cache fp32 keys give (the
    reference's fp8 quantization is the library's); write_keys with and without positions."""
    H, B, m, k = cfg_tuple(SMALL)
    rng, keys, wd = world(4, 1800, H)
    q, w = ref.make_queries(rng, wd, 6, H)
    for key_format, alt in (("fp8", "codes"), ("bf16", "keys_bf16")):
        with hisa.Runtime(key_format=key_format, **SMALL) as rt:
            a, b = rt.seq_open(), rt.seq_open()
            fill(rt, a, keys)
            rt.seq_extend(b, len(keys))
            for p in range(0, len(keys), 700):
                part = keys[p:p + 700]
                if alt == "codes":
                    codes, scales = ref.fp8_quantize(part)
                    rt.write_range(b, p, 0, codes=codes, scales=scales)
                else:
                    rt.write_range(b, p, 0, keys_bf16=ref.bf16_bits(part))
            for mode in ("hisa", "flat"):
                for i in range(6):
                    x = rt.select_decode(0, [a], q[i:i + 1], w[i:i + 1], mode=mode)
                    y = rt.select_decode(0, [b], q[i:i + 1], w[i:i + 1], mode=mode)
                    assert sorted(x.ravel()) == sorted(y.ravel()), (key_format, mode, i)
            # decode append: one token per sequence, positions None (each one's last) or given
            c = rt.seq_open()
            fill(rt, c, keys[:1000])
            rt.seq_extend(a, 1)
            rt.seq_extend(c, 1)
            new = rng.standard_normal((2, 128)).astype(np.float32)
            rt.write_keys(0, [a, c], keys=new)
            rt.seq_extend(b, 1)
            rt.write_keys(0, [b], keys=new[0], positions=[len(keys)])  # [128] for one token
            qq = np.stack([q[0], q[1]])
            ww = np.stack([w[0], w[1]])
            x = rt.select_decode(0, [a, c], qq, ww)
            y = rt.select_decode(0, [b], qq[:1], ww[:1])
            assert sorted(x[0]) == sorted(y[0])
            khat = ref.stored_keys(np.concatenate([keys[:1000], new[1:]]), key_format)
            qhat = ref.query_value(qq[1:])
            check_rows(x[1:], [1000], ref.scores(qhat, ww[1:], khat), khat, qhat, ww[1:], SMALL, "hisa", "append")


@test
def test_key_rounding_ties():
    """Keys exactly halfway between two fp8 / bf16 values round to the even one, in spec_ref and
    in the library: with one head, k = 1 and q = +-e_d, the token at position 1 (the tie value, or
    its correctly rounded value) must win over position 2 (the other one) by the lower-position
    rule; rounding the tie the wrong way makes position 2 win."""
    cases = {"fp8": [(1.0625, 1.0, 1.125), (1.1875, 1.25, 1.125), (248.0, 256.0, 240.0),
                     (1.5 * 2 ** -9, 2 * 2 ** -9, 2 ** -9), (2.5 * 2 ** -9, 2 * 2 ** -9, 3 * 2 ** -9),
                     (-1.0625, -1.0, -1.125)],
             "bf16": [(1 + 2 ** -8, 1.0, 1 + 2 ** -7), (1 + 3 * 2 ** -8, 1 + 2 ** -6, 1 + 2 ** -7),
                      (-(1 + 2 ** -8), -1.0, -(1 + 2 ** -7))]}
    for key_format, rows in cases.items():
        with hisa.Runtime(n_heads=1, block_size=32, top_blocks=2, topk=1, max_seqs=1, max_context=64,
                          key_format=key_format) as rt:
            for tie, even, other in rows:
                keys = np.zeros((3, 128), np.float32)
                keys[:, 0] = 448.0  # amax 448: fp8 scale exactly 1
                lower, upper = (tie, even) if abs(other) < abs(even) else (even, tie)
                keys[1, 5], keys[2, 5] = lower, upper
                got = ref.stored_keys(keys, key_format)[:, 5]
                assert got[1] == got[2] == np.float32(even), (key_format, tie, got)
                s = rt.seq_open()
                fill(rt, s, keys)
                q = np.zeros((1, 1, 128), np.float32)
                q[0, 0, 5] = 1.0 if even > 0 else -1.0
                out = rt.select_decode(0, [s], q, np.ones((1, 1), np.float32), mode="flat")
                assert list(out.ravel()) == [1], (key_format, tie, list(out.ravel()))
                rt.seq_close(s)


@test
def test_fork():
    """A forked child selects exactly as a sequence written without sharing; shared pages are
    read-only (HISA_ESHARED) until a truncate gives the child its own copy."""
    H, B, m, k = cfg_tuple(SMALL)
    rng, keys, wd = world(5, 1000, H)
    with hisa.Runtime(**SMALL) as rt:
        parent = rt.seq_open()
        fill(rt, parent, keys)
        used = rt.memory_report()["pages_used"]
        child = rt.seq_fork(parent, 700)  # 21 complete pages shared, 28 tokens copied
        rep = rt.memory_report()
        assert rt.seq_length(child) == 700 and rep["pages_shared"] == 700 // B, rep
        assert rep["pages_used"] == used + 1 and rep["seqs_open"] == 2, rep
        assert list(rt.seq_pages(child)[:21]) == list(rt.seq_pages(parent)[:21])
        tail = rng.standard_normal((250, 128)).astype(np.float32)
        fill(rt, child, tail)
        solo = rt.seq_open()
        fill(rt, solo, np.concatenate([keys[:700], tail]))
        q, w = ref.make_queries(rng, wd, 8, H)
        for mode in ("hisa", "flat"):
            for i in range(8):
                x = rt.select_decode(0, [child], q[i:i + 1], w[i:i + 1], mode=mode)
                y = rt.select_decode(0, [solo], q[i:i + 1], w[i:i + 1], mode=mode)
                assert sorted(x.ravel()) == sorted(y.ravel()), (mode, i)
            x = rt.select_prefill(0, q, w, seq=child, t0=600, mode=mode)
            y = rt.select_prefill(0, q, w, seq=solo, t0=600, mode=mode)
            assert [sorted(r) for r in x] == [sorted(r) for r in y], mode
        # the parent is untouched
        khat = ref.stored_keys(keys, "fp8")
        qhat = ref.query_value(q[:1])
        check_rows(rt.select_decode(0, [parent], q[:1], w[:1]), [999], ref.scores(qhat, w[:1], khat), khat,
                   qhat, w[:1], SMALL, "hisa", "parent after fork")
        one = np.zeros((1, 128), np.float32)
        raises(hisa.HISA_ESHARED, rt.write_keys, 0, [child], keys=one, positions=[5])
        raises(hisa.HISA_ESHARED, rt.write_keys, 0, [parent], keys=one, positions=[671])
        raises(hisa.HISA_ESHARED, rt.write_range, child, 600, 0, keys=np.zeros((50, 128), np.float32))
        rt.write_keys(0, [child], keys=one, positions=[672])  # the copied partial page is the child's
        rt.write_keys(0, [parent], keys=one, positions=[672])
        rt.seq_truncate(child, 100)  # into shared page 3: the child gets its own copy
        rt.write_keys(0, [child], keys=one, positions=[99])
        raises(hisa.HISA_ESHARED, rt.write_keys, 0, [child], keys=one, positions=[95])
        assert rt.memory_report()["pages_shared"] == 3
        rt.seq_close(parent)
        assert rt.memory_report()["pages_shared"] == 0
        rt.write_keys(0, [child], keys=one, positions=[5])  # sole holder now
        raises(hisa.HISA_ESEQ, rt.seq_fork, parent, 10)
        raises(hisa.HISA_ERANGE, rt.seq_fork, child, 101)


@test
def test_payload_and_caller_memory():
    cfg = dict(SMALL, payload_bytes=16, n_layers=1)
    p = hisa.plan(**cfg)
    bufs = []
    for nbytes in (p.device_bytes, p.host_bytes):
        raw = np.empty(nbytes + 256, np.uint8)
        off = (-raw.ctypes.data) % 256
        bufs.append(raw[off:off + nbytes])
    mem = hisa.Memory(device_base=bufs[0], host_base=bufs[1])
    with hisa.Runtime(memory=mem, **cfg) as rt:
        rep = rt.memory_report()
        assert rep["device_bytes"] == p.device_bytes and rep["host_bytes"] == p.host_bytes, rep
        s = rt.seq_open()
        rt.seq_extend(s, 100)
        keys = np.random.default_rng(6).standard_normal((100, 128)).astype(np.float32)
        pay = np.arange(100 * 16, dtype=np.uint8).reshape(100, 16)
        rt.write_range(s, 0, 0, keys=keys, payload=pay)
        rt.write_keys(0, [s], keys=keys[99], payload=np.full((1, 16), 7, np.uint8))
        pool = rt.payload_pool(0)
        assert pool.shape == (rt.config.n_pages * 32, 16)
        pages = rt.seq_pages(s)
        slots = pages[np.arange(100) // 32] * 32 + np.arange(100) % 32
        assert (pool[slots[:99]] == pay[:99]).all() and (pool[slots[99]] == 7).all()
        region = next(r for r in p.regions if "payload" in r.name)
        arena = bufs[0] if region.on_device else bufs[1]
        assert pool.ctypes.data == arena.ctypes.data + region.offset, (region, pool.ctypes.data)
        raises_py(ValueError, rt.write_range, s, 0, 0, keys=keys[:2], payload=np.zeros((2, 15), np.uint8))
    with hisa.Runtime(**SMALL) as rt:
        raises(hisa.HISA_EINVAL, rt.payload_pool, 0)


# --- the array adapters (the parts that need no GPU) -------------------------------------------

@test
def test_array_adapters():
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    if hasattr(x, "__dlpack__"):
        a = _arrays._from_dlpack(x, "x", None, False)
        assert (a.ptr, a.dtype, a.shape, a.device) == (x.ctypes.data, "float32", (2, 12), False)
        raises_py(ValueError, _arrays._from_dlpack, x[:, ::2], "x", None, False)
        raises_py(TypeError, _arrays._from_dlpack, x, "x", None, True)
    cai = {"shape": (2, 12), "typestr": "<f4", "data": (x.ctypes.data, False), "version": 3, "strides": None}
    a = _arrays._from_cai(None, cai, "x", None)
    assert (a.ptr, a.dtype, a.shape, a.device) == (x.ctypes.data, "float32", (2, 12), True)
    cai2 = dict(cai, strides=(4, 8))
    raises_py(ValueError, _arrays._from_cai, None, cai2, "x", None)
    cai3 = dict(cai, typestr="<u2", strides=(24, 2))
    assert _arrays._from_cai(None, cai3, "x", None).dtype == "uint16"
    # host copies only when needed
    assert _arrays.host(x, "x").np is x
    t = _arrays.host(x.T, "x")
    assert t.np is not x and t.np.flags.c_contiguous and (t.np == x.T).all()
    assert _arrays.host(x.astype(">f4"), "x").np.dtype.isnative
    raises_py(ValueError, _arrays.host, x.T, "out", True)
    assert list(_arrays.host_i32(3, "s")) == [3] and _arrays.host_i32([1, 2], "s").dtype == np.int32
    raises_py(TypeError, _arrays.host_i32, [1.5], "s")
    assert _arrays._same_stream(None, 1) and _arrays._same_stream(0, None) and not _arrays._same_stream(5, None)


@test
def test_torch_cpu_tensors():
    """A CPU runtime takes torch CPU tensors as host arrays: float32 through numpy, bfloat16
    (which numpy lacks) through DLPack; a torch out= is written in place."""
    try:
        import torch
    except ImportError:
        raise Skip("skipped: torch is not installed")
    H, B, m, k = cfg_tuple(SMALL)
    rng, keys, wd = world(9, 2000, H)
    with hisa.Runtime(key_format="bf16", **SMALL) as rt:
        a, b = rt.seq_open(), rt.seq_open()
        fill(rt, a, keys)
        rt.seq_extend(b, 2000)
        rt.write_range(b, 0, 0, keys=torch.from_numpy(keys[:1000]))
        rt.write_range(b, 1000, 0, keys_bf16=torch.from_numpy(keys[1000:]).to(torch.bfloat16))
        q, w = ref.make_queries(rng, wd, 1, H)
        want = rt.select_decode(0, [a], ref.bf16_bits(q), w)
        got = rt.select_decode(0, [b], torch.from_numpy(q).to(torch.bfloat16), torch.from_numpy(w))
        assert isinstance(got, np.ndarray) and sorted(got.ravel()) == sorted(want.ravel())
        out = torch.full((1, k), -7, dtype=torch.int32)
        assert rt.select_decode(0, [b], q, w, out=out) is out
        assert sorted(out.numpy().ravel()) == sorted(want.ravel())


# --- the example --------------------------------------------------------------------------------

def example_code(text):
    """The example's code: the file without its leading comment lines."""
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines).strip()


@test
def test_example():
    """python/example.py runs and finds what it says; README.md's Python example, once it has
    one, is the same code (and so runs too)."""
    path = os.path.join(PYDIR, "example.py")
    env = dict(os.environ, PYTHONPATH=PYDIR + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, "example.py failed:\n" + r.stderr[-3000:]
    assert r.stdout.strip() == "topic 3 found: True same as flat: True", r.stdout
    with open(path) as f:
        code = example_code(f.read())
    assert len(code.splitlines()) <= 15, "the example has %d lines, the README promises 15" % len(code.splitlines())
    readme = os.path.join(ROOT, "README.md")
    blocks = re.findall(r"```python\n(.*?)```", open(readme).read(), re.S) if os.path.exists(readme) else []
    if blocks:
        assert any(example_code(b) == code for b in blocks), "README.md's python example differs from python/example.py"


# --- CUDA ---------------------------------------------------------------------------------------

# The CUDA tests use a shape the C GPU tests use too (H 32, B 64, m 8, k 256).
GPU = dict(n_layers=2, n_heads=32, block_size=64, top_blocks=8, topk=256, max_seqs=8,
           max_context=8192, max_prefill_queries=1024)


def cuda_runtime(**cfg):
    """A CUDA runtime on device 0, or Skip without one."""
    try:
        return hisa.Runtime(device="cuda:0", **cfg)
    except hisa.HisaError as e:
        if e.code == hisa.HISA_ENODEVICE:
            raise Skip("skipped: no CUDA device")
        raise


def twin_runtimes(seed, lens, cfg=GPU):
    """A CPU and a CUDA runtime holding the same keys (numpy writes); their seqs, stored keys, worlds."""
    gpu = cuda_runtime(**cfg)
    cpu = hisa.Runtime(**cfg)
    rng = np.random.default_rng(seed)
    seqs, khats, worlds = [], [], []
    for L in lens:
        keys, wd = ref.make_keys(rng, L)
        for rt in (cpu, gpu):
            s = rt.seq_open()
            fill(rt, s, keys)
        seqs.append(s)
        khats.append(ref.stored_keys(keys, "fp8"))
        worlds.append(wd)
    return cpu, gpu, rng, seqs, khats, worlds


def compare_decode(cpu_out, gpu_out, seqs, lens, khats, qhat, w, mode, next_n, what):
    """Both backends against the SPEC, and the CUDA selection against the CPU one by the rule."""
    H, B, m, k = cfg_tuple(GPU)
    a = np.asarray(cpu_out).reshape(len(seqs), next_n, k)
    b = np.asarray(gpu_out).reshape(len(seqs), next_n, k)
    for i, L in enumerate(lens):
        ts = [L - next_n + j for j in range(next_n)]
        I = ref.scores(qhat[i], w[i], khats[i])
        for out, who in ((a, "cpu"), (b, "cuda")):
            check_rows(out[i], ts, I, khats[i], qhat[i], w[i], GPU, mode, "%s %s seq %d" % (what, who, i))
        if mode == "flat":  # S = the CPU's selection, S' = the CUDA one
            for j, t in enumerate(ts):
                ref.agree(b[i, j], I[j], np.arange(t + 1), k, "%s cuda vs cpu seq %d" % (what, i),
                          S=a[i, j][a[i, j] >= 0])


@test
def test_cuda_host_io():
    """A CUDA runtime with numpy arrays (HISA_HOST_IO) against the CPU runtime."""
    lens = [3000, 700]
    cpu, gpu, rng, seqs, khats, worlds = twin_runtimes(7, lens)
    with cpu, gpu:
        H = GPU["n_heads"]
        for mode in ("flat", "hisa"):
            qs, ws = zip(*(ref.make_queries(rng, wd, 1, H) for wd in worlds))
            q, w = np.concatenate(qs), np.concatenate(ws)
            compare_decode(cpu.select_decode(0, seqs, q, w, mode=mode), gpu.select_decode(0, seqs, q, w, mode=mode),
                           seqs, lens, khats, ref.query_value(q)[:, None], w[:, None], mode, 1, "host io " + mode)
        rep = gpu.memory_report()
        assert rep["poisoned"] == 0 and rep["tokens"] == sum(lens), rep


@test
def test_cuda_torch():
    """A CUDA runtime with torch CUDA tensors by device pointer (DLPack, the CUDA Array Interface,
    bf16 / fp8 queries, next_n, prefill chunks, device key writes, a non-default stream), against
    the CPU runtime."""
    lens = [3000, 1200, 90]
    cpu, gpu, rng, seqs, khats, worlds = twin_runtimes(8, lens)
    with cpu, gpu:
        try:
            import torch
        except ImportError:
            raise Skip("skipped: torch is not installed")
        if not torch.cuda.is_available():
            raise Skip("skipped: torch has no CUDA")
        dev = torch.device("cuda", 0)
        H, B, m, k = cfg_tuple(GPU)
        T = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        # decode: f32 / bf16 / fp8 queries, next_n 1 and 2, both modes
        for next_n in (1, 2):
            qs, ws = zip(*(ref.make_queries(rng, wd, next_n, H) for wd in worlds))
            q, w = np.stack(qs), np.stack(ws)
            forms = {"f32": (q, T(q)),
                     "bf16": (ref.bf16_bits(q), T(q).to(torch.bfloat16)),
                     "fp8-u8": (ref.e4m3_encode(q * 4), T(ref.e4m3_encode(q * 4)))}
            if hasattr(torch, "float8_e4m3fn"):
                forms["fp8"] = (forms["fp8-u8"][0], forms["fp8-u8"][1].view(torch.float8_e4m3fn))
            for name, (qn, qt) in forms.items():
                if name == "bf16":  # torch's bf16 rounding is round to nearest even too
                    assert (qt.view(torch.int16).cpu().numpy().view(np.uint16) == qn).all()
                qhat = ref.query_value(qn)
                for mode in ("flat", "hisa"):
                    a = cpu.select_decode(0, seqs, qn if next_n > 1 else qn[:, 0], w if next_n > 1 else w[:, 0],
                                          mode=mode, next_n=next_n)
                    b = gpu.select_decode(0, seqs, qt if next_n > 1 else qt[:, 0], T(w) if next_n > 1 else T(w[:, 0]),
                                          mode=mode, next_n=next_n)
                    assert isinstance(b, torch.Tensor) and b.device == dev and b.dtype == torch.int32
                    gpu.sync()
                    compare_decode(a, b.cpu().numpy(), seqs, lens, khats, qhat, w, mode, next_n,
                                   "torch %s next_n %d %s" % (name, next_n, mode))

        # the protocols one at a time: DLPack only, the CUDA Array Interface only; out= given
        qs, ws = zip(*(ref.make_queries(rng, wd, 1, H) for wd in worlds))
        q, w = np.concatenate(qs), np.concatenate(ws)
        want = cpu.select_decode(0, seqs, q, w, mode="flat")

        class DLOnly:
            def __init__(self, t):
                self.t = t

            def __dlpack__(self, stream=None):
                return self.t.__dlpack__(stream=stream)

            def __dlpack_device__(self):
                return self.t.__dlpack_device__()

        class CAIOnly:
            def __init__(self, t):
                self.t = t
                self.__cuda_array_interface__ = t.__cuda_array_interface__

        for wrap in (DLOnly, CAIOnly):
            out = torch.full((len(seqs), k), -7, dtype=torch.int32, device=dev)
            r = gpu.select_decode(0, seqs, wrap(T(q)), wrap(T(w)), mode="flat", out=wrap(out))
            assert isinstance(r, wrap)
            gpu.sync()
            compare_decode(want, out.cpu().numpy(), seqs, lens, khats, ref.query_value(q)[:, None], w[:, None],
                           "flat", 1, wrap.__name__)

        # a non-default stream: torch produces on it, the runtime runs on it
        s = torch.cuda.Stream(device=dev)
        gpu.set_stream(s)
        with torch.cuda.stream(s):
            qt, wt = T(q) * 1.0, T(w) * 1.0
            b = gpu.select_decode(0, seqs, qt, wt, mode="flat")
        s.synchronize()
        compare_decode(want, b.cpu().numpy(), seqs, lens, khats, ref.query_value(q)[:, None], w[:, None],
                       "flat", 1, "stream")
        gpu.set_stream(None)

        # device key writes (write_range, write_keys) and prefill chunks
        keys, wd = ref.make_keys(rng, 1500)
        a_cpu, a_gpu = cpu.seq_open(), gpu.seq_open()
        cpu.seq_extend(a_cpu, 1500)
        gpu.seq_extend(a_gpu, 1500)
        assert a_cpu == a_gpu
        cpu.write_range(a_cpu, 0, 1, keys=keys[:1000])
        gpu.write_range(a_gpu, 0, 1, keys=T(keys[:1000]))
        codes, scales = ref.fp8_quantize(keys[1000:1499])
        cpu.write_range(a_cpu, 1000, 1, codes=codes, scales=scales)
        gpu.write_range(a_gpu, 1000, 1, codes=T(codes), scales=T(scales))
        cpu.write_keys(1, [a_cpu], keys=keys[1499:])
        gpu.write_keys(1, [a_gpu], keys=T(keys[1499:]))
        khat = ref.stored_keys(keys, "fp8")
        qa, wa = ref.make_queries(rng, wd, 72, H)
        for mode in ("flat", "hisa"):
            # layer 1 of seqs[0] is unwritten: one sequence's chunks only, in two chunks
            ch = [(a_cpu, 1400, 40), (a_cpu, 1440, 32)]
            x = cpu.select_prefill(1, qa, wa, chunks=ch, mode=mode)
            y = gpu.select_prefill(1, T(qa), T(wa), chunks=ch, mode=mode)
            qhat = ref.query_value(qa)
            I = ref.scores(qhat, wa, khat)
            check_rows(x, list(range(1400, 1472)), I, khat, qhat, wa, GPU, mode, "prefill cpu " + mode)
            gpu.sync()
            check_rows(y.cpu().numpy(), list(range(1400, 1472)), I, khat, qhat, wa, GPU, mode, "prefill cuda " + mode)

        # checked before the call
        raises_py(TypeError, gpu.select_decode, 0, seqs, T(q), w)  # mixed device / host
        raises_py(TypeError, gpu.select_decode, 0, seqs, T(q).double(), T(w))
        raises_py(ValueError, gpu.select_decode, 0, seqs, T(q)[:, :, ::2], T(w))
        raises_py(ValueError, gpu.select_decode, 0, seqs, T(np.ascontiguousarray(q.transpose(0, 2, 1))).transpose(1, 2), T(w))
        raises_py(TypeError, cpu.select_decode, 0, seqs, T(q), T(w))
        raises(hisa.HISA_ESEQ, gpu.select_decode, 0, [77], T(q[:1]), T(w[:1]))
        assert gpu.memory_report()["poisoned"] == 0


# --- main ---------------------------------------------------------------------------------------

def main(argv):
    words = argv[1:]
    passed = failed = skipped = 0
    print("hisa %s from %s" % (hisa.version(), hisa.lib_path()))
    for fn in TESTS:
        name = fn.__name__
        if words and not any(w in name for w in words):
            continue
        t0 = time.time()
        try:
            fn()
        except Skip as e:
            skipped += 1
            print("skip %s: %s" % (name, e))
        except Exception as e:  # noqa: BLE001
            failed += 1
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb)
                          if f.filename.endswith(("test_hisa.py", "spec_ref.py"))), "?")
            print("FAIL %s: %s: %s (%s)" % (name, type(e).__name__, e, where))
            if os.environ.get("HISA_TEST_VERBOSE"):
                traceback.print_exc()
        else:
            passed += 1
            print("ok   %s (%.1f s)" % (name, time.time() - t0))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
