"""Scan pattern ``custom``: positions listed in ``scan.xy.positions``."""

import numpy as np

from difframe import hookimpl
from difframe.errors import UsageError
from difframe.types import ScanPatternSpec


def generate(xy):
    """The (y, x) pairs of ``scan.xy.positions``, in metres, as given."""
    if xy.positions is None:
        raise UsageError("scan.xy.type = 'custom' needs scan.xy.positions, a list of [y, x] pairs in metres")
    positions = np.asarray(xy.positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise UsageError(f"scan.xy.positions: expected a list of [y, x] pairs, got shape {positions.shape}")
    return positions


@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(name="custom", summary="positions read from scan.xy.positions", generate=generate)
