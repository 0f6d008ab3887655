"""The ptychography flow of a run: data -> model -> engines in order -> files and pictures.

``run_ptycho(run)`` is called by :meth:`difframe.Run.run`.  Every scan's data
comes from its recipe; the model holds one object and probe per scan unless
``scan.sharing`` says otherwise; the engines of ``engines.<label>`` run in the
order the user gave them, each continuing on the same object and probe.
Engines return control every ``numiter_contiguous`` iterations: that is when
hooks fire, stop requests are honoured, autosaves and plots are written, and
parameter changes an interaction client asked for reach every MPI rank.

Under mpiexec each rank's recipe loads only the rank's block of every scan's
frames (the recipes get the ranks in their context); all ranks know all
positions, so they build the same object frame.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from difframe import fft, parallel, runlock
from difframe.errors import DataError, DifframeError, ParameterError, UsageError
from difframe.inputs import check_inputs
from difframe.ptycho import h5typed, interaction
from difframe.ptycho import model as pm
from difframe.ptycho import plotting
from difframe.ptycho.ptyr import Autosaves, iter_info_entry, write_ptyr

log = logging.getLogger("difframe.ptycho")


def output_path(run, which: str, engine: str, iterations: int) -> Path:
    """``io.paths.<which>`` formatted with run, engine and iterations, under ``io.paths.home``."""
    template = run.params.io.paths[which]
    try:
        name = template % {"run": run.run_name, "engine": engine, "iterations": iterations}
    except (KeyError, ValueError, TypeError) as err:
        raise ParameterError(f"io.paths.{which}: cannot format {template!r} with run, engine and iterations "
                             f"({type(err).__name__}: {err})") from None
    path = Path(name)
    return path if path.is_absolute() else run.home / path


def prepare_scans(run, ranks: parallel.Ranks | None = None) -> dict:
    """PreparedData of every scan, from the recipe its ``data.source`` names ("file" when None).

    With several ``ranks`` a recipe may load just the rank's block of frames
    (all built-in ones do); a failure on one rank is raised on every rank.
    """
    ranks = ranks or parallel.Ranks()
    prepared = {}
    for label, scan in run.params.scans.items():
        source = scan.data.source or "file"
        name = run.plugins.resolve("recipe", source)
        spec = run.plugins.get("recipe", name)
        log.info("scan %s: preparing data with recipe %s", label, name)
        context = run.scan_context(label, ranks)
        failure, start = None, time.perf_counter()
        try:
            prepared[label] = spec.prepare(scan, context)
        except DifframeError as err:
            failure = err
        ranks.raise_first(failure)
        run.progress.say("scan %s: %d frames of %s prepared by recipe %s in %.1f s", label,
                         prepared[label].num_frames,
                         " x ".join(str(n) for n in prepared[label].data.shape[1:]), name,
                         time.perf_counter() - start)
    return prepared


def sharing_table(scans) -> dict:
    """label -> (object_share_with, object_share_power, probe_share_with, probe_share_power), labels resolved."""
    labels = list(scans)

    def resolve(label, value, what):
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(labels):
                raise ParameterError(f"scans.{label}.sharing.{what}: index {value} is not one of 0..{len(labels) - 1}")
            value = labels[value]
        if value not in scans:
            raise ParameterError(f"scans.{label}.sharing.{what}: no scan labelled {value!r} (scans: {labels})")
        return None if value == label else value

    table = {}
    for label, scan in scans.items():
        s = scan.sharing
        table[label] = (resolve(label, s.object_share_with, "object_share_with"), float(s.object_share_power),
                        resolve(label, s.probe_share_with, "probe_share_with"), float(s.probe_share_power))
    return table


def build_run_model(run, prepared: dict) -> pm.PtychoModel:
    """The model with starting probe and object from each scan's illumination and sample models."""
    from difframe.ptycho.models import ModelContext, build_illumination, build_sample

    params = run.params
    cdtype = np.complex64 if params.data_type == "single" else np.complex128

    def context(label, shape, psize, modes, positions_px=None):
        data = prepared[label]
        return ModelContext(shape=tuple(shape), psize=tuple(float(v) for v in psize), energy_kev=data.energy_kev,
                            distance_m=data.distance_m, label=label, data=data, scans=prepared,
                            positions_px=positions_px, num_modes=modes, dtype=cdtype)

    def init_probe(label, shape, psize):
        scan = params.scans[label]
        return build_illumination(scan.illumination, context(label, shape, psize, scan.coherence.num_probe_modes),
                                  run.plugins)

    def init_object(label, shape, psize, origin):
        scan = params.scans[label]
        pos_px = (prepared[label].positions - origin) / psize
        modes = run.model_needs(label).get("num_object_modes", scan.coherence.num_object_modes)  # e3PIE's slices
        return build_sample(scan.sample, context(label, shape, psize, modes, pos_px), run.plugins)

    model = pm.build_model(prepared, sharing_table(params.scans), init_probe, init_object, params.data_type)
    for label in prepared:  # terms an engine resumes from (OPR's per-frame probes): content/<key>/<label>
        for key, path in run.model_needs(label).get("engine_terms", {}).items():
            model.engine_terms.setdefault(key, {})[label] = h5typed.read(path, f"content/{key}/{label}")[label]
    return model


class _Outputs:
    """Autosaves, plot dumps and the runtime record of one run."""

    def __init__(self, run, model):
        self.run, self.model = run, model
        self.runtime = {"run": run.run_name, "start": time.strftime("%Y-%m-%dT%H:%M:%S"), "iter_info": []}
        self.frames: list[Path] = []
        self.autosave: Path | None = None
        self.autosaves: Autosaves | None = None  # made at the first autosave, on rank 0
        self.server: interaction.InteractionServer | None = None  # polled after every block

    def record(self, label, name, iteration, duration, metrics, *, in_engine: int, numiter: int):
        """Keep one iteration's record, counted as ptypy does: ``in_engine`` within the engine, ``iteration``
        over the run, ``numiter`` the engine's total."""
        self.runtime["iter_info"].append(iter_info_entry(in_engine, name, duration, metrics,
                                                         iterations=iteration, numiter=numiter))
        bad = [k for k, v in metrics.items() if not np.isfinite(v)]
        if bad:
            raise DataError(f"engine {label!r} ({name}) diverged at iteration {iteration}: {', '.join(bad)} "
                            f"is not finite; nothing of this run was saved after the last autosave")

    def block_done(self, name, before, after):
        """Autosave and dump plots when a multiple of their interval was crossed in (before, after]
        (collective: the fitted terms are gathered on every rank; rank 0 writes)."""
        p = self.run.params
        autosave = p.io.autosave.active and after // p.io.autosave.interval > before // p.io.autosave.interval
        terms = self.model.fitted_terms() if autosave else None
        if not self.model.ranks.is_root:
            return
        if autosave:
            self.autosave = output_path(self.run, "autosave", name, after)
            self.autosaves = self.autosaves or Autosaves()
            self.autosaves.save(self.autosave, self.model, p, self.runtime, "difframe autosave", terms)
            log.info("autosaved %s", self.autosave)
        interval = p.plotclient.dump_interval
        if p.plotclient.dump and interval and after // interval > before // interval:
            self.plot(name, after)

    def plot(self, name, iterations) -> Path:
        path = output_path(self.run, "plots", name, iterations)
        scanned: dict = {}
        for scan in self.model.scans:
            corners = pm.corners_of(scan.positions, self.model.objects[scan.object_id], scan.shape)
            scanned.setdefault(scan.object_id, []).append(corners + np.asarray(scan.shape) // 2)
        scanned = {oid: np.concatenate(c) for oid, c in scanned.items()}
        self.frames.append(plotting.save_png(path, self.model.objects, self.model.probes, self.runtime["iter_info"],
                                             f"{self.run.run_name}: {name}, iteration {iterations}", scanned))
        return path


def init_background(run, model: pm.PtychoModel) -> None:
    """Give every scan whose ``background.active`` is set its starting map (``background.init``)."""
    for scan in model.scans:
        spec = run.params.scans[scan.label].background
        if not spec.active:
            continue
        init = spec.init
        if isinstance(init, str) and init.endswith(".npy"):
            try:
                init = pm.to_fft_order(np.load(init, allow_pickle=False), scan.meta.get("propagation"))
            except (OSError, ValueError) as err:
                raise DataError(f"scans.{scan.label}.background.init: cannot read {init!r} as a .npy map "
                                f"({type(err).__name__}: {err})") from None
        bg = pm.initial_background(scan.intensity, scan.weights, init, scan.label, model.ranks)
        scan.background = bg.astype(model.rdtype)


def refine_positions(ep, model: pm.PtychoModel, done: int, previous: int, recorded: dict, *,
                     last_engine: bool = False) -> None:
    """Position refinement of ``engines.<label>.position_refinement`` after the engine's iteration ``done``
    (the block began after ``previous``); ``recorded`` holds each scan's positions as measured.  Not after
    the last engine's last iteration: no iteration would use those positions."""
    pr = ep.position_refinement
    if not pr.active or done < pr.start or (pr.stop is not None and previous >= pr.stop):
        return
    if last_engine and done >= ep.numiter:
        return
    if done // pr.interval == previous // pr.interval:
        return
    from difframe.ptycho import positions

    for scan in model.scans:
        psize = float(np.min(model.objects[scan.object_id].psize))
        max_px = float(pr.max_shift) / psize
        exact = bool(ep.get("subpixel_positions", False))  # an engine with windows at exact positions
        shifts = positions.refine_scan(model, scan, max_shift_px=max_px, subpixel_windows=exact,
                                       step_px=0.5 if exact else 1.0)
        stats = positions.apply_shifts(model, scan, shifts, max_shift_px=max_px,
                                       original_positions=recorded[scan.label])
        moved = np.hypot(*((scan.positions - recorded[scan.label]) / psize).T)
        log.info("scan %s: positions refined (this step rms %.2f px, max %.2f px; from the recorded: rms %.2f px)",
                 scan.label, stats["rms_shift_px"], stats["max_shift_px"], float(np.sqrt(np.mean(moved**2))))


def shown_metric(metrics: dict) -> dict:
    """The data-fit figure a progress line shows: the Poisson ``deviance`` the engines report (per
    valid pixel, about 1 at the noise limit), else the Fourier error."""
    for key in ("deviance", "fourier_error"):
        if key in metrics:
            return {key: float(metrics[key])}
    return {}


def run_engines(run, model: pm.PtychoModel, outputs: _Outputs) -> tuple[str, int]:
    """Run ``engines.<label>`` in order on ``model``; returns (last engine name, total iterations)."""
    total, name = 0, "none"
    recorded = {scan.label: np.array(scan.positions) for scan in model.scans}
    labels = list(run.params.engines)
    with fft.blas_one_thread():  # the engines' kernels keep both cores (difframe.fft.blas_one_thread)
        for label, ep in run.params.engines.items():
            if model.ranks.any(run.stop_requested):  # a stop ends the chain: later engines do not start
                break
            name = ep.name
            spec = run.plugins.get("engine", name)
            if getattr(spec, "family", "ptycho") != "ptycho":
                raise UsageError(f"engines.{label}.name: engine {name!r} is a {spec.family} engine, "
                                 "not a ptychography one")
            engine = spec.factory(ep, model)
            engine.initialize()
            run.hook.difframe_engine_started(run=run, engine=label)
            done = 0
            with run.progress.bar(name if label.lower() == name.lower() else f"{name} ({label})", ep.numiter) as bar:
                while done < ep.numiter and not model.ranks.any(run.stop_requested):
                    n = min(max(1, ep.numiter_contiguous), ep.numiter - done)
                    start = time.perf_counter()
                    metrics = engine.iterate(n)
                    duration = (time.perf_counter() - start) / max(len(metrics), 1)
                    before = total
                    for k, m in enumerate(metrics, start=done + 1):
                        total += 1
                        outputs.record(label, name, total, duration, m, in_engine=k, numiter=ep.numiter)
                        run.hook.difframe_iteration_finished(run=run, engine=label, iteration=total, metrics=m)
                    refine_positions(ep, model, done + len(metrics), done, recorded, last_engine=label == labels[-1])
                    done += len(metrics)
                    log.debug("%s %s: iteration %d, %s", label, name, total,
                              ", ".join(f"{k} {v:.4g}" for k, v in metrics[-1].items()))
                    bar.update(len(metrics), **shown_metric(metrics[-1]))
                    outputs.block_done(name, before, total)
                    if outputs.server is not None:
                        outputs.server.poll()
                    interaction.share_changes(run, model.ranks, outputs.server)
            summary = engine.finalize()
            run.hook.difframe_engine_finished(run=run, engine=label, summary=summary)
    return name, total


def run_ptycho(run) -> dict:
    """Prepare, reconstruct and save one ptychography run; returns output name -> path.

    Under mpiexec every rank prepares its share of the frames; only rank 0
    writes files and returns their paths (others: {}).
    """
    if not run.params.engines:
        raise UsageError("no engines given: add engines.<label> with name = \"DM\" or \"ML\"")
    ranks = parallel.world()
    failure = None
    try:  # a missing or broken input file is the run's one message, before it says anything
        check_inputs(run)
    except DifframeError as err:
        failure = err
    ranks.raise_first(failure)
    with runlock.holding(run.home, run.run_name, output_globs(run), ranks):
        return _reconstruct(run, ranks)


def output_globs(run) -> list[Path]:
    """Globs of every file ``io.paths`` lets this run write (its recons, autosaves, plots and movie)."""
    paths = run.params.io.paths
    globs = []
    for which in ("recons", "autosave", "plots", "movie"):
        path = Path(runlock.template_glob(str(paths[which]), {"run": run.run_name}))
        globs.append(path if path.is_absolute() else run.home / path)
    return globs


def _reconstruct(run, ranks) -> dict:
    scans = ", ".join(f"{label} ({scan.data.source or 'file'})" for label, scan in run.params.scans.items())
    engines = " then ".join(f"{ep.name} x {ep.numiter}" for ep in run.params.engines.values())
    run.progress.say("run %s: ptychography of scan %s with %s on %d process%s; results in %s", run.run_name,
                     scans, engines, ranks.size, "es" if ranks.size > 1 else "",
                     output_path(run, "recons", "ENGINE", 0).parent)
    model = build_run_model(run, prepare_scans(run, ranks))  # the prepared frames are freed once copied in
    model.keep_share(ranks)
    init_background(run, model)
    outputs = _Outputs(run, model)
    with interaction.serving(run, model, outputs.runtime) as outputs.server:
        if outputs.server is not None:
            run.progress.say("interaction server at %s (watch it live: difframe watch %s)", outputs.server.address,
                             outputs.server.address)
        interaction.start_live_view(run, outputs.server, model.ranks)
        try:
            name, total = run_engines(run, model, outputs)
        finally:
            if outputs.autosaves is not None:
                outputs.autosaves.close()
    results: dict = {}
    terms = model.fitted_terms()
    if not model.ranks.is_root:
        return results
    outputs.runtime["probe_mode_powers"] = {pid: pm.orthogonal_modes(st.data)[1] for pid, st in model.probes.items()}
    recons = output_path(run, "recons", name, total)
    write_ptyr(recons, model, run.params, outputs.runtime, terms=terms)
    results["reconstruction"] = recons
    log.info("saved %s", recons)
    if outputs.autosave is not None:
        results["autosave"] = outputs.autosave
    pc = run.params.plotclient
    if pc.dump and pc.dump_interval is not None:
        if not outputs.frames or outputs.frames[-1] != output_path(run, "plots", name, total):
            outputs.plot(name, total)
        results["plot"] = outputs.frames[-1]
        if pc.make_movie and len(outputs.frames) > 1:
            results["movie"] = plotting.make_movie(outputs.frames, output_path(run, "movie", name, total))
    return results
