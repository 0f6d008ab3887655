"""Minimiser ``trust_region``: bounded trust-region reflective least squares (scipy ``least_squares``, TRF).

The natural choice for the TDS fit: it uses the exact Jacobian of the residuals,
respects the CGUESS bounds, and scales each variable by its Jacobian column, so
constants of different size converge together.
"""

from __future__ import annotations

import numpy as np

from difframe import hookimpl
from difframe.types import MinimiserSpec, Parameter

PARAMETERS = {
    "ftol": Parameter(type="float", default=1e-5, lowlim=0.0, help="Relative change of the cost that stops the fit"),
    "xtol": Parameter(type="float", default=1e-8, lowlim=0.0, help="Relative change of the variables that stops the fit"),
    "gtol": Parameter(type="float", default=1e-8, lowlim=0.0, help="Scaled gradient norm that stops the fit"),
    "max_iterations": Parameter(type="int", default=200, lowlim=1, help="Maximum number of model evaluations"),
}


def minimise(problem, params):
    """Minimise 0.5 |residuals(x)|^2 within ``problem.bounds``; returns x, cost, converged, message."""
    from scipy.optimize import OptimizeResult, least_squares

    get = params.get
    lower, upper = (np.asarray(b, dtype=float) for b in problem.bounds)
    result = least_squares(
        problem.residuals, np.clip(problem.x0, lower, upper), jac=problem.jacobian, bounds=(lower, upper),
        method="trf", x_scale="jac", ftol=get("ftol", 1e-5), xtol=get("xtol", 1e-8), gtol=get("gtol", 1e-8),
        max_nfev=int(get("max_iterations", 200)),
    )
    return OptimizeResult(x=result.x, cost=float(result.cost), converged=result.status > 0,
                          message=result.message, evaluations=int(result.nfev))


@hookimpl
def difframe_minimisers():
    yield MinimiserSpec(name="trust_region", summary="bounded trust-region least squares (scipy TRF)",
                        aliases=("trf", "least_squares"), minimise=minimise, parameters=PARAMETERS)
