"""Recipe ``file``: a scan's frames from a ``.ptyd`` prepared-data file (ptypy's or ours).

The file stays open during the preparation, which reads only this rank's frames.
"""

from difframe import hookimpl
from difframe.errors import ParameterError
from difframe.types import RecipeSpec


def prepare(scan_params, context):
    """Read ``scan.data.dfile`` and apply the common preparation (the file is never rewritten)."""
    from difframe.ptycho.prepare import prepare as prepare_scan
    from difframe.ptycho.ptyd import open_ptyd

    dfile = (scan_params.get("data") or {}).get("dfile")
    if not dfile:
        raise ParameterError(f"scans.{context.label}.data.dfile: the 'file' recipe needs the .ptyd to read")
    with open_ptyd(dfile) as raw:
        return prepare_scan(raw, scan_params, context, save=False)


@hookimpl
def difframe_recipes():
    yield RecipeSpec(name="file", aliases=("ptyd",), summary="Frames from a .ptyd file (scan.data.dfile)",
                     prepare=prepare)
