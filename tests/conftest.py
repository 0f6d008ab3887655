"""Shared fixtures: where the project's shared data lives."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REAL_DATA = SHARED / "data" / "real"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared/ is not beside the checkout ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def real_data(shared_dir) -> Path:
    """Folder of the real measured files (CBF frames, CXI scan)."""
    return shared_dir / "data" / "real"


@pytest.fixture(params=__import__("kernel_cases").CASES, ids=__import__("kernel_cases").IDS)
def kernel_case(request) -> dict:
    """Random inputs for a fused-kernel test (tests/kernel_cases.py), one per dtype and mode count."""
    import kernel_cases

    return kernel_cases.make_case(*request.param)
