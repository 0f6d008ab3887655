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

import functools
import logging

import numpy as np

import difframe
from difframe import limits, optics
from difframe.errors import ParameterError
from difframe.ptycho import frame_fft
from difframe.ptycho import model as pm
from difframe.ptycho.stochastic import STEPS, StochasticEngine, schema
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.multislice")

NAME = "e3PIE"

PARAMETERS = {
    "num_slices": Parameter(
        type="int", default=2, lowlim=1, help="Number of object slices along the beam",
        doc="The object storage holds this many slices as its layers. A single-layer object (a fresh start, "
            "or another engine's result) becomes slice 1 and the others start as ones; an object that already "
            "has num_slices layers is taken as the slices. Resuming: a scan whose sample.model = 'recon' loads a "
            ".ptyr object of num_slices layers (an e3PIE result) has every layer loaded as the slices, which "
            "continue (coherence.num_object_modes stays as written)."),
    "slice_spacing": Parameter(
        type="float", default=1e-6, help="Distance between neighbouring slices [m], > 0",
        doc="Free-space propagation over this distance (angular spectrum at the object pixel) carries the wave "
            "from one slice to the next. Slices matter when the Fresnel number per object pixel "
            "psize^2 / (lambda slice_spacing) is well below 1."),
}
PARAMETERS = schema(
    PARAMETERS, STEPS,
    alpha={"help": "Slice update step size",
           "doc": "Each slice moves by alpha conj(psi) dchi / max|psi|^2 per frame (psi: the wave incident on it), "
                  "as ePIE's object step."},
    beta={"help": "Incident wave (and probe) update step size",
          "doc": "The wave incident on each slice moves by beta conj(O) dchi / max|O|^2; at slice 1 that wave is "
                 "the probe (once probe_update_start has passed)."},
    seed={"doc": "The same seed gives the same reconstruction."},
)


def stored_slices(sample) -> int | None:
    """Layers of the object storage a scan's ``sample`` subtree loads from a .ptyr (``model = 'recon'``,
    every layer: no ``recon.layer``), read from the file's header of that array; None otherwise."""
    import os

    from difframe.ptycho.ptyr import resolve_rfile

    if not sample or not isinstance(sample.get("model"), str) or sample["model"] != "recon":
        return None
    recon = sample.get("recon") or {}
    pattern = recon.get("rfile")
    if not pattern or recon.get("layer") is not None:
        return None
    path = resolve_rfile(pattern)
    if path is None or not os.path.isfile(path):
        return None  # the loader says what is missing when the data are read
    return _layers_in_file(path, os.stat(path).st_mtime_ns, recon.get("ID"))


@functools.lru_cache(maxsize=8)
def _layers_in_file(path: str, mtime_ns: int, sid) -> int | None:
    """Layers of object storage ``sid`` (None: the first) in a .ptyr; kept per file version, as the run's
    checks and the model's needs both ask before the data are read."""
    from difframe.ptycho import h5typed

    with h5typed.open_file(path, ".ptyr") as f:
        storages = f.get("content/obj")
        if storages is None:
            return None
        sid = sid or min(storages, default=None)
        node = storages.get(f"{sid}/data") if sid is not None else None
        return int(node.shape[0]) if node is not None and len(node.shape) == 3 else None


def resumed_slices(params, label: str) -> int | None:
    """The run's num_slices when scan ``label``'s object resumes from a .ptyr holding that many layers
    (``sample.model = 'recon'``) and its ``coherence.num_object_modes`` is left at 1: the model must then load
    every layer (:func:`difframe_model_needs`); None otherwise (also without an e3PIE engine)."""
    engines = params.get("engines") or {}
    slices = {ep.get("num_slices") for ep in engines.values() if ep.get("name") == NAME}
    scan = (params.get("scans") or {}).get(label) or {}
    if len(slices) != 1 or (scan.get("coherence") or {}).get("num_object_modes", 1) != 1:
        return None
    (count,) = slices
    return count if count > 1 and stored_slices(scan.get("sample")) == count else None


def check_chain(params) -> None:
    """Refuse runs the slices cannot serve: object modes asked for next to slices, and single-slice engines
    after a multislice one (they would read the slices as incoherent modes).  Reads ``params`` only."""
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
        modes = resumed_slices(params, label) or scan.get("coherence", {}).get("num_object_modes", 1)
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


class MultislicePIE(StochasticEngine):
    """e3PIE on a :class:`difframe.ptycho.model.PtychoModel` whose object layers are the slices."""

    serial_reason = "updates the slices frame by frame"

    def __init__(self, params, model: pm.PtychoModel):
        super().__init__(NAME, params, model)
        self.slices = int(params.num_slices)
        if self.slices < 1:
            raise ParameterError(f"engine.{NAME}.num_slices = {params.num_slices!r}: at least 1 slice")
        spacing = params.slice_spacing
        if spacing is None or not np.isfinite(spacing) or spacing <= 0:
            raise ParameterError(f"engine.{NAME}.slice_spacing = {spacing!r}: expected a distance > 0 [m]")

    def setup(self) -> None:
        m, p = self.model, self.p
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
        self.slab = {}
        for scan in m.scans:
            st = m.objects[scan.object_id]
            lam = optics.energy_to_wavelength(st.energy_kev)
            self.slab[scan.label] = optics.angular_spectrum_transfer(scan.shape, st.psize, lam, p.slice_spacing,
                                                                     m.cdtype)
            fresnel = float(np.min(st.psize)) ** 2 / (lam * p.slice_spacing)
            log.info("scan %s: Fresnel number per object pixel over a slice spacing %.3g", scan.label, fresnel)

    def finalize(self) -> dict:
        return {**super().finalize(), "slices": self.slices}

    def visit(self, scan, order, sums, update_probe) -> None:
        m, p = self.model, self.p
        real = m.rdtype.type
        self.kernels.multislice_epoch(
            m.probes[scan.probe_id].data, m.objects[scan.object_id].data, scan.corners, order, scan.intensity,
            scan.weights_of(slice(None)), scan.scale_factors(), scan.background_map(), self.transfer[scan.label],
            self.slab[scan.label], real(p.alpha * scan.object_power), real(p.beta * scan.probe_power),
            update_probe, self.tiny, sums.err, sums.dev, sums.change, sums.background, sums.scales,
            frame_fft.plans(m.probes[scan.probe_id].data.shape, m.cdtype))


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "e3PIE"``; ``context`` is the PtychoModel."""
    return MultislicePIE(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name=NAME, summary="multislice ePIE (e3PIE, Maiden, Humphry & Rodenburg 2012): a stack of "
                     "object slices for samples thicker than the depth of field", factory=factory,
                     parameters=PARAMETERS)


@difframe.hookimpl
def difframe_model_needs(run, scan):
    """A scan whose object resumes from an e3PIE .ptyr of num_slices layers has them all loaded, as the
    object's layers (the parameters stay as written)."""
    count = resumed_slices(run.params, scan)
    return {"num_object_modes": count} if count else None


@difframe.hookimpl
def difframe_run_started(run):
    """Refuse a run the slices cannot serve before any data are read (callers without a run pass None)."""
    params = getattr(run, "params", None)
    if params is not None:
        check_chain(params)
