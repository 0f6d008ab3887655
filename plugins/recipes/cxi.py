"""Recipe ``cxi``: a scan's frames, mask, positions and geometry from a CXI file.

The file stays open during the preparation, which reads only this rank's frames.
"""

from difframe import hookimpl
from difframe.errors import ParameterError
from difframe.types import Parameter, RecipeSpec

PARAMETERS = {
    "cxifile": Parameter(type="file", default=None, help="Path of the CXI file",
                         doc="External links are followed into the file's own folder and the folders of "
                             "DIFFRAME_HDF5_LINK_DIRS only; see docs/security.md."),
    "entry": Parameter(type="str", default="entry_1", help="CXI entry holding the scan"),
    "focus_distance": Parameter(
        type="float", default=None, lowlim=0.0, help="Focus-to-sample distance for cone-beam data [m]",
        doc="If set, the file's distance and pixel size are turned into the equivalent parallel-beam "
            "(Fresnel-scaled) geometry: magnification M = (z1 + z2) / z1, pixel / M, distance z2 / M."),
    "propagation": Parameter(type="str", default=None, choices=("farfield", "nearfield"),
                             help="Propagation regime of the data; None: scan.geometry.prop_type"),
}


def prepare(scan_params, context):
    """Read the CXI entry named by ``scan.data.recipe.cxi`` and apply the common preparation."""
    from difframe.ptycho.cxi import open_cxi
    from difframe.ptycho.prepare import prepare as prepare_scan

    p = ((scan_params.get("data") or {}).get("recipe") or {}).get("cxi") or {}
    if not p.get("cxifile"):
        raise ParameterError(f"scans.{context.label}.data.recipe.cxi.cxifile: the 'cxi' recipe needs the file to read")
    with open_cxi(p["cxifile"], entry=p.get("entry") or "entry_1", focus_distance=p.get("focus_distance")) as raw:
        raw.propagation = p.get("propagation")
        return prepare_scan(raw, scan_params, context)


@hookimpl
def difframe_recipes():
    yield RecipeSpec(name="cxi", summary="Frames, mask, positions and geometry from a CXI file",
                     prepare=prepare, parameters=PARAMETERS)
