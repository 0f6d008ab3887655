"""Fixtures of the engine tests."""

import pytest

from ptycho_truth import simulate


@pytest.fixture(scope="session")
def simulated():
    """A noisy (1e5 photons per frame) simulated scan: (PreparedData, true probe, true object)."""
    return simulate(photons=1e5)
