"""The ``tds`` subtree of the parameter tree: a tds2el run written as difframe parameters.

Every option of tds2el's input.par and conf_file is a node here, under the name
the guide uses, so ``difframe.tds.config`` can turn the old files into this tree
and a TOML file can say the same thing.  The geometry (conf_file alignment
names) lives under ``tds.geometry``; its convention is
:mod:`difframe.crystal.geometry`.
"""

from difframe.types import Parameter as P

_FILE = ("file", "NoneType")


def _geometry_nodes() -> dict[str, P]:
    deg = "[deg]"
    spec = {
        "lmbda": ("wavelength [Angstrom]", None, 0.0, None),
        "dist": ("sample-detector distance [mm]", None, 0.0, None),
        "pixel_size": ("pixel size [mm] (square pixels)", None, 0.0, None),
        "det_origin_X": ("column where the beam axis meets the untilted detector [px, 0-based]", None, None, None),
        "det_origin_Y": ("row where the beam axis meets the untilted detector [px, 0-based]", None, None, None),
        "AA": ("cell length a [Angstrom]", None, 0.0, None),
        "BB": ("cell length b [Angstrom]", None, 0.0, None),
        "CC": ("cell length c [Angstrom]", None, 0.0, None),
        "aAA": ("cell angle alpha " + deg, 90.0, 0.0, 180.0),
        "aBB": ("cell angle beta " + deg, 90.0, 0.0, 180.0),
        "aCC": ("cell angle gamma " + deg, 90.0, 0.0, 180.0),
        "angular_step": ("phi increment per frame " + deg, None, None, None),
        "phi": ("phi at the centre of frame 0's exposure " + deg, 0.0, None, None),
        "omega": ("omega " + deg, 0.0, None, None),
        "omega_offset": ("added to omega " + deg, 0.0, None, None),
        "alpha": ("tilt of the kappa axis from z " + deg, 50.0, None, None),
        "beta": ("tilt of the phi axis from z " + deg, 0.0, None, None),
        "kappa": ("kappa " + deg, 0.0, None, None),
        "r1": ("orientation: rotation about x " + deg, 0.0, None, None),
        "r2": ("orientation: rotation about y " + deg, 0.0, None, None),
        "r3": ("orientation: rotation about z " + deg, 0.0, None, None),
        "d1": ("detector tilt about the beam axis x " + deg, 0.0, None, None),
        "d2": ("detector tilt about the horizontal axis y " + deg, 0.0, None, None),
        "theta": ("detector arm about z " + deg, 0.0, None, None),
        "theta_offset": ("added to theta " + deg, 0.0, None, None),
        "beam_tilt_angle": ("incident beam tilt about y " + deg, 0.0, None, None),
    }
    nodes = {
        "tds.geometry": P(type="Param", default=None, help="Experiment geometry (conf_file alignment names)",
                          doc="Convention: docs/tds-geometry.md.  Parameters without a default are required "
                          "for a harvest."),
    }
    for name, (help_, default, low, high) in spec.items():
        nodes[f"tds.geometry.{name}"] = P(type=("float", "NoneType") if default is None else "float",
                                          default=default, help=help_, lowlim=low, uplim=high)
    for name in ("dim1", "dim2"):
        nodes[f"tds.geometry.{name}"] = P(type=("int", "NoneType"), default=None, lowlim=1,
                                          help=f"detector {'rows' if name == 'dim1' else 'columns'} "
                                          "(read from the frames when not given)")
    return nodes


NODES = {
    "tds": P(
        type=("Param", "NoneType"),
        default=None,
        help="Thermal diffuse scattering: harvest and elastic-constant fit",
        doc="When given, `difframe run` harvests rotation frames around Bragg spots and fits the elastic "
        "constants, as tds2el did from input.par and conf_file (`difframe tds input.par` reads those files "
        "into this subtree).",
    ),
    # -- input.par ---------------------------------------------------------------------------
    "tds.conf_file": P(type=_FILE, default=None, help="tds2el conf_file (geometry and options), relative to input.par"),
    "tds.filter_file": P(type=_FILE, default=None, help="mask EDF: 1 for good pixels, 0 for pixels to discard",
                         doc="Pixels with negative values in a frame are discarded too."),
    "tds.images_prefix": P(type=("str", "NoneType"), default=None, help="frames are glob(prefix + '*' + postfix)",
                           doc="Files are taken in name order; frame n is at phi + n * angular_step."),
    "tds.images_postfix": P(type="str", default="", help="file name ending of the frames, e.g. '.cbf'"),
    "tds.ascii_generators": P(type=("str", "NoneType"), default=None,
                              help="point-group generators, e.g. '1~,2(z),2(y)'",
                              doc="Determine the structure of the elastic tensor (`difframe tds structure`)."),
    "tds.normalisation_file": P(type=_FILE, default=None,
                                help="two columns: frame file name and the denominator it is divided by"),
    "tds.output_directory": P(type=("dir", "NoneType"), default=None,
                              help="where parametri.txt, fit_results.json and plots go (default: beside input.par)"),
    # -- harvest ---------------------------------------------------------------------------------
    "tds.DO_ELASTIC": P(type="int", default=1, choices=None, lowlim=0, uplim=1,
                        help="1: harvest around Bragg spots; 0: rough harvest of the whole volume"),
    "tds.DeltaQ_max": P(type="float", default=0.15, lowlim=0.0,
                        help="outer harvest radius around each spot, in units of the longest of |a*|,|b*|,|c*|"),
    "tds.DeltaQ_min": P(type="float", default=0.04, lowlim=0.0,
                        help="inner harvest radius (excludes the Bragg peak), same units as DeltaQ_max"),
    "tds.load_from_file": P(type=_FILE, default=None,
                            help="read a previous harvest instead of harvesting (None: harvest the frames)"),
    "tds.save_to_file": P(type=_FILE, default=None, help="write the harvest to this HDF5 file"),
    "tds.threshold": P(type="float", default=500000.0, lowlim=0.0,
                       help="frames where a spot's pixel exceeds this are kept out of the fit",
                       doc="Their brightest pixels give an intensity-weighted centroid of the peak, which a "
                       "second harvest with centering_file uses to re-centre Q."),
    "tds.threshold_rule": P(type="str", default="frame", choices=("frame", "spot"),
                            help="what a spot pixel above threshold drops: its frame for every spot (tds2el) or "
                            "only its spot",
                            doc="A spot pixel is an unmasked pixel within DeltaQ_max of the spot in that frame; "
                            "masked pixels never count.  The harvest logs how many frames and points each rule "
                            "keeps (docs/tds-usage.md, section 4)."),
    "tds.collectSpots": P(type=("list", "NoneType"), default=None, help="[[h, k, l], ...] spots to harvest around"),
    "tds.file_maxima": P(type=_FILE, default=None,
                         help="tagged maxima file whose accepted hkl replace collectSpots (read only if safe)"),
    "tds.REPLICA_COLLECTION": P(type="int", default=0, lowlim=0, uplim=1,
                                help="1: also harvest the symmetry replicas of the collected spots"),
    "tds.centering_file": P(type=_FILE, default=None,
                            help="previous harvest whose peak centroids re-centre Q in this harvest"),
    "tds.show_hkls": P(type="bool", default=False, help="list the harvested hkl and their point counts, then stop"),
    # -- fit and simulation ------------------------------------------------------------------------
    "tds.fitSpots": P(type="bool", default=False, help="fit (or simulate) the spots of the harvest"),
    "tds.CGUESS": P(type=("Param", "NoneType"), default=None,
                    help="{'A11': [value, min, max], ...} start values and bounds [GPa]",
                    doc="Names as `difframe tds structure` prints them (A11 or C11); only free constants."),
    "tds.Temperature": P(type="float", default=330.0, lowlim=0.0, help="sample temperature [K]"),
    "tds.density": P(type="float", default=2.71, lowlim=0.0, help="density [g/cm^3]"),
    "tds.doMinimisation": P(type="int", default=1, lowlim=0, uplim=1, help="0: simulate only, 1: fit the data"),
    "tds.REPLICA": P(type="int", default=0, lowlim=0, uplim=1,
                     help="1: replicate collectSpots by symmetry for the fit"),
    "tds.visSim": P(type="int", default=0, lowlim=0, uplim=1,
                    help="1: interpolate data and model around each fitted spot onto a grid (HDF5 + PNG)"),
    "tds.testSpot_beta": P(type="float", default=0.03, lowlim=0.0, help="gradient regularisation of the interpolation"),
    "tds.testSpot_Niter": P(type="int", default=100, lowlim=1, help="FISTA iterations of the interpolation"),
    "tds.testSpot_N": P(type="int", default=64, lowlim=2, help="interpolation grid points per side"),
    "tds.nred": P(type="int", default=1, lowlim=1, help="use one harvested point in nred"),
    "tds.ftol": P(type="float", default=1e-5, lowlim=0.0, help="relative cost tolerance of the fit"),
    "tds.A_variables": P(type=("list", "NoneType"), default=None,
                         help="14 [value, min, max] corrections of r1,r2,r3,AA,BB,CC,omega,alpha,beta,kappa,"
                         "d1,d2,det_origin_X,det_origin_Y",
                         doc="minimiser.Variable(value, min, max) in conf_file; a closed interval keeps the "
                         "parameter fixed (the default)."),
    "tds.minimiser": P(type="str", default="trust_region",
                       help="minimiser plugin used by the fit (difframe list-plugins --kind minimiser)"),
    "tds.quantum_bose": P(type="bool", default=False,
                          help="use the quantum Bose factor instead of the classical limit (low temperature)"),
    "tds.fix": P(type="str", default="auto",
                 help="constant held at its CGUESS value to set the scale ('auto': the first free one)",
                 doc="TDS fixes only ratios of constants (TDS.md section 2); 'bulk' fixes the Voigt bulk modulus."),
    "tds.exposure": P(type="str", default="auto", choices=("auto", "on", "off"),
                      help="average the model over each frame's exposure (auto: when it matters)",
                      doc="docs/tds-fit.md, Exposure: 'auto' integrates when the average over the frame moves the "
                      "model by more than the noise."),
    "tds.exposure_substeps": P(type=("int", "NoneType"), default=None, lowlim=1,
                               help="sub-steps per frame for the exposure average (None: chosen per point)"),
    "tds.exposure_clear_peak": P(type="bool", default=True,
                                 help="leave out points whose Q passes within DeltaQ_min of the spot during their "
                                 "exposure (not with exposure = 'off')"),
    "tds.exposure_width": P(type=("float", "NoneType"), default=None, lowlim=0.0,
                            help="exposure per frame [deg] (None: angular_step)"),
    **_geometry_nodes(),
}
