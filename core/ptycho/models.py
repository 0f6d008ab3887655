"""Starting illumination (probe) and sample (object) fields: choose the model plugin, then process.

``scan.illumination.model`` / ``scan.sample.model`` name a model plugin
(``None`` -> ``flat``, a numpy array -> ``array``, any other string -> the
illumination/sample model registered under that name or alias, e.g. ``recon``,
``stxm`` or a built-in image such as ``moon``).  The plugin returns the base
field; the processing every model shares happens here, as in ptypy:

illumination  aperture (circ/rect, soft edge, central stop, offset, diffuser,
              antialiasing) and propagation (focussed through a lens, with the
              aperture from ``spot_size``; then parallel), photon count,
              mode diversity;
sample        zoom, offset, crop/pad to the storage, projection of a real
              thickness map through a refractive index (``formula`` +
              ``density`` via xraydb, or ``ref_index``) over ``thickness``
              with ``smoothing`` (see :func:`project`), diversity.

Fields from ``recon`` and ``stxm`` are estimates of the real field, so they
skip the aperture/propagation and sample-projection steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from difframe.errors import ParameterError
from difframe.optics import coordinates, energy_to_wavelength, fresnel_propagate, fresnel_single_step
from difframe.param import Param
from difframe.ptycho.data import PreparedData

log = logging.getLogger("difframe.ptycho.models")

MEASURED_MODELS = ("recon", "stxm")


@dataclass
class ModelContext:
    """What a model plugin needs besides its parameters.

    ``shape`` (H, W) of the array to build; ``psize`` (y, x) its pixel in the
    sample plane [m]; ``data`` the scan's prepared data (None when simulating);
    ``scans`` every prepared scan by label (for ``stxm.label``);
    ``positions_px`` (N, 2) pixel (row, col) of each view's centre in the built
    array (sample models); ``num_modes`` modes wanted; ``dtype`` complex dtype;
    ``seed`` for every random draw, so a model is reproducible.
    """

    shape: tuple[int, int]
    psize: tuple[float, float]
    energy_kev: float
    distance_m: float
    label: str = ""
    data: PreparedData | None = None
    scans: Mapping[str, PreparedData] = field(default_factory=dict)
    positions_px: np.ndarray | None = None
    num_modes: int = 1
    dtype: Any = np.complex64
    seed: int = 0

    @property
    def wavelength_m(self) -> float:
        return energy_to_wavelength(self.energy_kev)


# ------------------------------------------------------------------ helpers


def as_modes(field: np.ndarray, what: str) -> np.ndarray:
    """A field as (modes, H, W) complex128; ParameterError naming ``what`` otherwise."""
    arr = np.asarray(field)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ParameterError(f"{what}: expected an (H, W) or (modes, H, W) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ParameterError(f"{what}: the array contains NaN or infinity")
    return arr.astype(np.complex128)


def fit_shape(field: np.ndarray, shape, fill: complex = 0.0) -> np.ndarray:
    """Centred crop or pad of the last two axes to ``shape`` (pixel N//2 stays the centre)."""
    out = np.full(field.shape[:-2] + tuple(shape), fill, dtype=field.dtype)
    src, dst = [], []
    for n_in, n_out in zip(field.shape[-2:], shape):
        shift = n_out // 2 - n_in // 2
        lo, hi = max(0, -shift), min(n_in, n_out - shift)
        src.append(slice(lo, hi))
        dst.append(slice(lo + shift, hi + shift))
    out[(..., *dst)] = field[(..., *src)]
    return out


def smooth_noise(rng: np.random.Generator, shape, rms: float, feature_px: float) -> np.ndarray:
    """Gaussian random field with ``rms`` amplitude and correlation length ``feature_px`` pixels."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal(tuple(shape))
    if feature_px > 0:
        noise = gaussian_filter(noise, feature_px, mode="wrap")
    std = noise.std()
    return noise * (rms / std) if std > 0 else noise


def _pair(value: Any, name: str) -> tuple[float, float]:
    arr = np.ravel(np.asarray(value, dtype=float))
    if arr.size not in (1, 2):
        raise ParameterError(f"{name}: expected one number or (vertical, horizontal), got {value!r}")
    return (float(arr[0]), float(arr[-1]))


def noise_screen(rng: np.random.Generator, shape, spec: Any, name: str) -> np.ndarray:
    """Complex multiplier from a (rms, mfs) phase or (rms, mfs, rms_mod, mfs_mod) phase+modulus spec."""
    spec = tuple(float(v) for v in np.ravel(spec))
    if len(spec) not in (2, 4):
        raise ParameterError(f"{name}: expected (rms, mfs) or (rms, mfs, rms_mod, mfs_mod), got {spec}")
    screen = np.exp(1j * smooth_noise(rng, shape, spec[0], spec[1]))
    if len(spec) == 4:
        screen = screen * np.clip(1 + smooth_noise(rng, shape, spec[2], spec[3]), 0, None)
    return screen


# ------------------------------------------------------------- illumination


def aperture(shape, psize, p: Mapping, rng: np.random.Generator, size: tuple[float, float],
             antialiasing: int = 1) -> np.ndarray:
    """Transmission of the aperture ``p`` (form, edge [px], central_stop, offset [m], diffuser)."""
    from scipy.special import erfc

    aa = max(1, int(round(antialiasing)))
    fine_shape = (shape[0] * aa, shape[1] * aa)
    fine_psize = (psize[0] / aa, psize[1] / aa)
    y, x = coordinates(fine_shape, fine_psize)
    off = _pair(p.get("offset") or 0.0, "aperture.offset")
    y, x = (y - off[0])[:, None], (x - off[1])[None, :]
    edge = float(p.get("edge") or 0) * aa  # soft-edge width in fine pixels

    def inside(half: tuple[float, float], form: str) -> np.ndarray:
        if form == "circ":  # ellipse: signed distance in pixels along the smaller pixel
            dist = (np.hypot(y / half[0], x / half[1]) - 1) * min(half) / min(fine_psize)
        else:
            dist = np.maximum(np.abs(y) - half[0], np.abs(x) - half[1]) / min(fine_psize)
        return (dist <= 0).astype(float) if edge == 0 else 0.5 * erfc(np.sqrt(np.pi) * dist / edge)

    form = p.get("form") or "circ"
    half = (size[0] / 2, size[1] / 2)
    trans = inside(half, form)
    stop = p.get("central_stop")
    if stop:
        trans = trans * (1 - inside((half[0] * stop, half[1] * stop), form))
    if aa > 1:
        trans = trans.reshape(shape[0], aa, shape[1], aa).mean(axis=(1, 3))
    field = trans.astype(complex)
    if p.get("diffuser") is not None:
        field = field * noise_screen(rng, shape, p["diffuser"], "illumination.aperture.diffuser")
    return field


def shape_beam(base: np.ndarray, p: Mapping, ctx: ModelContext, rng: np.random.Generator) -> np.ndarray:
    """Apply aperture and propagation to the base field (modes, H, W) in the sample plane."""
    ap = p.get("aperture") or {}
    prop = p.get("propagation") or {}
    lam = ctx.wavelength_m
    focussed = prop.get("focussed")
    size = ap.get("size")
    if focussed and prop.get("spot_size"):  # aperture giving this focal spot (first zeros of the Airy/sinc)
        factor = 2.44 if (ap.get("form") or "circ") == "circ" else 2.0
        size = factor * lam * focussed / prop["spot_size"]
    form = ap.get("form") if ap else None
    field = base
    if focussed:
        plane_psize = tuple(lam * focussed / (n * d) for n, d in zip(ctx.shape, ctx.psize))
        if form and size is not None:
            field = field * aperture(ctx.shape, plane_psize, ap, rng, _pair(size, "aperture.size"),
                                     prop.get("antialiasing") or 1)
        y, x = coordinates(ctx.shape, plane_psize)
        lens = np.exp(-1j * np.pi / (lam * focussed) * (y[:, None] ** 2 + x[None, :] ** 2))
        field, _ = fresnel_single_step(field * lens, plane_psize, lam, focussed)
    elif form and size is not None:
        field = field * aperture(ctx.shape, ctx.psize, ap, rng, _pair(size, "aperture.size"),
                                 prop.get("antialiasing") or 1)
    if prop.get("parallel"):
        field = fresnel_propagate(field, ctx.psize, lam, prop["parallel"])
    return np.asarray(field, dtype=complex)


def add_diversity(field: np.ndarray, p: Mapping | None, num_modes: int, rng: np.random.Generator,
                  what: str) -> np.ndarray:
    """Grow ``field`` to ``num_modes`` modes of relative ``power``: mode 0 times a ``noise`` screen, or,
    without one, times low-order polynomials (see :func:`_hermite_factor`)."""
    if field.shape[0] >= num_modes:
        return field[:num_modes]
    p = p or {}
    power = p.get("power", 0.1)
    extra = num_modes - field.shape[0]
    powers = np.ravel(power if power is not None else 0.1).astype(float)
    if powers.size == 1:
        powers = np.repeat(powers, extra)
    if powers.size < extra:
        raise ParameterError(f"{what}.diversity.power: {powers.size} values for {extra} extra modes")
    modes = [field]
    for k in range(extra):
        if p.get("noise") is not None:
            mode = field[0] * noise_screen(rng, field.shape[-2:], p["noise"], f"{what}.diversity.noise")
        else:
            mode = field[0] * _hermite_factor(field[0], k + 1)
        mode *= np.sqrt(powers[k] * _power(field[0]) / max(_power(mode), 1e-300))
        modes.append(mode[None])
    return np.concatenate(modes)


def _power(field: np.ndarray) -> float:
    return float(np.sum(np.abs(field) ** 2))


def _hermite_factor(field: np.ndarray, order: int) -> np.ndarray:
    """The ``order``-th low-order polynomial (x, y, xy, x^2 - y^2, ...) about ``field``'s intensity centre,
    in units of its rms width: mode 0 times it is a Hermite-Gauss-like mode, different in shape from mode 0.

    Without a noise screen, extra modes used to be scaled copies of mode 0, which no engine can tell apart
    (orthogonalised, they vanish); these give partially coherent illumination a start to grow from.
    """
    weight = np.abs(field) ** 2
    total = max(weight.sum(), 1e-300)
    y, x = np.indices(field.shape, dtype=float)
    cy, cx = (weight * y).sum() / total, (weight * x).sum() / total
    sy = np.sqrt(max((weight * (y - cy) ** 2).sum() / total, 1e-12))
    sx = np.sqrt(max((weight * (x - cx) ** 2).sum() / total, 1e-12))
    u, v = (x - cx) / sx, (y - cy) / sy
    terms = [u, v, u * v, u**2 - v**2, u**2 + v**2 - 2]
    return terms[(order - 1) % len(terms)]


def set_photons(field: np.ndarray, photons: float | None) -> np.ndarray:
    """Scale so that the summed intensity of all modes is ``photons`` (None: unchanged)."""
    if photons is None:
        return field
    total = float((np.abs(field) ** 2).sum())
    if not total > 0:
        raise ParameterError("illumination: the model is zero everywhere, photons cannot be set")
    return field * np.sqrt(photons / total)


# ------------------------------------------------------------------- sample


def project(field: np.ndarray, p: Mapping, ctx: ModelContext) -> np.ndarray:
    """Transmission from the image's magnitude A (scaled to [0, 1]) as a projected thickness.

    ``formula`` (+ ``density``): refractive index n = 1 - delta + i beta from
    xraydb at the scan's energy, T = exp(i k (n - 1) t) with t = ``thickness``
    A, or, when ``thickness`` is None, t = |image| itself in metres.  Without
    ``formula`` the image is kept when ``thickness`` is None (no thickness to
    project over), when it already has a phase (a transmission) and when it
    is uniform; else ``ref_index`` is the complex phase (radians) reached where
    A = 1, T = exp(i ref_index A), and ``ref_index`` None takes the (smoothed)
    image itself as that projected phase, T = exp(i image).
    """
    from scipy.ndimage import gaussian_filter

    formula = p.get("formula")
    has_phase = bool(np.any(np.imag(field) != 0))
    if formula is None and (p.get("thickness") is None or has_phase):
        return field
    amp = np.abs(field)
    if p.get("smoothing"):
        amp = gaussian_filter(amp, (0, p["smoothing"], p["smoothing"]))
    if formula and p.get("thickness") is None:
        return np.exp(1j * 2 * np.pi / ctx.wavelength_m * _index_decrement(formula, p, ctx) * amp)
    span = amp.max() - amp.min()
    if not span > 1e-12 * max(amp.max(), 1e-300):
        return field
    a = (amp - amp.min()) / span
    if formula:
        thickness = float(p["thickness"])
        return np.exp(1j * 2 * np.pi / ctx.wavelength_m * _index_decrement(formula, p, ctx) * thickness * a)
    if p.get("ref_index") is None:
        return np.exp(1j * amp)
    return np.exp(1j * complex(p["ref_index"]) * a)


def _index_decrement(formula: str, p: Mapping, ctx: ModelContext) -> complex:
    """n - 1 = -delta + i beta of ``formula`` at ``density`` and the scan's energy (xraydb)."""
    import xraydb

    try:
        delta, beta, _ = xraydb.xray_delta_beta(formula, float(p.get("density") or 1.0), ctx.energy_kev * 1e3)
    except Exception as err:  # xraydb raises plain exceptions for unknown formulas
        raise ParameterError(f"sample.process.formula: {formula!r} is not understood by xraydb ({err})") from None
    return complex(-delta, beta)


def process_sample(field: np.ndarray, p: Mapping, ctx: ModelContext, fill: complex) -> np.ndarray:
    """Zoom, offset [pixels], crop/pad to ``ctx.shape``, then project (see :func:`project`)."""
    from scipy import ndimage

    zoom = p.get("zoom")
    if zoom is not None:
        z = _pair(zoom, "sample.process.zoom")
        field = (ndimage.zoom(field.real, (1, *z), order=1) + 1j * ndimage.zoom(field.imag, (1, *z), order=1))
    off = p.get("offset")
    if off is not None and any(off):
        o = _pair(off, "sample.process.offset")
        field = np.roll(field, (int(round(o[0])), int(round(o[1]))), axis=(-2, -1))
    field = fit_shape(field, ctx.shape, fill)
    return project(field, p, ctx)


# ----------------------------------------------------------------- dispatch


def _choose(kind: str, model: Any, plugins: Any) -> Any:
    if model is None:
        name = "flat"
    elif isinstance(model, np.ndarray):
        name = "array"
    elif isinstance(model, str):
        name = model
    else:
        raise ParameterError(f"scan.{kind}.model: expected None, a name or a numpy array, got {type(model).__name__}")
    return plugins.get(f"{kind}_model" if kind == "illumination" else "sample_model", name)


def build_illumination(params: Mapping | None, ctx: ModelContext, plugins: Any) -> np.ndarray:
    """Probe (modes, H, W) in ``ctx.dtype`` for the scan's ``illumination`` subtree."""
    p = Param(params or {})
    spec = _choose("illumination", p.get("model"), plugins)
    rng = np.random.default_rng(ctx.seed)
    field = as_modes(spec.build(p, ctx), f"illumination model {spec.name!r}")
    field = fit_shape(field, ctx.shape)
    photons = p.get("photons")
    if spec.name not in MEASURED_MODELS:
        field = shape_beam(field, p, ctx, rng)
        if photons is None and ctx.data is not None:  # from the data: the brightest frame's counts
            photons = float(ctx.data.frame_totals().max())  # over all ranks' frames
    field = add_diversity(set_photons(field, photons), p.get("diversity"), ctx.num_modes, rng, "illumination")
    return set_photons(field, photons).astype(ctx.dtype)


def build_sample(params: Mapping | None, ctx: ModelContext, plugins: Any) -> np.ndarray:
    """Object (modes, H, W) in ``ctx.dtype`` for the scan's ``sample`` subtree."""
    p = Param(params or {})
    spec = _choose("sample", p.get("model"), plugins)
    rng = np.random.default_rng(ctx.seed + 1)
    fill = complex(p.get("fill") if p.get("fill") is not None else 1.0)
    field = as_modes(spec.build(p, ctx), f"sample model {spec.name!r}")
    if spec.name in MEASURED_MODELS or not p.get("process"):
        field = fit_shape(field, ctx.shape, fill)
    else:
        field = process_sample(field, p["process"], ctx, fill)
    return add_diversity(field, p.get("diversity"), ctx.num_modes, rng, "sample").astype(ctx.dtype)
