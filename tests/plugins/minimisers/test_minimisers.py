"""Both minimisers on a bounded Rosenbrock least-squares problem with a known constrained optimum."""

import numpy as np
import pytest

from difframe.manager import PluginManager


class BoundedRosenbrock:
    """r = (10 (x1 - x0^2), 1 - x0) with x0 <= 0.5: the optimum sits on the bound at (0.5, 0.25)."""

    x0 = np.array([-1.2, 1.0])
    bounds = (np.array([-2.0, -2.0]), np.array([0.5, 2.0]))

    def residuals(self, x):
        return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    def jacobian(self, x):
        return np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])


@pytest.fixture(scope="module")
def manager():
    return PluginManager()


@pytest.mark.parametrize("name", ["trust_region", "lbfgsb", "TRF", "L-BFGS-B"])
def test_reaches_the_constrained_optimum(manager, name):
    spec = manager.get("minimiser", name)
    result = spec.minimise(BoundedRosenbrock(), {"ftol": 1e-14, "gtol": 1e-12, "max_iterations": 2000})
    assert result.converged, result.message
    np.testing.assert_allclose(result.x, [0.5, 0.25], atol=1e-5)
    assert result.cost == pytest.approx(0.125, abs=1e-8)  # 0.5 * (1 - 0.5)^2


def test_iteration_limit_is_reported_as_not_converged(manager):
    result = manager.get("minimiser", "trust_region").minimise(BoundedRosenbrock(), {"max_iterations": 2})
    assert not result.converged


def test_unknown_minimiser_is_named(manager):
    from difframe.errors import UsageError

    with pytest.raises(UsageError, match="newton"):
        manager.get("minimiser", "newton")
