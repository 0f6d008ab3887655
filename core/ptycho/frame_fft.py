"""Propagation of one frame's waves inside numba kernels (the sequential engines: PIE family, OPR, e3PIE).

The stochastic engines update after every frame, so their whole epoch runs
inside one numba function and transforms there.  Far field: the unitary FFT;
near field: fixed-sampling convolution with the scan's transfer function,
whose conjugate (taken once per epoch by the caller) propagates back.  An
empty (0, 0) transfer function means far field.

The transforms go through FFTW, the library pyFFTW loaded (one planner and
one store of wisdom with :mod:`difframe.fft`): :func:`plans` makes, once per
stack shape and dtype and from Python, measured in-place plans on aligned
scratch arrays, and gives the kernel their addresses with those of FFTW's
new-array execute function (thread-safe) and of its alignment check, as an
int64 array the kernel receives as an argument.  Inside numba the functions
are called through those integers (:func:`_call`), so no address is compiled
into the code and the kernels' on-disk cache stays valid in another process.
A stack the plans do not fit (another dtype or shape, not C-contiguous, off
FFTW's alignment: arrays numba allocates are aligned) or empty plans (:data:`NO_PLANS`:
no FFTW library found, a dtype FFTW lacks) go through scipy.fft as
rocket-fft makes it callable from numba, with the same result.  Transforms
write into the field they are given when FFTW takes it; callers use the
returned array and treat the field as overwritten.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import glob
import logging
import os
import threading

import numba
import numpy as np
import rocket_fft
import scipy.fft
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

log = logging.getLogger("difframe.ptycho.frame_fft")

#: the package that makes scipy.fft callable inside numba functions (importing it registers it)
FFT_IN_NUMBA = rocket_fft.__name__
#: plans meaning "through rocket-fft"
NO_PLANS = np.empty(0, np.int64)
# plans: FFTW's execute_dft and alignment_of, the forward and backward plan, the stack's frames, H, W, bytes per value.
# Append, never reorder: numba's cache keys a kernel on its own file's text, so a kernel compiled against an older
# frame_fft (this module is inlined into it) may still run and reads the entries it knew where they were.
EXECUTE, ALIGNMENT, FORWARD, BACKWARD, FRAMES, HEIGHT, WIDTH, ITEMSIZE = range(8)
_PREFIX = {np.dtype(np.complex64): "fftwf_", np.dtype(np.complex128): "fftw_"}
_FFTW_MEASURE, _FFTW_FORWARD, _FFTW_BACKWARD = 0, -1, 1
_planning = threading.Lock()
_made: dict[tuple, np.ndarray] = {}


def plans(shape, dtype) -> np.ndarray:
    """FFTW's plans for stacks of ``shape`` ((H, W) or (K, H, W)) and complex ``dtype``, for the kernels'
    ``plans`` argument; :data:`NO_PLANS` when FFTW cannot serve them."""
    shape = (1, *shape) if len(shape) == 2 else tuple(shape)
    key = (tuple(int(n) for n in shape), np.dtype(dtype))
    with _planning:
        if key not in _made:
            _made[key] = _plan(*key)
        return _made[key]


def _plan(shape, dtype) -> np.ndarray:
    lib = _library(_PREFIX.get(dtype, ""))
    if lib is None:
        return NO_PLANS
    import pyfftw

    frames, h, w = shape
    scratch = pyfftw.empty_aligned(shape, dtype=dtype)
    if lib.alignment_of(scratch.ctypes.data) != 0:  # pragma: no cover - pyFFTW's alignment is FFTW's
        log.debug("FFTW: an aligned scratch array is not aligned to FFTW: frames transform through %s",
                  FFT_IN_NUMBA)
        return NO_PLANS
    n = (ctypes.c_int * 2)(h, w)
    made = [lib.plan_many_dft(2, n, frames, scratch.ctypes.data, None, 1, h * w, scratch.ctypes.data, None, 1,
                              h * w, sign, _FFTW_MEASURE) for sign in (_FFTW_FORWARD, _FFTW_BACKWARD)]
    if not all(made):  # pragma: no cover - FFTW plans every size
        log.debug("FFTW has no plan for %s stacks of %s: they transform through %s", dtype, shape, FFT_IN_NUMBA)
        return NO_PLANS
    return np.array([lib.execute, lib.alignment, *made, frames, h, w, dtype.itemsize], np.int64)


@functools.cache
def _library(prefix: str):
    """FFTW's functions with ``prefix`` (fftwf_, fftw_) from the library pyFFTW loaded; None without."""
    if not prefix:
        log.debug("FFTW has no transforms of this dtype: its frames transform through %s", FFT_IN_NUMBA)
        return None
    for path in _libraries(prefix):
        try:
            lib = ctypes.CDLL(path)
            plan_many, execute, alignment_of = (getattr(lib, prefix + name)
                                                for name in ("plan_many_dft", "execute_dft", "alignment_of"))
        except (OSError, AttributeError):
            continue
        plan_many.restype = ctypes.c_void_p
        plan_many.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint]
        alignment_of.restype, alignment_of.argtypes = ctypes.c_int, [ctypes.c_void_p]
        safe = getattr(lib, prefix + "make_planner_thread_safe", None)  # FFTW's lock: pyFFTW plans elsewhere
        if safe is not None:
            safe()
        log.debug("FFTW (%s) for the frames' transforms: %s", prefix, path)
        return _Functions(plan_many, alignment_of, _address(execute), _address(alignment_of))
    log.debug("no FFTW library (%s) found next to pyFFTW: frames transform through %s", prefix, FFT_IN_NUMBA)
    return None


#: FFTW's planner and alignment check (ctypes functions) and the addresses the kernels call
_Functions = collections.namedtuple("_Functions", "plan_many_dft alignment_of execute alignment")


def _address(function) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


def _libraries(prefix: str) -> list[str]:
    """Where FFTW may be: pyFFTW's extension module (the symbols resolve through the libraries it loaded),
    then the libraries its wheel bundles."""
    try:
        import pyfftw
        import pyfftw.pyfftw as extension
    except ImportError:
        return []
    name = "libfftw3f" if prefix == "fftwf_" else "libfftw3"
    folder = os.path.dirname(pyfftw.__file__)
    bundled = [p for d in (os.path.join(folder, os.pardir, "pyfftw.libs"), os.path.join(folder, ".dylibs"))
               for p in sorted(glob.glob(os.path.join(d, name + "[-.]*")))]
    return [extension.__file__, *bundled]


@intrinsic
def _call(typingctx, function, plan, field):
    """``function``(plan, field, field) (FFTW's execute_dft) or, with ``plan`` None, ``function``(field)
    (alignment_of, which returns an int32): ``function`` and ``plan`` are addresses held in integers."""
    with_plan = not isinstance(plan, types.NoneType)
    sig = (types.void if with_plan else types.int32)(function, plan, field)

    def codegen(context, builder, signature, args):
        void = ir.IntType(8).as_pointer()
        data = builder.bitcast(context.make_array(signature.args[2])(context, builder, args[2]).data, void)
        if with_plan:
            kind, operands = ir.FunctionType(ir.VoidType(), [void] * 3), [builder.inttoptr(args[1], void), data, data]
        else:
            kind, operands = ir.FunctionType(ir.IntType(32), [void]), [data]
        result = builder.call(builder.inttoptr(args[0], kind.as_pointer()), operands)
        return context.get_dummy_value() if with_plan else result

    return sig, codegen


def _fftw(field, plans, inverse):
    """Transform ``field`` in place through FFTW (unnormalised) when ``plans`` fit it; False when not."""


@overload(_fftw)
def _fftw_typed(field, plans, inverse):
    if isinstance(plans, (types.NoneType, types.Omitted)):
        return lambda field, plans, inverse: False

    def fftw(field, plans, inverse):
        fits = (plans.shape[0] > ITEMSIZE and field.itemsize == plans[ITEMSIZE] and field.shape[-2] == plans[HEIGHT]
                and field.shape[-1] == plans[WIDTH] and field.size == plans[FRAMES] * plans[HEIGHT] * plans[WIDTH]
                and field.flags.c_contiguous)
        if fits and _call(plans[ALIGNMENT], None, field) == 0:
            _call(plans[EXECUTE], plans[BACKWARD if inverse else FORWARD], field)
            return True
        return False
    return fftw


@numba.njit(inline="always")
def _scale(field, factor):
    values = field.reshape(field.size).view(field.real.dtype)
    factor = values.dtype.type(factor)
    for i in range(values.shape[0]):
        values[i] *= factor


@numba.njit(inline="always")
def _fft2(field, plans, inverse, ortho):
    """2-D (inverse) FFT of ``field`` (..., H, W), unitary with ``ortho``, else unnormalised; may overwrite
    ``field``."""
    field = np.ascontiguousarray(field)  # the same array when it is contiguous
    if _fftw(field, plans, inverse):
        if ortho:
            _scale(field, 1.0 / np.sqrt(field.shape[-2] * field.shape[-1]))
        return field
    if inverse:
        if ortho:
            return scipy.fft.ifft2(field, axes=(-2, -1), norm="ortho", overwrite_x=True)
        return scipy.fft.ifft2(field, axes=(-2, -1), norm="forward", overwrite_x=True)
    if ortho:
        return scipy.fft.fft2(field, axes=(-2, -1), norm="ortho", overwrite_x=True)
    return scipy.fft.fft2(field, axes=(-2, -1), overwrite_x=True)


@numba.njit(inline="always")
def convolve(field, transfer, plans=None):
    """Fixed-sampling propagation of ``field`` (..., H, W) by a transfer function (H, W) in FFT order."""
    h, w = transfer.shape
    spec = _fft2(field, plans, False, False)
    rows = spec.reshape((spec.size // w, w))
    factor = rows.real.dtype.type(1.0 / (h * w))
    for r in range(rows.shape[0]):
        row, tr = rows[r], transfer[r % h]
        for j in range(w):
            row[j] *= tr[j] * factor
    return _fft2(spec, plans, True, False)


@numba.njit(inline="always")
def to_detector(field, transfer, plans=None):
    """Detector-plane waves of exit waves ``field`` (..., H, W; overwritten)."""
    if transfer.shape[0] == 0:
        return _fft2(field, plans, False, True)
    return convolve(field, transfer, plans)


@numba.njit(inline="always")
def from_detector(field, transfer_back, plans=None):
    """Exit-plane waves of detector-plane ``field`` (overwritten); ``transfer_back`` = conj(transfer)."""
    if transfer_back.shape[0] == 0:
        return _fft2(field, plans, True, True)
    return convolve(field, transfer_back, plans)
