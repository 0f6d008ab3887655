"""visSim: the harvested points and the fitted model of each spot, interpolated onto N^3 grids.

The points of a spot are scattered; to look at them as a volume, each grid x
minimises ``1/2 |Interp x - y|^2 + beta |grad x|^2`` (tds2el's formula, good for
over- and under-sampled spots alike) with ``n_iter`` FISTA iterations of step
1/L, L the largest eigenvalue of ``Interp^T Interp + 2 beta grad^T grad`` from a
power iteration.  ``Interp`` is trilinear interpolation, a sparse matrix with 8
entries per point.  Data, model and residual volumes go to HDF5 as NeXus
NXdata with their q axes (silx view / PyMca open them), and a PNG shows
central slices; both keep only the nodes the harvest measured (the shell it
covered, near its points), since elsewhere the interpolation only fills in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from difframe.errors import UsageError
from difframe.fileio import atomic_path
from difframe.tds.fit import scale_and_baseline
from difframe.tds.model import tds_intensity

log = logging.getLogger("difframe.tds.visualise")

REACH = 2.0  # grid steps from the nearest harvested point within which the interpolation is shown
#: where the 3 x 3 panels of a spot's PNG sit (figure fractions of 11 x 9.5 in): the suptitle's three lines above,
#: the row names and axis labels left, the colour bars and their labels right
PANELS = {"left": 0.085, "right": 0.86, "bottom": 0.055, "top": 0.865, "wspace": 0.32, "hspace": 0.5}


def grid_axes(q: np.ndarray, n: int) -> list[np.ndarray]:
    """Three axes of n nodes each, symmetric about the Bragg peak, covering every q (1/Angstrom)."""
    half = np.abs(q).max(axis=0)
    half = np.where(half > 0, half, 1e-3)
    return [np.linspace(-h, h, n) for h in half]


def interpolation_matrix(q: np.ndarray, axes: list[np.ndarray]):
    """Sparse (points, n^3) trilinear interpolation from grid values (C order) to the points."""
    from scipy.sparse import csr_matrix

    shape = tuple(len(a) for a in axes)
    cell, frac = [], []
    for d, ax in enumerate(axes):
        step = ax[1] - ax[0]
        t = np.clip((q[:, d] - ax[0]) / step, 0, len(ax) - 1 - 1e-9)
        i = np.floor(t).astype(int)
        cell.append(i)
        frac.append(t - i)
    rows, cols, vals = [], [], []
    for corner in np.ndindex(2, 2, 2):
        index = [c + o for c, o in zip(cell, corner)]
        weight = np.prod([f if o else 1 - f for f, o in zip(frac, corner)], axis=0)
        rows.append(np.arange(len(q)))
        cols.append(np.ravel_multi_index(index, shape))
        vals.append(weight)
    return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(q), int(np.prod(shape))))


def _grad(x: np.ndarray) -> np.ndarray:
    """Forward differences along each of the last three axes (zero across the far edge), stacked first."""
    return np.stack([np.diff(x, axis=d, append=np.take(x, [-1], axis=d)) for d in (-3, -2, -1)])


def _grad_adjoint(g: np.ndarray) -> np.ndarray:
    out = np.zeros(g.shape[1:])
    for k, d in enumerate((-3, -2, -1)):
        gd = np.moveaxis(g[k], d, 0).copy()
        gd[-1] = 0.0
        shifted = np.zeros_like(gd)
        shifted[1:] = gd[:-1]
        out += np.moveaxis(shifted - gd, 0, d)
    return out


def lipschitz(A, shape, beta: float, n_iter: int = 30, seed: int = 0) -> float:
    """Largest eigenvalue of A^T A + 2 beta grad^T grad by power iteration (5 % margin)."""
    x = np.random.default_rng(seed).normal(size=shape)
    value = 0.0
    for _ in range(n_iter):
        x /= np.linalg.norm(x)
        y = (A.T @ (A @ x.ravel())).reshape(shape) + 2 * beta * _grad_adjoint(_grad(x))
        value = float(np.vdot(x, y))
        x = y
    return 1.05 * value


def fista_interpolate(q: np.ndarray, y: np.ndarray, axes: list[np.ndarray], beta: float, n_iter: int) -> np.ndarray:
    """The regularised interpolation of values ``y`` at offsets ``q`` onto the grid ``axes`` (FISTA).

    ``y`` is (points,) or (points, k): the iteration is linear in ``y`` and
    the step depends only on ``q``, so k value sets (data and model) share one
    interpolation matrix, one step and one pass; the result is grid or (k,) + grid.
    """
    if beta < 0 or n_iter < 1:
        raise UsageError(f"visualisation needs testSpot_beta >= 0 and testSpot_Niter >= 1 (got {beta}, {n_iter})")
    shape = tuple(len(a) for a in axes)
    values = np.asarray(y, dtype=float)
    Y = values.reshape(len(values), -1)
    A = interpolation_matrix(q, axes)
    step = 1.0 / lipschitz(A, shape, beta)
    batch = (Y.shape[1], *shape)
    x = np.zeros(batch)
    z, t = x.copy(), 1.0
    for _ in range(n_iter):
        misfit = A @ z.reshape(len(z), -1).T - Y
        gradient = (A.T @ misfit).T.reshape(batch) + 2 * beta * _grad_adjoint(_grad(z))
        x_new = z - step * gradient
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x[0] if values.ndim == 1 else x


def model_intensity(harvest, voigt: np.ndarray, scale=None, baseline=None) -> np.ndarray:
    """A_s T + B_s at every point; without fitted A_s, B_s they are solved per spot (unweighted)."""
    spot = np.asarray(harvest["spot"])
    G = np.asarray(harvest["G"], dtype=float)
    T = tds_intensity(harvest["Q"], G[spot], voigt)
    if scale is None or baseline is None:
        y = np.asarray(harvest["intensity"], dtype=float)
        sums = [np.bincount(spot, weights=w, minlength=len(G)) for w in (np.ones_like(T), T, T * T, y, T * y)]
        scale, baseline, _ = scale_and_baseline(*sums)
    return np.asarray(scale)[spot] * T + np.asarray(baseline)[spot]


def measured(q: np.ndarray, axes: list[np.ndarray], reach: float = REACH) -> np.ndarray:
    """Grid nodes the harvest measured: inside the shell of the points' |q| and within ``reach`` grid
    steps of a point.  Elsewhere an interpolation would only extrapolate, so it is not shown."""
    from scipy.spatial import cKDTree

    steps = np.array([a[1] - a[0] for a in axes])
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    radius = np.linalg.norm(nodes, axis=1)
    norms = np.linalg.norm(q, axis=1)
    half = 0.5 * steps.max()
    shell = (radius >= norms.min() - half) & (radius <= norms.max() + half)
    near = cKDTree(q / steps).query(nodes / steps, distance_upper_bound=reach)[0] <= reach
    return (shell & near).reshape(tuple(len(a) for a in axes))


def visualise(harvest, model_values: np.ndarray, output_dir, *, n: int = 32, beta: float = 0.03,
              n_iter: int = 100, spots=None, filename: str = "simtests.h5",
              model_label: str = "model", progress=None) -> dict[str, Path]:
    """Write data, model and residual volumes of each spot to ``output_dir/filename`` and a PNG per spot.

    Data and model are interpolated the same way from the same points and kept
    only on :func:`measured` nodes (NaN elsewhere).  ``model_label`` says which
    constants the model used; it titles the model row of the PNG and is kept as
    the ``constants`` attribute of each model group.
    """
    import h5py

    from difframe import nexus

    Q = np.asarray(harvest["Q"], dtype=float)
    y = np.asarray(harvest["intensity"], dtype=float)
    spot = np.asarray(harvest["spot"])
    G = np.asarray(harvest["G"], dtype=float)
    hkl = harvest.get("hkl")
    if n < 2:
        raise UsageError(f"testSpot_N must be at least 2, got {n}")
    chosen = np.unique(spot) if spots is None else np.asarray(spots)
    output_dir = Path(output_dir)
    files: dict[str, Path] = {}
    volumes = {}
    for s in chosen:
        sel = spot == s
        if sel.sum() < 4 or not np.all(np.isfinite(model_values[sel])):
            log.warning("spot %d: too few points or no model values; not visualised", s)
            continue
        q = Q[sel] - G[s]
        axes = grid_axes(q, n)
        data, model = fista_interpolate(q, np.stack([y[sel], model_values[sel]], axis=1), axes, beta, n_iter)
        mask = measured(q, axes)
        data, model = np.where(mask, data, np.nan), np.where(mask, model, np.nan)
        volumes[int(s)] = (axes, data, model, int(sel.sum()))
        log.info("spot %d: %d points interpolated onto %d^3 (%.0f %% of the nodes measured)", s, sel.sum(), n,
                 100 * mask.mean())
        if progress is not None:  # a difframe.progress bar, one step per spot
            progress.update(1)
    path = output_dir / filename
    units = "counts / normalisation"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        for s, (axes, data, model, points) in volumes.items():
            entry = nexus.entry(f, f"spot_{s:04d}", f"spot {s}: {points} harvested points, q = Q - G")
            if hkl is not None:
                entry.attrs["hkl"] = np.asarray(hkl)[s]
            entry["G"] = G[s]
            how = f"FISTA interpolation of {points} points; NaN where nothing was measured"
            for label, volume, title in (("data", data, f"data ({how})"), ("model", model, f"{model_label} ({how})"),
                                         ("residual", data - model, "data - model")):
                group = nexus.nxdata(entry, label, ("intensity", volume, units),
                                     [(name, ax, "1/Angstrom", f"{name} (q = Q - G, crystal frame)")
                                      for name, ax in zip(("qx", "qy", "qz"), axes)],
                                     default=label == "data", title=title)
                if label == "model":
                    group.attrs["constants"] = model_label
        if volumes:  # each entry made itself the default: the first spot is
            f.attrs["default"] = f"spot_{min(volumes):04d}"
    files["volumes"] = path
    for s, (axes, data, model, points) in volumes.items():
        files[f"png_{s}"] = _slices_png(output_dir / f"spot_{s:04d}.png", axes, data, model, points,
                                        None if hkl is None else np.asarray(hkl)[s], model_label)
    return files


def _slices_png(path: Path, axes, data, model, points: int, hkl, model_label: str) -> Path:
    """The picture of :func:`_slices_figure` as a PNG at ``path``."""
    fig = _slices_figure(axes, data, model, points, hkl, model_label)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path


def _slices_figure(axes, data, model, points: int, hkl, model_label: str):
    """Central qx-qy, qx-qz and qy-qz slices: data, model (one colour scale) and residual rows;
    grey where nothing was measured.

    No layout engine: constrained layout drew the figure once more only to measure it and spent most of its time
    measuring every tick label (1.1-1.7 s of CPU per picture, now 0.55 s).  The figure and font sizes are fixed,
    so the panels and colour bars sit at fixed places; only the room left of each column follows the widest y
    tick label, measured from its text (:func:`_fit_columns`), and the panel titles sit at the axes' top."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 9.5))
    panels = fig.subplots(3, 3, gridspec_kw=PANELS)
    mid = [len(a) // 2 for a in axes]
    cuts = [((0, 1), (slice(None), slice(None), mid[2])), ((0, 2), (slice(None), mid[1], slice(None))),
            ((1, 2), (mid[0], slice(None), slice(None)))]
    names = ("qx", "qy", "qz")
    shown = np.concatenate([data[np.isfinite(data)], model[np.isfinite(model)]])
    low, high = np.percentile(shown, [1, 99.5]) if shown.size else (0.0, 1.0)
    residual = data - model
    finite = residual[np.isfinite(residual)]
    span = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
    rows = (("data", data, "viridis", low, high, f"data, interpolated from {points} points"),
            ("model", model, "viridis", low, high, "model, interpolated the same way"),
            ("residual", residual, "RdBu_r", -span, span, "residual data - model"))
    images = []
    for row, (short, volume, cmap, vmin, vmax, what) in enumerate(rows):
        colours = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
        for col, ((a, b), index) in enumerate(cuts):
            ax = panels[row, col]
            extent = [axes[b][0], axes[b][-1], axes[a][0], axes[a][-1]]
            image = ax.imshow(np.ma.masked_invalid(volume[index]), origin="lower", extent=extent, vmin=vmin,
                              vmax=vmax, aspect="auto", interpolation="nearest", cmap=colours)
            ax.set_xlabel(f"{names[b]} [1/\u00c5]")
            ax.set_ylabel((f"{short.upper()}\n" if col == 0 else "") + f"{names[a]} [1/\u00c5]")
            ax.set_title(f"{what}\n{names[3 - a - b]} = 0", fontsize="small", y=1.0)  # fixed: no search for top ticks
        images.append(image)
    _fit_columns(fig, panels)
    fig.colorbar(images[1], cax=_bar_axes(fig, panels[0, 2], panels[1, 2]),
                 label="intensity [counts / normalisation]\n(same scale for data and model)")
    fig.colorbar(images[2], cax=_bar_axes(fig, panels[2, 2], panels[2, 2]), label="data - model")
    spot = "spot" + ("" if hkl is None else f" hkl = {tuple(int(v) for v in hkl)}")
    fig.suptitle(f"{spot}: {points} harvested points, q = Q - G\n"
                 f"rows: data, {model_label}, residual; data and model are FISTA interpolations of the points\n"
                 f"grey: not measured (outside the harvested shell or over {REACH:g} grid steps from any point)",
                 y=0.995)
    return fig


def _fit_columns(fig, panels) -> None:
    """Make the room left of each column of ``panels`` hold its axis label(s) and the widest y tick label that
    will be drawn (the locator's ticks within the limits, as the formatter writes them)."""
    import matplotlib
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    font = FontProperties(size=matplotlib.rcParams["ytick.labelsize"])
    widest = 0.0  # points
    for ax in panels.flat:
        low, high = sorted(ax.get_ylim())
        ticks = ax.yaxis.get_major_locator()()
        labels = ax.yaxis.get_major_formatter().format_ticks(ticks)
        for tick, label in zip(ticks, labels):
            if low - 1e-9 * (high - low) <= tick <= high + 1e-9 * (high - low):
                widest = max(widest, text_to_path.get_text_width_height_descent(label, font, ismath=False)[0])
    width = fig.get_figwidth()
    tick = (widest + 12) / 72  # the label, the tick and their pads [in]
    line = 1.2 * FontProperties(size=matplotlib.rcParams["axes.labelsize"]).get_size_in_points() / 72
    left = (0.1 + 2 * line + tick) / width  # column 0: row name and axis label
    gap = 0.15 + line + tick  # [in]
    panel = (width * (PANELS["right"] - left) - 2 * gap) / 3
    panels[0, 0].get_gridspec().update(left=left, wspace=gap / panel)
    for ax in panels.flat:  # the grid moves the axes of pyplot's figures only
        ax.set_position(ax.get_subplotspec().get_position(fig))


def _bar_axes(fig, top, bottom):
    """Axes of a colour bar right of the panels, as tall as from ``bottom``'s foot to ``top``'s head."""
    low, high = bottom.get_position().y0, top.get_position().y1
    return fig.add_axes((PANELS["right"] + 0.025, low, 0.018, high - low))


def vis_sim(harvest, structure, cguess, path, *, N: int = 32, beta: float = 0.03, n_iter: int = 100,
            constants=None, progress=None) -> Path:
    """tds2el's visSim step: volumes of data and of the model at CGUESS (or fitted ``constants``) to ``path``.

    ``harvest`` is a mapping or an object with Q, intensity, spot, G, hkl;
    ``constants`` maps free-constant names to values (e.g. the fit's), else the
    CGUESS start values are used, as tds2el does for a simulation.
    """
    from difframe.tds.fit import Constants, constant_name

    fields = ("Q", "intensity", "spot", "G", "hkl")
    data = {k: harvest[k] if isinstance(harvest, dict) else getattr(harvest, k, None) for k in fields}
    start = Constants.from_cguess(cguess, structure.free)
    given = {} if constants is None else {constant_name(k): float(v) for k, v in constants.items()}
    values = [given.get(name, value) for name, value in zip(start.names, start.values)]
    voigt = np.tensordot(np.asarray(values), np.asarray(structure.basis, dtype=float), axes=1)
    origin = "fitted" if given else "CGUESS"
    label = f"model ({origin} " + ", ".join(f"{n} = {v:.4g}" for n, v in zip(start.names, values)) + " GPa)"
    path = Path(path)
    files = visualise(data, model_intensity(data, voigt), path.parent, n=N, beta=beta, n_iter=n_iter,
                      filename=path.name, model_label=label, progress=progress)
    return files["volumes"]
