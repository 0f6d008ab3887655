"""Model ``array``: a numpy array passed from Python as ``model`` (embedding, notebooks)."""

from difframe import hookimpl
from difframe.types import IlluminationModelSpec, SampleModelSpec


def build(params, context):
    from difframe.ptycho.models import as_modes

    return as_modes(params.get("model"), "model array")


@hookimpl
def difframe_illumination_models():
    yield IlluminationModelSpec(name="array", summary="Probe given as a numpy array (H, W) or (modes, H, W)",
                                build=build)


@hookimpl
def difframe_sample_models():
    yield SampleModelSpec(name="array", summary="Object given as a numpy array (H, W) or (modes, H, W)", build=build)
