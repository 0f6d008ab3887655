"""A natural logarithm that numba's loops vectorise: the Poisson data fit's per-pixel log.

Why: every engine reports the Poisson deviance of every frame every
iteration, and ML's Poisson likelihood needs a log per pixel too.  numba
calls the C library's scalar ``log`` for ``np.log`` (llvmlite from PyPI has
no vector maths library), which kept the loops around it scalar: the
deviance took two thirds of DM's Fourier-step kernel on 128 x 128 frames.
:func:`vlog` is plain arithmetic, so the loops that inline it vectorise.

Method: x = 2^e m with m in [sqrt(1/2), sqrt(2)) read off the float's bits,
then ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1),
|s| <= 0.172: five terms give float32's precision, eleven float64's
(tests/core/ptycho/test_vlog.py: within 3 ulp of numpy.log from the
smallest subnormal number to the largest finite one).  Its domain is the
positive finite numbers, which is what the data fit takes (model
intensities are kept above a tiny floor); NaN gives NaN, so a diverging
model still shows; 0, negative numbers and inf give meaningless numbers.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from difframe import jit_cache

jit_cache.install()

_F32 = {"bits": types.int32, "int": ir.IntType(32), "float": ir.FloatType(), "mant": 23, "bias": 127,
        "mask": 0x7FFFFF, "one": 0x3F800000, "terms": 5, "dtype": np.float32}
_F64 = {"bits": types.int64, "int": ir.IntType(64), "float": ir.DoubleType(), "mant": 52, "bias": 1023,
        "mask": 0xFFFFFFFFFFFFF, "one": 0x3FF0000000000000, "terms": 11, "dtype": np.float64}
_LAYOUTS = {types.float32: _F32, types.float64: _F64}


@intrinsic
def _bits(typingctx, x):
    """The bits of float ``x`` as a signed integer of its width."""
    layout = _LAYOUTS[x]
    return layout["bits"](x), lambda context, builder, sig, args: builder.bitcast(args[0], layout["int"])


@intrinsic
def _from_bits(typingctx, n, like):
    """The float of ``like``'s type whose bits are the integer ``n``."""
    layout = _LAYOUTS[like]
    return like(n, like), lambda context, builder, sig, args: builder.bitcast(args[0], layout["float"])


def vlog(x):
    """Natural logarithm of the positive finite float ``x`` (numba only; float32 or float64, the result in x's
    type; module doc)."""
    raise TypeError("vlog is compiled by numba: call it inside a jitted function")


@overload(vlog, inline="always", fastmath={"contract", "afn"})
def _vlog(x):
    if x not in _LAYOUTS:
        return None
    layout = _LAYOUTS[x]
    real, bits_t = x, layout["bits"]
    mant, bias, mask, one_bits = layout["mant"], layout["bias"], layout["mask"], layout["one"]
    # 2 atanh(s) = 2 s sum_k s^(2k) / (2k + 1): the sum as a polynomial in z = s^2 written out (a loop inside
    # the callers' loops would stop them vectorising)
    c = tuple(real(2.0 / (2 * k + 1)) for k in range(11))
    if layout["terms"] == 5:
        def series(z):
            return c[0] + z * (c[1] + z * (c[2] + z * (c[3] + z * c[4])))
    else:
        def series(z):
            return c[0] + z * (c[1] + z * (c[2] + z * (c[3] + z * (c[4] + z * (c[5] + z * (c[6] + z * (
                c[7] + z * (c[8] + z * (c[9] + z * c[10])))))))))
    series = numba.njit(inline="always")(series)
    ln2 = real(np.log(2.0))
    sqrt_two = real(np.sqrt(2.0))
    one, half, zero = real(1), real(0.5), real(0)
    smallest = real(np.finfo(layout["dtype"]).tiny)  # below it (subnormal) the number is scaled up first
    up = real(2.0 ** mant)

    def impl(x):
        # no branches (each would be one more block in the callers' loops): a subnormal number is scaled up by
        # 2^mant first, a mantissa above sqrt(2) halved
        sub = x < smallest
        b = _bits(x * (one + (up - one) * real(sub)))
        e = (b >> bits_t(mant)) - bits_t(bias) - bits_t(mant) * bits_t(sub)
        m = _from_bits(bits_t((b & bits_t(mask)) | bits_t(one_bits)), x)  # in [1, 2)
        high = m >= sqrt_two
        m = m * (one - half * real(high))
        s = (m - one) / (m + one)
        return real(e + bits_t(high)) * ln2 + s * series(s * s) + zero * (x - x)  # NaN stays NaN
    return impl


@numba.njit(cache=True, error_model="numpy")
def vlog_array(x: np.ndarray, out: np.ndarray) -> None:
    """out[i] = vlog(x[i]) (tests and benchmarks)."""
    flat, res = x.ravel(), out.ravel()
    for i in range(flat.size):
        res[i] = vlog(flat[i])
