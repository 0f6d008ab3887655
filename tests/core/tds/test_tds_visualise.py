"""visSim interpolation: trilinear exactness, adjoint gradient, FISTA against a direct solve, readable files."""

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.sparse.linalg import eigsh

from difframe.errors import UsageError
from difframe.tds import visualise as vis
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


def test_volumes_and_pngs_are_written(tmp_path):
    data, structure, values = synthetic_harvest(MGO, 3000, np.random.default_rng(34), hkls=[[2, 0, 0], [2, 2, 0]])
    voigt = structure.full_voigt([values[n] for n in structure.free])
    model = vis.model_intensity(data, voigt)
    assert np.corrcoef(model, data["intensity"])[0, 1] > 0.95  # the model with per-spot scales follows the data
    files = vis.visualise(data, model, tmp_path, n=12, beta=0.03, n_iter=30)
    with h5py.File(files["volumes"]) as f:
        assert f.attrs["default"] == "spot_0000"
        for s in ("spot_0000", "spot_0001"):
            for label in ("data", "model"):
                group = f[s][label]
                assert group.attrs["NX_class"] == "NXdata" and group.attrs["signal"] == "intensity"
                assert group["intensity"].shape == (12, 12, 12)
                assert list(group.attrs["axes"]) == ["qx", "qy", "qz"] and group["qz"].shape == (12,)
        np.testing.assert_array_equal(f["spot_0001"].attrs["hkl"], [2, 2, 0])
        d, m = f["spot_0000/data/intensity"][()], f["spot_0000/model/intensity"][()]
        assert np.corrcoef(d.ravel(), m.ravel())[0, 1] > 0.9
    with Image.open(files["png_1"]) as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_vis_sim_from_cguess_or_fitted_constants(tmp_path):
    data, structure, values = synthetic_harvest(MGO, 1500, np.random.default_rng(35), hkls=[[2, 0, 0]])
    cguess = {"A11": [297.0, 1, 900], "A12": [95.2, 1, 900], "A44": [155.7, 1, 900]}
    path = vis.vis_sim(data, structure, cguess, tmp_path / "simtests.h5", N=8, beta=0.03, n_iter=20)
    far = vis.vis_sim(data, structure, cguess, tmp_path / "far.h5", N=8, beta=0.03, n_iter=20,
                      constants={"C44": 30.0})
    with h5py.File(path) as good, h5py.File(far) as bad:
        assert good["spot_0000/model"].attrs["constants"].startswith("model (CGUESS C11 = 297")
        label = bad["spot_0000/model"].attrs["constants"]
        assert label.startswith("model (fitted") and "C44 = 30 " in label
        d = good["spot_0000/data/intensity"][()]
        err_good = np.abs(good["spot_0000/model/intensity"][()] - d).sum()
        err_bad = np.abs(bad["spot_0000/model/intensity"][()] - d).sum()
    assert err_good < 0.5 * err_bad  # the true constants describe the data, a wrong C44 does not
