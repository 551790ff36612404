"""hisa: Python binding of libhisa (ctypes over libhisa.so; no compiled extension).

HISA selects, for every query, the top-k past tokens that DeepSeek Sparse Attention's lightning
indexer would pick, I(s) = sum_h w[h] * ReLU(q[h] . k_s), scoring block means first
(docs/SPEC.md is the contract; runtime/hisa.h the C API this wraps, call for call).

    import numpy as np, hisa
    with hisa.Runtime(n_heads=8, block_size=64, top_blocks=16, topk=256, max_context=8192) as rt:
        s = rt.seq_open()
        rt.seq_extend(s, 1024)
        rt.write_range(s, 0, 0, keys=np.random.randn(1024, 128).astype(np.float32))  # layer 0
        q = np.random.randn(1, 8, 128).astype(np.float32)   # [seqs, heads, 128]
        w = np.ones((1, 8), np.float32)                     # [seqs, heads]
        idx = rt.select_decode(0, [s], q, w)                # int32 [1, 256] positions, -1 padded

Arrays. A CPU runtime takes numpy arrays (checked dtype and shape; a C-contiguous copy is made
only when an input is not one). A CUDA runtime takes device arrays by pointer: anything with
DLPack or __cuda_array_interface__ (torch and CuPy tensors), C-contiguous, read and written on the
runtime's stream (set_stream; the producer's pending work is ordered before it through the
protocols); or, all arrays of the call in host memory (numpy), HISA_HOST_IO: staged through the
arena, and the call returns when the results are in host memory. Sequence ids, positions and
chunk tables are always host values (ints, lists, integer arrays).

Dtypes: keys float32 [n, 128]; keys_bf16 uint16 (bf16 bits) or bfloat16; codes uint8 or
float8_e4m3fn with scales float32 [n]; q float32 (rounded to bf16), uint16 / bfloat16 (bf16), or
uint8 / float8_e4m3fn (fp8 codes; the query format is inferred from the dtype); w float32; out int32.

Errors: every failing call raises HisaError (code, name, message; detail for HISA_EDEVICE and for
open failures; field and rule for an invalid configuration). Wrong shapes or dtypes raise
ValueError / TypeError before the library is called.

The library is $HISA_LIB, else build/libhisa.so of this checkout, else the system's libhisa.
"""
import ctypes

import numpy as np

from . import _arrays
from . import _capi
from ._capi import *  # noqa: F401,F403  (the constants of hisa.h, under their C names)
from ._capi import (HISA_DEVICE_CUDA, HISA_EDEVICE, HISA_EPOISONED, HISA_EUNSUPPORTED, HISA_HEAD_DIM, HISA_HOST_IO,
                    HISA_MODE_FLAT, HISA_MODE_HISA, HISA_NEXT_N_MAX, HISA_Q_BF16, HISA_Q_F32,
                    HISA_Q_FP8, HISA_SLOTS, HISA_KEY_FP8, HISA_KEY_BF16)

__all__ = ["HisaError", "Config", "Plan", "Region", "Memory", "Runtime", "plan", "version",
           "strerror", "lib_path", "HISA_DEVICE_CUDA"] + sorted(_capi.CONSTANTS)

_D = HISA_HEAD_DIM


def version():
    """hisa_version(): the library's "MAJOR.MINOR.PATCH"."""
    return _capi.lib().hisa_version().decode()


def strerror(code):
    """hisa_strerror(code)."""
    return _capi.lib().hisa_strerror(int(code)).decode()


def lib_path():
    """The libhisa.so this module loaded."""
    return _capi.lib_path()


class HisaError(Exception):
    """A hisa call returned a negative HISA_E* code.

    code: the code (hisa.HISA_ESEQ, ...); name: its C name ("HISA_ESEQ"); message: hisa_strerror;
    call: the C function; detail: hisa_error_detail (HISA_EDEVICE, HISA_EPOISONED,
    HISA_EUNSUPPORTED) or hisa_open_detail (a failed open), else ""; field / rule: the
    configuration field and the rule it broke (HISA_ECONFIG, HISA_EOVERFLOW), else None."""

    def __init__(self, code, call="", detail="", field=None, rule=None):
        self.code = int(code)
        self.name = _capi.ERROR_NAMES.get(self.code, "HISA_E(%d)" % self.code)
        self.message = strerror(self.code)
        self.call, self.detail, self.field, self.rule = call, detail or "", field, rule
        text = "%s (%d): %s" % (self.name, self.code, self.message)
        if call:
            text = "%s: %s" % (call, text)
        if field or rule:
            text += ": %s: %s" % (field or "?", rule or "?")
        if self.detail and self.detail != rule:
            text += ": " + self.detail
        super().__init__(text)


def _s(b):
    return b.decode() if b else None


# --- configuration and plan ---------------------------------------------------------------------

_FIELDS = [f for f, _ in _capi.hisa_config._fields_]
_KEY_FORMATS = {"default": 0, "fp8": HISA_KEY_FP8, "bf16": HISA_KEY_BF16}
_KERNELS = {"auto": _capi.HISA_KERNELS_AUTO, "portable": _capi.HISA_KERNELS_PORTABLE,
            "hopper": _capi.HISA_KERNELS_HOPPER}
_FP8_MMA = {"exact": _capi.HISA_FP8_MMA_EXACT, "native": _capi.HISA_FP8_MMA_NATIVE}


def _device_value(v):
    if isinstance(v, str):
        s = v.strip().lower()
        if s == "cpu":
            return 0
        if s == "cuda":
            return HISA_DEVICE_CUDA(0)
        if s.startswith("cuda:") and s[5:].isdigit():
            return HISA_DEVICE_CUDA(int(s[5:]))
        raise ValueError("device: 'cpu', 'cuda' or 'cuda:N', or an int (0 CPU, i + 1 CUDA device i); got %r" % v)
    return int(v)


class Config:
    """hisa_config: Config(n_heads=32, topk=2048, device='cuda:0', ...). A field left 0 takes its
    default (resolve() fills them in). device takes 'cpu' / 'cuda' / 'cuda:N' or the C value;
    key_format 'fp8' / 'bf16' or the C value; kernels 'auto' / 'portable' / 'hopper' or the C value;
    fp8_mma 'exact' / 'native' or the C value (hisa.h: native is outside SPEC's agreement rule)."""
    __slots__ = tuple(_FIELDS)

    def __init__(self, **fields):
        for f in _FIELDS:
            object.__setattr__(self, f, 0)
        for k, v in fields.items():
            setattr(self, k, v)

    def __setattr__(self, k, v):
        if k not in _FIELDS:
            raise TypeError("Config has no field %r (fields: %s)" % (k, ", ".join(_FIELDS)))
        if k == "device":
            v = _device_value(v)
        elif k == "key_format" and isinstance(v, str):
            if v not in _KEY_FORMATS:
                raise ValueError("key_format: 'fp8' or 'bf16', got %r" % v)
            v = _KEY_FORMATS[v]
        elif k == "kernels" and isinstance(v, str):
            if v not in _KERNELS:
                raise ValueError("kernels: 'auto', 'portable' or 'hopper', got %r" % v)
            v = _KERNELS[v]
        elif k == "fp8_mma" and isinstance(v, str):
            if v not in _FP8_MMA:
                raise ValueError("fp8_mma: 'exact' or 'native', got %r" % v)
            v = _FP8_MMA[v]
        v = int(v)
        if not -2**31 <= v < 2**31:
            raise ValueError("%s: %d is outside int32" % (k, v))
        object.__setattr__(self, k, v)

    @classmethod
    def _from_c(cls, c):
        return cls(**{f: getattr(c, f) for f in _FIELDS})

    def _to_c(self):
        return _capi.hisa_config(*[getattr(self, f) for f in _FIELDS])

    def as_dict(self):
        return {f: getattr(self, f) for f in _FIELDS}

    def resolve(self):
        """hisa_config_resolve: a Config with every default filled in (HisaError if invalid)."""
        out = _capi.hisa_config()
        err = _capi.lib().hisa_config_resolve(ctypes.byref(self._to_c()), ctypes.byref(out))
        if err:
            p = _capi.hisa_plan()  # the plan names the field and rule the resolve broke
            _capi.lib().hisa_plan_compute(ctypes.byref(self._to_c()), ctypes.byref(p))
            raise HisaError(err, "hisa_config_resolve", field=_s(p.invalid_field), rule=_s(p.invalid_rule))
        return Config._from_c(out)

    @property
    def is_cuda(self):
        return self.device > 0

    def __eq__(self, other):
        return isinstance(other, Config) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return "Config(%s)" % ", ".join("%s=%d" % (f, getattr(self, f)) for f in _FIELDS if getattr(self, f))


def _config_of(config, fields):
    if config is None:
        return Config(**fields)
    if fields:
        raise TypeError("pass a Config or keyword fields, not both")
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return Config(**config)
    raise TypeError("config: a hisa.Config or a dict, got %s" % type(config).__name__)


class Region:
    """One region of the plan (hisa_region)."""
    __slots__ = ("name", "offset", "bytes", "align", "on_device")

    def __init__(self, name, offset, bytes, align, on_device):
        self.name, self.offset, self.bytes, self.align, self.on_device = name, offset, bytes, align, on_device

    def __repr__(self):
        return "Region(%r, offset=%d, bytes=%d, align=%d, on_device=%d)" % (
            self.name, self.offset, self.bytes, self.align, self.on_device)


class Plan:
    """hisa_plan: config (resolved), regions, device_bytes, host_bytes."""

    def __init__(self, c):
        self.config = Config._from_c(c.config)
        self.regions = [Region(_s(r.name), r.offset, r.bytes, r.align, r.on_device)
                        for r in c.regions[:c.n_regions]]
        self.device_bytes, self.host_bytes = int(c.device_bytes), int(c.host_bytes)

    def __repr__(self):
        return "Plan(device_bytes=%d, host_bytes=%d, %d regions)" % (
            self.device_bytes, self.host_bytes, len(self.regions))


def plan(config=None, **fields):
    """hisa_plan_compute: the memory plan of a configuration, reserving nothing. An invalid one
    raises HisaError with .field and .rule."""
    cfg = _config_of(config, fields)
    p = _capi.hisa_plan()
    err = _capi.lib().hisa_plan_compute(ctypes.byref(cfg._to_c()), ctypes.byref(p))
    if err:
        raise HisaError(err, "hisa_plan_compute", field=_s(p.invalid_field), rule=_s(p.invalid_rule))
    return Plan(p)


class Memory:
    """hisa_memory: caller memory instead of reservations. Each base is an int address or a
    buffer (a numpy array, whose address and size are used); bases must be 256-byte aligned and
    at least the plan's sizes. The runtime keeps a reference to buffers given here."""

    def __init__(self, device_base=None, device_bytes=None, host_base=None, host_bytes=None):
        self.keep = []
        self.device_base, self.device_bytes = self._base(device_base, device_bytes)
        self.host_base, self.host_bytes = self._base(host_base, host_bytes)

    def _base(self, base, nbytes):
        if base is None or isinstance(base, int):
            return base or 0, int(nbytes or 0)
        a = np.asarray(base)
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError("memory: a buffer must be writable and C-contiguous")
        self.keep.append(base)
        return a.ctypes.data, int(a.nbytes if nbytes is None else nbytes)

    def _to_c(self):
        return _capi.hisa_memory(self.device_base or None, self.device_bytes,
                                 self.host_base or None, self.host_bytes)


# --- the runtime --------------------------------------------------------------------------------

_MODES = {"hisa": HISA_MODE_HISA, "flat": HISA_MODE_FLAT}
_Q_FORMATS = {"float32": HISA_Q_F32, "uint16": HISA_Q_BF16, "bfloat16": HISA_Q_BF16,
              "uint8": HISA_Q_FP8, "float8_e4m3fn": HISA_Q_FP8}
_KEYS = {"keys": ("float32",), "keys_bf16": ("uint16", "bfloat16"),
         "codes": ("uint8", "float8_e4m3fn")}


def _mode(mode):
    if isinstance(mode, str):
        if mode.lower() not in _MODES:
            raise ValueError("mode: 'hisa' or 'flat', got %r" % mode)
        return _MODES[mode.lower()]
    if mode not in (HISA_MODE_HISA, HISA_MODE_FLAT):
        raise ValueError("mode: 'hisa' or 'flat' (or HISA_MODE_HISA / HISA_MODE_FLAT), got %r" % mode)
    return int(mode)


def _check(a, dtypes, shapes):
    """a's dtype is one of dtypes and its shape one of shapes (None in a shape: any size)."""
    if a.dtype not in dtypes:
        raise TypeError("%s: expected dtype %s, got %s" % (a.name, " or ".join(dtypes), a.dtype))
    for s in shapes:
        if len(s) == len(a.shape) and all(w is None or w == g for w, g in zip(s, a.shape)):
            return a
    fmt = lambda s: "[%s]" % ", ".join("*" if w is None else str(w) for w in s)
    raise ValueError("%s: expected shape %s, got %s" % (a.name, " or ".join(fmt(s) for s in shapes), fmt(a.shape)))


def _stream_handle(stream):
    """A cudaStream_t as an int: None / 0 (legacy default), an int, or a stream object
    (torch.cuda.Stream: .cuda_stream; CuPy: .ptr)."""
    if stream is None:
        return None
    for attr in ("cuda_stream", "ptr", "handle"):
        if hasattr(stream, attr) and not isinstance(stream, int):
            stream = getattr(stream, attr)
            break
    return int(stream) or None


class Runtime:
    """An open hisa runtime (hisa_open ... hisa_close). Runtime(config) or Runtime(**fields);
    a context manager that closes it on exit. One thread at a time per runtime (hisa.h)."""

    def __init__(self, config=None, memory=None, **fields):
        self._h = None
        cfg = _config_of(config, fields)
        h = ctypes.c_void_p()
        mem = memory._to_c() if memory is not None else None
        self._memory = memory
        lib = _capi.lib()
        err = lib.hisa_open(ctypes.byref(h), ctypes.byref(cfg._to_c()),
                            ctypes.byref(mem) if mem is not None else None)
        if err:
            detail = _s(lib.hisa_open_detail()) or ""
            field = rule = None
            if err in (_capi.HISA_ECONFIG, _capi.HISA_EOVERFLOW):
                p = _capi.hisa_plan()
                lib.hisa_plan_compute(ctypes.byref(cfg._to_c()), ctypes.byref(p))
                field, rule = _s(p.invalid_field), _s(p.invalid_rule)
            raise HisaError(err, "hisa_open", detail=detail, field=field, rule=rule)
        self._h = h
        self._lib = lib
        self._stream = None
        c = lib.hisa_get_config(h).contents
        self.config = Config._from_c(c)  # resolved
        self._B, self._H, self._k = c.block_size, c.n_heads, c.topk
        self._payload = c.payload_bytes
        self.is_cuda = c.device > 0

    # -- lifetime --
    def close(self):
        """hisa_close (idempotent). Arrays from payload_pool() are invalid after it."""
        h, self._h = self._h, None
        if h:
            self._lib.hisa_close(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self):
        return not self._h

    def _rt(self):
        if not self._h:
            raise ValueError("the runtime is closed")
        return self._h

    def _call(self, name, *args):
        err = getattr(self._lib, name)(self._rt(), *args)
        if err:
            detail = ""
            if err in (HISA_EDEVICE, HISA_EPOISONED, HISA_EUNSUPPORTED):
                detail = _s(self._lib.hisa_error_detail(self._h)) or ""
            raise HisaError(err, name, detail=detail)

    @property
    def plan(self):
        """hisa_get_plan: the runtime's Plan."""
        return Plan(self._lib.hisa_get_plan(self._rt()).contents)

    @property
    def error_detail(self):
        """hisa_error_detail: the last HISA_EDEVICE's detail, or ""."""
        return _s(self._lib.hisa_error_detail(self._rt())) or ""

    def set_stream(self, stream):
        """hisa_set_stream: the cudaStream_t for all device work (None: the legacy default); an
        int or a stream object (torch .cuda_stream, CuPy .ptr). A no-op on the CPU backend."""
        handle = _stream_handle(stream)
        self._call("hisa_set_stream", handle)
        self._stream = handle if self.is_cuda else None

    def sync(self):
        """hisa_sync: wait for the runtime's stream."""
        self._call("hisa_sync")

    # -- sequences --
    def seq_open(self):
        """hisa_seq_open: a new, empty sequence's id."""
        s = ctypes.c_int32()
        self._call("hisa_seq_open", ctypes.byref(s))
        return s.value

    def seq_close(self, seq):
        self._call("hisa_seq_close", int(seq))

    def seq_extend(self, seq, n):
        """Reserve n more positions (all-or-nothing)."""
        self._call("hisa_seq_extend", int(seq), int(n))

    def seq_truncate(self, seq, length):
        self._call("hisa_seq_truncate", int(seq), int(length))

    def seq_fork(self, parent, length):
        """hisa_seq_fork: a new sequence holding parent's first `length` positions (complete pages
        shared, read-only; a partial last page copied). Returns the child's id."""
        s = ctypes.c_int32()
        self._call("hisa_seq_fork", int(parent), int(length), ctypes.byref(s))
        return s.value

    def seq_length(self, seq):
        n = ctypes.c_int32()
        self._call("hisa_seq_length", int(seq), ctypes.byref(n))
        return n.value

    def seq_pages(self, seq):
        """The sequence's page ids, int32 [ceil(len / B)]."""
        cap = max(1, -(-self.seq_length(seq) // self._B))
        pages = np.empty(cap, np.int32)
        n = ctypes.c_int32()
        self._call("hisa_seq_pages", int(seq), pages.ctypes.data, cap, ctypes.byref(n))
        return pages[:n.value].copy()

    # -- arrays of one call --
    def _tensors(self, named):
        """{name: Arr} for the call's tensor arguments, and the call's flags (HISA_HOST_IO when
        a CUDA runtime gets host arrays). Device and host arrays cannot be mixed in one call."""
        given = {k: v for k, v in named.items() if v is not None}
        on_dev = {k: _arrays.is_device(v) for k, v in given.items()}
        dev = [k for k, d in on_dev.items() if d]
        if dev and not self.is_cuda:
            raise TypeError("%s: device arrays passed to a CPU runtime (pass numpy arrays)" % ", ".join(dev))
        if dev and len(dev) != len(given):
            raise TypeError("mixing device arrays (%s) and host arrays (%s) in one call" % (
                ", ".join(dev), ", ".join(k for k in given if k not in dev)))
        out = {}
        for k, v in given.items():
            if dev:
                a = _arrays.device(v, k, self._stream)
                want = self.config.device - 1
                if a.device_id is not None and a.device_id != want:
                    raise ValueError("%s: on CUDA device %d, the runtime is on CUDA device %d" % (k, a.device_id, want))
                out[k] = a
            else:
                out[k] = _arrays.host(v, k, writable=(k == "out"))
        flags = HISA_HOST_IO if (self.is_cuda and not dev) else 0
        return out, flags, bool(dev)

    def _write_request(self, layer, n, keys, keys_bf16, codes, scales, payload):
        given = [k for k, v in (("keys", keys), ("keys_bf16", keys_bf16), ("codes", codes)) if v is not None]
        if len(given) != 1:
            raise ValueError("pass exactly one of keys=, keys_bf16=, codes= (got %s)" % (", ".join(given) or "none"))
        if (codes is None) != (scales is None):
            raise ValueError("scales= goes with codes= (and only with it)")
        if payload is not None and self._payload == 0:
            raise ValueError("payload=: the runtime was opened with payload_bytes 0")
        t, flags, _ = self._tensors({"keys": keys, "keys_bf16": keys_bf16, "codes": codes,
                                     "scales": scales, "payload": payload})
        kname = given[0]
        ka = t[kname]
        if n is None:  # write_range: the count is the keys' leading dimension
            if len(ka.shape) != 2:
                raise ValueError("%s: expected shape [n, %d], got %s" % (kname, _D, list(ka.shape)))
            n = ka.shape[0]
        shapes = [(n, _D)] + ([(_D,)] if n == 1 else [])
        _check(ka, _KEYS[kname], shapes)
        if "scales" in t:
            _check(t["scales"], ("float32",), [(n,)])
        if "payload" in t:
            p = t["payload"]
            nbytes = p.np.nbytes if p.np is not None else int(np.prod(p.shape)) * _arrays._ITEMSIZE.get(p.dtype, 0)
            if not p.shape or p.shape[0] != n or nbytes != n * self._payload:
                raise ValueError("payload: expected [%d, %d] bytes (payload_bytes %d per token), got %s %s"
                                 % (n, self._payload, self._payload, p.dtype, list(p.shape)))
        req = _capi.hisa_write(layer=int(layer), n_tokens=n, flags=flags)
        for k, a in t.items():
            setattr(req, k, a.ptr or None)
        return req, t, n

    # -- writes --
    def write_keys(self, layer, seq_ids, keys=None, keys_bf16=None, codes=None, scales=None,
                   positions=None, payload=None):
        """hisa_write_keys: one token per sequence (distinct seq_ids), at positions (default each
        sequence's last position). Exactly one of keys (float32 [n, 128]), keys_bf16 (bf16 bits
        [n, 128]) or codes (e4m3fn [n, 128], fp8 runtimes) with scales (float32 [n])."""
        ids = _arrays.host_i32(seq_ids, "seq_ids")
        pos = None if positions is None else _arrays.host_i32(positions, "positions")
        if pos is not None and pos.shape != ids.shape:
            raise ValueError("positions: expected %d entries (one per seq_id), got %d" % (ids.size, pos.size))
        req, keep, n = self._write_request(layer, ids.size, keys, keys_bf16, codes, scales, payload)
        req.seq_ids = ids.ctypes.data
        req.positions = None if pos is None else pos.ctypes.data
        self._call("hisa_write_keys", ctypes.byref(req))
        del keep

    def write_range(self, seq, pos0, layer, keys=None, keys_bf16=None, codes=None, scales=None, payload=None):
        """hisa_write_range: keys of positions pos0 .. pos0 + n - 1 of one sequence (n = the
        keys' leading dimension, up to max_prefill_queries)."""
        req, keep, n = self._write_request(layer, None, keys, keys_bf16, codes, scales, payload)
        self._call("hisa_write_range", int(seq), int(pos0), ctypes.byref(req))
        del keep

    # -- selection --
    def _select_arrays(self, q, w, out, shapes):
        """Adapt and check q, w and out; shapes(n_lead) gives (q shapes, w shapes, the shape of a
        new out, out shapes) from q's leading dimension. Allocates out when it is None."""
        t, flags, dev = self._tensors({"q": q, "w": w, "out": out})
        lead = t["q"].shape[0] if t["q"].shape else 0
        q_shapes, w_shapes, out_shape, out_shapes = shapes(lead)
        qa = _check(t["q"], tuple(_Q_FORMATS), q_shapes)
        _check(t["w"], ("float32",), w_shapes)
        if out is None:
            if dev:
                out = _arrays.empty_like_framework(t["q"].source, out_shape, "out")
                t["out"] = _arrays.device(out, "out", self._stream)
            else:
                out = np.empty(out_shape, np.int32)
                t["out"] = _arrays.host(out, "out", writable=True)
        _check(t["out"], ("int32",), out_shapes)
        return t, flags, _Q_FORMATS[qa.dtype], out, lead

    def select_decode(self, layer, seq_ids, q, w, mode="hisa", next_n=1, slots=False, out=None):
        """hisa_select_decode: next_n queries per sequence at its last next_n positions.
        q [n, next_n, H, 128] (or [n, H, 128] when next_n is 1) in float32 / bf16 / fp8 (the
        format follows the dtype), w float32 [n, next_n, H] (or [n, H]). Returns out, int32
        [n, next_n, k] (or [n, k] when next_n is 1): positions (slots page * B + offset with
        slots=True), -1 padded."""
        ids = _arrays.host_i32(seq_ids, "seq_ids")
        n, H, k, nn = ids.size, self._H, self._k, int(next_n)
        if not 1 <= nn <= HISA_NEXT_N_MAX:
            raise ValueError("next_n: 1..%d, got %d" % (HISA_NEXT_N_MAX, nn))
        one = nn == 1
        t, flags, qf, out, _ = self._select_arrays(q, w, out, lambda lead: (
            [(n, nn, H, _D)] + ([(n, H, _D)] if one else []),
            [(n, nn, H)] + ([(n, H)] if one else []),
            (n, k) if one else (n, nn, k),
            [(n, nn, k)] + ([(n, k)] if one else [])))
        req = _capi.hisa_decode(layer=int(layer), mode=_mode(mode), n_seqs=n, seq_ids=ids.ctypes.data,
                                q=t["q"].ptr, w=t["w"].ptr, out=t["out"].ptr,
                                flags=flags | (HISA_SLOTS if slots else 0), q_format=qf, next_n=nn)
        self._call("hisa_select_decode", ctypes.byref(req))
        del t
        return out

    def select_prefill(self, layer, q, w, seq=None, t0=None, chunks=None, mode="hisa", slots=False, out=None):
        """hisa_select_prefill: causal queries, either one chunk (seq=, t0=: queries at t0 ..
        t0 + n - 1, n = q's leading dimension) or chunks=[(seq, t0, n_q), ...] whose queries are
        concatenated in chunk order. q [total, H, 128], w float32 [total, H]; returns out int32
        [total, k]."""
        if (chunks is None) == (seq is None):
            raise ValueError("pass seq= and t0= (one chunk) or chunks=[(seq, t0, n_q), ...]")
        if chunks is None and t0 is None:
            raise ValueError("t0= goes with seq=")
        H, k = self._H, self._k
        t, flags, qf, out, total = self._select_arrays(
            q, w, out, lambda n: ([(n, H, _D)], [(n, H)], (n, k), [(n, k)]))
        if chunks is not None:
            table = np.asarray(chunks, dtype=np.int64).reshape(-1, 3)
            if table.shape[0] == 0:
                raise ValueError("chunks: at least one (seq, t0, n_q)")
            seqs, t0s, nqs = (_arrays.host_i32(table[:, i], name) for i, name in enumerate(("seqs", "t0s", "n_qs")))
            if int(table[:, 2].sum()) != total:
                raise ValueError("chunks: their n_q add up to %d, q holds %d queries" % (int(table[:, 2].sum()), total))
        req = _capi.hisa_prefill(layer=int(layer), mode=_mode(mode), q=t["q"].ptr, w=t["w"].ptr,
                                 out=t["out"].ptr, flags=flags | (HISA_SLOTS if slots else 0), q_format=qf)
        if chunks is None:
            req.seq, req.t0, req.n_q = int(seq), int(t0), total
        else:
            req.n_chunks = seqs.size
            req.seqs, req.t0s, req.n_qs = seqs.ctypes.data, t0s.ctypes.data, nqs.ctypes.data
        self._call("hisa_select_prefill", ctypes.byref(req))
        del t
        return out

    # -- memory --
    def payload_pool(self, layer):
        """hisa_payload_pool: layer's payload pool, [n_pages * B, payload_bytes] indexed by slot.
        CPU: a uint8 numpy view (valid until close); CUDA: the device address (an int)."""
        base = ctypes.c_void_p()
        self._call("hisa_payload_pool", int(layer), ctypes.byref(base))
        if self.is_cuda:
            return base.value
        rows = self.config.n_pages * self._B
        buf = (ctypes.c_uint8 * (rows * self._payload)).from_address(base.value)
        return np.frombuffer(buf, dtype=np.uint8).reshape(rows, self._payload)

    def memory_report(self):
        """hisa_memory_report_get, as a dict of its fields."""
        r = _capi.hisa_memory_report()
        self._call("hisa_memory_report_get", ctypes.byref(r))
        return {f: int(getattr(r, f)) for f, _ in _capi.hisa_memory_report._fields_}

    def __repr__(self):
        return "<hisa.Runtime %s %s>" % ("closed" if self.closed else "open", self.config)
