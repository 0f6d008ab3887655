"""Scan pattern ``raster``: a rectangular grid, row by row."""

from difframe import hookimpl
from difframe.scanpatterns import raster
from difframe.types import Parameter, ScanPatternSpec

PARAMETERS = {
    "nx": Parameter(type="int", default=10, lowlim=0, help="Number of steps in x"),
    "ny": Parameter(type="int", default=10, lowlim=0, help="Number of steps in y"),
    "dx": Parameter(type="float", default=1e-06, lowlim=0.0, help="Step size (grid spacing)", doc="In metres, along x."),
    "dy": Parameter(type="float", default=1e-06, lowlim=0.0, help="Step size (grid spacing)", doc="In metres, along y."),
}


def generate(p):
    """ny x nx grid centred on the origin: y_i = (i - (ny-1)/2) dy, x_j = (j - (nx-1)/2) dx."""
    return raster(p.ny, p.nx, p.dy, p.dx)


@hookimpl
def difframe_scan_patterns():
    yield ScanPatternSpec(name="raster", summary="rectangular grid, row by row",
                          generate=generate, parameters=PARAMETERS)
