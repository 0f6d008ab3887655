"""Model ``recon``: probe or object from an earlier reconstruction (``.ptyr``), by storage ID and layer.

Reads only ``content/probe|obj/<ID>/{data, _psize}`` through the typed HDF5
reader (never unpickling); ``rfile`` may be a glob, the newest match is used.
A storage with a different pixel size is resampled to the scan's.
"""

import logging

from difframe import hookimpl
from difframe.types import IlluminationModelSpec, SampleModelSpec

log = logging.getLogger("difframe.models.recon")


def load(recon, group, context):
    """(layers, H, W) complex array of storage ``recon.ID`` in ``content/<group>`` of ``recon.rfile``."""
    import glob
    import os

    import numpy as np
    from scipy import ndimage

    from difframe.errors import DataError, ParameterError
    from difframe.ptycho import h5typed

    recon = recon or {}
    pattern = recon.get("rfile")
    if not pattern:
        raise ParameterError(f"{group}.recon.rfile: no reconstruction file given")
    paths = sorted(glob.glob(str(pattern)), key=os.path.getmtime) if glob.has_magic(str(pattern)) else [pattern]
    if not paths:
        raise DataError(f"{group}.recon.rfile: no file matches {pattern!r}")
    path = paths[-1]
    with h5typed.open_file(path, ".ptyr") as f:
        storages = f.get(f"content/{group}")
        if storages is None:
            raise DataError(f"{path}: not a .ptyr (no content/{group})")
        ids = sorted(storages)
        sid = recon.get("ID") or (ids[0] if ids else None)
        if sid not in storages or "data" not in storages[sid]:
            raise DataError(f"{path}: no {group} storage {sid!r} (storages: {ids})")
        node = storages[sid]
        data = np.asarray(h5typed.read_node(node["data"], source=path))
        psize = h5typed.read_node(node["_psize"], source=path) if "_psize" in node else None
    if data.ndim == 2:
        data = data[None]
    layer = recon.get("layer")
    if layer is not None:
        if not 0 <= int(layer) < len(data):
            raise ParameterError(f"{group}.recon.layer: {layer} not in 0..{len(data) - 1} of {path}:{sid}")
        data = data[int(layer)][None]
    if psize is not None:
        ratio = np.broadcast_to(np.ravel(psize), (2,)) / np.asarray(context.psize)
        if not np.allclose(ratio, 1, rtol=1e-3):
            log.info("%s: resampling %s %s by %s to the scan's pixel size", path, group, sid, ratio)
            zoom = (1, *ratio)
            data = ndimage.zoom(data.real, zoom, order=1) + 1j * ndimage.zoom(data.imag, zoom, order=1)
    log.info("loaded %s %s (%d layers) from %s", group, sid, len(data), path)
    return data


@hookimpl
def difframe_illumination_models():
    yield IlluminationModelSpec(name="recon", summary="Probe from a .ptyr (illumination.recon.rfile, ID, layer)",
                                build=lambda params, context: load(params.get("recon"), "probe", context))


@hookimpl
def difframe_sample_models():
    yield SampleModelSpec(name="recon", summary="Object from a .ptyr (sample.recon.rfile, ID, layer)",
                          build=lambda params, context: load(params.get("recon"), "obj", context))
