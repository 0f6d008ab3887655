"""The TDS flow of a run, as ``tds2el input.par`` ran it: harvest -> (dry run) -> fit -> visSim.

``run_tds(run)`` reads ``run.params.tds`` (:mod:`difframe.tds.tree`): tds2el's names
(``images_prefix``, ``DeltaQ_max``, ``collectSpots``, ``CGUESS``, ...) with the
geometry under ``tds.geometry``; :func:`difframe.tds.config.read_tds_config` builds
it from input.par and conf_file, with file names already resolved.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from difframe import parallel, runlock
from difframe.errors import DataError, UsageError

log = logging.getLogger("difframe.tds.workflow")

ENGINE = "tds_fit"
RECIPE = "tds_harvest"
#: tds subtree name -> tds_fit engine parameter
ENGINE_PARAMETERS = {"CGUESS": "cguess", "ftol": "ftol", "nred": "nred", "Temperature": "temperature",
                     "density": "density", "minimiser": "minimiser", "quantum_bose": "quantum", "fix": "fix",
                     "A_variables": "a_variables", "exposure": "exposure", "exposure_substeps": "exposure_substeps",
                     "exposure_width": "exposure_width", "exposure_clear_peak": "exposure_clear_peak"}


def _get(tds, name: str, default: Any = None) -> Any:
    value = tds.get(name) if hasattr(tds, "get") else getattr(tds, name, None)
    return default if value is None else value


def _path(tds, name: str) -> str | None:
    """A file parameter (None when not given)."""
    value = _get(tds, name)
    return None if value in (None, "", "None") else os.path.expanduser(str(value))


def frame_files(tds) -> list[Path]:
    """tds2el's frame list: ``glob(images_prefix + "*" + images_postfix)`` in name order."""
    prefix = _path(tds, "images_prefix")
    if prefix is None:
        raise UsageError("images_prefix is missing: the frames to harvest are glob(images_prefix*images_postfix)")
    postfix = str(_get(tds, "images_postfix", ""))
    pattern = glob.escape(prefix) + "*" + glob.escape(postfix)
    files = sorted(Path(f) for f in glob.glob(pattern))
    if not files:
        raise UsageError(f"no frame matches images_prefix*images_postfix = {pattern!r}")
    check_numbering(files, prefix, postfix)
    return files


def check_numbering(files: list[Path], prefix: str, postfix: str) -> None:
    """Refuse a stack with a hole in its frame numbers: phi comes from the position in the list.

    When every name is prefix + number + postfix, the numbers must step evenly
    (the commonest step, 1 for a plain scan); a larger jump means a missing file,
    which would silently shift the angle of every later frame.
    """
    start, end = len(Path(prefix).name), len(postfix)
    middles = [f.name[start:len(f.name) - end] for f in files]
    if len(files) < 3 or not all(m.isdigit() for m in middles) or len({len(m) for m in middles}) != 1:
        return  # not a zero-padded numbered stack: name order is all tds2el had
    numbers = np.array([int(m) for m in middles])
    steps = np.diff(numbers)
    values, counts = np.unique(steps, return_counts=True)
    step = values[np.argmax(counts)]
    holes = np.flatnonzero(steps != step)
    if len(holes):
        i = holes[0]
        missing = Path(prefix).name + str(numbers[i] + step).zfill(len(middles[i])) + postfix
        raise DataError(f"frame {files[i].parent / missing} is missing: {files[i].name} is followed by "
                        f"{files[i + 1].name} (frame numbers step by {step}); each frame's phi comes from its "
                        f"position in the stack, so every later angle would be wrong")


def spot_list(tds) -> np.ndarray | None:
    """collectSpots, else the hkl of file_maxima, else None."""
    from difframe.tds.harvest import _as_hkl, read_spot_list

    spots = _get(tds, "collectSpots")
    if spots is not None:
        return _as_hkl(spots, "collectSpots")
    maxima = _path(tds, "file_maxima")
    return read_spot_list(maxima) if maxima else None


def harvest_options(tds, spots=None):
    from difframe.tds.harvest import HarvestOptions

    threshold = _get(tds, "threshold")
    return HarvestOptions(
        delta_q_min=float(_get(tds, "DeltaQ_min", 0.0)),
        delta_q_max=float(_get(tds, "DeltaQ_max", 0.15)),
        threshold=None if threshold is None else float(threshold),
        threshold_rule=str(_get(tds, "threshold_rule", "frame")),
        spots=spot_list(tds) if spots is None else spots,
        generators=_get(tds, "ascii_generators"),
        replicas=bool(_get(tds, "REPLICA_COLLECTION", False)),
        mask_file=_path(tds, "filter_file"),
        normalisation_file=_path(tds, "normalisation_file"),
        centering_file=_path(tds, "centering_file"),
        rough=not bool(_get(tds, "DO_ELASTIC", True)),
        rough_grid=int(_get(tds, "testSpot_N", 64)),
    )


def mpi_comm():
    """COMM_WORLD when started by mpiexec with more than one rank, else None (mpi4py not imported)."""
    from difframe.parallel import world

    return world().comm


def harvest_step(tds, plugins, comm=None, progress=None):
    """Harvest the frames and write ``save_to_file`` (rank 0); returns the Harvest (None off rank 0).
    ``progress``: a :mod:`difframe.progress` bar advanced per frame."""
    from difframe.tds.config import geometry_of
    from difframe.tds.harvest import harvest, harvest_volume, write_harvest, write_volume

    options = harvest_options(tds)
    geometry, files = geometry_of(tds), frame_files(tds)
    target = _path(tds, "save_to_file")
    if options.rough:
        volume = harvest_volume(geometry, files, options, plugins, comm, progress)
        if volume is not None and target:
            write_volume(volume, target)
        return volume
    result = harvest(geometry, files, options, plugins, comm, progress)
    if result is not None and target:
        write_harvest(result, target)
        log.info("harvest written to %s", target)
    return result


def select_spots(result, spots: np.ndarray | None, generators: str | None, replicas: bool, lattice):
    """The points of the harvested spots named by the fit's collectSpots (all when None)."""
    from difframe.tds.harvest import Harvest, replicate_spots

    if spots is None:
        return result
    if replicas:
        spots = replicate_spots(spots, generators, lattice)
    wanted = {tuple(h) for h in np.asarray(spots).tolist()}
    chosen = np.array([tuple(h) in wanted for h in result.hkl.tolist()])
    if not chosen.any():
        raise UsageError(f"none of collectSpots {np.asarray(spots).tolist()} is in the harvest "
                         f"(it holds {result.hkl.tolist()})")
    renumber = np.cumsum(chosen) - 1
    keep = chosen[result.spot]
    return Harvest(Q=result.Q[keep], intensity=result.intensity[keep], spot=renumber[result.spot[keep]],
                   frame=result.frame[keep], pixel=result.pixel[keep], hkl=result.hkl[chosen], G=result.G[chosen],
                   centroid=result.centroid[chosen], excluded_frames=result.excluded_frames, attrs=result.attrs)


def run_tds(run) -> dict:
    """Harvest (unless load_from_file), stop with the tensor structure when CGUESS is missing, fit, visSim.

    The run holds the lock of ``output_directory`` (one live run writes its files; stale temporaries cleared).
    """

    tds = run.params.tds
    output_dir = Path(_get(tds, "output_directory", "."))
    comm = mpi_comm()
    with runlock.holding(output_dir, "tds", [output_dir / "*"], parallel.Ranks(comm)):
        return _run_tds(run, tds, output_dir, comm)


def _run_tds(run, tds, output_dir: Path, comm) -> dict:
    from difframe.crystal.symmetry import check_cell, elastic_structure
    from difframe.tds.config import geometry_of
    from difframe.tds.harvest import hkl_summary, load_harvest

    results: dict[str, Any] = {}
    load_from = _path(tds, "load_from_file")
    files = None if load_from else frame_files(tds)  # a missing frame is named before anything is said
    run.progress.say("run %s: TDS %s; results in %s", run.run_name, f"fit of the harvest {load_from}" if load_from
                     else f"harvest of {len(files)} frames {files[0].name} .. {files[-1].name}", output_dir)
    if load_from is None:
        recipe = run.plugins.get("recipe", RECIPE)
        size = 1 if comm is None else comm.Get_size()
        with run.progress.bar("harvest", -(-len(files) // size), unit="frame") as bar:  # rank 0's block
            result = recipe.prepare(tds, {"plugins": run.plugins, "comm": comm, "progress": bar})
        if comm is not None and comm.Get_rank() != 0:
            return {}
        target = _path(tds, "save_to_file")
        if target:
            results["harvest"] = target
        if not bool(_get(tds, "DO_ELASTIC", True)):
            return results
    elif comm is not None and comm.Get_rank() != 0:
        return {}  # a fit of a saved harvest is one process's work: rank 0 does it and writes the files
    else:
        result = load_harvest(load_from)
    if _get(tds, "show_hkls", False):  # tds2el: list the hkl and their points, then stop
        results["hkls"] = hkl_summary(result)
        return results
    if not _get(tds, "fitSpots", False) and _get(tds, "CGUESS") is None:
        return results

    generators = _get(tds, "ascii_generators")
    if not generators:
        raise UsageError("ascii_generators is missing: it fixes the structure of the elastic tensor")
    geometry = geometry_of(tds)
    check_cell(generators, (geometry.AA, geometry.BB, geometry.CC, geometry.aAA, geometry.aBB, geometry.aCC))
    structure = elastic_structure(generators, geometry.lattice.direct)
    results["structure"] = structure.table()
    cguess = _get(tds, "CGUESS")
    if cguess is None:
        raise UsageError(
            f"CGUESS is missing. The elastic tensor allowed by {generators!r} is\n{structure.table()}\n"
            f"give CGUESS = {{name: [value, min, max]}} for {', '.join('A' + n[1:] for n in structure.free)}"
        )
    structure.check_constants(cguess)
    if load_from is not None:
        spots = spot_list(tds)
        result = select_spots(result, spots, generators, bool(_get(tds, "REPLICA", False)), geometry.lattice)
    fitted = None
    if _get(tds, "doMinimisation", True):
        fitted = _fit(run, tds, result, structure, geometry, output_dir)
        results.update(fitted["files"])
        results["report"] = fitted["report"]
    if _get(tds, "visSim", False):
        with run.progress.bar("visSim FISTA", len(np.unique(result.spot)), unit="spot") as bar:
            results.update(_visualise(tds, result, structure, cguess, output_dir, fitted and fitted["constants"],
                                      bar))
    return results


def _fit(run, tds, result, structure, geometry, output_dir: Path) -> dict:
    """Run engine ``tds_fit`` with the run's lifecycle hooks; returns the files it wrote."""
    spec = run.plugins.get("engine", ENGINE)
    params = {key: _get(tds, name) for name, key in ENGINE_PARAMETERS.items() if _get(tds, name) is not None}
    params.update(dict(_get(tds, "fit", {})))
    context = {"Q": result.Q, "intensity": result.intensity, "spot": result.spot, "G": result.G, "hkl": result.hkl,
               "frame": result.frame, "pixel": result.pixel, "geometry": geometry,
               "centering_file": result.attrs.get("centering_file") or "",
               "angle_increment": result.attrs.get("angle_increment_deg"),
               "delta_q": result.attrs.get("delta_q"),
               "threshold": {k: v for k, v in result.attrs.items() if k.startswith("threshold_")},
               "structure": structure, "manager": run.plugins, "output_dir": str(output_dir)}
    engine = spec.factory(params, context)
    engine.initialize()
    run.hook.difframe_engine_started(run=run, engine=ENGINE)
    iteration, block, limit = 0, 20, int(_get(tds, "max_evaluations", 2000))
    with run.progress.bar("fit", None, unit="step") as bar:  # steps of the minimiser, each with its cost
        while iteration < limit and not run.stop_requested:
            metrics = engine.iterate(block)
            for m in metrics:
                iteration += 1
                run.hook.difframe_iteration_finished(run=run, engine=ENGINE, iteration=iteration, metrics=m)
            if not metrics:
                break
            bar.update(len(metrics), **{k: float(v) for k, v in metrics[-1].items()})
    summary = engine.finalize()
    run.hook.difframe_engine_finished(run=run, engine=ENGINE, summary=summary)
    table = summary["result"].constants_table()
    return {"files": {name: str(path) for name, path in summary.get("files", {}).items()},
            "report": summary.get("text", ""), "constants": {name: row["value"] for name, row in table.items()}}


def _visualise(tds, result, structure, cguess, output_dir: Path, constants=None, progress=None) -> dict:
    """visSim: FISTA interpolation of data and model (fitted constants, else CGUESS) around each spot."""
    from difframe.tds import visualise

    written = visualise.vis_sim(result, structure, cguess, output_dir / "simtests.h5",
                                N=int(_get(tds, "testSpot_N", 32)), beta=float(_get(tds, "testSpot_beta", 0.03)),
                                n_iter=int(_get(tds, "testSpot_Niter", 100)), constants=constants,
                                progress=progress)
    return {"visualisation": str(written)}
