"""Model ``image`` (aliases ``moon``, ``flower``, ``siemens``): a built-in generated test image.

The name given as ``model`` picks the image (``image`` itself means ``moon``
for a probe and ``flower`` for an object); see :mod:`difframe.ptycho.resources`.
"""

from difframe import hookimpl
from difframe.types import IlluminationModelSpec, SampleModelSpec

ALIASES = ("moon", "flower", "siemens")


def _name(params, default):
    model = params.get("model")
    return default if not isinstance(model, str) or model.lower() == "image" else model.lower()


def build_illumination(params, context):
    from difframe.ptycho.resources import image

    return image(_name(params, "moon"), context.shape).astype(complex)


def build_sample(params, context):
    from difframe.ptycho.resources import complex_image

    return complex_image(_name(params, "flower"), context.shape)


@hookimpl
def difframe_illumination_models():
    yield IlluminationModelSpec(name="image", aliases=ALIASES, summary="Built-in generated image as probe amplitude",
                                build=build_illumination)


@hookimpl
def difframe_sample_models():
    yield SampleModelSpec(name="image", aliases=ALIASES,
                          summary="Built-in generated image as object amplitude and phase", build=build_sample)
