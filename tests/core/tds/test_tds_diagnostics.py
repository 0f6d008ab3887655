"""Per-spot diagnostics: a Bragg tail added to one spot's inner shell is flagged, clean spots are not."""

import logging

import numpy as np
import pytest

from difframe.plugins.minimisers import trust_region
from difframe.tds import diagnostics, fit
from tdsfit_support import MGO, synthetic_harvest


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(4)
    data, structure, values = synthetic_harvest(MGO, 12000, rng, counts=5000.0)
    q = np.linalg.norm(data["Q"] - data["G"][data["spot"]], axis=1)
    tail = data["spot"] == 3
    # a Bragg tail falling as |q|^-6: twice the spot's brightest TDS at the inner edge, gone half way out
    peak = data["intensity"][tail].max()
    data["intensity"][tail] += rng.poisson(2 * peak * (q[tail].min() / q[tail]) ** 6)
    cguess = {n: [values[n] * (1.0 if n == "C11" else 1.1), 1.0, 1000.0] for n in structure.free}
    problem, _ = fit.build_problem(data, structure, cguess, fit.FitSettings(backend="numpy"))
    outcome = trust_region.minimise(problem, {"ftol": 1e-8, "max_iterations": 100})
    return problem, outcome.x, data


def test_bragg_tail_is_flagged_with_advice(fitted, caplog):
    problem, x, data = fitted
    with caplog.at_level(logging.WARNING, logger="difframe.tds.diagnostics"):
        rows = diagnostics.spot_diagnostics(problem, x, data["hkl"], unit=1.49, hot_frames=np.arange(12))
    flagged = [row["spot"] for row in rows if row["bragg_tail"]]
    assert flagged == [3]
    row = rows[3]
    assert row["hkl"] == data["hkl"][3].tolist() and row["inner_excess"] > 0.15
    q_inner = np.linalg.norm(data["Q"] - data["G"][data["spot"]], axis=1)[data["spot"] == 3].min()
    assert q_inner < row["suggested_DeltaQ_min"] * 1.49 < 2 * q_inner  # beyond the tail, not the whole shell
    assert "spot [" in caplog.text and "DeltaQ_min >=" in caplog.text
    assert [row["points"] for row in rows] == np.bincount(data["spot"]).tolist()
    assert sum(row["cost_fraction"] for row in rows) == pytest.approx(1.0)
    assert max(rows, key=lambda r: r["cost"])["spot"] == 3  # the misfit lives in the tail
    assert rows[5]["frames_above_threshold"] == 5
    clean = [r for r in rows if r["spot"] != 3]
    assert all(abs(v - 1) < 0.15 for r in clean for v in np.array(r["profile"]["ratio"]) / r["profile"]["ratio"][-1])


def test_table_and_picture(fitted, tmp_path):
    problem, x, data = fitted
    rows = diagnostics.spot_diagnostics(problem, x, data["hkl"])
    text = diagnostics.table(rows)
    assert len(text.splitlines()) == 2 + len(rows) and "YES" in text
    png = diagnostics.profiles_png(rows, tmp_path / "profiles.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
