"""Object phase and object error per iteration of DM, RAAR, ePIE, rPIE and mPIE on the tests' simulated scan:
docs/figures/ptycho_engines.png.

    .venv/bin/python docs/make_engines_figure.py

The scan is tests/plugins/engines/ptycho_truth.py's (49 far-field frames of 32 x 32, 1e5 photons per frame, known
object and probe); every engine starts from a flat object and the true probe's modulus with the engines' defaults.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "plugins" / "engines"))

from difframe.manager import PluginManager  # noqa: E402
from ptycho_truth import amplitude_guess, engine_params, object_error, simulate, start_model  # noqa: E402

ENGINES = {"DM": 40, "RAAR": 40, "ePIE": 40, "rPIE": 40, "mPIE": 40}


def main() -> None:
    prep, probe, truth = simulate(photons=1e5)
    plugins = PluginManager()
    curves, phases = {}, {}
    for name, iterations in ENGINES.items():
        spec = plugins.get("engine", name)
        model = start_model(prep, amplitude_guess(prep, truth.psize))
        engine = spec.factory(engine_params(spec.parameters), model)
        engine.initialize()
        errors = []
        for _ in range(iterations):
            engine.iterate(1)
            errors.append(object_error(model, truth, probe))
        curves[name] = errors
        obj = model.objects["sim"].data[0]
        ref = truth.data[0]
        phases[name] = np.angle(obj * np.exp(-1j * np.angle(np.vdot(obj, ref))))
    fig = plt.figure(figsize=(13, 6))
    grid = fig.add_gridspec(2, 6)
    cut = (slice(14, -14), slice(14, -14))  # the lit part of the object
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(np.angle(truth.data[0])[cut], cmap="twilight")
    ax.set_title("truth (phase)")
    ax.axis("off")
    for k, (name, phase) in enumerate(phases.items()):
        ax = fig.add_subplot(grid[0, k + 1])
        ax.imshow(phase[cut], cmap="twilight")
        ax.set_title(f"{name} {ENGINES[name]}: {curves[name][-1]:.3f}")
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    for name, errors in curves.items():
        ax.semilogy(np.arange(1, len(errors) + 1), errors, label=name)
    ax.set_xlabel("iteration (PIE: epoch, every frame once)")
    ax.set_ylabel("object error")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("49 frames of 32 x 32, 1e5 photons per frame: object error after removing factor and phase ramp")
    fig.tight_layout()
    out = HERE / "figures" / "ptycho_engines.png"
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()
