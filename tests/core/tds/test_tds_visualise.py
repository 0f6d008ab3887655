"""visSim interpolation: trilinear exactness, adjoint gradient, FISTA against a direct solve, files showing only
measured nodes, opened by silx on the data."""

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.sparse.linalg import eigsh

from difframe.errors import UsageError
from difframe.tds import visualise as vis
from nexus_walk import default_plot, silx_default_signal
from tdsfit_support import MGO, synthetic_harvest


def _grid(n=6, half=0.1):
    return [np.linspace(-half, half, n)] * 3


def test_trilinear_interpolation_is_exact_for_linear_functions():
    rng = np.random.default_rng(31)
    axes = _grid(7)
    q = rng.uniform(-0.1, 0.1, size=(500, 3))
    X = np.meshgrid(*axes, indexing="ij")
    f = lambda x, y, z: 2.0 + 3 * x - 5 * y + 7 * z  # noqa: E731
    A = vis.interpolation_matrix(q, axes)
    np.testing.assert_allclose(A @ f(*X).ravel(), f(*q.T), atol=1e-12)
    np.testing.assert_allclose(A.sum(axis=1), 1.0)


def test_gradient_adjoint_and_power_iteration():
    rng = np.random.default_rng(32)
    x, g = rng.normal(size=(5, 6, 7)), rng.normal(size=(3, 5, 6, 7))
    assert np.vdot(vis._grad(x), g) == pytest.approx(np.vdot(x, vis._grad_adjoint(g)), rel=1e-12)
    axes = _grid(5)
    A = vis.interpolation_matrix(rng.uniform(-0.1, 0.1, (80, 3)), axes)
    D = _dense_grad((5, 5, 5))
    H = (A.T @ A).toarray() + 2 * 0.1 * D.T @ D
    largest = eigsh(H, k=1, return_eigenvectors=False)[0]
    assert largest <= vis.lipschitz(A, (5, 5, 5), 0.1, n_iter=100) <= 1.06 * largest


def _dense_grad(shape):
    n = int(np.prod(shape))
    return np.stack([vis._grad(e.reshape(shape)).ravel() for e in np.eye(n)], axis=1)


def test_fista_converges_to_the_regularised_solution():
    rng = np.random.default_rng(33)
    axes = _grid(5)
    q = rng.uniform(-0.1, 0.1, (150, 3))
    y = np.exp(-np.sum(q**2, axis=1) / 0.003) + rng.normal(0, 0.01, len(q))
    beta = 0.05
    A = vis.interpolation_matrix(q, axes)
    D = _dense_grad((5, 5, 5))
    direct = np.linalg.solve((A.T @ A).toarray() + 2 * beta * D.T @ D, A.T @ y)
    x = vis.fista_interpolate(q, y, axes, beta, 3000)
    np.testing.assert_allclose(x.ravel(), direct, atol=1e-5 * np.abs(direct).max())
    with pytest.raises(UsageError, match="testSpot_beta"):
        vis.fista_interpolate(q, y, axes, -1.0, 10)


def test_value_sets_interpolated_together_equal_separate_passes():
    rng = np.random.default_rng(36)
    axes = _grid(6)
    q = rng.uniform(-0.1, 0.1, (120, 3))
    Y = rng.normal(size=(120, 2))
    both = vis.fista_interpolate(q, Y, axes, 0.03, 25)
    assert both.shape == (2, 6, 6, 6)
    for k in range(2):
        np.testing.assert_allclose(both[k], vis.fista_interpolate(q, Y[:, k], axes, 0.03, 25), rtol=1e-12, atol=1e-14)


def test_volumes_pngs_and_the_default_plot_keep_only_measured_nodes(tmp_path):
    data, structure, values = synthetic_harvest(MGO, 3000, np.random.default_rng(34), hkls=[[2, 0, 0], [2, 2, 0]])
    keep = ~((data["spot"] == 0) & (data["Q"][:, 2] - data["G"][0, 2] > 0))  # spot 0: nothing measured at qz > 0
    data = {k: (v[keep] if k in ("Q", "intensity", "spot") else v) for k, v in data.items()}
    voigt = structure.full_voigt([values[n] for n in structure.free])
    model = vis.model_intensity(data, voigt)
    assert np.corrcoef(model, data["intensity"])[0, 1] > 0.95  # the model with per-spot scales follows the data
    files = vis.visualise(data, model, tmp_path, n=12, beta=0.03, n_iter=30)
    plot = default_plot(files["volumes"])  # root -> spot_0000 -> data, as silx opens it
    assert plot.path == "/spot_0000/data" and plot.signal.shape == (12, 12, 12)
    assert plot.names == ["qx", "qy", "qz"] and set(plot.units.values()) == {"1/Angstrom"}
    assert silx_default_signal(files["volumes"]) in (None, "/spot_0000/data/intensity")
    with h5py.File(files["volumes"]) as f:
        np.testing.assert_array_equal(f["spot_0001"].attrs["hkl"], [2, 2, 0])
        for s in ("spot_0000", "spot_0001"):
            d, m, r = (f[s][label]["intensity"][()] for label in ("data", "model", "residual"))
            np.testing.assert_array_equal(np.isnan(d), np.isnan(m))
            np.testing.assert_allclose(r, d - m)
            ok = np.isfinite(d)
            assert np.corrcoef(d[ok], m[ok])[0, 1] > 0.9
        axes = [f["spot_0000/data"][name][()] for name in ("qx", "qy", "qz")]
        d0 = f["spot_0000/data/intensity"][()]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    q = data["Q"][data["spot"] == 0] - data["G"][0]
    nearest = np.sqrt(((nodes[..., None, :] - q) ** 2).sum(-1)).min(-1) / (axes[0][1] - axes[0][0])
    radius = np.linalg.norm(nodes, axis=-1)
    assert np.all(np.isnan(d0[nearest > 2.01]))  # far from every point: not shown
    assert np.all(np.isnan(d0[radius > np.linalg.norm(q, axis=1).max() + axes[0][1] - axes[0][0]]))
    assert np.all(np.isnan(d0[..., -3:]))  # the unmeasured half (qz > 0) is empty, not extrapolated
    shell = (radius > np.linalg.norm(q, axis=1).min()) & (radius < np.linalg.norm(q, axis=1).max())
    assert np.all(np.isfinite(d0[(nearest < 0.5) & shell]))
    with Image.open(files["png_1"]) as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_vis_sim_from_cguess_or_fitted_constants(tmp_path, monkeypatch):
    # the volumes and labels are checked here; the PNG of each spot in the test above
    monkeypatch.setattr(vis, "_slices_png", lambda path, *args: path)
    data, structure, values = synthetic_harvest(MGO, 1500, np.random.default_rng(35), hkls=[[2, 0, 0]])
    cguess = {"A11": [297.0, 1, 900], "A12": [95.2, 1, 900], "A44": [155.7, 1, 900]}
    path = vis.vis_sim(data, structure, cguess, tmp_path / "simtests.h5", N=8, beta=0.03, n_iter=20)
    far = vis.vis_sim(data, structure, cguess, tmp_path / "far.h5", N=8, beta=0.03, n_iter=20,
                      constants={"C44": 30.0})
    with h5py.File(path) as good, h5py.File(far) as bad:
        assert good["spot_0000/model"].attrs["constants"].startswith("model (CGUESS C11 = 297")
        label = bad["spot_0000/model"].attrs["constants"]
        assert label.startswith("model (fitted") and "C44 = 30 " in label
        err_good = np.nansum(np.abs(good["spot_0000/residual/intensity"][()]))
        err_bad = np.nansum(np.abs(bad["spot_0000/residual/intensity"][()]))
    assert err_good < 0.5 * err_bad  # the true constants describe the data, a wrong C44 does not


@pytest.mark.parametrize("half", [0.3, 0.0123])
def test_spot_picture_keeps_panels_labels_and_colour_bars_apart(half):
    """The panels are placed without a layout engine: each one with its tick labels, axis labels and title, each
    colour bar with its labels, and the title stay inside the figure and clear of one another, with short
    (0.3: "-0.2") and long (0.0123: "-0.0075") tick labels, as matplotlib measures them for drawing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    rng = np.random.default_rng(37)
    axes = [np.linspace(-h, h, 12) for h in (half, 0.7 * half, 2.5 * half)]
    model = 1e4 * rng.random((12, 12, 12))
    data = model + rng.normal(0, 30, model.shape)
    data[..., -3:] = model[..., -3:] = np.nan
    fig = vis._slices_figure(axes, data, model, 900, np.array([2, 0, 0]), "model (CGUESS C11 = 297 GPa)")
    renderer = FigureCanvasAgg(fig).get_renderer()
    assert len(fig.axes) == 11  # 9 panels and 2 colour bars
    title = [t for t in fig.findobj(Text) if t.get_text() == fig.get_suptitle()]
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes] + [title[0].get_window_extent(renderer)]
    for n, box in enumerate(boxes):
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
        assert not any(box.overlaps(other) for other in boxes[n + 1:]), n
