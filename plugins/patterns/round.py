"""Scan pattern ``round``: concentric circles around the centre."""

from difframe import hookimpl
from difframe.scanpatterns import rings
from difframe.types import Parameter, ScanPatternSpec

PARAMETERS = {
    "dr": Parameter(type="float", default=3e-07, lowlim=0.0, help="Spacing of concentric circles", doc="In metres."),
    "nr": Parameter(type="int", default=10, lowlim=0, help="Number of radial steps (number of circles - 1)",
                    doc="Circles of radius k dr for k = 1..nr around the centre point."),
    "nth": Parameter(type="int", default=5, lowlim=0, help="Number of points in the inner circle",
                     doc="Circle k carries k nth points, so the spacing along every circle is about 2 pi dr / nth."),
}


def generate(p):
    """Centre point plus circles k = 1..nr of radius k dr with k nth points each."""
    return rings(p.dr, p.nr, p.nth)


@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(name="round", summary="concentric circles around the centre",
                          generate=generate, parameters=PARAMETERS)
