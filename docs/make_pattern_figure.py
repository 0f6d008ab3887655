"""Draw every built-in scan pattern with its default parameters: docs/figures/patterns.png.

    .venv/bin/python docs/make_pattern_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from difframe.run import Run  # noqa: E402

PATTERNS = {
    "raster": {},
    "round": {},
    "round_roi": {},
    "spiral": {},
    "spiral_roi": {},
    "custom": {"positions": [[0, 0], [1e-6, 1e-6], [-1e-6, 2e-6], [2e-6, -1e-6], [-2e-6, -2e-6]]},
}


def main() -> None:
    scans = {name: {"xy": {"type": name, **extra}} for name, extra in PATTERNS.items()}
    run = Run({"scans": scans})
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    for ax, name in zip(axes.ravel(), PATTERNS):
        pos = run.scan_positions(name) * 1e6
        ax.plot(pos[:, 1], pos[:, 0], "-", color="0.8", lw=0.6)
        ax.scatter(pos[:, 1], pos[:, 0], c=range(len(pos)), s=8, cmap="viridis")
        ax.set_title(f"{name}  ({len(pos)} points)")
        ax.set_aspect("equal")
        ax.set_xlabel("x [um]")
        ax.set_ylabel("y [um]")
    fig.suptitle("difframe scan patterns with default parameters (colour: scan order)")
    fig.tight_layout()
    out = Path(__file__).resolve().parent / "figures" / "patterns.png"
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()
