"""Recipe ``stack``: a scan from one detector frame file per position (CBF, EDF or a third-party reader's format)
and a text table of positions.

Each rank opens only the files of its share of the frames.
"""

from difframe import hookimpl
from difframe.plugins.recipes.hdf5 import CORRECTIONS_DOC, GEOMETRY
from difframe.types import Parameter, RecipeSpec

PARAMETERS = {
    "files": Parameter(
        type=("str", "list"), default=None, help="Frame files: a list, a glob or a format pattern",
        doc="A list of paths in frame order; a glob such as 'scan12/*.cbf' (sorted with the numbers in file names "
            "in numeric order: 2 before 10); or a pattern with one '{}' field such as 'scan12/f_{:05d}.edf', "
            "formatted with first, first + 1, ... for count frames."),
    "first": Parameter(type="int", default=0, lowlim=0, help="First number of a format pattern"),
    "count": Parameter(type="int", default=None, lowlim=1,
                       help="Number of frames of a format pattern; None: the rows of the positions table"),
    "reader": Parameter(
        type="str", default=None, help="Detector reader plugin for all frames; None: chosen from the first file",
        doc="See `difframe list-plugins --kind detector_reader`; without it the reader that recognises the first "
            "file's content (or else its extension) reads every frame."),
    "positions": Parameter(
        type="file", default=None, help="Text table of positions, one row per file ('#' comments)",
        doc="Read with numpy.loadtxt (numbers only); columns picks the slow and fast columns. None: the scan "
            "pattern (scan.xy) gives the positions."),
    "columns": Parameter(type="list", default=[0, 1], help="Columns (slow, fast) of the positions table"),
    "delimiter": Parameter(type="str", default=None, help="Column separator of the table; None: whitespace"),
    "normalisation_column": Parameter(
        type="int", default=None, help="Column of the positions table holding the per-frame monitor",
        doc="Corrects intensity drifts of the source between frames. " + CORRECTIONS_DOC),
    "mask": Parameter(type="file", default=None, help="Image file of the pixel mask (any detector reader's format)"),
    "mask_valid": Parameter(
        type="str", default="zero", choices=("zero", "nonzero"), help="Which mask pixels are valid",
        doc="'zero': pixels where the mask image is 0 are valid (pyFAI and NeXus masks flag the bad pixels); "
            "'nonzero': pixels where it is non-zero are (a boolean 'good' map)."),
    "dark": Parameter(type="file", default=None, help="Image file of the dark frame [counts]",
                      doc="Subtracted from every frame; it must match the frames' exposure. " + CORRECTIONS_DOC),
    "flat": Parameter(type="file", default=None, help="Image file of the flat field",
                      doc="The detector's relative response. " + CORRECTIONS_DOC),
    "energy": Parameter(type="float", default=None, lowlim=0.0,
                        help="Photon energy [keV]; None: the first frame's header (wavelength), if it has one"),
    "distance": Parameter(type="float", default=None, lowlim=0.0,
                          help="Sample-to-detector distance [m]; None: the first frame's header, if it has one"),
    "psize": Parameter(type=("float", "list"), default=None,
                       help="Detector pixel size [m], one value or (y, x); None: the first frame's header"),
    **GEOMETRY,
}


def prepare(scan_params, context):
    """Read the frame files and positions ``scan.data.recipe.stack`` names and apply the common preparation."""
    from difframe.manager import PluginManager
    from difframe.ptycho.beamline import open_stack
    from difframe.ptycho.prepare import prepare as prepare_scan

    given = ((scan_params.get("data") or {}).get("recipe") or {}).get("stack") or {}
    p = {**{key: spec.default for key, spec in PARAMETERS.items()}, **given}  # defaults when called from Python
    raw = open_stack(p, context.plugins or PluginManager(), prefix=f"scans.{context.label}.data.recipe.stack")
    return prepare_scan(raw, scan_params, context)


@hookimpl
def difframe_recipes():
    yield RecipeSpec(name="stack", summary="Frames from a list of detector image files and a text table of positions",
                     prepare=prepare, parameters=PARAMETERS)
