"""Random inputs for the fused-kernel tests (core kernels and the engines' own) and their numpy helpers."""

from __future__ import annotations

import numpy as np

from difframe.ptycho import model as pm

SHAPE = (12, 10)
FRAMES = 9
#: (complex dtype, probe modes, object modes) of each case
CASES = [(np.complex64, 1, 1), (np.complex128, 2, 1), (np.complex64, 2, 3)]
IDS = ["single-1x1", "double-2x1", "single-2x3"]


def complex_array(rng, shape, dtype):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


def make_case(dtype, n_probe, n_obj) -> dict:
    """Random probe (P modes), object (O modes), overlapping windows, frames and stacks (N, P*O, H, W)."""
    rng = np.random.default_rng(7)
    real = np.finfo(dtype).dtype
    probe = complex_array(rng, (n_probe, *SHAPE), dtype)
    obj = complex_array(rng, (n_obj, 30, 27), dtype)
    corners = rng.integers(0, (30 - SHAPE[0], 27 - SHAPE[1]), (FRAMES, 2))
    pods = n_probe * n_obj
    return {
        "dtype": dtype, "real": real, "probe": probe, "obj": obj, "corners": corners, "rng": rng,
        "stack": complex_array(rng, (FRAMES, pods, *SHAPE), dtype),
        "intensity": rng.poisson(3.0, (FRAMES, *SHAPE)).astype(real),
        "tol": 2e-5 if dtype == np.complex64 else 1e-12,
    }


def pods_reference(c, obj=None, probe=None):
    """Reference pods (N, P*O, H, W) by fancy-index gather."""
    obj = c["obj"] if obj is None else obj
    probe = c["probe"] if probe is None else probe
    views = pm.gather(obj, c["corners"], SHAPE)
    return pm.exit_waves(probe, views).reshape(FRAMES, -1, *SHAPE)


def close(a, b, tol):
    scale = max(np.abs(b).max(), 1e-30)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= tol * scale


def random_weights(c, shared: bool):
    mask = c["rng"].random((1 if shared else FRAMES, *SHAPE)) > 0.2
    return mask.astype(c["real"]) * c["rng"].uniform(0.5, 2.0, mask.shape).astype(c["real"])
