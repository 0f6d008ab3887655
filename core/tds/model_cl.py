"""The TDS model and Jacobian as one fused OpenCL kernel (``tds_model.cl``), with a numpy fall-back.

The kernel does per point what :func:`difframe.tds.model.classical` does with
numpy temporaries: Christoffel matrix, adjugate solve, T and the Jacobian, in
float32 registers with one pass over memory.  The host builds the (9, 9)
Christoffel matrix and the quadratic-form matrix of the basis, so the kernel
never needs to know the symmetry.  numpy stays the reference it is tested
against; the quantum Bose model (eigen-decomposition per point) runs in numpy.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources

import numpy as np

from difframe.errors import UsageError
from difframe.tds.model import Exposure, ExposureModel, NumpyModel, christoffel_matrix, quadratic_form_matrix

log = logging.getLogger("difframe.tds.model")

BACKENDS = ("auto", "numpy", "opencl")


@functools.lru_cache(maxsize=1)
def _program():
    """(context, queue, program) on the first OpenCL device (PYOPENCL_CTX chooses), built once."""
    import pyopencl as cl

    context = cl.create_some_context(interactive=False)
    queue = cl.CommandQueue(context)
    source = resources.files("difframe.tds").joinpath("tds_model.cl").read_text()
    program = cl.Program(context, source).build()
    log.info("OpenCL TDS model on %s", ", ".join(d.name.strip() for d in context.devices))
    return context, queue, program


class OpenCLModel:
    """T and dT/dp on an OpenCL device; points stay on the device between evaluations.

    With an :class:`~difframe.tds.model.Exposure` the sub-step nodes live on the
    device and kernel ``tds_model_exposure`` averages them per point.
    """

    backend = "opencl"

    def __init__(self, Q, q, basis, exposure: Exposure | None = None):
        import pyopencl as cl

        self._cl = cl
        self.context, self.queue, program = _program()
        self.basis = np.asarray(basis, dtype=float)
        self.n_points = len(Q)
        self.n_free = len(self.basis)
        flags = cl.mem_flags

        def buffer(array, dtype):
            return cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR,
                             hostbuf=np.ascontiguousarray(array, dtype))

        self._extra = ()
        self.exposure = exposure
        if exposure is None:
            self._kernel = cl.Kernel(program, "tds_model")
        else:
            self._kernel = cl.Kernel(program, "tds_model_exposure")
            Q, q, weights, starts = exposure.nodes(Q, q)
            self._extra = (buffer(weights, np.float32), buffer(np.append(starts, len(Q)), np.int32))
        self._Q = buffer(Q, np.float32)
        self._q = buffer(q, np.float32)
        B = quadratic_form_matrix(self.basis).astype(np.float32)
        self._B = cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=B)
        self._M = cl.Buffer(self.context, flags.READ_ONLY, size=81 * 4)
        self._T = cl.Buffer(self.context, flags.WRITE_ONLY, size=max(self.n_points, 1) * 4)
        self._J = cl.Buffer(self.context, flags.WRITE_ONLY, size=max(self.n_points * self.n_free, 1) * 4)

    def voigt(self, p: np.ndarray) -> np.ndarray:
        return np.tensordot(np.asarray(p, dtype=float), self.basis, axes=1)

    def evaluate(self, p: np.ndarray, jacobian: bool = True):
        """(T (N,), J (N, n_free) or None) at free constants ``p``, as float64 arrays."""
        cl = self._cl
        M = christoffel_matrix(self.voigt(p)).astype(np.float32)
        cl.enqueue_copy(self.queue, self._M, M)
        self._kernel(self.queue, (self.n_points,), None, self._Q, self._q, *self._extra, self._M, self._B,
                     np.int32(self.n_free), np.int32(jacobian), self._T, self._J)
        T = np.empty(self.n_points, np.float32)
        cl.enqueue_copy(self.queue, T, self._T)
        if not jacobian:
            return T.astype(float), None
        J = np.empty((self.n_points, self.n_free), np.float32)
        cl.enqueue_copy(self.queue, J, self._J)
        return T.astype(float), J.astype(float)


def make_model(Q, q, basis, *, backend: str = "auto", quantum_bose: bool = False, temperature: float = 300.0,
               density: float | None = None, exposure: Exposure | None = None):
    """The model evaluator for ``backend``: "opencl", "numpy" or "auto" (OpenCL when a device works).

    "auto" falls back to numpy with a warning saying why; an explicit "opencl"
    that cannot run is a UsageError.  With ``exposure`` every point's model is
    averaged over its frame's exposure.
    """
    if backend not in BACKENDS:
        raise UsageError(f"TDS model backend {backend!r} is not one of {', '.join(BACKENDS)}")
    options = dict(quantum_bose=quantum_bose, temperature=temperature, density=density)

    def numpy_model():
        if exposure is None or len(Q) == 0:
            return NumpyModel(Q, q, basis, **options)
        return ExposureModel(Q, q, basis, exposure, **options)

    if quantum_bose or backend == "numpy" or len(Q) == 0:
        if quantum_bose and backend == "opencl":
            log.warning("the quantum Bose model runs in numpy (it needs an eigen-decomposition per point)")
        return numpy_model()
    try:
        return OpenCLModel(Q, q, basis, exposure)
    except Exception as exc:  # no pyopencl, no platform, no device, build failure: all mean "use numpy"
        reason = f"{type(exc).__name__}: {exc}".strip()
        if backend == "opencl":
            raise UsageError(f"the OpenCL TDS model cannot run here ({reason}); use backend 'numpy' or 'auto'") from exc
        log.warning("OpenCL is not available (%s); the TDS model runs in numpy", reason)
        return numpy_model()
