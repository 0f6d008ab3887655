"""Per-spot diagnostics of a TDS fit, to catch harvests the model cannot describe (issue 12).

Why: Bragg tails below ``threshold`` leak into the inner shell when DeltaQ_min is
too small for a reflection, and the fitted constants then come back far off with a
fit that looks converged.  The model's radial law tells: for each spot the points
are binned by |q| (equal-count bins) and the baseline-subtracted data are compared
with the fitted A_s T in every bin.  With the right model their ratio is flat; a
ratio that rises towards the peak means intensity the model has no term for.  Also
per spot: points, frames in which one of its pixels was above the threshold (from
the harvest) and its share of the final cost.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("difframe.tds.diagnostics")

#: radial bins per spot (equal numbers of points)
N_BINS = 6
#: relative excess of data over model in the inner bin that flags Bragg tails
TAIL_EXCESS = 0.10


def spot_diagnostics(problem, x, hkl=None, unit: float | None = None, hot_frames=None) -> list[dict]:
    """One dict per fitted spot: hkl, points, cost share, radial profile, Bragg-tail flag and advice.

    ``problem`` is the fit's projected problem at its solution ``x``; ``unit`` is
    |b|max [1/Angstrom] (DeltaQ units) when the geometry is known; ``hot_frames``
    the harvest's count per spot of frames with a pixel above the threshold.
    """
    points = problem.points
    r, T, A, B = problem.fitted(x)
    qn = np.linalg.norm(points.q, axis=1)
    ends = np.append(points.starts[1:], len(qn))
    total = float(r @ r)
    out = []
    for c, (start, end) in enumerate(zip(points.starts, ends)):
        s = int(points.spots[c])
        q, y = qn[start:end], points.y[start:end]
        data, model = y - B[c], A[c] * T[start:end]
        order = np.argsort(q, kind="stable")
        bins = [b for b in np.array_split(order, min(N_BINS, len(order))) if len(b)]
        ratio = np.array([data[b].sum() / model[b].sum() for b in bins])
        noise = np.array([np.sqrt(np.abs(y[b]).sum()) / abs(model[b].sum()) for b in bins])
        outer = float(np.median(ratio[len(ratio) // 2:]))
        excess = ratio / outer - 1
        tail = bool(excess[0] > max(TAIL_EXCESS, 5 * noise[0] / abs(outer)))
        entry = {
            "spot": s, "hkl": None if hkl is None else [int(v) for v in np.asarray(hkl)[s]],
            "points": int(end - start), "cost": float(0.5 * r[start:end] @ r[start:end]),
            "cost_fraction": float(r[start:end] @ r[start:end] / total) if total > 0 else 0.0,
            "frames_above_threshold": None if hot_frames is None else int(hot_frames[s]),
            "profile": {"q": [float(q[b].mean()) for b in bins], "q_max": [float(q[b].max()) for b in bins],
                        "data": [float(data[b].mean()) for b in bins], "model": [float(model[b].mean()) for b in bins],
                        "ratio": [float(v) for v in ratio]},
            "inner_excess": float(excess[0]), "bragg_tail": tail, "suggested_DeltaQ_min": None,
        }
        if tail:  # beyond the bins, from the peak outwards, that still show the excess
            last = 0
            while last + 1 < len(bins) and excess[last + 1] > TAIL_EXCESS / 2:
                last += 1
            edge = float(q[bins[last]].max())
            entry["suggested_DeltaQ_min"] = edge / unit if unit else None
            where = f"DeltaQ_min >= {edge / unit:.3g}" if unit else f"|q| > {edge:.3g} 1/Angstrom"
            log.warning("spot %s: the data exceed the model by %.0f %% in the inner shell (|q| < %.3g 1/Angstrom): "
                        "Bragg tails? Harvest again with %s", entry["hkl"] or s, 100 * excess[0],
                        float(q[bins[0]].max()), where)
        out.append(entry)
    return out


def table(rows: list[dict]) -> str:
    """The per-spot table printed after the fit."""
    lines = ["spot diagnostics (profile: data/model in the inner |q| bin relative to the outer bins)",
             "   h    k    l   points  >thr frames  cost %  inner excess  Bragg tail"]
    for row in rows:
        h, k, l = row["hkl"] or (row["spot"], "", "")
        hot = "" if row["frames_above_threshold"] is None else row["frames_above_threshold"]
        advice = ""
        if row["bragg_tail"]:
            advice = "YES" + (f" (try DeltaQ_min >= {row['suggested_DeltaQ_min']:.3g})"
                              if row["suggested_DeltaQ_min"] else "")
        lines.append(f"{h:>4} {k:>4} {l:>4} {row['points']:8d} {hot:>12} {100 * row['cost_fraction']:7.2f} "
                     f"{100 * row['inner_excess']:+12.1f}%  {advice}")
    return "\n".join(lines)


def profiles_png(rows: list[dict], path) -> Path:
    """One PNG: per spot, q^2 x intensity against |q| for data (dots) and model (line); flat is 1/q^2."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from difframe.fileio import atomic_path

    n = max(len(rows), 1)
    cols = int(np.ceil(np.sqrt(n)))
    fig = Figure(figsize=(3.2 * cols, 2.6 * int(np.ceil(n / cols))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(int(np.ceil(n / cols)), cols, squeeze=False)).ravel()
    for ax, row in zip(axes, rows):
        q = np.array(row["profile"]["q"])
        ax.plot(q, q**2 * np.array(row["profile"]["model"]), "-", color="C0", label="model A T")
        ax.plot(q, q**2 * np.array(row["profile"]["data"]), "o", color="C3" if row["bragg_tail"] else "C1",
                label="data - baseline")
        name = tuple(row["hkl"]) if row["hkl"] else row["spot"]
        ax.set_title(f"{name}: {row['points']} pts" + (", Bragg tail?" if row["bragg_tail"] else ""),
                     fontsize="small", color="C3" if row["bragg_tail"] else "black")
        ax.set_xlabel("|q| [1/\u00c5]", fontsize="small")
        ax.set_ylabel("q\u00b2 I (bin mean)", fontsize="small")
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    if rows:
        axes[0].legend(fontsize="x-small")
    fig.suptitle("radial profiles per spot: the TDS model falls as 1/q^2 (flat here); data rising towards the "
                 "peak = Bragg tails", fontsize="small")
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)
