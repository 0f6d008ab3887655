"""ESRF FReLoN CCD templates: monolithic 2048 x 2048 sensors (no module gaps), 16-bit ADC.

The pixel is the sensor's own (Atmel TH7899M 14 um for the 2K, Kodak KAF-4320 24 um
for the 4M); behind a fibre-optic taper give the effective pixel in the parameters instead.
"""

from difframe import hookimpl
from difframe.types import DetectorTemplateSpec

#: name -> (pixel [m], summary)
MODELS = {
    "frelon2k": (14e-6, "FReLoN 2K CCD (Atmel TH7899M): 2048x2048 px of 14 um"),
    "frelon4m": (24e-6, "FReLoN 4M CCD (Kodak KAF-4320): 2048x2048 px of 24 um"),
}


@hookimpl
def difframe_detector_templates():
    for name, (pixel, summary) in MODELS.items():
        yield DetectorTemplateSpec(
            name=name,
            summary=summary,
            aliases=("frelon",) if name == "frelon2k" else (),
            shape=(2048, 2048),
            pixel_size=(pixel, pixel),
            saturation=2**16 - 1,
            dark_counts=0.0,
            dtype="uint16",
        )
