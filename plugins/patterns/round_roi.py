"""Scan pattern ``round_roi``: concentric circles cropped to a rectangle."""

from difframe import hookimpl
from difframe.scanpatterns import crop_to_roi, rings, rings_covering
from difframe.types import Parameter, ScanPatternSpec

PARAMETERS = {
    "dr": Parameter(type="float", default=3e-07, lowlim=0.0, help="Spacing of concentric circles", doc="In metres."),
    "nth": Parameter(type="int", default=5, lowlim=0, help="Number of points in the inner circle"),
    "lx": Parameter(type="float", default=3e-06, lowlim=0.0, help="ROI dimension in x", doc="Full width in metres."),
    "ly": Parameter(type="float", default=3e-06, lowlim=0.0, help="ROI dimension in y", doc="Full height in metres."),
}


def generate(p):
    """The ``round`` circles out to the ROI's corners, keeping |y| <= ly/2 and |x| <= lx/2."""
    return crop_to_roi(rings(p.dr, rings_covering(p.ly, p.lx, p.dr), p.nth), p.ly, p.lx)


@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(name="round_roi", summary="concentric circles cropped to a rectangle", generate=generate,
                          parameters=PARAMETERS)
