"""Dectris Pilatus templates (300K, 2M, 6M): 487 x 195 pixel modules of 172 um with 7/17 px gaps."""

from difframe import hookimpl
from difframe.detector import tiled_shape
from difframe.types import DetectorTemplateSpec

PIXEL_M = 172e-6
MODULE = (195, 487)  # rows, cols
GAP = (17, 7)  # dead rows between module rows, dead columns between module columns
SATURATION = 2**20 - 1  # 20-bit counter

#: name -> modules (rows, cols)
MODELS = {"pilatus300k": (3, 1), "pilatus2m": (8, 3), "pilatus6m": (12, 5)}


@hookimpl
def difframe_detector_templates():
    for name, modules in MODELS.items():
        shape = tiled_shape(modules, MODULE, GAP)
        yield DetectorTemplateSpec(
            name=name,
            summary=f"Pilatus {name[7:].upper()}: {modules[0]}x{modules[1]} modules, {shape[0]}x{shape[1]} px of 172 um",
            shape=shape,
            pixel_size=(PIXEL_M, PIXEL_M),
            module_shape=MODULE,
            gap=GAP,
            saturation=SATURATION,
            dtype="int32",
        )
