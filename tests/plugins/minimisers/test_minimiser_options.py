"""minimiser.lbfgsb.memory and minimiser.trust_region.xtol do what their help says, on the bounded Rosenbrock."""

import numpy as np
import pytest

from difframe.manager import PluginManager

from test_minimisers import BoundedRosenbrock


@pytest.fixture(scope="module")
def manager():
    return PluginManager()


def test_lbfgsb_memory_is_the_number_of_corrections_scipy_keeps(manager, monkeypatch):
    import scipy.optimize

    seen = []
    real = scipy.optimize.minimize

    def minimize(*args, **kw):
        seen.append(kw["options"]["maxcor"])
        return real(*args, **kw)

    monkeypatch.setattr(scipy.optimize, "minimize", minimize)
    spec = manager.get("minimiser", "lbfgsb")
    results = {m: spec.minimise(BoundedRosenbrock(), {"memory": m, "ftol": 1e-14, "gtol": 1e-12}) for m in (1, 7)}
    assert seen == [1, 7]
    for result in results.values():  # either way the constrained optimum (0.5, 0.25)
        np.testing.assert_allclose(result.x, [0.5, 0.25], atol=1e-4)


def test_trust_region_xtol_stops_on_a_small_step(manager):
    spec = manager.get("minimiser", "trust_region")
    tight = spec.minimise(BoundedRosenbrock(), {"xtol": 1e-12, "ftol": 1e-15, "gtol": 1e-15, "max_iterations": 2000})
    loose = spec.minimise(BoundedRosenbrock(), {"xtol": 0.3, "ftol": 1e-15, "gtol": 1e-15, "max_iterations": 2000})
    assert loose.evaluations < tight.evaluations
    assert np.linalg.norm(loose.x - [0.5, 0.25]) > np.linalg.norm(tight.x - [0.5, 0.25])
