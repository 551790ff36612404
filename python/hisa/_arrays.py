"""_arrays: turning the caller's arrays into (pointer, dtype, shape) for one call.

Host arrays are numpy arrays (or anything numpy.asarray takes; bf16 / fp8 host tensors that numpy
cannot hold are read through DLPack). Device arrays are anything with DLPack (__dlpack__ and
__dlpack_device__: torch, CuPy, JAX) or __cuda_array_interface__ (CuPy, Numba, torch), tried in
that order; a torch CUDA tensor whose dtype neither protocol describes (float8_e4m3fn in older
torch) is read through its own data_ptr(). Device data is used on the runtime's stream: DLPack
makes the producer's stream wait for it (the protocol's stream argument), a CUDA Array Interface
v3 `stream` other than the runtime's is waited for with an event (CUDA driver API).
"""
import ctypes
import sys

import numpy as np

# DLPack (dlpack.h): device types and data type codes.
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13
_DL_DEVICE_TYPES = (_DL_CUDA, _DL_CUDA_MANAGED)
_DL_HOST_TYPES = (_DL_CPU, _DL_CUDA_HOST)
_DL_DTYPES = {
    (0, 8): "int8", (0, 16): "int16", (0, 32): "int32", (0, 64): "int64",
    (1, 8): "uint8", (1, 16): "uint16", (1, 32): "uint32", (1, 64): "uint64",
    (2, 16): "float16", (2, 32): "float32", (2, 64): "float64",
    (4, 16): "bfloat16", (6, 8): "bool",
    (10, 8): "float8_e4m3fn", (12, 8): "float8_e5m2",
}
_ITEMSIZE = {"int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4,
             "uint64": 8, "float16": 2, "float32": 4, "float64": 8, "bfloat16": 2, "bool": 1,
             "float8_e4m3fn": 1, "float8_e5m2": 1}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]


class Arr:
    """One array of a call: where it is and what it holds. `keep` holds what must stay alive
    until the call returns (the source object, a DLPack capsule, a contiguous copy)."""
    __slots__ = ("name", "ptr", "dtype", "shape", "device", "device_id", "np", "keep", "source")

    def __init__(self, name, ptr, dtype, shape, device, device_id=None, arr=None, keep=(), source=None):
        self.name, self.ptr, self.dtype, self.shape = name, ptr, dtype, tuple(int(s) for s in shape)
        self.device, self.device_id, self.np, self.keep, self.source = device, device_id, arr, keep, source


def _c_contiguous(shape, strides, itemsize):
    """strides in bytes; dims of size 1 may have any stride."""
    if strides is None:
        return True
    want = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n == 0:
            return True
        if n != 1 and s != want:
            return False
        want *= n
    return True


def _cai(obj):
    """The __cuda_array_interface__ dict, or None (torch raises TypeError for dtypes it lacks)."""
    try:
        return obj.__cuda_array_interface__
    except (AttributeError, TypeError, RuntimeError, ValueError):
        return None


def _dlpack_device(obj):
    fn = getattr(obj, "__dlpack_device__", None)
    if fn is None or isinstance(obj, np.ndarray):
        return None
    try:
        dev = fn()
        return int(dev[0]), int(dev[1])
    except Exception:  # a producer that cannot say: treat as having no DLPack
        return None


def _is_torch(obj):
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "data_ptr")


def is_device(obj):
    """True when obj lives in GPU memory (DLPack CUDA / managed, a CUDA Array Interface, torch
    .is_cuda); numpy arrays, lists and host tensors are not."""
    if obj is None or isinstance(obj, np.ndarray):
        return False
    dev = _dlpack_device(obj)
    if dev is not None:
        return dev[0] in _DL_DEVICE_TYPES
    if _cai(obj) is not None:
        return True
    return bool(getattr(obj, "is_cuda", False))


# --- host ---------------------------------------------------------------------------------------

def _from_dlpack(obj, name, stream, device):
    """Read obj through its DLPack capsule (not consumed: the capsule's destructor releases it)."""
    capsule = obj.__dlpack__() if stream is None else obj.__dlpack__(stream=stream)
    ptr = _capsule_get(capsule, b"dltensor")
    if not ptr:
        raise TypeError("%s: __dlpack__ did not return a 'dltensor' capsule" % name)
    t = _DLManagedTensor.from_address(ptr).dl_tensor
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    dtype = _DL_DTYPES.get((code, bits), "dlpack(code=%d, bits=%d)" % (code, bits))
    if lanes != 1:
        dtype = "%s x%d lanes" % (dtype, lanes)
    shape = tuple(t.shape[i] for i in range(t.ndim))
    item = max(1, bits * lanes // 8)
    strides = None if not t.strides else tuple(t.strides[i] * item for i in range(t.ndim))
    if not _c_contiguous(shape, strides, item):
        raise ValueError("%s: a %s array must be C-contiguous (strides %s for shape %s)"
                         % (name, "device" if device else "host", strides, shape))
    dev_type, dev_id = t.device.device_type, t.device.device_id
    is_dev = dev_type in _DL_DEVICE_TYPES
    if is_dev != device:
        raise TypeError("%s: DLPack device type %d where %s memory is wanted"
                        % (name, dev_type, "device" if device else "host"))
    return Arr(name, (t.data or 0) + t.byte_offset, dtype, shape, is_dev, dev_id if is_dev else None,
               keep=(obj, capsule), source=obj)


def host(obj, name, writable=False):
    """A host array: numpy when numpy can hold it (a C-contiguous, aligned, native-order copy only
    when the array is not already one), else through DLPack (bf16 / fp8 host tensors)."""
    if isinstance(obj, np.ndarray):
        a = obj
    else:
        try:
            a = np.asarray(obj)
        except (TypeError, ValueError, RuntimeError, BufferError):
            if _dlpack_device(obj) is not None:
                return _from_dlpack(obj, name, None, False)
            raise
        if a.dtype == object:
            raise TypeError("%s: cannot use %s as an array" % (name, type(obj).__name__))
    if writable:
        if not (a.flags.c_contiguous and a.flags.aligned and a.flags.writeable and a.dtype.isnative):
            raise ValueError("%s: the output array must be writable, aligned, native-order and "
                             "C-contiguous" % name)
    elif not (a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative):
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    return Arr(name, a.ctypes.data, a.dtype.name, a.shape, False, arr=a, keep=(obj, a), source=obj)


def host_i32(values, name):
    """Sequence ids, positions, chunk tables: host int32, from an int, a list or an integer array."""
    a = np.asarray(values)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError("%s: expected a 1-D list of integers, got shape %s" % (name, a.shape))
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError("%s: expected integers, got %s" % (name, a.dtype))
    if a.size and (a.min() < -2**31 or a.max() >= 2**31):
        raise ValueError("%s: values outside int32" % name)
    return np.ascontiguousarray(a, dtype=np.int32)


# --- device -------------------------------------------------------------------------------------

_CAI_KINDS = {("f", 2): "float16", ("f", 4): "float32", ("f", 8): "float64",
              ("u", 1): "uint8", ("u", 2): "uint16", ("u", 4): "uint32", ("u", 8): "uint64",
              ("i", 1): "int8", ("i", 2): "int16", ("i", 4): "int32", ("i", 8): "int64",
              ("b", 1): "bool"}


def _same_stream(a, b):
    norm = lambda s: 1 if s in (None, 0, 1) else int(s)  # NULL is the legacy default stream (1)
    return norm(a) == norm(b)


_cuda_driver = None


def _stream_wait(producer, consumer):
    """Make `consumer` wait for the work queued so far on `producer` (cuEventRecord +
    cuStreamWaitEvent, CUDA driver API: the same handles as the runtime API's)."""
    global _cuda_driver
    if _cuda_driver is None:
        d = ctypes.CDLL("libcuda.so.1")
        d.cuEventCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        d.cuEventRecord.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        d.cuStreamWaitEvent.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        d.cuEventDestroy_v2.argtypes = [ctypes.c_void_p]
        _cuda_driver = d
    d = _cuda_driver
    ev = ctypes.c_void_p()
    r = d.cuEventCreate(ctypes.byref(ev), 2)  # CU_EVENT_DISABLE_TIMING
    if r == 0:
        r = d.cuEventRecord(ev, ctypes.c_void_p(producer)) or \
            d.cuStreamWaitEvent(ctypes.c_void_p(consumer or 0), ev, 0)
        d.cuEventDestroy_v2(ev)
    if r != 0:
        raise RuntimeError("waiting for the array's stream failed: CUresult %d" % r)


def _from_cai(obj, cai, name, stream):
    typestr = cai["typestr"]
    if typestr[0] == ">":
        raise TypeError("%s: big-endian device data" % name)
    dtype = _CAI_KINDS.get((typestr[1], int(typestr[2:])), "cai(%s)" % typestr)
    shape = tuple(int(s) for s in cai["shape"])
    item = int(typestr[2:])
    strides = cai.get("strides")
    if not _c_contiguous(shape, None if strides is None else tuple(strides), item):
        raise ValueError("%s: a device array must be C-contiguous (strides %s for shape %s)"
                         % (name, strides, shape))
    producer = cai.get("stream")
    if producer is not None and not _same_stream(producer, stream):
        _stream_wait(int(producer), None if stream in (None, 1) else int(stream))
    ptr = int(cai["data"][0] or 0)
    return Arr(name, ptr, dtype, shape, True, None, keep=(obj,), source=obj)


def _from_torch(t, name, stream):
    """A torch CUDA tensor through its own attributes (dtypes DLPack / CAI lack, e.g. fp8)."""
    if t.requires_grad:
        raise TypeError("%s: the tensor requires grad; pass tensor.detach()" % name)
    if not t.is_contiguous():
        raise ValueError("%s: a device tensor must be contiguous" % name)
    import torch
    ours = torch.cuda.ExternalStream(stream, device=t.device) if stream not in (None, 0, 1) \
        else torch.cuda.default_stream(t.device)
    cur = torch.cuda.current_stream(t.device)
    if ours != cur:
        ev = torch.cuda.Event()
        ev.record(cur)
        ours.wait_event(ev)
    return Arr(name, int(t.data_ptr()), str(t.dtype).replace("torch.", ""), tuple(t.shape), True,
               t.device.index, keep=(t,), source=t)


def device(obj, name, stream):
    """A device array by pointer. `stream` is the runtime's (an int; None for the legacy
    default): the producer's pending work on the array is ordered before it."""
    errors = []
    dev = _dlpack_device(obj)
    if dev is not None and dev[0] in _DL_DEVICE_TYPES:
        try:
            return _from_dlpack(obj, name, 1 if stream in (None, 0) else int(stream), True)
        except (BufferError, RuntimeError, TypeError) as e:  # e.g. a dtype DLPack cannot carry
            errors.append("__dlpack__: %s" % e)
    cai = _cai(obj)
    if cai is not None:
        return _from_cai(obj, cai, name, stream)
    if _is_torch(obj) and getattr(obj, "is_cuda", False):
        return _from_torch(obj, name, stream)
    raise TypeError("%s: %s is not a device array (no usable DLPack or __cuda_array_interface__%s)"
                    % (name, type(obj).__name__, "; " + "; ".join(errors) if errors else ""))


def empty_like_framework(like, shape, name):
    """A new int32 device array from the framework `like` comes from (torch, CuPy), on its device."""
    root = type(like).__module__.split(".")[0]
    if root == "torch":
        torch = sys.modules["torch"]
        return torch.empty(shape, dtype=torch.int32, device=like.device)
    if root == "cupy":
        cupy = sys.modules["cupy"]
        with like.device:
            return cupy.empty(shape, dtype=cupy.int32)
    raise TypeError("%s: pass out= (a device int32 array of shape %s): cannot allocate one like a %s"
                    % (name, shape, type(like).__name__))
