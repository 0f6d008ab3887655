"""Minimiser ``lbfgsb``: L-BFGS-B on the cost 0.5 |r|^2 with gradient J^T r (scipy).

Works from the same problem as ``trust_region`` but keeps only a low-rank
curvature estimate, so it suits many variables.  Variables are divided by the
size of their start values, so constants of 10 GPa and 300 GPa move alike.
"""

from __future__ import annotations

import numpy as np

from difframe import hookimpl
from difframe.types import MinimiserSpec, Parameter

PARAMETERS = {
    "ftol": Parameter(type="float", default=1e-5, lowlim=0.0, help="Relative reduction of the cost that stops the fit"),
    "gtol": Parameter(type="float", default=1e-8, lowlim=0.0, help="Projected gradient size that stops the fit"),
    "max_iterations": Parameter(type="int", default=200, lowlim=1, help="Maximum number of iterations"),
    "memory": Parameter(type="int", default=10, lowlim=1, help="Number of corrections kept for the curvature"),
}


def minimise(problem, params):
    """Minimise 0.5 |residuals(x)|^2 within ``problem.bounds``; returns x, cost, converged, message."""
    from scipy.optimize import OptimizeResult, minimize

    get = params.get
    x0 = np.asarray(problem.x0, dtype=float)
    scale = np.where(np.abs(x0) > 0, np.abs(x0), 1.0)
    lower, upper = (np.asarray(b, dtype=float) / scale for b in problem.bounds)

    def cost_and_gradient(z):
        x = z * scale
        r = problem.residuals(x)
        return 0.5 * float(r @ r), (problem.jacobian(x).T @ r) * scale

    result = minimize(
        cost_and_gradient, np.clip(x0 / scale, lower, upper), jac=True, method="L-BFGS-B",
        bounds=list(zip(lower, upper)),
        options={"ftol": get("ftol", 1e-5), "gtol": get("gtol", 1e-8), "maxiter": int(get("max_iterations", 200)),
                 "maxcor": int(get("memory", 10))},
    )
    return OptimizeResult(x=result.x * scale, cost=float(result.fun), converged=bool(result.success),
                          message=str(result.message), evaluations=int(result.nfev))


@hookimpl
def difframe_minimisers():
    yield MinimiserSpec(name="lbfgsb", summary="L-BFGS-B on the least-squares cost (scipy)",
                        aliases=("l-bfgs-b",), minimise=minimise, parameters=PARAMETERS)
