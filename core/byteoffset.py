"""CBF byte-offset decompression with bounds checks (numba), for the guarded CBF reader.

fabio's decoder reads past the end of a cut stream and returns fewer pixels than
asked without saying so; this one stops at the end of the data, reports how far
it got, and never writes beyond the output.
"""

from __future__ import annotations

import numba
import numpy as np

from difframe import jit_cache
from difframe.errors import DataError

jit_cache.install()


@numba.njit(cache=True, nogil=True)
def _decode(src, out):
    """Fill ``out`` from ``src``; returns (pixels written, bytes consumed, 1 if an escape was cut)."""
    n = src.shape[0]
    i = 0
    k = 0
    value = np.int64(0)
    while k < out.shape[0] and i < n:
        byte = np.int64(src[i])
        if byte != 0x80:
            value += byte - 256 if byte > 127 else byte
            i += 1
        else:
            if i + 3 > n:
                return k, i, 1
            v16 = np.int64(src[i + 1]) | (np.int64(src[i + 2]) << 8)
            if v16 != 0x8000:
                value += v16 - 65536 if v16 > 32767 else v16
                i += 3
            else:
                if i + 7 > n:
                    return k, i, 1
                v32 = np.int64(0)
                for b in range(4):
                    v32 |= np.int64(src[i + 3 + b]) << (8 * b)
                if v32 != 0x80000000:
                    value += v32 - 4294967296 if v32 > 2147483647 else v32
                    i += 7
                else:
                    if i + 15 > n:
                        return k, i, 1
                    v64 = np.uint64(0)
                    for b in range(8):
                        v64 |= np.uint64(src[i + 7 + b]) << np.uint64(8 * b)
                    value += np.int64(v64)
                    i += 15
        out[k] = value
        k += 1
    return k, i, 0


def decode_byte_offset(data: bytes, shape: tuple[int, int], dtype, path) -> np.ndarray:
    """The (rows, cols) image of a CBF ``x-CBF_BYTE_OFFSET`` section; DataError unless the
    section holds exactly that many pixels."""
    out = np.empty(shape[0] * shape[1], dtype=dtype)
    written, used, cut = _decode(np.frombuffer(data, dtype=np.uint8), out)
    if cut or written < out.size:
        raise DataError(f"CBF frame {path} is corrupt: its binary section ({len(data)} bytes) holds {written} "
                        f"pixels, its header declares {shape[0]} x {shape[1]} = {out.size}")
    if used != len(data):
        raise DataError(f"CBF frame {path} is corrupt: its {shape[0]} x {shape[1]} pixels end after {used} "
                        f"bytes of its {len(data)}-byte binary section (X-Binary-Size)")
    return out.reshape(shape)
