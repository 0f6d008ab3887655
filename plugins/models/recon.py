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
    """(layers, H, W) complex array of storage ``recon.ID`` in ``content/<group>`` of ``recon.rfile``.

    Refused, naming the file and node: a pixel size that is not positive, a
    resampling over the memory budget, and a field that cannot hold one view
    of the scan's frames (a probe or object smaller than a frame).
    """
    import numpy as np
    from scipy import ndimage

    from difframe.errors import DataError, ParameterError
    from difframe.limits import array_bytes, check_allocation
    from difframe.ptycho import h5typed
    from difframe.ptycho.ptyr import resolve_rfile

    recon = recon or {}
    pattern = recon.get("rfile")
    if not pattern:
        raise ParameterError(f"{group}.recon.rfile: no reconstruction file given")
    path = resolve_rfile(pattern)
    if path is None:
        raise DataError(f"{group}.recon.rfile: no file matches {pattern!r}")
    with h5typed.open_file(path, ".ptyr") as f:
        storages = f.get(f"content/{group}")
        if storages is None:
            raise DataError(f"{path}: not a .ptyr (no content/{group})")
        ids = sorted(storages)
        sid = recon.get("ID") or (ids[0] if ids else None)
        if sid not in storages or "data" not in storages[sid]:
            raise DataError(f"{path}: no {group} storage {sid!r} (storages: {ids})")
        node = storages[sid]
        where = f"{path}:{node.name}"
        data = h5typed.read_array(node["data"], source=path)
        psize = h5typed.read_array(node["_psize"], source=path) if "_psize" in node else None
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or 0 in data.shape:
        raise DataError(f"{where}/data has shape {data.shape}, expected (layers, H, W)")
    layer = recon.get("layer")
    if layer is not None:
        if not 0 <= int(layer) < len(data):
            raise ParameterError(f"{group}.recon.layer: {layer} not in 0..{len(data) - 1} of {path}:{sid}")
        data = data[int(layer)][None]
    if psize is not None:
        if psize.size not in (1, 2) or not (np.isfinite(psize).all() and (psize > 0).all()):
            raise DataError(f"{where}/_psize = {psize.tolist()}: expected one or two positive pixel sizes [m]")
        ratio = np.broadcast_to(np.ravel(psize), (2,)) / np.asarray(context.psize)
        if not np.allclose(ratio, 1, rtol=1e-3):
            resampled = (len(data), *(np.asarray(data.shape[1:]) * ratio))
            check_allocation(array_bytes(resampled, 3 * 16),
                             f"{where}: resampling its {data.shape[1]} x {data.shape[2]} pixels of "
                             f"{np.ravel(psize).tolist()} m to the scan's {list(context.psize)} m "
                             f"(to {resampled[1]:.4g} x {resampled[2]:.4g})")
            log.info("%s: resampling %s %s by %s to the scan's pixel size", path, group, sid, ratio)
            zoom = (1, *ratio)
            data = ndimage.zoom(data.real, zoom, order=1) + 1j * ndimage.zoom(data.imag, zoom, order=1)
    scan = getattr(context, "data", None)  # the frames a view holds; when simulating, the probe's own shape
    view = scan.shape if scan is not None else getattr(context, "shape", None) if group == "probe" else None
    if view is not None and any(n + 1 < v for n, v in zip(data.shape[1:], view)):
        raise DataError(f"{where}: a {data.shape[1]} x {data.shape[2]} {group} (at the scan's pixel size) cannot "
                        f"hold a {view[0]} x {view[1]} view of the scan's frames")
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
