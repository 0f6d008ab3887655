"""Fit results for people and programs: screen text, parametri.txt, fit_results.json, fit_results.h5.

``parametri.txt`` keeps tds2el's file name; ``fit_results.json`` is the stable,
machine-readable product (all 21 Voigt components with the symmetry relations
applied, which constants were fixed, the ratios, the refined A_variables
geometry corrections, the fit quality).  Every file
is written atomically, so a failed write leaves an earlier result intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from difframe import nexus
from difframe.fileio import atomic_path
from difframe.tds.fit import FitResult

FILES = {"parametri": "parametri.txt", "json": "fit_results.json", "hdf5": "fit_results.h5"}


def to_json(result: FitResult) -> dict:
    """The ``fit_results.json`` document."""
    return {
        "constants": result.constants_table(),
        "fixed": result.fixed,
        "ratios": result.ratios,
        "points": int(result.n_points),
        "spots": int(result.n_spots),
        "cost": float(result.cost),
        "reduced_chi2": float(result.reduced_chi2),
        "converged": bool(result.converged),
        "message": result.message,
        "backend": result.backend,
        "units": "GPa",
        "geometry": result.geometry,
        **result.extra,
    }


def ieee_report(result: FitResult, lattice) -> dict:
    """The fitted tensor in the IEEE setting (:mod:`difframe.crystal.setting`), sigma propagated, for
    fit_results.json ("ieee") and the text."""
    from difframe.crystal.setting import ieee_axes

    axes = ieee_axes(lattice)
    voigt, sigma = result.rotated(axes)
    return {"axes": axes.tolist(), "voigt": voigt.tolist(), "voigt_sigma": sigma.tolist(),
            "same_as_fit_frame": bool(np.allclose(axes, np.eye(3), atol=1e-12))}


def report(result: FitResult) -> str:
    """The text shown on screen and written to parametri.txt."""
    lines = ["Elastic constants [GPa] (TDS fit)", f"{'':6s}{'value':>12s}{'sigma':>11s}"]
    for name, value, sigma, fitted in zip(result.names, result.values, result.sigma, result.fitted):
        lines.append(f"{name:6s}{value:12.4f}{sigma:11.4f}" + ("" if fitted else "   fixed (sets the scale)"))
    lines.append("ratios (TDS determines only these): " + ", ".join(f"{k} = {v:.5f}" for k, v in result.ratios.items()))
    if result.geometry:
        lines.append("geometry corrections (A_variables; deg, Angstrom, px):")
        lines.append(f"{'':14s}{'correction':>12s}{'sigma':>11s}{'corrected':>13s}")
        lines.extend(f"{name:14s}{row['value']:12.5f}{row['sigma']:11.5f}{row['corrected']:13.5f}"
                     for name, row in result.geometry.items())
    lines.append("Voigt matrix [GPa] (a* along x, c along z):")
    lines.extend("  " + " ".join(f"{c:10.3f}" for c in row) for row in result.voigt)
    ieee = result.extra.get("ieee")
    if ieee and not ieee["same_as_fit_frame"]:
        lines.append("Voigt matrix [GPa] in the IEEE setting (Z along c, X along a; docs/tds-fit.md, Settings):")
        lines.extend("  " + " ".join(f"{c:10.3f}" for c in row) for row in ieee["voigt"])
    lines.append(f"points {result.n_points}, spots {result.n_spots}, cost {result.cost:.6g}, "
                 f"reduced chi^2 {result.reduced_chi2:.4g}, model {result.backend}")
    lines.append(f"converged: {'yes' if result.converged else 'NO'} ({result.message})")
    return "\n".join(lines)


def summary_line(result: FitResult) -> str:
    """One line for the log (the full table is the command's output): constants, ratios, quality."""
    constants = ", ".join(f"{n} = {v:.4g}" + ("" if f else " (fixed)")
                          for n, v, f in zip(result.names, result.values, result.fitted))
    corrections = "".join(f"; {n} correction {row['value']:+.4g}" for n, row in result.geometry.items())
    return (f"fit {'converged' if result.converged else 'NOT converged'}: {constants} GPa{corrections}; "
            f"{result.n_points} points, {result.n_spots} spots, reduced chi^2 {result.reduced_chi2:.4g}")


def write_parametri(result: FitResult, path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(report(result) + "\n")
    return Path(path)


def write_json(result: FitResult, path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json(result), indent=2) + "\n")
    return Path(path)


def write_hdf5(result: FitResult, path) -> Path:
    """Constants, Voigt matrix with sigma, refined geometry corrections, per-spot scale and baseline, cost history."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["units"] = "GPa"
        f.attrs["converged"] = bool(result.converged)
        f.attrs["message"] = result.message
        f.attrs["cost"] = float(result.cost)
        f.attrs["reduced_chi2"] = float(result.reduced_chi2)
        g = f.create_group("constants")
        g["names"] = np.array(result.names, dtype="S")
        g["values"] = result.values
        g["sigma"] = result.sigma
        g["fitted"] = result.fitted
        f["voigt"] = result.voigt
        f["voigt_sigma"] = result.voigt_sigma
        if result.geometry:
            geo = f.create_group("geometry")
            geo["names"] = np.array(list(result.geometry), dtype="S")
            for key in ("value", "sigma", "corrected"):
                geo[key] = np.array([row[key] for row in result.geometry.values()])
        s = f.create_group("spots")
        s["scale"] = result.scale
        s["baseline"] = result.baseline
        if result.hkl is not None:
            s["hkl"] = result.hkl
        f["cost_history"] = np.asarray(result.history, dtype=float)
        _nexus_entry(f, result)
    return Path(path)


def _nexus_entry(f, result: FitResult) -> None:
    """``entry/`` (the root's default) so that silx and PyMca open on the fitted Voigt matrix (with its sigma
    as errors) and can show the cost history; datasets are hard links to the ones above."""
    entry = nexus.entry(f, "entry", f"TDS elastic constants fit ({result.message})")
    nexus.nxdata(entry, "voigt", ("voigt", f["voigt"], "GPa", "elastic constant C_ij"),
                 [("row", np.arange(1, 7), "", "Voigt index i"), ("column", np.arange(1, 7), "", "Voigt index j")],
                 errors=f["voigt_sigma"], default=True,
                 title="fitted Voigt matrix C_ij [GPa] (index 1..6: xx, yy, zz, yz, xz, xy)")
    nexus.nxdata(entry, "cost", ("cost", f["cost_history"], "", "least-squares cost"),
                 [("evaluation", np.arange(len(f["cost_history"])), "", "cost evaluation")],
                 title="cost during the fit")


def write_all(result: FitResult, directory) -> dict[str, Path]:
    """parametri.txt, fit_results.json and fit_results.h5 in ``directory``; returns their paths."""
    directory = Path(directory)
    return {
        "parametri": write_parametri(result, directory / FILES["parametri"]),
        "json": write_json(result, directory / FILES["json"]),
        "hdf5": write_hdf5(result, directory / FILES["hdf5"]),
    }
