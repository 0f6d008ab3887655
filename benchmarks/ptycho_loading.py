"""Loading a .ptyd scan under MPI: peak memory per rank and load time, 1 rank against 2.

    .venv/bin/python benchmarks/ptycho_loading.py [--frames 4000] [--side 128] [--keep DIR]
    .venv/bin/python benchmarks/ptycho_loading.py --progress 7   (the reading bar's cost only)

Writes a synthetic .ptyd (Poisson frames around a beam, one weight map per
frame, as ptypy stores them), then starts, each in fresh processes:

* ``1 rank``             the file recipe, then the model (the reference);
* ``2 ranks, shares``    each rank reads and prepares only its block of frames;
* ``2 ranks, all``       each rank reads and prepares all frames and the model
                         keeps its block (how the flow loaded data before).

"Load" is everything before the first engine iteration: recipe (read, auto
centre, crop), model building and the split over ranks.  Peak memory is the
rank's maximum resident set during the load minus the resident set before it
(imports excluded), largest rank shown.  Ratios are against the 1-rank run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import difframe

MPIEXEC = Path(sys.executable).parent / "mpiexec"
GEOMETRY = {"energy": 6.2, "distance": 7.19, "psize": 172e-6, "prop_type": "farfield"}


def write_input(path: Path, frames: int, side: int) -> None:
    """A .ptyd of ``frames`` Poisson frames of side x side around an off-centre beam, in chunks of 500."""
    from difframe.ptycho.data import PreparedData
    from difframe.ptycho.ptyd import write_ptyd

    rng = np.random.default_rng(0)
    y, x = np.indices((side, side))
    beam = 1e3 * np.exp(-((y - side * 0.52) ** 2 + (x - side * 0.47) ** 2) / (0.02 * side**2))
    data = np.empty((frames, side, side), np.float32)
    for start in range(0, frames, 500):
        stop = min(start + 500, frames)
        data[start:stop] = rng.poisson(beam, (stop - start, side, side))
    positions = rng.uniform(-5e-6, 5e-6, (frames, 2))
    prepared = PreparedData(label="bench", data=data, mask=np.ones((side, side), bool), positions=positions,
                            energy_kev=6.2, distance_m=7.19, psize_m=(172e-6, 172e-6), center=(side / 2, side / 2))
    write_ptyd(path, prepared, frames_per_chunk=500)


class WholeFileRecipe:
    """Recipe "whole": every rank reads and prepares all frames (the flow before shares)."""

    @difframe.hookimpl
    def difframe_recipes(self):
        from difframe.types import RecipeSpec

        yield RecipeSpec(name="whole", summary="all frames on every rank", prepare=self.prepare)

    @staticmethod
    def prepare(scan, context):
        from difframe.ptycho.prepare import prepare
        from difframe.ptycho.ptyd import read_ptyd
        from difframe.run import ScanContext

        one_process = ScanContext(**{k: v for k, v in vars(context).items() if k != "ranks"})
        return prepare(read_ptyd(scan.data.dfile), scan, one_process, save=False)


def worker(dfile: str, mode: str) -> None:
    """One rank's load (``mode`` "shares" or "all"); prints its figures as one JSON line."""
    from difframe import Run, parallel
    from difframe.manager import PluginManager
    from difframe.ptycho.workflow import build_run_model, prepare_scans

    ranks = parallel.world()
    params = {"scans": {"b": {"data": {"source": "file" if mode == "shares" else "whole", "dfile": dfile,
                                       "auto_center": True, "shape": 96}, "geometry": GEOMETRY}},
              "engines": {"e1": {"name": "DM"}}}
    run = Run(params, plugins=PluginManager(plugins=[WholeFileRecipe()]))
    import h5py, scipy.fft, scipy.ndimage  # noqa: E401,F401  imported before the baseline, not counted
    import difframe.ptycho.models, difframe.ptycho.ptyd  # noqa: E401,F401
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if ranks.comm is not None:
        ranks.comm.Barrier()
    start = time.perf_counter()
    model = build_run_model(run, prepare_scans(run, ranks))
    model.keep_share(ranks)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rank": ranks.rank, "seconds": seconds, "peak_mib": (peak - before) / 1024,
                      "frames": model.scans[0].num_frames}), flush=True)


def measure(dfile: Path, ranks: int, mode: str) -> dict:
    command = [sys.executable, __file__, "--worker", mode, str(dfile)]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={"PATH": str(Path(sys.executable).parent), "OMP_NUM_THREADS": "1"}).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {"seconds": max(r["seconds"] for r in records), "peak_mib": max(r["peak_mib"] for r in records),
            "frames": [r["frames"] for r in sorted(records, key=lambda r: r["rank"])]}


def progress_cost(dfile: Path, rounds: int) -> None:
    """Same-run cost of the reading bar: the frames read in one call (no bar) against
    :func:`difframe.ptycho.prepare.load_frames` in steps with a live bar (plain lines, as off a terminal),
    interleaved; medians and the median of the per-round ratios."""
    from difframe.progress import Progress
    from difframe.ptycho.prepare import LOAD_STEP_BYTES, load_frames
    from difframe.ptycho.ptyd import open_ptyd
    from difframe.ptycho.raw import load_share

    times = {"one read, no bar": [], "steps with a bar": []}
    with open_ptyd(dfile) as raw:
        share = slice(0, raw.frames.shape[0])
        for _ in range(rounds):
            for name in times:
                start = time.perf_counter()
                if name == "one read, no bar":
                    frames, _ = load_share(raw, share, "bench")
                else:
                    frames, _ = load_frames(raw, share, "bench", Progress(True, terminal=False))
                times[name].append(time.perf_counter() - start)
                del frames
    steps = -(-raw.frames.shape[0] // max(1, LOAD_STEP_BYTES // (4 * raw.frames.shape[1] * raw.frames.shape[2])))
    base, bar = (np.array(t) for t in times.values())
    print(f"reading {raw.frames.shape[0]} frames of {raw.frames.shape[1]}x{raw.frames.shape[2]} ({steps} steps), "
          f"{rounds} interleaved rounds, medians:")
    for name, t in times.items():
        print(f"  {name:<18}{np.median(t):8.3f} s")
    print(f"  ratio (bar / none): median of rounds {np.median(bar / base):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case; the fastest is shown")
    parser.add_argument("--keep", type=Path, help="folder for the synthetic .ptyd (default: a temporary one)")
    parser.add_argument("--progress", type=int, metavar="ROUNDS",
                        help="measure only the reading bar's cost, in this many interleaved rounds")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "DFILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[1], args.worker[0])
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        dfile = folder / f"bench_{args.frames}x{args.side}.ptyd"
        if not dfile.exists():
            start = time.perf_counter()
            write_input(dfile, args.frames, args.side)
            print(f"wrote {dfile.name}: {args.frames} frames of {args.side}x{args.side}, "
                  f"{dfile.stat().st_size / 2**20:.0f} MiB, in {time.perf_counter() - start:.1f} s")
        if args.progress:
            progress_cost(dfile, args.progress)
            return
        cases = [("1 rank", 1, "shares"), ("2 ranks, shares", 2, "shares"), ("2 ranks, all", 2, "all")]
        results = {}
        for _ in range(args.repeats):  # interleaved, so a slow moment of the machine hits every case
            for name, ranks, mode in cases:
                r = measure(dfile, ranks, mode)
                best = results.get(name)
                results[name] = r if best is None or r["seconds"] < best["seconds"] else {
                    **best, "peak_mib": max(best["peak_mib"], r["peak_mib"])}
    ref = results["1 rank"]
    print(f"{'case':<18}{'frames per rank':>18}{'load [s]':>10}{'x 1 rank':>10}{'peak/rank [MiB]':>17}{'x 1 rank':>10}")
    for name, r in results.items():
        print(f"{name:<18}{'+'.join(map(str, r['frames'])):>18}{r['seconds']:>10.2f}{r['seconds'] / ref['seconds']:>10.2f}"
              f"{r['peak_mib']:>17.0f}{r['peak_mib'] / ref['peak_mib']:>10.2f}")


if __name__ == "__main__":
    main()
