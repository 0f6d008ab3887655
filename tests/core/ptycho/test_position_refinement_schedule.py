"""engine.common.position_refinement: start, stop, interval and max_shift do what their docs say.

The numerical refinement is tested in test_positions.py; here the flow's schedule is recorded (the refinement
itself replaced by a recorder) and compared with the rule the docs state: refine at every multiple of
``interval`` from iteration ``start`` of the engine through ``stop`` (None: the engine's end), at most once per
block of iterations, with positions bounded by ``max_shift`` [m] in object pixels.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from difframe.param import Param
from difframe.ptycho import positions
from difframe.ptycho.workflow import refine_positions

PSIZE = 1e-7


def schedule(monkeypatch, numiter, block, last_engine=False, **refinement):
    """Iterations (within the engine) after which the flow refined, and the max_shift_px it passed."""
    calls = []

    def refine_scan(model, scan, *, max_shift_px, **options):  # options: how, not when
        calls.append(max_shift_px)
        return np.zeros((len(scan.positions), 2))

    def apply_shifts(model, scan, shifts, *, max_shift_px, original_positions, **options):
        return {"rms_shift_px": 0.0, "max_shift_px": 0.0}

    monkeypatch.setattr(positions, "refine_scan", refine_scan)
    monkeypatch.setattr(positions, "apply_shifts", apply_shifts)
    p = Param({"active": True, "start": 20, "stop": None, "interval": 5, "max_shift": 2e-6, "method": "grid"})
    p.update(refinement)
    ep = Param({"numiter": numiter, "position_refinement": p})
    scan = SimpleNamespace(label="s", object_id="s", positions=np.zeros((3, 2)))
    model = SimpleNamespace(scans=[scan], objects={"s": SimpleNamespace(psize=np.array([PSIZE, PSIZE]))})
    done, refined = 0, []
    while done < numiter:
        n = min(block, numiter - done)
        before = len(calls)
        refine_positions(ep, model, done + n, done, {"s": np.zeros((3, 2))}, last_engine=last_engine)
        refined += [done + n] * (len(calls) - before)
        done += n
    return refined, calls


def test_refines_every_interval_from_start_to_the_engines_end(monkeypatch):
    refined, calls = schedule(monkeypatch, 60, 1)
    assert refined == [20, 25, 30, 35, 40, 45, 50, 55, 60]
    assert calls == [pytest.approx(2e-6 / PSIZE)] * len(refined)  # max_shift [m] in object pixels


def test_stop_ends_refinement_and_blocks_refine_once_when_they_cross_a_multiple(monkeypatch):
    assert schedule(monkeypatch, 60, 1, stop=40, interval=10, start=0)[0] == [10, 20, 30, 40]
    # blocks of 4: (16, 20] holds 20, (20, 24] holds none, (24, 28] holds 25; each block refines at its end
    assert schedule(monkeypatch, 40, 4)[0] == [20, 28, 32, 36, 40]
    assert schedule(monkeypatch, 60, 1, active=False)[0] == []


def test_the_last_engines_last_iteration_is_not_followed_by_a_refinement(monkeypatch):
    # nothing would use positions refined after the chain's final iteration; a later engine would
    assert schedule(monkeypatch, 60, 1, last_engine=True)[0] == [20, 25, 30, 35, 40, 45, 50, 55]
    assert schedule(monkeypatch, 60, 1, last_engine=False)[0][-1] == 60
