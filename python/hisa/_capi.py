"""_capi: the ctypes mirror of runtime/hisa.h (constants, structs, prototypes) and the loader.

Everything here follows hisa.h field by field and in order; python/tests/test_hisa.py compiles a
small C program against the header and checks every size, offset and constant below against it,
and that every function the header declares is bound here with its parameter count.
"""
import ctypes
import ctypes.util
import os
import threading

# --- constants (hisa.h) -------------------------------------------------------------------------

HISA_VERSION_MAJOR = 0
HISA_VERSION_MINOR = 1
HISA_VERSION_PATCH = 0

HISA_HEAD_DIM = 128

HISA_MAX_HEADS = 128
HISA_MAX_BATCH = 256
HISA_MAX_PREFILL_QUERIES = 16384
HISA_MAX_CONTEXT = 1 << 24
HISA_MAX_TOPK = 16384
HISA_MAX_TOP_BLOCKS = 1024

HISA_OK = 0
HISA_EINVAL = -1
HISA_ECONFIG = -2
HISA_EOVERFLOW = -3
HISA_ENOMEM = -4
HISA_ENODEVICE = -5
HISA_EDEVICE = -6
HISA_EPOISONED = -7
HISA_ESEQ = -8
HISA_ESEQFULL = -9
HISA_EPOOL = -10
HISA_ERANGE = -11
HISA_ELIMIT = -12
HISA_EFORMAT = -13
HISA_EUNWRITTEN = -14
HISA_ESHARED = -15
HISA_EUNSUPPORTED = -16

HISA_KEY_DEFAULT = 0
HISA_KEY_FP8 = 1
HISA_KEY_BF16 = 2
HISA_KERNELS_AUTO = 0
HISA_KERNELS_PORTABLE = 1
HISA_KERNELS_HOPPER = 2
HISA_FP8_MMA_EXACT = 0
HISA_FP8_MMA_NATIVE = 1

HISA_Q_F32 = 0
HISA_Q_BF16 = 1
HISA_Q_FP8 = 2

HISA_NEXT_N_MAX = 4

HISA_MODE_HISA = 0
HISA_MODE_FLAT = 1

HISA_DEVICE_CPU = 0


def HISA_DEVICE_CUDA(ordinal):
    """The device field of CUDA device `ordinal` (hisa.h: ordinal + 1)."""
    return int(ordinal) + 1


HISA_HOST_IO = 1
HISA_SLOTS = 2

HISA_PLAN_REGIONS_MAX = 40

# Every integer constant above, by its C name (the layout test compares each with the header).
CONSTANTS = {k: v for k, v in globals().items() if k.startswith("HISA_") and isinstance(v, int)}

__all__ = sorted(CONSTANTS) + ["HISA_DEVICE_CUDA"]  # what `from hisa._capi import *` gives

# The error codes by value, named as in the header.
ERROR_NAMES = {v: k for k, v in CONSTANTS.items()
               if k.startswith("HISA_E") or k == "HISA_OK"}

# --- structs (hisa.h, same order and types) -----------------------------------------------------

i32, u32, i64, u64 = ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64
c_enum = ctypes.c_int  # hisa_mode: a C enum, int-sized on every ABI hisa builds for
vp = ctypes.c_void_p


class hisa_config(ctypes.Structure):
    _fields_ = [
        ("n_layers", i32),
        ("n_heads", i32),
        ("head_dim", i32),
        ("block_size", i32),
        ("top_blocks", i32),
        ("topk", i32),
        ("key_format", i32),
        ("payload_bytes", i32),
        ("max_seqs", i32),
        ("max_context", i32),
        ("n_pages", i32),
        ("max_batch", i32),
        ("max_prefill_queries", i32),
        ("device", i32),
        ("kernels", i32),
        ("fp8_mma", i32),
    ]


class hisa_region(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("offset", u64),
        ("bytes", u64),
        ("align", u32),
        ("on_device", i32),
    ]


class hisa_plan(ctypes.Structure):
    _fields_ = [
        ("config", hisa_config),
        ("invalid_field", ctypes.c_char_p),
        ("invalid_rule", ctypes.c_char_p),
        ("n_regions", i32),
        ("regions", hisa_region * HISA_PLAN_REGIONS_MAX),
        ("device_bytes", u64),
        ("host_bytes", u64),
    ]


class hisa_memory(ctypes.Structure):
    _fields_ = [
        ("device_base", vp),
        ("device_bytes", u64),
        ("host_base", vp),
        ("host_bytes", u64),
    ]


class hisa_memory_report(ctypes.Structure):
    _fields_ = [
        ("device_bytes", u64),
        ("host_bytes", u64),
        ("pages_total", i32),
        ("pages_used", i32),
        ("pages_free", i32),
        ("pages_high_water", i32),
        ("pages_shared", i32),
        ("seqs_open", i32),
        ("seqs_high_water", i32),
        ("tokens", i64),
        ("poisoned", i32),
    ]


class hisa_write(ctypes.Structure):
    _fields_ = [
        ("layer", i32),
        ("n_tokens", i32),
        ("seq_ids", vp),      # const int32_t *, host
        ("positions", vp),    # const int32_t *, host, or NULL
        ("keys", vp),         # const float *
        ("keys_bf16", vp),    # const uint16_t *
        ("codes", vp),        # const uint8_t *
        ("scales", vp),       # const float *
        ("payload", vp),      # const void *
        ("flags", u32),
    ]


class hisa_decode(ctypes.Structure):
    _fields_ = [
        ("layer", i32),
        ("mode", c_enum),
        ("n_seqs", i32),
        ("seq_ids", vp),      # const int32_t *, host
        ("q", vp),
        ("w", vp),            # const float *
        ("out", vp),          # int32_t *
        ("flags", u32),
        ("q_format", i32),
        ("next_n", i32),
    ]


class hisa_prefill(ctypes.Structure):
    _fields_ = [
        ("layer", i32),
        ("mode", c_enum),
        ("seq", i32),
        ("t0", i32),
        ("n_q", i32),
        ("q", vp),
        ("w", vp),            # const float *
        ("out", vp),          # int32_t *
        ("flags", u32),
        ("q_format", i32),
        ("n_chunks", i32),
        ("seqs", vp),         # const int32_t *, host
        ("t0s", vp),          # const int32_t *, host
        ("n_qs", vp),         # const int32_t *, host
    ]


# The mirrored structs by their C names (the layout test walks this).
STRUCTS = {cls.__name__: cls for cls in
           (hisa_config, hisa_region, hisa_plan, hisa_memory, hisa_memory_report,
            hisa_write, hisa_decode, hisa_prefill)}

# --- functions (hisa.h): name -> (restype, argtypes) --------------------------------------------

P = ctypes.POINTER
rt_p = vp  # hisa_runtime * (opaque)
i32p = P(i32)

PROTOTYPES = {
    "hisa_version": (ctypes.c_char_p, []),
    "hisa_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "hisa_config_resolve": (ctypes.c_int, [P(hisa_config), P(hisa_config)]),
    "hisa_plan_compute": (ctypes.c_int, [P(hisa_config), P(hisa_plan)]),
    "hisa_open": (ctypes.c_int, [P(rt_p), P(hisa_config), P(hisa_memory)]),
    "hisa_open_detail": (ctypes.c_char_p, []),
    "hisa_close": (None, [rt_p]),
    "hisa_get_config": (P(hisa_config), [rt_p]),
    "hisa_get_plan": (P(hisa_plan), [rt_p]),
    "hisa_error_detail": (ctypes.c_char_p, [rt_p]),
    "hisa_set_stream": (ctypes.c_int, [rt_p, vp]),
    "hisa_sync": (ctypes.c_int, [rt_p]),
    "hisa_seq_open": (ctypes.c_int, [rt_p, i32p]),
    "hisa_seq_close": (ctypes.c_int, [rt_p, i32]),
    "hisa_seq_extend": (ctypes.c_int, [rt_p, i32, i32]),
    "hisa_seq_truncate": (ctypes.c_int, [rt_p, i32, i32]),
    "hisa_seq_fork": (ctypes.c_int, [rt_p, i32, i32, i32p]),
    "hisa_seq_length": (ctypes.c_int, [rt_p, i32, i32p]),
    "hisa_seq_pages": (ctypes.c_int, [rt_p, i32, vp, i32, i32p]),
    "hisa_write_keys": (ctypes.c_int, [rt_p, P(hisa_write)]),
    "hisa_write_range": (ctypes.c_int, [rt_p, i32, i32, P(hisa_write)]),
    "hisa_select_decode": (ctypes.c_int, [rt_p, P(hisa_decode)]),
    "hisa_select_prefill": (ctypes.c_int, [rt_p, P(hisa_prefill)]),
    "hisa_payload_pool": (ctypes.c_int, [rt_p, i32, P(vp)]),
    "hisa_memory_report_get": (ctypes.c_int, [rt_p, P(hisa_memory_report)]),
}

# --- loading ------------------------------------------------------------------------------------

_lock = threading.Lock()
_lib = None
_lib_path = None


def candidates():
    """Where the library is looked for, in order: $HISA_LIB, BUILD/libhisa.so of this checkout
    (python/hisa/../../build), then the system's (ctypes.util.find_library('hisa'))."""
    out = []
    env = os.environ.get("HISA_LIB")
    if env:
        out.append(env)
    here = os.path.dirname(os.path.abspath(__file__))
    out.append(os.path.normpath(os.path.join(here, "..", "..", "build", "libhisa.so")))
    found = ctypes.util.find_library("hisa")
    if found:
        out.append(found)
    return out


def lib():
    """The loaded library with every prototype set (loaded on first use)."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        env = os.environ.get("HISA_LIB")
        for path in candidates():
            if path != env and os.sep in path and not os.path.exists(path):
                tried.append("%s (missing)" % path)
                continue
            try:
                handle = ctypes.CDLL(path)
            except OSError as e:
                tried.append("%s (%s)" % (path, e))
                if path == env:  # an explicit choice that fails is an error, not a fallback
                    break
                continue
            missing = [n for n in PROTOTYPES if not hasattr(handle, n)]
            if missing:
                raise OSError("%s lacks %s: built from another hisa.h?" % (path, ", ".join(missing)))
            for name, (restype, argtypes) in PROTOTYPES.items():
                fn = getattr(handle, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _lib, _lib_path = handle, path
            return _lib
        raise OSError("cannot load libhisa.so (build it with `make`, or set HISA_LIB); tried: "
                      + "; ".join(tried or ["nothing"]))


def lib_path():
    """The path the library was loaded from (loads it)."""
    lib()
    return _lib_path
