#!/usr/bin/env python3
"""Regenerate the small seed corpora of the fuzzers (tests/fuzz/): tests/corpus/npy/*.npy and
tests/corpus/api/*.bin. The byte layout of an api seed follows tests/fuzz/fuzz_api.c.
Files named regress_* are inputs the fuzzers once failed on, kept as they were found."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def npy(descr, shape, data, ver=1, fortran=False):
    sh = '(' + ', '.join(str(s) for s in shape) + (',' if len(shape) == 1 else '') + ')'
    h = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, 'True' if fortran else 'False', sh)
    pre = 10 if ver == 1 else 12
    tot = pre + len(h) + 1
    h = h + ' ' * ((tot + 63) // 64 * 64 - tot) + '\n'
    ln = struct.pack('<H', len(h)) if ver == 1 else struct.pack('<I', len(h))
    return b'\x93NUMPY' + bytes([ver, 0]) + ln + h.encode() + data


NPY = {
    'f4_2x3.npy': npy('<f4', (2, 3), struct.pack('<6f', 1, -2, 3.5, 0, 1e30, -0.0)),
    'i4_5.npy': npy('<i4', (5,), struct.pack('<5i', 0, -1, 7, 2**31 - 1, -2**31)),
    'u1_2x2x2.npy': npy('|u1', (2, 2, 2), bytes(range(8))),
    'scalar_f4.npy': npy('<f4', (), struct.pack('<f', 3.0)),
    'empty_0x128.npy': npy('<f4', (0, 128), b''),
    'v2_f4_4.npy': npy('<f4', (4,), struct.pack('<4f', 1, 2, 3, 4), ver=2),
    'bad_f8.npy': npy('<f8', (1,), struct.pack('<d', 1.0)),
    'bad_fortran.npy': npy('<f4', (1,), struct.pack('<f', 1.0), fortran=True),
    'bad_truncated.npy': npy('<f4', (3, 4), struct.pack('<3f', 1, 2, 3)),
    'bad_huge_shape.npy': npy('<f4', (2**40, 2**40), b''),
    'dims8_u1.npy': npy('|u1', (1,) * 8, b'\x05'),
}


def cfg(sel, k, seqs, ctx, pages, batch, prefill, payload=None):
    b = bytes([sel]) + struct.pack('<H', k) + bytes([seqs]) + struct.pack('<H', ctx)
    b += bytes([pages, batch, prefill])
    if sel & 0x40:
        b += bytes([payload or 0])
    return b


OPEN, CLOSE, EXTEND, TRUNC, WRITE, RANGE, DECODE, PREFILL, READ = 0, 1, 2, 4, 5, 7, 8, 10, 11


def session(heads):
    """open two sequences, fill them, select, overwrite, roll back, close."""
    w = bytes([16] * heads)
    ops = [OPEN, OPEN, EXTEND, 0, 60, EXTEND, 64, 40,
           RANGE, 0, 0, 0, 59, 0, 7,                  # seq a: positions 0..59, layer 0
           RANGE, 64, 0, 0, 39, 1, 9,                 # seq b: positions 0..39
           DECODE, 0x00, 0, 0, 3] + list(w) + [0,     # decode seq a, hisa
           DECODE, 0x26, 0, 0, 5] + list(w) + [0,     # flat, slots
           PREFILL, 0, 0, 10, 5, 0, 9] + list(w) * 6 + [
           WRITE, 0x20, 0, 17, 0, 0, 4,               # overwrite position 17 of seq a
           TRUNC, 0, 33, DECODE, 0x00, 0, 0, 3] + list(w) + [0,
           EXTEND, 0, 100, READ, 0, 5, 1, CLOSE, 0, CLOSE, 0]
    return bytes(ops)


API = {
    'session_fp8.bin': cfg(0x00, 40, 1, 200, 10, 1, 63) + session(4),
    'session_bf16_b64.bin': cfg(0x82, 300, 2, 250, 7, 3, 40) + session(4),
    'session_payload.bin': cfg(0x45, 100, 3, 310, 23, 3, 63, 8) + session(4),
    'pool_exhaustion.bin': cfg(0x01, 20, 3, 319, 3, 2, 30)
    + bytes([OPEN, OPEN, EXTEND, 0, 80, EXTEND, 0, 80, EXTEND, 64, 80, TRUNC, 0, 0, EXTEND, 64, 80]),
    'raw_config.bin': bytes([0xff]) + bytes([2, 4, 0, 32, 4, 48, 2, 8, 3, 100, 9, 2, 16, 0]),
}

for name, data in NPY.items():
    with open(os.path.join(HERE, 'npy', name), 'wb') as f:
        f.write(data)
for name, data in API.items():
    with open(os.path.join(HERE, 'api', name), 'wb') as f:
        f.write(data)
