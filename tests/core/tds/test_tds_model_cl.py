"""The fused OpenCL kernel against the numpy model, and the fall-back when OpenCL cannot run."""

import logging

import numpy as np
import pytest

from difframe.errors import UsageError
from difframe.tds import model_cl
from difframe.tds.model import NumpyModel
from tdsfit_support import ARAGONITE, MG, MGO, synthetic_harvest


def _opencl_or_skip():
    pytest.importorskip("pyopencl")
    try:
        model_cl._program()
    except Exception as exc:
        pytest.skip(f"no OpenCL device: {exc}")


@pytest.mark.parametrize("crystal", [MGO, MG, ARAGONITE], ids=["MgO", "Mg", "aragonite"])
def test_kernel_matches_numpy_to_float32_precision(crystal):
    _opencl_or_skip()
    data, s, values = synthetic_harvest(crystal, 5000, np.random.default_rng(7))
    Q, q = data["Q"], data["Q"] - data["G"][data["spot"]]
    p = np.array([values[n] for n in s.free]) * 1.1
    T_ref, J_ref = NumpyModel(Q, q, s.basis).evaluate(p)
    m = model_cl.make_model(Q, q, s.basis, backend="opencl")
    assert m.backend == "opencl"
    T, J = m.evaluate(p)
    np.testing.assert_allclose(T, T_ref, rtol=2e-5)
    np.testing.assert_allclose(J, J_ref, rtol=2e-4, atol=2e-5 * np.abs(J_ref).max())
    T_only, none = m.evaluate(p * 0.9, jacobian=False)
    assert none is None
    np.testing.assert_allclose(T_only, NumpyModel(Q, q, s.basis).evaluate(p * 0.9, False)[0], rtol=2e-5)


def test_auto_falls_back_to_numpy_with_a_warning(monkeypatch, caplog):
    def no_device():
        raise RuntimeError("no platforms found")

    monkeypatch.setattr(model_cl, "_program", no_device)
    s = MGO[0]()
    Q = np.array([[2.1, 0.1, 0.0]])
    q = np.array([[0.1, 0.1, 0.0]])
    with caplog.at_level(logging.WARNING, logger="difframe.tds.model"):
        m = model_cl.make_model(Q, q, s.basis, backend="auto")
    assert m.backend == "numpy"
    assert "no platforms found" in caplog.text
    with pytest.raises(UsageError, match="no platforms found"):
        model_cl.make_model(Q, q, s.basis, backend="opencl")
    with pytest.raises(UsageError, match="backend 'cuda'"):
        model_cl.make_model(Q, q, s.basis, backend="cuda")


def test_quantum_model_runs_in_numpy():
    s = MGO[0]()
    m = model_cl.make_model(np.ones((2, 3)), np.full((2, 3), 0.1), s.basis, backend="auto",
                            quantum_bose=True, temperature=10.0, density=3.585)
    assert m.backend == "numpy" and m.quantum
