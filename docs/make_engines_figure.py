"""Pictures of the engines on the tests' simulated scans, docs/figures/:

- ptycho_engines.png: object phase and object error per iteration of DM, RAAR, ePIE, rPIE and mPIE on
  tests/plugins/engines/ptycho_truth.py's scan (49 far-field frames of 32 x 32, 1e5 photons per frame, known object
  and probe); every engine starts from a flat object and the true probe's modulus with the engines' defaults.
- ptycho_opr.png: OPR against ePIE and rPIE on tests/plugins/engines/test_opr.py's scan whose probe drifts (49
  frames, 1e6 photons per frame), each from a flat object and the middle frame's probe modulus, 40 epochs: the
  first, middle and last frames' true and recovered probes, object phases, deviance and object error per epoch.
- ptycho_e3pie.png: e3PIE (two slices) against ePIE on tests/plugins/engines/test_multislice.py's scan of two
  phase slices 0.3 mm apart (49 frames, 1e5 photons per frame), each from a flat object and the probe's modulus,
  40 epochs: true and recovered slice phases, ePIE's one slice, deviance per epoch.

    .venv/bin/python docs/make_engines_figure.py [--only engines|opr|e3pie]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "plugins" / "engines"), str(HERE.parent / "tests")]

from difframe.manager import PluginManager  # noqa: E402
from ptycho_truth import amplitude_guess, engine_params, object_error, simulate, start_model  # noqa: E402

ENGINES = {"DM": 40, "RAAR": 40, "ePIE": 40, "rPIE": 40, "mPIE": 40}


def _curves(ax, curves: dict, xlabel: str, ylabel: str) -> None:
    """One log-scale curve per engine (name -> values per iteration)."""
    for name, values in curves.items():
        ax.semilogy(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _save(fig, name: str) -> None:
    fig.tight_layout()
    out = HERE / "figures" / name
    fig.savefig(out, dpi=90)
    print(out)


def engines_figure() -> None:
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
    _curves(fig.add_subplot(grid[1, :]), curves, "iteration (PIE: epoch, every frame once)", "object error")
    fig.suptitle("49 frames of 32 x 32, 1e5 photons per frame: object error after removing factor and phase ramp")
    _save(fig, "ptycho_engines.png")


def opr_figure(epochs: int = 40) -> None:
    from test_opr import drifting_scan

    from ptycho_truth import SHAPE

    prep, probes, truth = drifting_scan()
    guess = np.abs(probes[len(probes) // 2])[None]
    lit = (np.abs(probes) ** 2).mean(axis=0)[None]
    plugins = PluginManager()
    curves, phases, frame_probes = {}, {}, {}
    for name, options in (("ePIE", {}), ("rPIE", {}), ("OPR", {"num_modes": 2})):
        spec = plugins.get("engine", name)
        model = start_model(prep, guess)
        engine = spec.factory(engine_params(spec.parameters, **options), model)
        engine.initialize()
        deviance, errors = [], []
        for _ in range(epochs):
            deviance.append(engine.iterate(1)[-1]["deviance"])
            errors.append(object_error(model, truth, lit))
        curves[name] = deviance, errors
        obj = model.objects["sim"].data[0]
        phases[name] = np.angle(obj * np.exp(-1j * np.angle(np.vdot(obj, truth.data[0]))))
        frame_probes[name] = (engine.probes_of("sim") if name == "OPR"
                              else np.broadcast_to(model.probes["sim"].data[0], probes.shape))
    shown = [0, len(probes) // 2, len(probes) - 1]
    fig = plt.figure(figsize=(12, 9))
    grid = fig.add_gridspec(3, 5)
    middle = (slice(SHAPE[0] // 4, -(SHAPE[0] // 4)), slice(SHAPE[1] // 4, -(SHAPE[1] // 4)))

    def probe_phase(ax, p, reference, title):
        p = p * np.exp(-1j * np.angle(np.vdot(p, reference)))  # the true probe's global phase
        shown_phase = np.where(np.abs(p) > 0.1 * np.abs(p).max(), np.angle(p), np.nan)[middle]
        ax.imshow(shown_phase, cmap="twilight", vmin=-np.pi, vmax=np.pi)
        ax.set_title(title, fontsize=9)
        ax.axis("off")

    for col, n in enumerate(shown):
        probe_phase(fig.add_subplot(grid[0, col]), probes[n], probes[n], f"true probe phase, frame {n}")
        probe_phase(fig.add_subplot(grid[1, col]), frame_probes["OPR"][n], probes[n], f"OPR (K = 2), frame {n}")
    probe_phase(fig.add_subplot(grid[0, 4]), frame_probes["rPIE"][0], probes[len(probes) // 2],
                "rPIE: one probe for all")
    cut = (slice(SHAPE[0] // 2, -(SHAPE[0] // 2)), slice(SHAPE[1] // 2, -(SHAPE[1] // 2)))
    for (row, col), (label, phase) in zip(((0, 3), (1, 3), (1, 4)), (("truth", np.angle(truth.data[0])),
                                                                      ("OPR", phases["OPR"]),
                                                                      ("rPIE", phases["rPIE"]))):
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(phase[cut], cmap="twilight")
        title = "truth" if label == "truth" else f"{label}, error {curves[label][1][-1]:.3f}"
        ax.set_title(f"object phase, {title}", fontsize=9)
        ax.axis("off")
    for k, (where, ylabel) in enumerate(((slice(0, 2), "deviance per pixel (noise: 1)"),
                                         (slice(3, 5), "object error"))):
        _curves(fig.add_subplot(grid[2, where]), {name: curve[k] for name, curve in curves.items()}, "epoch",
                ylabel)
    fig.suptitle("OPR: a probe drifting from A to 0.5 A exp(i phi) over 49 frames (1e6 photons per frame), 40 epochs\n"
                 "probe phase where the amplitude exceeds 10 % of its peak; errors after removing factor and phase "
                 "ramp", fontsize=10)
    _save(fig, "ptycho_opr.png")


def e3pie_figure(epochs: int = 40) -> None:
    from test_multislice import SPACING, two_slice_scan

    from difframe.ptycho import model as pm
    from ptycho_truth import SHAPE

    prep, probe, slices = two_slice_scan()
    guess = amplitude_guess(prep, pm.object_psize(prep))
    plugins = PluginManager()
    results = {}
    for name, options in (("ePIE", {}), ("e3PIE", {"num_slices": 2, "slice_spacing": SPACING})):
        spec = plugins.get("engine", name)
        model = start_model(prep, guess)
        engine = spec.factory(engine_params(spec.parameters, **options), model)
        engine.initialize()
        deviance = [engine.iterate(1)[-1]["deviance"] for _ in range(epochs)]
        results[name] = deviance, model.objects["sim"].data.copy()
    cut = (slice(SHAPE[0] // 2, -(SHAPE[0] // 2)), slice(SHAPE[1] // 2, -(SHAPE[1] // 2)))

    def phase(layer, reference):
        return np.angle(layer * np.exp(-1j * np.angle(np.vdot(layer, reference))))[cut]

    fig = plt.figure(figsize=(12, 7))
    grid = fig.add_gridspec(2, 4)
    shown = [("true slice 1 (upstream)", slices[0], slices[0]), ("true slice 2", slices[1], slices[1]),
             ("e3PIE slice 1", results["e3PIE"][1][0], slices[0]), ("e3PIE slice 2", results["e3PIE"][1][1], slices[1]),
             ("true product (one slice)", slices[0] * slices[1], slices[0] * slices[1]),
             ("ePIE: one slice", results["ePIE"][1][0], slices[0] * slices[1])]
    for k, (title, layer, reference) in enumerate(shown):
        ax = fig.add_subplot(grid[k // 4, k % 4])
        ax.imshow(phase(layer, reference), cmap="twilight")
        ax.set_title(f"{title}, phase", fontsize=9)
        ax.axis("off")
    _curves(fig.add_subplot(grid[1, 2:]), {name: r[0] for name, r in results.items()}, "epoch",
            "deviance per pixel (noise: 1)")
    fig.suptitle("e3PIE: two phase slices 0.3 mm apart (Fresnel number 0.088 per pixel), 49 frames, 1e5 photons "
                 "per frame, 40 epochs", fontsize=10)
    _save(fig, "ptycho_e3pie.png")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("engines", "opr", "e3pie"), help="draw one of the figures")
    args = ap.parse_args()
    if args.only in (None, "engines"):
        engines_figure()
    if args.only in (None, "opr"):
        opr_figure()
    if args.only in (None, "e3pie"):
        e3pie_figure()


if __name__ == "__main__":
    main()
