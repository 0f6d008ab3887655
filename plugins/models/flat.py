"""Model ``flat``: a uniform field (the default when ``model`` is None).

Illumination: ones (the photon count is set afterwards from ``photons``);
sample: ``sample.fill`` everywhere.
"""

import numpy as np

from difframe import hookimpl
from difframe.types import IlluminationModelSpec, SampleModelSpec


def build_illumination(params, context):
    return np.ones(context.shape, complex)


def build_sample(params, context):
    fill = params.get("fill")
    return np.full(context.shape, 1.0 if fill is None else complex(fill), complex)


@hookimpl
def difframe_illumination_models():
    yield IlluminationModelSpec(name="flat", summary="Uniform probe scaled to illumination.photons",
                                build=build_illumination)


@hookimpl
def difframe_sample_models():
    yield SampleModelSpec(name="flat", summary="Uniform object equal to sample.fill", build=build_sample)
