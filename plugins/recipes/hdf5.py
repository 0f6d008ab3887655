"""Recipe ``hdf5``: a scan's frames, positions, mask, corrections and geometry from any HDF5/NeXus layout.

Every dataset is named by a parameter, so a beamline's own file is read without
conversion.  The file stays open during the preparation, which reads only this
rank's frames (and corrects only those).
"""

from difframe import hookimpl
from difframe.types import Parameter, RecipeSpec

#: positions and geometry parameters the ``stack`` recipe shares
GEOMETRY = {
    "slow_multiplier": Parameter(
        type="float", default=1.0, help="Factor turning the slow positions into metres (1e-6 for um)",
        doc="A negative factor flips the axis: the positions are where the beam sits on the sample, which is "
            "minus the sample stage's translation."),
    "fast_multiplier": Parameter(type="float", default=1.0,
                                 help="Factor turning the fast positions into metres (1e-6 for um)",
                                 doc="As slow_multiplier, for the fast positions."),
    "slow_axis": Parameter(
        type="str", default="y", choices=("y", "x"), help="Axis the slow positions run along",
        doc="'y': the slow positions are y (detector rows) and the fast ones x; 'x': the other way round."),
    "propagation": Parameter(type="str", default=None, choices=("farfield", "nearfield"),
                             help="Propagation regime of the data; None: scan.geometry.prop_type"),
    "focus_distance": Parameter(
        type="float", default=None, lowlim=0.0, help="Focus-to-sample distance for cone-beam data [m]",
        doc="If set, the recipe's distance and pixel size are turned into the equivalent parallel-beam "
            "(Fresnel-scaled) geometry: magnification M = (z1 + z2) / z1, pixel / M, distance z2 / M."),
    "normalisation_reference": Parameter(
        type="float", default=None, lowlim=0.0, help="Monitor value the frames are scaled to; None: the mean",
        doc="Frame i is multiplied by reference / monitor_i; None takes the mean monitor of the kept frames, "
            "so the counts keep their size (and their Poisson statistics, roughly)."),
    "frames": Parameter(
        type=("str", "list"), default=None, help="Frames to keep: a slice 'start:stop:step' or a list of indices",
        doc="Applied to the file's frames before scan.data.num_frames, positions and normalisation alike: "
            "'0:200:2' keeps every second of the first 200, ':100' the first 100, [3, 7, 8] those three "
            "(python slice rules, indices from 0). None keeps all."),
}

CORRECTIONS_DOC = ("Order of the corrections: dark subtraction (results below 0 become 0), division by the flat "
                   "field scaled to mean 1 over its valid pixels (pixels where it is not positive are masked), "
                   "then multiplication by reference / monitor per frame.")

PARAMETERS = {
    "file": Parameter(type="file", default=None, help="Path of the HDF5 (or NeXus) file",
                      doc="External links (an Eiger master's data files) are followed into the file's own folder "
                          "and the folders of DIFFRAME_HDF5_LINK_DIRS only; see docs/security.md."),
    "intensities": Parameter(type="str", default="entry/data/data", help="Dataset of the frames (N, H, W)",
                             doc="The NeXus default is entry/data/data; a missing path lists the file's 3-D "
                                 "datasets."),
    "positions": Parameter(
        type="str", default=None, help="Dataset of positions (N, 2), columns (slow, fast)",
        doc="Either this or slow and fast; neither: the scan pattern (scan.xy) gives the positions."),
    "slow": Parameter(type="str", default=None, help="Dataset of the slow-axis positions (N,)"),
    "fast": Parameter(type="str", default=None, help="Dataset of the fast-axis positions (N,)"),
    "mask": Parameter(type="str", default=None, help="Dataset of the pixel mask (H, W)"),
    "mask_valid": Parameter(
        type="str", default="zero", choices=("zero", "nonzero"), help="Which mask pixels are valid",
        doc="'zero': pixels where the mask is 0 are valid (NeXus pixel_mask, CXI); 'nonzero': pixels where it is "
            "non-zero are (a boolean 'good' map)."),
    "dark": Parameter(type="str", default=None, help="Dataset of the dark frame (H, W) [counts]",
                      doc="Subtracted from every frame; it must match the frames' exposure. " + CORRECTIONS_DOC),
    "flat": Parameter(type="str", default=None, help="Dataset of the flat field (H, W)",
                      doc="The detector's relative response: frames are divided by it after the dark "
                          "subtraction. " + CORRECTIONS_DOC),
    "normalisation": Parameter(
        type="str", default=None, help="Dataset of the per-frame monitor (N,), e.g. the incident flux",
        doc="Corrects intensity drifts of the source between frames. " + CORRECTIONS_DOC),
    "energy": Parameter(
        type=("float", "str"), default=None, lowlim=0.0, help="Photon energy [keV], or the dataset holding it",
        doc="A dataset's units attribute is honoured (keV, eV, J); without one it is read as keV. "
            "None: scan.data.energy / scan.geometry."),
    "distance": Parameter(
        type=("float", "str"), default=None, lowlim=0.0, help="Sample-to-detector distance [m], or its dataset",
        doc="A dataset's units attribute is honoured (m, mm, um, nm); without one it is read as metres."),
    "psize": Parameter(
        type=("float", "str", "list"), default=None, help="Detector pixel size [m]: one value, (y, x) or datasets",
        doc="A number, a dataset of one or two (y, x) values, or a pair [y, x] of numbers or dataset paths "
            "(e.g. the NeXus y_pixel_size and x_pixel_size). Units as for distance."),
    **GEOMETRY,
}


def prepare(scan_params, context):
    """Read the layout ``scan.data.recipe.hdf5`` describes and apply the common preparation."""
    from difframe.ptycho.beamline import open_hdf5
    from difframe.ptycho.prepare import prepare as prepare_scan

    given = ((scan_params.get("data") or {}).get("recipe") or {}).get("hdf5") or {}
    p = {**{key: spec.default for key, spec in PARAMETERS.items()}, **given}  # defaults when called from Python
    with open_hdf5(p, prefix=f"scans.{context.label}.data.recipe.hdf5") as raw:
        return prepare_scan(raw, scan_params, context)


@hookimpl
def difframe_recipes():
    yield RecipeSpec(name="hdf5", aliases=("nexus",),
                     summary="Frames, positions, mask, dark/flat/monitor and geometry from datasets of any HDF5 file",
                     prepare=prepare, parameters=PARAMETERS)
