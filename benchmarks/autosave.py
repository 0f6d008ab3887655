"""Cost of autosave on the real P25 example (examples/p25.toml with autosave on every 10 iterations).

One run; at every autosave the appending writer (difframe.ptycho.ptyr.Autosaves,
what runs use) and, as the reference, the whole-file rewrite it replaced
(write_ptyr of the whole state and history, to a scratch file) are both timed.
Prints the run's wall time without the reference writes, each writer's total and
its share of the run it would belong to, and the ratio.  Run from the project root:

    .venv/bin/python benchmarks/autosave.py [--iterations DM ML]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tomllib
from pathlib import Path

import difframe
from difframe.ptycho import ptyr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, nargs=2, metavar=("DM", "ML"), help="override numiter")
    parser.add_argument("--interval", type=int, default=10, help="io.autosave.interval (default 10)")
    args = parser.parse_args()
    params = tomllib.loads((ROOT / "examples" / "p25.toml").read_text())
    if args.iterations:
        for ep, n in zip(params["engines"].values(), args.iterations):
            ep["numiter"] = n
    spent = {"append": 0.0, "rewrite": 0.0, "saves": 0}
    save = ptyr.Autosaves.save

    def timed(self, path, model, p, runtime, description="difframe autosave", terms=None):
        start = time.perf_counter()
        save(self, path, model, p, runtime, description, terms)
        spent["append"] += time.perf_counter() - start
        start = time.perf_counter()
        ptyr.write_ptyr(Path(path).with_suffix(".rewrite"), model, p, runtime, description, terms)
        spent["rewrite"] += time.perf_counter() - start
        spent["saves"] += 1

    ptyr.Autosaves.save = timed
    os.chdir(ROOT)  # the example's paths are relative to the project root
    with tempfile.TemporaryDirectory() as tmp:
        params["io"] = {"paths": {"home": tmp}, "autosave": {"active": True, "interval": args.interval}}
        params["plotclient"] = {"dump": False}
        params["verbose_level"] = 1
        start = time.perf_counter()
        difframe.Run(params).run()
        wall = time.perf_counter() - start - spent["rewrite"]
    iterations = sum(ep["numiter"] for ep in params["engines"].values())
    before = wall - spent["append"] + spent["rewrite"]
    print(f"P25, {iterations} iterations, {spent['saves']} autosaves (every {args.interval})")
    print(f"{'writer':<34}{'autosave [s]':>13}{'run [s]':>9}{'share':>8}")
    print(f"{'append (Autosaves, now)':<34}{spent['append']:>13.2f}{wall:>9.1f}{spent['append'] / wall:>8.1%}")
    print(f"{'rewrite everything (before)':<34}{spent['rewrite']:>13.2f}{before:>9.1f}"
          f"{spent['rewrite'] / before:>8.1%}")
    print(f"ratio rewrite / append: {spent['rewrite'] / max(spent['append'], 1e-9):.1f}")


if __name__ == "__main__":
    main()
