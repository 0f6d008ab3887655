"""Scan pattern ``spiral``: an Archimedean spiral with evenly spaced points."""

from difframe import hookimpl
from difframe.scanpatterns import spiral
from difframe.types import Parameter, ScanPatternSpec

PARAMETERS = {
    "dr": Parameter(type="float", default=2e-06, lowlim=0.0, help="Spiral arm spacing",
                    doc="In metres; points along an arm are spaced by dr too (one point per dr^2)."),
    "r_out": Parameter(type="float", default=3e-05, lowlim=0.0, help="Outer radius", doc="In metres."),
}


def generate(p):
    """Point n at theta = sqrt(4 pi n), r = dr sqrt(n / pi), while r <= r_out."""
    return spiral(p.dr, p.r_out)


@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(name="spiral", summary="Archimedean spiral, evenly spaced points",
                          generate=generate, parameters=PARAMETERS)
