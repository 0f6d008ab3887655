import numpy as np
from difframe import hookimpl
from difframe.types import ScanPatternSpec

def _line(p):                      # p: the validated parameter subtree of this pattern (attribute access)
    return np.stack([np.zeros(p.n), np.arange(p.n) * p.step], axis=1)   # (N, 2) positions in metres, (y, x)

@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(
        name="line", summary="points along x",
        generate=_line,
        parameters={"n": (int, 5, "number of points"), "step": (float, 1e-6, "spacing [m]")},
    )
