"""Engine ``tds_fit``: elastic constants from harvested TDS points (family "tds").

``context`` (a mapping or an object with these attributes) holds the harvest
arrays ``Q``, ``intensity``, ``spot``, ``G`` (and ``hkl``) as in the harvest
file, the elastic ``structure`` (``.free``, ``.basis``) from
``difframe.crystal.symmetry``, optionally the run's plugin ``manager`` (to find
the minimiser by name) and an ``output_dir``; when that is given, ``finalize``
writes parametri.txt, fit_results.json and fit_results.h5 there.  Refining the
``a_variables`` geometry corrections also needs ``frame``, ``pixel``, the
harvest's ``geometry`` and its ``centering_file`` (empty unless re-centred).
The ``geometry`` also gives the scan axis and frame width for the exposure
average; ``angle_increment`` (the frames' header, deg) is checked against it;
``threshold`` (the harvest's counts of what each threshold rule keeps) is
copied into fit_results.json.  ``finalize`` adds the per-spot diagnostics of
:mod:`difframe.tds.diagnostics` to the text, to fit_results.json ("spot_diagnostics") and
draws spot_profiles.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

from difframe import hookimpl
from difframe.errors import UsageError
from difframe.tds import fit
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.tds_fit")

PARAMETERS = {
    "cguess": Parameter(
        type=("Param", "NoneType"), default=None, help="Start value, min and max [GPa] of each free constant",
        doc="tds2el's CGUESS: {\"A11\": [value, min, max], ...} with one entry per free constant of the symmetry "
            "(A11 and C11 name the same constant). A closed interval (min == max) fixes that constant."),
    "fix": Parameter(
        type="str", default="auto", help="Which constant sets the absolute scale",
        doc="TDS gives only ratios of the elastic constants. 'auto' fixes the first free constant at its CGUESS "
            "value (unless CGUESS already closes an interval), a name such as 'C44' fixes that one, 'bulk' "
            "rescales the result to the Voigt bulk modulus `bulk_modulus`, 'none' leaves all free (refused "
            "when the fit is singular, as it is with the classical model)."),
    "bulk_modulus": Parameter(type=("float", "NoneType"), default=None, lowlim=0.0,
                              help="Voigt bulk modulus [GPa] for fix = 'bulk' (default: that of CGUESS)"),
    "minimiser": Parameter(type="str", default="trust_region", help="Name of the minimiser plugin",
                           doc="`difframe list-plugins --kind minimiser` lists them: trust_region, lbfgsb, ..."),
    "ftol": Parameter(type="float", default=1e-5, lowlim=0.0, help="Relative cost change that ends the fit (tds2el ftol)"),
    "max_iterations": Parameter(type="int", default=200, lowlim=1, help="Most model evaluations per iterate call"),
    "nred": Parameter(type="int", default=1, lowlim=1, help="Use one point in nred (tds2el nred)"),
    "weighting": Parameter(type="str", default="poisson", choices=fit.WEIGHTINGS,
                           help="Residual weights: 1/intensity (Poisson counts) or uniform"),
    "backend": Parameter(type="str", default="auto", choices=("auto", "numpy", "opencl"),
                         help="Where the model runs: OpenCL when a device works, else numpy"),
    "quantum": Parameter(type="bool", default=False, help="Bose factor hbar omega/2 coth(hbar omega/2kT) per branch",
                         doc="Matters at low temperature; needs temperature and density."),
    "temperature": Parameter(type="float", default=300.0, lowlim=0.0, help="Sample temperature [K] (tds2el Temperature)"),
    "density": Parameter(type=("float", "NoneType"), default=None, lowlim=0.0, help="Density [g/cm^3] (tds2el density)"),
    "a_variables": Parameter(
        type=("list", "Param", "NoneType"), default=None, help="Geometry corrections [value, min, max] to refine",
        doc="tds2el's A_variables: 14 [value, min, max] corrections added to r1, r2, r3, AA, BB, CC, omega, alpha, "
            "beta, kappa, d1, d2, det_origin_X, det_origin_Y (deg, Angstrom, px), or a mapping of some of these "
            "names (the others closed at 0). An open interval refines that correction with the constants; "
            "refused on a harvest re-centred with centering_file."),
    "exposure": Parameter(
        type="str", default="auto", choices=fit.EXPOSURE_MODES, help="Average the model over each frame's exposure",
        doc="Detectors integrate while phi turns by angular_step; the model then averages T over Gauss-Legendre "
            "sub-steps of the frame along the scan axis. 'auto' does so when that changes the model at CGUESS by "
            "more than the Poisson noise (chi^2 shift > 1), 'on' always (needs the geometry), 'off' uses the "
            "frame centres (difframe before 0.5 deg frames were checked)."),
    "exposure_substeps": Parameter(
        type=("int", "NoneType"), default=None, lowlim=1, help="Sub-steps per frame (None: chosen per point)",
        doc="Unset: each point gets the fewest Gauss-Legendre nodes that average it to 1e-4, from the frame "
            "width, its distance to the spot (at least DeltaQ_min) and its speed across the scan (at most 12)."),
    "exposure_clear_peak": Parameter(
        type="bool", default=True, help="Leave out points whose Q passes within DeltaQ_min of G during the exposure",
        doc="Over a wide frame a pixel's Q sweeps an arc; where it enters the DeltaQ_min ball the pixel counted the "
            "Bragg peak, which the TDS model has no term for. Needs the harvest's delta_q; not with exposure = 'off'."),
    "exposure_width": Parameter(
        type=("float", "NoneType"), default=None, lowlim=0.0, help="Exposure per frame [deg] (None: angular_step)",
        doc="Warned about when it disagrees with Angle_increment in the frames' headers."),
}


def _get(obj, key, default=None):
    if hasattr(obj, "get"):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _schema_defaults(schema) -> dict:
    return {key: node.default if isinstance(node, Parameter) else node[1] for key, node in schema.items()}


class TDSFit:
    """Variable-projection fit of the elastic constants; one ``iterate(n)`` = up to n model evaluations."""

    def __init__(self, params, context):
        self.p = {**_schema_defaults(PARAMETERS), **dict(params or {})}
        self.context = context
        self.problem = None
        self.outcome = None
        self.result = None

    def settings(self) -> fit.FitSettings:
        p = self.p
        return fit.FitSettings(fix=str(p["fix"]), bulk_modulus=p["bulk_modulus"], ftol=float(p["ftol"]),
                               max_iterations=int(p["max_iterations"]), nred=int(p["nred"]),
                               weighting=str(p["weighting"]), backend=str(p["backend"]),
                               quantum_bose=bool(p["quantum"]), temperature=float(p["temperature"]),
                               density=p["density"], a_variables=p["a_variables"], exposure=str(p["exposure"]),
                               substeps=p["exposure_substeps"], exposure_width=p["exposure_width"],
                               clear_peak=bool(p["exposure_clear_peak"]))

    def initialize(self) -> None:
        """Check CGUESS, points and the scale convention; pick the minimiser."""
        ctx = self.context
        harvest = {key: _get(ctx, key) for key in ("Q", "intensity", "spot", "G", "hkl", "frame", "pixel",
                                                   "centering_file", "delta_q")}
        structure = _get(ctx, "structure")
        if structure is None:
            raise UsageError("tds_fit needs the elastic structure (ascii_generators) in its context")
        if self.p["cguess"] is None:
            raise UsageError("CGUESS is missing: give [value, min, max] for each free constant "
                                 f"({', '.join(structure.free)})")
        self.harvest = harvest
        manager = _get(ctx, "manager")
        if manager is None:
            from difframe.manager import PluginManager

            manager = PluginManager()
        spec = manager.get("minimiser", str(self.p["minimiser"]))
        self.minimise = spec.minimise
        self.minimiser_params = _schema_defaults(spec.parameters)
        self.problem, _ = fit.build_problem(harvest, structure, self.p["cguess"], self.settings(),
                                            _get(ctx, "geometry"), _get(ctx, "angle_increment"))
        self.x = self.problem.x0.copy()

    def iterate(self, n: int) -> list[dict]:
        """Run the minimiser for up to ``n`` evaluations from where it stopped; one metrics dict per Jacobian."""
        if self.outcome is not None and self.outcome.converged:
            return []
        start = len(self.problem.history)
        self.problem.x0 = self.x
        # max_iterations caps every call (its doc: most model evaluations per iterate call)
        params = {**self.minimiser_params, "ftol": float(self.p["ftol"]),
                  "max_iterations": min(int(n), int(self.p["max_iterations"]))}
        self.outcome = self.minimise(self.problem, params)
        self.x = self.outcome.x
        return [{"cost": cost} for cost in self.problem.history[start:]]

    def finalize(self) -> dict:
        """The FitResult, its text report and, with ``output_dir``, the files written."""
        from difframe.tds import diagnostics, results

        outcome = self.outcome
        if outcome is None:
            raise UsageError("tds_fit.finalize() before any iterate(): nothing was fitted")
        self.result = fit.finish(self.problem, self.x, self.settings(), cost=outcome.cost,
                                 converged=outcome.converged, message=outcome.message, hkl=self.harvest["hkl"],
                                 n_harvest_spots=len(self.harvest["G"]))
        threshold = dict(_get(self.context, "threshold") or {})
        if threshold:
            self.result.extra["threshold"] = threshold
        geometry = _get(self.context, "geometry")
        if geometry is not None:
            self.result.extra["ieee"] = results.ieee_report(self.result, geometry.lattice)
        hot = threshold.get("threshold_hot_frames_per_spot")
        rows = diagnostics.spot_diagnostics(
            self.problem, self.x, self.harvest["hkl"], geometry.lattice.max_reciprocal if geometry else None,
            hot if hot is not None and len(hot) == len(self.harvest["G"]) else None)
        self.result.extra["spot_diagnostics"] = rows
        summary = {"result": self.result, "text": results.report(self.result) + "\n" + diagnostics.table(rows),
                   "files": {}}
        output_dir = _get(self.context, "output_dir")
        if output_dir is not None:
            summary["files"] = results.write_all(self.result, output_dir)
            summary["files"]["profiles"] = diagnostics.profiles_png(rows, Path(output_dir) / "spot_profiles.png")
        log.info("%s", results.summary_line(self.result))
        return summary


def factory(params, context) -> TDSFit:
    return TDSFit(params, context)


@hookimpl
def difframe_engines():
    yield EngineSpec(name="tds_fit", summary="elastic constants from TDS points (variable projection)",
                     family="tds", factory=factory, parameters=PARAMETERS)
