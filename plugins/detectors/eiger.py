"""Dectris Eiger templates, 75 um pixels: Eiger X 4M/16M (1030 x 514 px modules, 10/37 px gaps)
and Eiger2 4M/16M (1028 x 512 px modules, 12/38 px gaps)."""

from difframe import hookimpl
from difframe.detector import tiled_shape
from difframe.types import DetectorTemplateSpec

PIXEL_M = 75e-6
SATURATION = 2**16 - 1  # 16-bit image mode

#: generation -> (module (rows, cols), gap (rows, cols))
GENERATIONS = {"eiger": ((514, 1030), (37, 10)), "eiger2_": ((512, 1028), (38, 12))}
#: size -> modules (rows, cols)
SIZES = {"4m": (4, 2), "16m": (8, 4)}


@hookimpl
def difframe_detector_templates():
    for prefix, (module, gap) in GENERATIONS.items():
        for size, modules in SIZES.items():
            shape = tiled_shape(modules, module, gap)
            title = ("Eiger2 " if prefix == "eiger2_" else "Eiger X ") + size.upper()
            yield DetectorTemplateSpec(
                name=prefix + size,
                summary=f"{title}: {modules[0]}x{modules[1]} modules, {shape[0]}x{shape[1]} px of 75 um",
                shape=shape,
                pixel_size=(PIXEL_M, PIXEL_M),
                module_shape=module,
                gap=gap,
                saturation=SATURATION,
                dtype="int32",
            )
