"""Scan pattern ``spiral_roi``: the spiral cropped to a rectangle."""

import numpy as np

from difframe import hookimpl
from difframe.scanpatterns import crop_to_roi, spiral
from difframe.types import Parameter, ScanPatternSpec

PARAMETERS = {
    "dr": Parameter(type="float", default=2e-06, lowlim=0.0, help="Spiral arm spacing", doc="In metres."),
    "lx": Parameter(type="float", default=2e-05, lowlim=0.0, help="ROI dimension in x", doc="Full width in metres."),
    "ly": Parameter(type="float", default=2e-05, lowlim=0.0, help="ROI dimension in y", doc="Full height in metres."),
}


def generate(p):
    """The ``spiral`` out to the ROI's corners, keeping |y| <= ly/2 and |x| <= lx/2."""
    return crop_to_roi(spiral(p.dr, float(np.hypot(p.ly, p.lx)) / 2.0), p.ly, p.lx)


@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(name="spiral_roi", summary="spiral cropped to a rectangle", generate=generate,
                          parameters=PARAMETERS)
