"""CPU time of ``difframe tds simulate`` on the example specs and of one visSim picture (``_slices_png``).

    .venv/bin/python benchmarks/tds_simulate.py [specs, e.g. mgo,calcite_ieee] [--pngs 5]

Each example of ``examples/tds`` is simulated once into a temporary folder (after one call of the model's
compiled pass, so loading it is not counted) and its CPU time (``time.process_time``: every thread of the process) is
printed with the frames and pixels per frame.  The picture is the 32^3 visSim grid of a made-up spot
(a 1/q^2 TDS cloud with a third of the nodes unmeasured), drawn ``--pngs`` times; the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tds"


def simulate_cpu(name: str) -> tuple[float, int, int]:
    """(CPU seconds, frames, pixels per frame) of simulating examples/tds/NAME.toml."""
    from difframe.tds.model import fused_classical
    from difframe.tds.simulate import simulate

    spec = tomllib.loads((EXAMPLES / f"{name}.toml").read_text())
    fused_classical(np.ones((1, 3)), np.ones((1, 3)), np.eye(6))
    with tempfile.TemporaryDirectory() as folder:
        start = time.process_time()
        simulate(spec, Path(folder) / "run")
        cpu = time.process_time() - start
    rows, cols = spec["detector"]["shape"]
    return cpu, spec["scan"]["frames"], rows * cols


def png_cpu(repeat: int) -> float:
    """Median CPU seconds of one visSim PNG of a 32^3 grid."""
    from difframe.tds.visualise import _slices_png

    axes = [np.linspace(-0.3, 0.3, 32)] * 3
    q = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    radius = np.linalg.norm(q, axis=-1)
    model = 50.0 / np.maximum(radius, 0.05) ** 2
    data = model * (1 + 0.05 * np.random.default_rng(0).normal(size=model.shape))
    unmeasured = (radius > 0.3) | (q[..., 2] > 0.15)
    data[unmeasured], model[unmeasured] = np.nan, np.nan
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for n in range(repeat + 1):
            start = time.process_time()
            _slices_png(Path(folder) / f"spot_{n:04d}.png", axes, data, model, 5000, np.array([2, 4, 2]),
                        "model (fitted C11 = 297, C12 = 95.2, C44 = 155.7 GPa)")
            if n:  # the first draws load fonts and colour maps
                times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="?", default="mgo,calcite_ieee")
    parser.add_argument("--pngs", type=int, default=5)
    args = parser.parse_args()
    for name in args.specs.split(","):
        cpu, frames, pixels = simulate_cpu(name)
        print(f"simulate {name}: {cpu:.2f} s CPU for {frames} frames of {pixels} pixels "
              f"({1e9 * cpu / (frames * pixels):.0f} ns per pixel and frame)")
    if args.pngs:
        print(f"visSim PNG (32^3 grid): {png_cpu(args.pngs):.3f} s CPU (median of {args.pngs})")


if __name__ == "__main__":
    main()
