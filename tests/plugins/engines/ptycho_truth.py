"""A small simulated far-field scan with known object and probe, shared by the ptychography tests."""

import numpy as np
from difframe import optics
from difframe.param import Param
from difframe.ptycho.data import PreparedData
from difframe.ptycho import model as pm
from difframe.ptycho import terms

SHAPE = (32, 32)
ENERGY_KEV, DISTANCE, DET_PSIZE = 6.2, 2.0, 172e-6


def true_probe(psize, modes=1):
    """A circular aperture taken a short distance downstream: a structured, compact probe."""
    y, x = optics.coordinates(SHAPE, psize)
    r = np.hypot(y[:, None], x[None, :])
    aperture = (r < 6 * psize[0]).astype(complex)
    probe = optics.fresnel_propagate(aperture, psize, optics.energy_to_wavelength(ENERGY_KEV), 2e-5)
    return probe[None] if modes == 1 else np.stack([probe, 0.4 * np.roll(probe, 2, axis=-1)])


def true_object(shape, seed=3):
    """Smooth random amplitude and phase: a test object with features at every scale."""
    rng = np.random.default_rng(seed)
    field = pm.gaussian_smooth(rng.normal(size=(2, *shape)) + 0j, 1.5).real
    field /= np.abs(field).max(axis=(-2, -1), keepdims=True)
    return (0.75 + 0.2 * field[0]) * np.exp(0.8j * field[1])


def positions(psize, n_side=7, step_pix=5, seed=1):
    rng = np.random.default_rng(seed)
    g = (np.arange(n_side) - n_side // 2) * step_pix
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1) + rng.uniform(-1, 1, (n_side**2, 2))
    return pos * psize


def simulate(photons=1e6, probe_modes=1, seed=0, label="sim"):
    """(PreparedData, true probe, true object storage) with Poisson noise."""
    lam = optics.energy_to_wavelength(ENERGY_KEV)
    psize = optics.farfield_object_psize(lam, DISTANCE, SHAPE, DET_PSIZE)
    pos = positions(psize)
    obj_shape, origin = pm.object_frame([pos], psize, SHAPE)
    obj = true_object(obj_shape)[None]
    probe = true_probe(psize, probe_modes)
    probe *= np.sqrt(photons / (np.abs(probe) ** 2).sum())
    storage = pm.Storage(obj, psize, origin, ENERGY_KEV)
    corners = pm.corners_of(pos, storage, SHAPE)
    views = pm.gather(obj, corners, SHAPE)
    fields = optics.FarField(SHAPE).forward(pm.exit_waves(probe, views))
    intensity = pm.intensity(fields)
    data = np.random.default_rng(seed).poisson(intensity).astype(np.float32)
    prep = PreparedData(label=label, data=data, mask=np.ones(SHAPE, bool), positions=pos, energy_kev=ENERGY_KEV,
                        distance_m=DISTANCE, psize_m=(DET_PSIZE, DET_PSIZE), center=(16, 16))
    return prep, probe, storage


def engine_params(spec_parameters, **overrides):
    p = Param(numiter=10, numiter_contiguous=1, probe_support=0.7, clip_object=None)
    p.update({path.rpartition(".")[2]: node.default for path, node in terms.NODES.items()  # the model terms' switches
              if path.count(".") == 2 and path.startswith("engine.common.") and node.type != ("Param",)})
    p.update({k: v.default for k, v in spec_parameters.items()})
    p.update(overrides)
    return p


def amplitude_guess(prep, psize):
    """The true probe's modulus, scaled to the measured power: a realistic, phase-less start."""
    guess = np.abs(true_probe(psize))
    return guess * np.sqrt(prep.data.sum(axis=(1, 2)).mean() / (guess**2).sum())


def start_model(prep, probe_guess, data_type="single", object_modes=1):
    """Model with a flat object and the given probe guess."""
    return pm.build_model({prep.label: prep}, {prep.label: (None, 1.0, None, 1.0)},
                          init_probe=lambda label, shape, psize: probe_guess,
                          init_object=lambda label, shape, psize, origin: np.ones((object_modes, *shape), complex),
                          data_type=data_type)


def object_error(model, truth, probe):
    """Relative object error where the true probe lights it (>10% of the peak summed power),
    after removing a global complex factor and a linear phase ramp."""
    scan = model.scans[0]
    light = np.zeros(truth.data.shape[-2:])
    pm.scatter_add(light, np.broadcast_to((np.abs(probe) ** 2).sum(axis=0), (scan.num_frames, *SHAPE)),
                   scan.corners)
    lit = light > 0.1 * light.max()
    a, b = model.objects[scan.object_id].data[0][lit], truth.data[0][lit]
    yy, xx = np.nonzero(lit)
    ratio = a * np.conj(b)
    design = np.stack([np.ones_like(yy), yy, xx], axis=1).astype(float)
    offset = np.angle(ratio.sum())
    coef, *_ = np.linalg.lstsq(design, np.angle(ratio * np.exp(-1j * offset)), rcond=None)
    a = a * np.exp(-1j * (design @ coef + offset))
    scale = np.vdot(a, b) / np.vdot(a, a)
    return float(np.linalg.norm(scale * a - b) / np.linalg.norm(b))
