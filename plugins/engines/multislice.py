"""Multislice ptychography, ``e3PIE`` (Maiden, Humphry & Rodenburg 2012): a sample thicker than the depth of field.

The object is a stack of ``num_slices`` thin slices O_1..O_S, ``slice_spacing``
metres apart, held as the layers of the scan's object storage (shape
(S, Ho, Wo): where single-slice engines keep incoherent object modes; ptypy's
3D "layers" are the closest analogue).  For each frame the probe is the wave
incident on slice 1; each slice multiplies the wave arriving at it, free-space
propagation (angular spectrum at the object pixel, ``difframe.optics``) carries
the product to the next slice, and the scan's propagator takes the last exit
wave to the detector:

    psi_1 = P,   psi_{s+1} = D_dz[psi_s O_s],   Psi = F[psi_S O_S]

After the projection onto the measured moduli the change of the exit wave goes
back slice by slice; at slice s both factors are updated from their old values
(ePIE's step), the slice from the wave incident on it and the incident wave
from the slice, and the change of the incident wave is propagated back to
become the change of the previous slice's exit wave; at slice 1 the incident
wave is the probe:

    O_s   += alpha sum_p conj(psi_ps) dchi_ps / max sum_p |psi_ps|^2
    dpsi_ps = beta conj(O_s) dchi_ps / max |O_s|^2,   dchi_p,s-1 = D_-dz[dpsi_ps]

Frames are visited in a seeded random order, each seeing the slices its
predecessors improved, as the PIE family; the whole epoch is one numba call
(plugins/engines/multislice_kernels.py, FFTs included).  Under MPI it refuses
to run.
"""

from __future__ import annotations

import logging

import numpy as np

import difframe
from difframe import limits, optics
from difframe.errors import ParameterError, UsageError
from difframe.ptycho import model as pm
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.multislice")

NAME = "e3PIE"

PARAMETERS = {
    "num_slices": Parameter(
        type="int", default=2, lowlim=1, help="Number of object slices along the beam",
        doc="The object storage holds this many slices as its layers. A single-layer object (a fresh start, "
            "or another engine's result) becomes slice 1 and the others start as ones; an object that already "
            "has num_slices layers is taken as the slices (to resume from a multislice .ptyr, set "
            "scans.<label>.coherence.num_object_modes = num_slices with sample.model = 'recon', so that every "
            "slice is loaded)."),
    "slice_spacing": Parameter(
        type="float", default=1e-6, help="Distance between neighbouring slices [m], > 0",
        doc="Free-space propagation over this distance (angular spectrum at the object pixel) carries the wave "
            "from one slice to the next. Slices matter when the Fresnel number per object pixel "
            "psize^2 / (lambda slice_spacing) is well below 1."),
    "alpha": Parameter(type="float", default=1.0, lowlim=0.0, help="Slice update step size",
                       doc="Each slice moves by alpha conj(psi) dchi / max|psi|^2 per frame (psi: the wave "
                           "incident on it), as ePIE's object step."),
    "beta": Parameter(type="float", default=1.0, lowlim=0.0, help="Incident wave (and probe) update step size",
                      doc="The wave incident on each slice moves by beta conj(O) dchi / max|O|^2; at slice 1 that "
                          "wave is the probe (once probe_update_start has passed)."),
    "probe_update_start": Parameter(type="int", default=1, lowlim=0,
                                    help="Number of iterations (epochs) before probe update starts"),
    "seed": Parameter(type="int", default=0, lowlim=0, help="Seed of the random order the frames are visited in",
                      doc="The same seed gives the same reconstruction."),
}


def check_chain(params) -> None:
    """Refuse runs the slices cannot serve: object modes asked for next to slices, and single-slice engines
    after a multislice one (they would read the slices as incoherent modes)."""
    engines = params.get("engines") or {}
    labels = [label for label, ep in engines.items() if ep.get("name") == NAME]
    if not labels:
        return
    slices = {engines[label].get("num_slices") for label in labels}
    if len(slices) > 1:
        raise ParameterError(f"engines.{labels[-1]}.num_slices = {engines[labels[-1]].get('num_slices')}: every "
                             f"{NAME} engine of a run works on the same slices "
                             f"(engines.{labels[0]}.num_slices = {engines[labels[0]].get('num_slices')})")
    for label, scan in (params.get("scans") or {}).items():
        modes = scan.get("coherence", {}).get("num_object_modes", 1)
        resuming = (scan.get("sample") or {}).get("model") == "recon" and modes in slices
        if modes > 1 and not resuming:  # a .ptyr's slices load as that many layers; anything else is modes
            raise ParameterError(f"scans.{label}.coherence.num_object_modes = {modes}: engine {NAME} "
                                 f"(engines.{labels[0]}) keeps its slices in the object's layers and cannot "
                                 f"have object modes too; set it to 1 and choose engines.{labels[0]}.num_slices, "
                                 f"or to num_slices with sample.model = 'recon' to resume a multislice .ptyr")
    names = [(label, ep.get("name")) for label, ep in engines.items()]
    first = next(k for k, (label, _) in enumerate(names) if label == labels[0])
    for label, name in names[first:]:
        if name != NAME:
            raise ParameterError(f"engines.{label}.name = {name!r} follows the multislice engine "
                                 f"engines.{labels[0]}: it would read the slices as incoherent object modes; "
                                 f"run single-slice engines before {NAME}")


class MultislicePIE:
    """e3PIE on a :class:`difframe.ptycho.model.PtychoModel` whose object layers are the slices."""

    def __init__(self, params, model: pm.PtychoModel):
        self.p = params
        self.model = model
        self.iteration = 0
        self.slices = int(params.num_slices)
        if self.slices < 1:
            raise ParameterError(f"engine.{NAME}.num_slices = {params.num_slices!r}: at least 1 slice")
        spacing = params.slice_spacing
        if spacing is None or not np.isfinite(spacing) or spacing <= 0:
            raise ParameterError(f"engine.{NAME}.slice_spacing = {spacing!r}: expected a distance > 0 [m]")

    def initialize(self) -> None:
        m, p = self.model, self.p
        if m.ranks.size > 1:
            raise UsageError(f"engine {NAME}: multislice updates the slices frame by frame and runs on one "
                             f"process only, not under mpiexec ({m.ranks.size} ranks); run it without mpiexec")
        refinement = p.get("position_refinement")  # the run's tree always has it; bare test parameters may not
        if refinement is not None and refinement.active:
            raise ParameterError(f"engine.{NAME}.position_refinement.active: position refinement models a "
                                 f"single-slice object and cannot refine a multislice one; switch it off")
        for oid, st in m.objects.items():
            layers = st.data.shape[0]
            if layers == self.slices:
                continue
            if layers != 1:
                raise ParameterError(f"engine.{NAME}.num_slices = {self.slices}: object {oid!r} has {layers} "
                                     f"layers (object modes?); a multislice object starts from 1 layer or "
                                     f"from num_slices")
            limits.check_allocation(self.slices * st.data[0].nbytes, f"engine.{NAME}.num_slices = "
                                    f"{self.slices} slices of object {oid!r}", ParameterError)
            rest = np.ones((self.slices - 1, *st.data.shape[1:]), st.data.dtype)
            st.data = np.ascontiguousarray(np.concatenate([st.data, rest]))
            log.info("object %s: %d slices %.3g m apart, slice 1 from the current object, the others ones",
                     oid, self.slices, p.slice_spacing)
        from difframe.plugins.engines import multislice_kernels

        self.kernels = multislice_kernels
        self.rng = np.random.default_rng(int(p.seed))
        self.tiny = float(np.finfo(m.rdtype).tiny) * 1e6
        self.slab, self.transfer = {}, {}
        for scan in m.scans:
            prop = scan.propagator
            if isinstance(prop, optics.FarField) and not prop.centred:
                self.transfer[scan.label] = np.empty((0, 0), m.cdtype)
            elif isinstance(prop, optics.NearField):
                self.transfer[scan.label] = np.ascontiguousarray(prop.kernel, dtype=m.cdtype)
            else:
                raise UsageError(f"engine {NAME}: scan {scan.label!r} uses a propagator "
                                 f"({type(prop).__name__}) the multislice kernel does not know")
            st = m.objects[scan.object_id]
            lam = optics.energy_to_wavelength(st.energy_kev)
            self.slab[scan.label] = optics.angular_spectrum_transfer(scan.shape, st.psize, lam, p.slice_spacing,
                                                                     m.cdtype)
            fresnel = float(np.min(st.psize)) ** 2 / (lam * p.slice_spacing)
            log.info("scan %s: Fresnel number per object pixel over a slice spacing %.3g", scan.label, fresnel)
        _, self.points = m.total_measured()
        self.supports = {pid: pm.probe_support(st.data.shape[-2:], p.probe_support, m.rdtype)
                         for pid, st in m.probes.items()}

    def iterate(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            out.append(self._epoch())
            self.iteration += 1
        return out

    def finalize(self) -> dict:
        return {"engine": NAME, "iterations": self.iteration, "slices": self.slices}

    def _epoch(self) -> dict:
        m, p = self.model, self.p
        update_probe = self.iteration >= p.probe_update_start
        fit_bg = p.fit_background and self.iteration >= p.background_update_start
        real = m.rdtype.type
        err_sum = dev_sum = change_sum = 0.0
        frames = 0
        for scan in m.scans:
            n = scan.num_frames
            err, dev, change = np.zeros(n), np.zeros(n), np.zeros(n)
            bg_sums = (np.zeros((2, *scan.shape), m.rdtype) if fit_bg and scan.background is not None
                       else np.empty((0, 0, 0), m.rdtype))
            self.kernels.multislice_epoch(
                m.probes[scan.probe_id].data, m.objects[scan.object_id].data, scan.corners,
                self.rng.permutation(n).astype(np.int64), scan.intensity, scan.weights_of(slice(None)),
                scan.scale_factors(), scan.background_map(), self.transfer[scan.label], self.slab[scan.label],
                real(p.alpha * scan.object_power), real(p.beta * scan.probe_power), update_probe, self.tiny,
                err, dev, change, bg_sums)
            if len(bg_sums):
                pm.newton_background(scan, bg_sums[None], m.ranks)
            err_sum += float(err.sum())
            dev_sum += float(dev.sum())
            change_sum += float(change.sum())
            frames += n
        for pid, st in m.probes.items():
            if self.supports[pid] is not None:
                st.data *= self.supports[pid]
        for st in m.objects.values():
            pm.clip_amplitude(st.data, p.clip_object)
        metrics = {"fourier_error": err_sum / max(frames, 1), "deviance": dev_sum / max(self.points, 1),
                   "exit_change": change_sum / max(frames, 1)}
        metrics.update(pm.orthogonalise_probes(m) if p.orthogonal_modes else pm.mode_powers(m))
        return metrics

def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "e3PIE"``; ``context`` is the PtychoModel."""
    return MultislicePIE(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name=NAME, summary="multislice ePIE (e3PIE, Maiden, Humphry & Rodenburg 2012): a stack of "
                     "object slices for samples thicker than the depth of field", factory=factory,
                     parameters=PARAMETERS)


@difframe.hookimpl
def difframe_run_started(run):
    """Refuse a run the slices cannot serve before any data are read (callers without a run pass None)."""
    params = getattr(run, "params", None)
    if params is not None:
        check_chain(params)
