"""The real P25 near-field scan: the recommended run (examples/p25.toml) against the same engines without
the model terms for real data, measured in the same run.

Prints, for each: wall time, the Poisson deviance per valid pixel of the final model (about 1 at the noise
limit; the engines report it every iteration), the Siemens star's spoke/gap phase difference in the annulus
6-12 um from its centre (difframe.ptycho.quality.star_contrast), the share of counts the background takes,
and the probe-mode powers.  Run from the project root (shared/ beside the checkout):

    .venv/bin/python benchmarks/p25.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

import difframe
from difframe.ptycho.ptyr import read_ptyr
from difframe.ptycho.quality import star_contrast

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "p25.toml"


def without_terms(params: dict) -> dict:
    """The example with the model terms and ML options for real data switched off (one probe mode, rounded
    windows, plain conjugate gradients): the same engines and iterations as they were before."""
    p = tomllib.loads(EXAMPLE.read_text())
    p.update({k: v for k, v in params.items() if k not in p})
    p["scans"]["p25"]["background"] = {"active": False}
    p["scans"]["p25"].pop("coherence", None)
    p["engine"] = {"common": {"probe_support": 0.7}}
    for ep in p["engines"].values():
        ep["floating_intensities"] = False
        for option in ("position_refinement", "illumination_precond", "subpixel_positions"):
            ep.pop(option, None)
    return p


def run(params: dict, home: Path) -> dict:
    params = dict(params, io={"paths": {"home": str(home)}, "autosave": {"active": False}})
    params["plotclient"] = {"dump": False}
    params["verbose_level"] = 1
    start = time.perf_counter()
    results = difframe.Run(params).run()
    wall = time.perf_counter() - start
    rec = read_ptyr(results["reconstruction"])
    storage = next(iter(rec.objects.values()))
    star = star_contrast(storage["data"][0], float(storage["_psize"][0]), (6e-6, 12e-6), spokes=28)
    last = rec.iter_info[-1]["metrics"]
    powers = rec.runtime.get("probe_mode_powers", {})
    powers = next(iter(powers.values())) if powers else np.ones(1)
    bg = next(iter(rec.background.values()), None)
    return {"wall": wall, "deviance": last["deviance"], "contrast": star["contrast"],
            "bg_counts": float(bg.sum()) if bg is not None else 0.0,
            "modes": np.asarray(powers) / max(float(np.sum(powers)), 1e-300)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-reference", action="store_true", help="only the recommended run")
    args = parser.parse_args()
    example = tomllib.loads(EXAMPLE.read_text())
    cases = [("examples/p25.toml", example)]
    if not args.no_reference:
        cases.append(("same engines, no terms", without_terms(example)))
    import os

    os.chdir(ROOT)  # the example's paths are relative to the project root
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, params) in enumerate(cases):
            rows.append((name, run(params, Path(tmp) / str(k))))
    print(f"{'case':<26}{'wall [s]':>10}{'deviance/px':>13}{'star [rad]':>12}{'bg counts/frame':>17}  mode powers")
    for name, r in rows:
        print(f"{name:<26}{r['wall']:>10.1f}{r['deviance']:>13.2f}{r['contrast']:>12.3f}{r['bg_counts']:>17.3g}  "
              + " ".join(f"{p:.3f}" for p in r["modes"]))
    if len(rows) == 2:
        a, b = rows[0][1], rows[1][1]
        print(f"ratio (example / no terms): deviance {a['deviance'] / b['deviance']:.2f}, "
              f"star contrast {a['contrast'] / b['contrast']:.2f}, wall time {a['wall'] / b['wall']:.2f}")
    print("targets (issue 8): deviance <= 5, star >= 0.30 rad, wall <= 30 s on 2 cores")


if __name__ == "__main__":
    main()
