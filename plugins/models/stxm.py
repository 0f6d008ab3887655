"""Model ``stxm``: probe and object estimated from the diffraction data themselves.

Probe: far field, the field whose diffraction pattern has the mean measured
amplitude and a flat phase (its autocorrelation matches the data's); near
field, the mean measured amplitude.  Object: the transmission sqrt(T_i / max T)
of each frame's total counts T_i (scanning transmission), spread around the
view centres with a Gaussian a quarter of the scan step wide.
"""

from difframe import hookimpl
from difframe.types import IlluminationModelSpec, SampleModelSpec


def _data(params, context):
    from difframe.errors import ParameterError

    label = (params.get("stxm") or {}).get("label")
    data = context.scans.get(label) if label else context.data
    if data is None:
        raise ParameterError(f"stxm.label: no prepared data for scan {label or context.label!r}")
    return data


def build_illumination(params, context):
    import numpy as np

    from difframe.optics import FarField

    data = _data(params, context)
    amplitude = np.sqrt(data.mean_frame())  # over all ranks' frames
    if data.propagation == "nearfield":
        return amplitude.astype(complex)
    return FarField(amplitude.shape).backward(amplitude.astype(complex))


def build_sample(params, context):
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from difframe.errors import ParameterError

    data = _data(params, context)
    pos = context.positions_px
    if pos is None or len(pos) != data.num_frames:
        raise ParameterError("sample model 'stxm' needs the view positions of every frame in the object")
    totals = data.frame_totals()  # every frame's, also those other ranks hold
    trans = np.sqrt(totals / totals.max()) if totals.max() > 0 else np.ones_like(totals)
    idx = np.clip(np.round(pos).astype(int), 0, np.asarray(context.shape) - 1)
    num = np.zeros(context.shape)
    den = np.zeros(context.shape)
    np.add.at(num, (idx[:, 0], idx[:, 1]), trans)
    np.add.at(den, (idx[:, 0], idx[:, 1]), 1.0)
    step = 2.0
    if len(pos) > 1:
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(pos).query(pos, k=2)
        step = float(np.median(dist[:, 1]))
    sigma = max(step / 4, 1.0)
    num, den = gaussian_filter(num, sigma), gaussian_filter(den, sigma)
    covered = den > 1e-3 * den.max()
    return np.where(covered, num / np.where(covered, den, 1), 1.0).astype(complex)


@hookimpl
def difframe_illumination_models():
    yield IlluminationModelSpec(name="stxm", summary="Probe from the mean diffraction pattern", build=build_illumination)


@hookimpl
def difframe_sample_models():
    yield SampleModelSpec(name="stxm", summary="Object transmission from each frame's total counts",
                          build=build_sample)
