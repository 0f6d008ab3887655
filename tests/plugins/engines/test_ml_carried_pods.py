"""ML carries its detector-plane pods forward through each line-search step instead of propagating them
again; the carried pods must be the model's own, and the run the same as with exact propagation."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from difframe.plugins.engines import dm, ml
from difframe.ptycho import subpixel

from ptycho_truth import engine_params, simulate, start_model, true_probe


@pytest.fixture(scope="module")
def two_mode_start():
    prep, probe, truth = simulate(photons=1e6, probe_modes=2)
    guess = np.abs(true_probe(truth.psize)[0])
    guess *= np.sqrt(prep.data.sum(axis=(1, 2)).mean() / (guess**2).sum())
    model = start_model(prep, np.stack([guess, 0.3 * np.roll(guess, 3, axis=-1)]).astype(complex))
    engine = dm.factory(engine_params(dm.PARAMETERS), model)
    engine.initialize()
    engine.iterate(10)
    return model


def _exact_pods(engine, scan):
    """The detector-plane pods of the engine's current model, propagated afresh (numpy)."""
    m = engine.model
    probe, obj = m.probes[scan.probe_id].data, m.objects[scan.object_id].data
    if engine.p.subpixel_positions:
        views = subpixel.views(obj, scan.corners, subpixel.offsets(scan, m.objects[scan.object_id]), scan.shape)
    else:
        views = np.stack([obj[:, y:y + scan.shape[0], x:x + scan.shape[1]] for y, x in scan.corners])
    exits = (probe[None, :, None] * views[:, None]).reshape(len(views), -1, *scan.shape)
    return scan.propagator.forward(exits.astype(np.complex128))


def _params(**options):
    return engine_params(ml.PARAMETERS, type="poisson", reg_del2=False, illumination_precond=True, **options)


@pytest.mark.parametrize("subpixel_positions", [False, True])
def test_carried_pods_are_the_models_own(two_mode_start, subpixel_positions):
    model = copy.deepcopy(two_mode_start)
    engine = ml.factory(_params(subpixel_positions=subpixel_positions), model)
    engine.initialize()
    assert engine.line_stacks  # memory allows: the pods are carried
    engine.iterate(ml.REFRESH - 1)  # the last pods of this stretch are carried, mixed with the modes each time
    scan = model.scans[0]
    exact = _exact_pods(engine, scan)
    kept = engine.fields[scan.label]
    assert np.linalg.norm(kept - exact) < 1e-4 * np.linalg.norm(exact)


def test_run_equals_the_run_with_exact_propagation(two_mode_start, monkeypatch):
    runs = {}
    for carry in (True, False):
        model = copy.deepcopy(two_mode_start)
        if not carry:
            monkeypatch.setattr(ml, "limits", SimpleNamespace(memory_budget=lambda: 0))  # no room to carry
        engine = ml.factory(_params(subpixel_positions=True), model)
        engine.initialize()
        assert bool(engine.line_stacks) == carry
        runs[carry] = ([m["deviance"] for m in engine.iterate(25)], model.objects["sim"].data)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-3)
    assert np.linalg.norm(runs[True][1] - runs[False][1]) < 1e-3 * np.linalg.norm(runs[False][1])


def test_pods_are_propagated_again_when_the_positions_move(two_mode_start):
    model = copy.deepcopy(two_mode_start)
    engine = ml.factory(_params(subpixel_positions=True), model)
    engine.initialize()
    engine.iterate(2)
    scan = model.scans[0]
    scan.positions[:] += 0.3 * model.objects[scan.object_id].psize  # as position refinement moves them
    engine.iterate(1)  # not a refresh iteration: only noticing the move makes its pods right
    exact = _exact_pods(engine, scan)
    assert np.linalg.norm(engine.fields[scan.label] - exact) < 1e-4 * np.linalg.norm(exact)
