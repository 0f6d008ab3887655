"""Draw docs/tds-geometry.png from the Geometry code itself (run: python docs/make_tds_geometry_figure.py)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from difframe.crystal.geometry import Geometry  # noqa: E402
from difframe.crystal.goniometer import axis_rotation  # noqa: E402

OUT = Path(__file__).with_name("tds-geometry.png")


def arrow(ax, start, vec, color, label, **kw):
    ax.quiver(*start, *vec, color=color, arrow_length_ratio=0.12, linewidth=2, **kw)
    end = np.asarray(start) + np.asarray(vec) * 1.08
    ax.text(*end, label, color=color, fontsize=10)


def main() -> None:
    g = Geometry(lmbda=0.7, dist=10.0, pixel_size=1.0, det_origin_X=4.0, det_origin_Y=3.0, AA=4.0, BB=4.0,
                 CC=4.0, angular_step=0.5, alpha=50.0)
    fig = plt.figure(figsize=(9, 6.5))
    ax = fig.add_subplot(projection="3d")
    # detector outline (10 x 8 pixels of 1 mm at 10 mm) and its pixel axes
    corners = g.pixel_lab(np.array([0, 0, 7, 7, 0]), np.array([0, 9, 9, 0, 0]))
    ax.plot(*corners.T, color="0.3")
    origin = g.pixel_lab(0.0, 0.0)
    arrow(ax, origin, g.pixel_lab(0.0, 3.0) - origin, "tab:purple", "col")
    arrow(ax, origin, g.pixel_lab(3.0, 0.0) - origin, "tab:purple", "row")
    beam_hit = g.pixel_lab(g.det_origin_Y, g.det_origin_X)
    ax.scatter(*beam_hit, color="k", s=15)
    ax.text(*beam_hit, "  (det_origin_Y, det_origin_X)", fontsize=8)
    # lab axes and beam
    for i, name in enumerate("xyz"):
        arrow(ax, (0, 0, 0), 4 * np.eye(3)[i], "k", name)
    arrow(ax, (-6, 0, 0), (5.5, 0, 0), "tab:blue", "beam, k_i")
    # a scattered ray and Q = k_f - k_i (scaled)
    pixel = g.pixel_lab(6.0, 8.0)
    ax.plot(*np.stack([np.zeros(3), pixel]).T, color="tab:orange")
    ax.text(*pixel, "  pixel (row, col)", fontsize=8, color="tab:orange")
    kf = pixel / np.linalg.norm(pixel) * 6
    arrow(ax, (0, 0, 0), kf, "tab:orange", "k_f")
    arrow(ax, (6, 0, 0), kf - (6, 0, 0), "tab:red", "Q = k_f - k_i")
    # goniometer axes: omega along z, kappa tilted by alpha about y
    kappa_axis = axis_rotation(1, g.alpha) @ (0, 0, 1.0)
    arrow(ax, (0, 0, 0), -3 * kappa_axis, "tab:green", "kappa axis\n(z tilted by alpha about y)")
    ax.text(0.2, 0.2, -2.0, "omega, phi: about z\n(phi tilted by beta)", color="tab:green", fontsize=8)
    ax.set_xlabel("x (beam) [mm]")
    ax.set_ylabel("y [mm]")
    ax.set_zlabel("z (up) [mm]")
    ax.set_title("difframe TDS geometry: lab frame, detector, goniometer")
    ax.view_init(elev=18, azim=-135)
    ax.set_box_aspect((1.6, 1, 0.9))
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)


if __name__ == "__main__":
    main()
